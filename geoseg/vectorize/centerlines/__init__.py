"""Road centrelines: skeleton -> pixel graph -> pruned lines, exact across block borders.

A block's road mask (core plus halo) is thinned with ``skimage.morphology.skeletonize``
(Zhang-Suen, 8-connected). Skeleton pixels become the vertices of a graph whose edges join
8-neighbours, except a diagonal edge whose two pixels also share a skeleton 4-neighbour
(the redundant triangles at corners and junctions). Pixels of degree other than 2 are
*nodes*; the runs of degree-2 pixels between them are *chains*, and a chain is one line.

Spurs are pruned on the whole read window, in metres: a terminal chain (a free end, the
*tip*, on one side and a junction on the other) whose *height* (the farthest reach from
the junction, counting spurs already pruned further out) is below ``prune_m`` is removed,
repeatedly until none is left. When every branch of a junction is such a spur, the
longest two stay (a small blob keeps its main axis). Finally connected pieces shorter than
``prune_m`` are dropped. Ends that run off the read window (into the scene beyond the
halo) or off the scene are *anchored*: the road goes on there, so they are never tips.

Block-wise == whole-scene. Thinning and pruning are local: a pixel's fate depends only on
the mask within about one road width (thinning) plus ``prune_m`` (pruning) of it, so with
the halo of :func:`centerline_halo_px` the graph inside the core and one pixel around it is
the whole-scene graph. Lines are then cut where a chain crosses the core border: a chain
step from pixel ``P`` inside the core to ``Q`` outside ends at the midpoint ``(P + Q) / 2``.
The neighbouring block computes the same midpoint from its side, bit for bit (coordinates
are half-integers), so :func:`merge_centerlines` joins pieces by exact endpoint equality
and drops the midpoint again. The merged lines equal the whole-scene lines exactly
(coordinates and order), simplified or not: simplification runs on whole lines only.
That holds when every block sees the same mask around its border. A real model does not
quite (each block's tiles see different context), so skeletons may cross a border a pixel
or two apart: :func:`merge_centerlines` then snaps loose cut ends across the border within
a few pixels instead of leaving the road broken there.

The scene edge is treated the same in every block and in a whole-scene call: the mask is
edge-replicated outwards, so a road leaving the image runs straight to the edge and its
line ends exactly on it (a cut at the scene edge, not a seam).

Limits: a raw pixel chain is up to ~8 % longer than the road for oblique directions (the
8-connected staircase); ``simplify_px`` of about 1 removes that. A dead end inside the
scene stops about half a road width short of the road's end (thinning erodes ends). A hole
left in the mask splits the line around it: fill small holes first (the roads smoothing
recipe does).

Coordinates are scene *pixel* coordinates: the centre of pixel ``(row, col)`` is
``(col + 0.5, row + 0.5)``; :func:`geoseg.vectorize.geometry.pixels_to_crs` moves the final
lines to the scene CRS and :func:`line_lengths_m` measures them.

The stages live in one module each: :mod:`.graph` (skeleton pixels to a graph of chains),
:mod:`.prune` (spurs and small pieces), :mod:`.block` (one block core, and the halo it
needs), :mod:`.seams` (joining pieces across block borders), :mod:`.bridge` (joining dead
ends across small gaps in the road, on the merged lines) and :mod:`.lines` (the
``BlockLines`` value object, canonical order, lengths in metres, and the walk along lines
joined end to end that both :mod:`.seams` and :mod:`.bridge` use).
"""

from geoseg.vectorize.centerlines.block import (
    block_centerlines,
    centerline_halo_px,
    scene_centerlines,
)
from geoseg.vectorize.centerlines.bridge import bridge_centerlines
from geoseg.vectorize.centerlines.lines import BlockLines, line_lengths_m
from geoseg.vectorize.centerlines.seams import merge_centerlines

__all__ = [
    "BlockLines",
    "block_centerlines",
    "bridge_centerlines",
    "centerline_halo_px",
    "line_lengths_m",
    "merge_centerlines",
    "scene_centerlines",
]

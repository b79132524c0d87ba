"""Running a model over one block: device choice, batching, autocast, blending.

A :class:`Segmenter` turns a block of raw scene pixels into blended class probabilities.
:class:`TorchSegmenter` does it for torch networks (smp and those written in geoseg): it
normalises with the card's transforms, turns the network's outputs into the card's class
probabilities (softmax, or sigmoid of one logit; channels summed into merged classes), cuts the
tiles it is given (a block asks for the tiles of the scene's tile grid it needs), runs batches
under autocast (bf16 on CPUs with AVX-512 bf16 / AMX, fp16 on CUDA) with channels_last memory,
batch norms folded into the convolutions and weights pre-cast (:mod:`geoseg.models.bn_folding`),
and blends tiles with :class:`~geoseg.tiling.blend.BlendAccumulator`.

Dask workers keep one loaded model per process (:func:`cached_segmenter`). Every forward
pass of a model runs on one of that model's own threads (its *slots*): a worker's Dask
threads queue their batches there (each up to ``slots + 1`` at once, blended in order), so
one thread reads or vectorises a block while the model works on another's, a thread alone
still fills every slot, and torch's threads are never oversubscribed. On a GPU there is one
slot, and the next batch is queued while the caller blends the last.
On a CPU the local cluster asks for one slot per core, each forward pass single-threaded
(``concurrent_batches``): single-threaded passes side by side are at least as fast as one
OpenMP team over the same cores, and the reading, blending and vectorizing that share the
cores then slow one pass by their own share, where they would stall a team at every
barrier. Two Python threads taking turns with two-thread teams are worse still: each keeps its
own team, whose idle threads spin against the busy one.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from copy import deepcopy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from geoseg.config import InferenceOptions
from geoseg.errors import ConfigError, DeviceMemoryError
from geoseg.models.bn_folding import cast_weights, fold_batchnorm
from geoseg.models.card import ModelCard
from geoseg.models.normalisation import Normaliser
from geoseg.tiling.blend import BlendAccumulator
from geoseg.tiling.grid import PixelWindow, TileGrid

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = [
    "Segmenter",
    "TorchSegmenter",
    "cached_segmenter",
    "cpu_supports_bf16",
    "load_segmenter",
    "resolve_device",
]


class Segmenter(Protocol):
    """Anything that maps a block of raw pixels to class probabilities."""

    card: ModelCard

    @property
    def device(self) -> str: ...

    def predict(self, image: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """``image (B, H, W)`` raw scene values, ``valid (H, W)`` -> ``(C, H, W)`` float32."""
        ...


@functools.cache
def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls natively (AVX-512 bf16 or AMX)."""
    import torch

    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if probe is not None and probe():
        return True
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(amx is not None and amx())


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; checks explicit CUDA."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available here")
    return device


def _autocast_dtype(precision: str, device: str) -> torch.dtype | None:
    import torch

    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else None


def _default_batch(
    device: str, tile: int, network: Any = None, *, bands: int = 3, half: bool = True
) -> int:
    """Tiles per forward pass: on the CPU by the tile size; on a GPU by its free memory.

    On a GPU the cost of one tile is measured on ``network`` itself before it moves there
    (:func:`geoseg.models.batch_size.activation_bytes_per_tile`: a small probe pass on the
    CPU, scaled by the pixels), so the batch holds for memory-hungry networks such as
    FC-DenseNet (~10x a U-Net's activations per tile) as for light ones. A batch that does
    not fit is halved at run time (:meth:`TorchSegmenter._fitting`).
    """
    if not device.startswith("cuda"):
        # CPU: larger batches buy no throughput and cost memory (benchmarks/MEASUREMENTS.md).
        return max(1, (512 // tile) ** 2)
    import torch

    from geoseg.models.batch_size import activation_bytes_per_tile, batch_for_memory

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    if isinstance(network, torch.nn.Module):
        per_tile = activation_bytes_per_tile(network, bands=bands, tile=tile, half=half)
        weights = (2 if half else 4) * sum(p.numel() for p in network.parameters())
    else:  # no torch network to measure: ~0.4 GB per 512 px tile, a ResNet-34 U-Net's bound
        per_tile, weights = int(0.4e9 * (tile / 512) ** 2), 0
    return batch_for_memory(free, per_tile, weights_bytes=weights)


class TorchSegmenter:
    """A torch network loaded on a device, with the card that describes it."""

    def __init__(
        self,
        card: ModelCard,
        network: torch.nn.Module,
        *,
        options: InferenceOptions,
        copy: bool = True,
    ) -> None:
        """Prepare ``network`` for inference (see the module docs).

        Preparing rewrites the network (batch norms folded, weights cast), so it works on a
        copy unless ``copy=False`` hands the network over (a freshly loaded one). A network
        still being trained must be copied.
        """
        import torch

        self.card = card
        self.options = options
        self._device = resolve_device(options.device)
        self.tile = options.tile or card.tile_size
        self.overlap = card.overlap if options.overlap is None else options.overlap
        if self.tile % 32:
            raise ConfigError(f"tile size {self.tile} is not a multiple of 32")
        self.autocast_dtype = _autocast_dtype(options.precision, self._device)
        self.batch_size = options.batch_size or _default_batch(
            self._device,
            self.tile,
            network,
            bands=len(card.bands),
            half=self.autocast_dtype is not None,
        )
        self.tta_transforms = tta_transforms(options.tta, card)
        cpu = not self._device.startswith("cuda")
        self.slots = options.concurrent_batches if cpu else 1
        if cpu and (options.threads or self.slots > 1):
            threads = options.threads or torch.get_num_threads()
            torch.set_num_threads(max(1, threads // self.slots))
        if not cpu:
            # Fixed tile shapes: let cuDNN pick the fastest convolution algorithms once.
            torch.backends.cudnn.benchmark = True
        net = (deepcopy(network) if copy else network).eval().to(self._device)
        fold_batchnorm(net)
        if self.autocast_dtype is not None:
            cast_weights(net, self.autocast_dtype)
        self.network = net.to(memory_format=torch.channels_last)
        self._normaliser = Normaliser(card.transforms, bands=len(card.bands), typical=card.mean)
        self._merge = _merge_matrix(card)
        self._runner = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="geoseg-model")
        self._clock = threading.local()
        self._shrink_lock = threading.Lock()

    def take_model_seconds(self) -> tuple[float, float]:
        """``(blocked, computed)``: this thread's seconds since the last call spent waiting
        for forward passes (queued or running), and the seconds its forward passes computed
        on the model's slots (on CUDA including the copies to and from the device). With
        several slots a thread's passes run side by side, so ``computed`` can exceed the
        wall time, by at most the number of slots."""
        blocked = getattr(self._clock, "blocked", 0.0)
        computed = getattr(self._clock, "computed", 0.0)
        self._clock.blocked = self._clock.computed = 0.0
        return float(blocked), float(computed)

    @property
    def device(self) -> str:
        return self._device

    @property
    def precision(self) -> str:
        if self.autocast_dtype is None:
            return "fp32"
        return (
            str(self.autocast_dtype)
            .removeprefix("torch.")
            .replace("bfloat16", "bf16")
            .replace("float16", "fp16")
        )

    def normalise(
        self, image: np.ndarray, valid: np.ndarray, *, out: np.ndarray | None = None
    ) -> np.ndarray:
        """The card's normalisation as float32 (``(x - mean) / std`` unless the card lists
        transforms); nodata pixels get the value of the band means (0 after a z-score).

        Computed in ``out`` (float32, shaped like ``image``) when given, with no temporaries.
        """
        return self._normaliser(image, valid, out=out)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, C, T, T)`` float32 for a normalised batch.

        Runs on one of the model's slots; the time spent waiting for it and computing are
        added to :meth:`take_model_seconds` of the calling thread.
        """
        return self._result(self._runner.submit(self._forward, batch))

    def _result(self, future: Future[tuple[float, float, np.ndarray]]) -> np.ndarray:
        waiting = time.perf_counter()
        started, finished, probs = future.result()
        clock = self._clock
        clock.blocked = getattr(clock, "blocked", 0.0) + time.perf_counter() - waiting
        clock.computed = getattr(clock, "computed", 0.0) + finished - started
        return probs

    def _forward(self, batch: np.ndarray) -> tuple[float, float, np.ndarray]:
        """Runs on a model slot: ``(started, finished, probabilities)``, timed there (not
        when the caller wakes up, which would let one slot's passes overlap)."""
        started = time.perf_counter()
        probs = self._fitting(batch)
        return started, time.perf_counter(), probs

    def _fitting(self, batch: np.ndarray) -> np.ndarray:
        """:meth:`_pass`; a batch that runs out of device memory is run in halves, and
        the batches after it are no larger than what fitted.

        The batch size from free GPU memory is an estimate (the network, the precision and
        other processes on the device change what a tile needs); a pass that does not fit
        costs one failed attempt, not the run.
        """
        import torch

        try:
            return self._pass(batch)
        except torch.OutOfMemoryError:
            pass
        # Outside the except block: its traceback, which holds the failed pass's tensors,
        # is released before the halves allocate theirs.
        if self._device.startswith("cuda"):
            torch.cuda.empty_cache()
        n = len(batch)
        if n == 1:
            raise DeviceMemoryError(
                f"one {self.tile}x{self.tile} px tile of this model does not fit in the free "
                f"memory of {self._device}: use a smaller --tile, --precision fp16 or bf16, "
                "or --device cpu"
            )
        half = (n + 1) // 2
        with self._shrink_lock:
            if half < self.batch_size:
                logger.warning(
                    "out of %s memory with %d tiles per batch; using %d",
                    self._device,
                    n,
                    half,
                )
                self.batch_size = half
        return np.concatenate([self._fitting(batch[:half]), self._fitting(batch[half:])])

    def _pass(self, batch: np.ndarray) -> np.ndarray:
        import torch

        dev = torch.device(self._device)
        cuda = dev.type == "cuda"
        x = torch.from_numpy(batch)
        if cuda:
            x = x.pin_memory()
        x = x.to(dev, non_blocking=cuda)
        with torch.inference_mode():
            # Test-time augmentation: each symmetry of the tile, predicted and turned back.
            first, *others = self.tta_transforms
            probs = self._symmetric_pass(x, *first)
            for rotations, flip in others:
                probs += self._symmetric_pass(x, rotations, flip)
            if others:
                probs /= len(self.tta_transforms)
        return probs.cpu().numpy()

    def _symmetric_pass(self, x: torch.Tensor, rotations: int, flip: bool) -> torch.Tensor:
        """Probabilities of ``x`` seen through one symmetry, turned back to ``x``'s frame."""
        import torch

        view = _symmetry(x, rotations, flip).contiguous(memory_format=torch.channels_last)
        if self.autocast_dtype is not None:
            with torch.autocast(view.device.type, dtype=self.autocast_dtype):
                logits = self.network(view)
        else:
            logits = self.network(view)
        return _symmetry_inverse(self._probabilities(logits.float()), rotations, flip)

    def _probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The card's class probabilities from the network's logits ``(N, K, H, W)``."""
        import torch

        if self.card.activation == "sigmoid":
            p = torch.sigmoid(logits)
            probs = torch.cat([1.0 - p, p], dim=1)
        else:
            probs = torch.softmax(logits, dim=1)
        if self._merge is None:
            return probs
        merge = self._merge.to(probs.device)
        return torch.einsum("kc,nchw->nkhw", merge, probs)

    def _batches(
        self, origins: list[tuple[int, int]], image: np.ndarray, valid: np.ndarray
    ) -> Iterator[tuple[list[tuple[int, int]], np.ndarray]]:
        """Normalised tile batches; normalising per tile keeps no float copy of the block."""
        t = self.tile
        i = 0
        while i < len(origins):
            chunk = origins[i : i + self.batch_size]  # smaller after running out of memory
            i += len(chunk)
            # A new array per batch: the model thread may still hold the previous one.
            batch = np.empty((len(chunk), image.shape[0], t, t), dtype=np.float32)
            for x, (r, c) in zip(batch, chunk, strict=True):
                self.normalise(image[:, r : r + t, c : c + t], valid[r : r + t, c : c + t], out=x)
            yield chunk, batch

    def predict(self, image: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Blended probabilities ``(C, H, W)`` over a whole image of raw pixels ``(B, H, W)``.

        Tiles are laid as on the image's :class:`~geoseg.tiling.grid.TileGrid`, which
        reaches an overlap beyond the image (padded there, invalid). Tiles with no valid
        pixel are skipped; invalid pixels get probability 0.
        """
        h, w = valid.shape
        t = self.tile
        grid = TileGrid(height=h, width=w, tile=t, stride=t - self.overlap, margin=self.overlap)
        origins = grid.covering(PixelWindow(row_off=0, col_off=0, height=h, width=w))
        span = grid.span(origins)
        pads = ((-span.row_off, span.row_end - h), (-span.col_off, span.col_end - w))
        # What lies beyond the image is invalid: the normaliser fills it with the band means.
        image = np.pad(image, ((0, 0), *pads), mode="edge")
        valid = np.pad(valid, pads, mode="constant", constant_values=False)
        local = [(r - span.row_off, c - span.col_off) for r, c in origins]
        out = self.predict_tiles(image, valid, origins=local)
        return out[:, -span.row_off : -span.row_off + h, -span.col_off : -span.col_off + w]

    def predict_tiles(
        self, image: np.ndarray, valid: np.ndarray, *, origins: list[tuple[int, int]]
    ) -> np.ndarray:
        """Probabilities ``(C, H, W)`` over raw pixels ``(B, H, W)`` from the tiles at
        ``origins`` (each inside the array), blended in the order given.

        Blending the same tiles in the same order gives every pixel the same float sums,
        whatever else the array holds. Tiles with no valid pixel are skipped; pixels no tile
        covers, and invalid pixels, get probability 0.
        """
        t = self.tile
        acc = BlendAccumulator(len(self.card.classes), valid.shape, tile=t, overlap=self.overlap)
        for (r, c), p in self.tile_probabilities(image, valid, origins=origins):
            acc.add(p, row=r, col=c, valid=valid[r : r + t, c : c + t])
        out, _ = acc.result()
        return out

    def tile_probabilities(
        self, image: np.ndarray, valid: np.ndarray, *, origins: list[tuple[int, int]]
    ) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
        """``(origin, probabilities (C, tile, tile))`` of the tiles at ``origins`` (each
        inside the raw pixels ``image (B, H, W)``), in the order given, unblended. Tiles
        with no valid pixel are skipped."""
        t = self.tile
        origins = [(r, c) for r, c in origins if valid[r : r + t, c : c + t].any()]
        # Up to slots + 1 batches of this block are queued or running at once: one block
        # keeps every slot busy (while the other Dask thread reads or vectorizes), and the
        # next batch is waiting when a pass ends. Results come back in submission order,
        # so the sums, and the output, do not depend on which slot finished first.
        pending: deque[tuple[list[tuple[int, int]], Future[Any]]] = deque()
        try:
            for chunk, batch in self._batches(origins, image, valid):
                pending.append((chunk, self._runner.submit(self._forward, batch)))
                if len(pending) > self.slots:
                    chunk, future = pending.popleft()
                    yield from zip(chunk, self._result(future), strict=True)
            while pending:
                chunk, future = pending.popleft()
                yield from zip(chunk, self._result(future), strict=True)
        finally:  # an error: drop this block's queued passes (running ones finish)
            for _, future in pending:
                future.cancel()

    def predict_whole(self, image: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Whole-image inference in one forward pass (reference for seam tests).

        The image is reflect-padded to a multiple of 32 and cropped back.
        """
        h, w = valid.shape
        ph, pw = (-h) % 32, (-w) % 32
        x = self.normalise(image, valid)
        x = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="reflect")
        return self.forward(x[np.newaxis])[0][:, :h, :w]


def _merge_matrix(card: ModelCard) -> torch.Tensor | None:
    """``(classes, channels)`` 0/1 matrix summing probability channels into the card's
    classes, or ``None`` when each class is one channel in order."""
    channels = card.class_channels
    if channels is None:
        return None
    import torch

    merge = torch.zeros(len(channels), card.probability_channels)
    for k, chans in enumerate(channels):
        merge[k, list(chans)] = 1.0
    return merge


def load_segmenter(path: str | os.PathLike[str], *, options: InferenceOptions) -> Segmenter:
    """Load a model file (safetensors, or ONNX run by onnxruntime) as a :class:`Segmenter`."""
    from geoseg.models.onnx_card import is_onnx

    if is_onnx(path):
        from geoseg.models.onnx import load_onnx

        card, network, onnx_options = load_onnx(path, options=options)
        return TorchSegmenter(card, network, options=onnx_options, copy=False)
    from geoseg.models.registry import load_network

    card, net = load_network(path)
    return TorchSegmenter(card, net, options=options, copy=False)


_cache_lock = threading.Lock()


@functools.lru_cache(maxsize=8)
def _cached(key: tuple[Any, ...], options: InferenceOptions) -> Segmenter:
    return load_segmenter(key[0], options=options)


def cached_segmenter(path: str, *, options: InferenceOptions) -> Segmenter:
    """The process-wide instance of a model (a Dask worker loads each model once).

    The cache key includes the file's size and modification time, so a model file replaced
    between runs on a long-lived worker is reloaded.
    """
    p = Path(path)
    st = p.stat() if p.exists() else None
    key = (path, st.st_size if st else None, st.st_mtime_ns if st else None, os.getpid())
    with _cache_lock:
        return _cached(key, options)


# (quarter turns, mirrored) of each test-time augmentation mode; the identity comes first.
_TTA: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    "flips": ((0, False), (0, True), (2, True), (2, False)),  # identity, h, v, both
    "d4": tuple((k, f) for f in (False, True) for k in range(4)),
}


def tta_transforms(mode: str, card: ModelCard) -> tuple[tuple[int, bool], ...]:
    """The symmetries a prediction averages over: ``mode``, or for ``auto`` the card's
    recommendation (its training record's ``tta``, set where a measurement showed it pays)."""
    if mode == "auto":
        mode = str(card.training.get("tta", "none"))
    return _TTA.get(mode, _TTA["none"])


def _symmetry(x: torch.Tensor, rotations: int, flip: bool) -> torch.Tensor:
    """NCHW ``x`` mirrored left-right (if ``flip``), then turned ``rotations`` quarter turns."""
    import torch

    if flip:
        x = torch.flip(x, dims=(3,))
    return torch.rot90(x, rotations, dims=(2, 3)) if rotations else x


def _symmetry_inverse(x: torch.Tensor, rotations: int, flip: bool) -> torch.Tensor:
    import torch

    if rotations:
        x = torch.rot90(x, -rotations, dims=(2, 3))
    return torch.flip(x, dims=(3,)) if flip else x

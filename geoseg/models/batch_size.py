"""Tiles per batch on a GPU from a network's own activation memory, measured without a GPU.

A fixed cost per tile cannot fit every architecture: at 512 x 512 in half precision an
FC-DenseNet needs 10-16 times the activation memory of a ResNet-34 U-Net (its dense blocks
keep every layer's output alive for the concatenations). So the cost is measured on the
network itself:

- :func:`peak_live_bytes` runs one forward pass under a torch dispatch mode that sees every
  tensor each operation returns and keeps the sum of the bytes of those still alive; its
  peak is the activation memory of the pass (weights, buffers and the input left out,
  allocator rounding and convolution workspaces not seen);
- :func:`activation_bytes_per_tile` prepares a copy of the network as the predictor does
  (batch norms folded, weights cast to half precision, channels_last), runs a small probe
  (one ``probe x probe`` tile) on the CPU under bf16 autocast (fp16 tensors have the same
  sizes) and scales the peak by the pixels to the tile size: activation memory is
  proportional to the pixels for fully convolutional networks;
- :func:`batch_for_memory` turns free device memory, that cost and the weights into tiles
  per batch.

torch is imported inside the functions, so importing this module does not import it.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import TYPE_CHECKING

from geoseg.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = [
    "MAX_BATCH",
    "PROBE",
    "activation_bytes_per_tile",
    "batch_for_memory",
    "peak_live_bytes",
]

# The largest batch chosen (more tiles per batch buy nothing once the device is busy).
MAX_BATCH = 64
# Side of the probe tile: small enough to be quick on a CPU, large enough that every
# architecture's coarsest stage still has a few pixels (a multiple of 32).
PROBE = 128


def peak_live_bytes(
    network: torch.nn.Module, x: torch.Tensor, *, dtype: torch.dtype | None = None
) -> int:
    """Peak bytes of the tensors created during one forward pass and alive at once.

    The pass runs in inference mode, under autocast to ``dtype`` when given (on ``x``'s
    device type). Tensors sharing a storage (views) count once; the network's parameters
    and buffers and ``x`` itself are not counted, nor anything the allocator adds.
    """
    import torch
    from torch.multiprocessing.reductions import StorageWeakRef
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    known = {p.untyped_storage().data_ptr() for p in network.parameters()}
    known |= {b.untyped_storage().data_ptr() for b in network.buffers()}
    known.add(x.untyped_storage().data_ptr())

    class Live(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.held: dict[int, tuple[StorageWeakRef, int]] = {}
            self.live = self.peak = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            # The storages freed since the last operation are no longer live.
            for key, (ref, size) in list(self.held.items()):
                if ref.expired():
                    del self.held[key]
                    self.live -= size
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()
                    key = storage.data_ptr()
                    if key and key not in self.held and key not in known:
                        self.held[key] = (StorageWeakRef(storage), storage.nbytes())
                        self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            return out

    tracker = Live()
    cast = (
        torch.autocast(x.device.type, dtype=dtype)
        if dtype is not None
        else contextlib.nullcontext()
    )
    with torch.inference_mode(), cast, tracker:
        network(x)
    return tracker.peak


def activation_bytes_per_tile(
    network: torch.nn.Module,
    *,
    bands: int,
    tile: int,
    probe: int = PROBE,
    half: bool = True,
) -> int:
    """Estimated activation bytes of one ``tile x tile`` tile in a forward pass of ``network``.

    A copy of ``network`` is prepared for inference on the CPU as the predictor prepares it
    (batch norms folded; with ``half``, weights cast to bf16, the size of fp16), a
    ``probe x probe`` tile of ``bands`` bands goes through it (:func:`peak_live_bytes`,
    under bf16 autocast with ``half``, else fp32) and the peak is scaled by
    ``(tile / probe) ** 2``. ``network`` itself is left as it is.

    Raises
    ------
    ConfigError
        If ``tile`` or ``probe`` is not a positive multiple of 32, or ``bands`` < 1.
    """
    import torch

    from geoseg.models.bn_folding import cast_weights, fold_batchnorm

    for what, size in (("tile", tile), ("probe", probe)):
        if size < 32 or size % 32:
            raise ConfigError(f"{what} size {size} is not a positive multiple of 32")
    if bands < 1:
        raise ConfigError(f"bands {bands} must be >= 1")
    side = min(probe, tile)
    net = copy.deepcopy(network).to("cpu").eval()
    fold_batchnorm(net)
    dtype = torch.bfloat16 if half else None
    if dtype is not None:
        cast_weights(net, dtype)
    net = net.to(memory_format=torch.channels_last)
    x = torch.zeros(1, bands, side, side).contiguous(memory_format=torch.channels_last)
    peak = peak_live_bytes(net, x, dtype=dtype)
    return math.ceil(peak * (tile / side) ** 2)


def batch_for_memory(
    free_bytes: float,
    per_tile_bytes: float,
    *,
    weights_bytes: float = 0,
    margin: float = 0.4,
    max_batch: int = MAX_BATCH,
) -> int:
    """Tiles per batch that fit ``free_bytes`` of device memory.

    The batch may fill ``(1 - margin)`` of the free memory less the weights: the margin is
    for what the per-tile estimate leaves out (allocator rounding, convolution workspaces,
    the probabilities copied back). At least 1 (a batch that does not fit is halved at run
    time), at most ``max_batch``.

    Raises
    ------
    ConfigError
        If ``per_tile_bytes`` is not positive, ``free_bytes`` or ``weights_bytes`` is
        negative, or ``margin`` is not in [0, 1).
    """
    if not per_tile_bytes > 0:
        raise ConfigError(f"per-tile bytes {per_tile_bytes} must be > 0")
    if free_bytes < 0 or weights_bytes < 0:
        raise ConfigError(f"free {free_bytes} and weights {weights_bytes} bytes must be >= 0")
    if not 0 <= margin < 1:
        raise ConfigError(f"margin {margin} must be in [0, 1)")
    usable = free_bytes * (1 - margin) - weights_bytes
    return int(max(1, min(max_batch, usable // per_tile_bytes)))

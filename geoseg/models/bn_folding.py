"""Preparing a trained network for inference: batch norm folded, weights pre-cast.

Two rewrites that leave what a network computes unchanged (to rounding) and make its forward
pass cheaper:

- :func:`fold_batchnorm`: an eval-mode ``BatchNorm2d`` that only follows a ``Conv2d`` is an
  affine map per channel, so it folds into the convolution's weights and bias. Every
  encoder and decoder block of the smp CNNs is conv -> BN -> ReLU, and each unfolded BN is
  one more pass over a full activation map (the saving is in ``benchmarks/MEASUREMENTS.md``).
- :func:`cast_weights`: autocast converts every convolution and linear weight to the
  autocast dtype on each forward pass. Converting them once gives the same numbers (the
  same ops still run in the same dtype) without the per-pass copies, and halves the
  weights' memory. Normalisation layers keep fp32 weights, as autocast would use them.

Folding traces the network with ``torch.fx``, module by module where a whole network
cannot be traced; a part with data-dependent control flow keeps its batch norms.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["cast_weights", "fold_batchnorm"]

log = logging.getLogger(__name__)


def fold_batchnorm(network: torch.nn.Module) -> int:
    """Fold every conv -> batch-norm pair of ``network`` into one convolution, in place.

    The fused convolution replaces the convolution and an ``Identity`` the batch norm, so the
    network keeps its own ``forward`` and attributes. A pair folds when the batch norm's only
    input is the convolution's output, that output feeds nothing else, and each module is
    called once (a shared module would change at its other call sites too). Pairs are found
    by tracing with ``torch.fx``; a module whose ``forward`` cannot be traced (smp checks the
    input shape in Python before running the encoder) has its children traced one by one.
    ``network`` must be in eval mode. Returns how many batch norms were folded.
    """
    if network.training:
        raise ValueError("batch norm folds only in eval mode (call .eval() first)")
    count = _fold(network)
    log.debug("folded %d batch norms into convolutions", count)
    return count


def _fold(module: torch.nn.Module) -> int:
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    pairs = _conv_bn_pairs(module)
    if pairs is None:
        return sum(_fold(child) for child in module.children())
    for (conv_name, conv), (bn_name, bn) in pairs:
        module.set_submodule(conv_name, fuse_conv_bn_eval(conv, bn))
        module.set_submodule(bn_name, torch.nn.Identity())
    return len(pairs)


def _conv_bn_pairs(
    module: torch.nn.Module,
) -> list[tuple[tuple[str, torch.nn.Conv2d], tuple[str, torch.nn.BatchNorm2d]]] | None:
    """The foldable (conv, batch norm) pairs, with qualified names; ``None`` if untraceable."""
    import torch
    from torch import fx

    try:
        graph = fx.Tracer().trace(module)
    except Exception:  # fx raises many kinds (TraceError, TypeError, proxy misuse)
        return None
    modules = dict(module.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    pairs = []
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        src = node.args[0] if node.args else None
        if not (isinstance(bn, torch.nn.BatchNorm2d) and isinstance(src, fx.Node)):
            continue
        conv = modules.get(src.target) if src.op == "call_module" else None
        if (
            isinstance(conv, torch.nn.Conv2d)
            and len(src.users) == 1
            and len(node.args) == 1
            and not node.kwargs
            and calls[src.target] == 1
            and calls[node.target] == 1
            # without running statistics it normalises by the batch even in eval
            and bn.track_running_stats
            and bn.running_mean is not None
        ):
            pairs.append(((str(src.target), conv), (str(node.target), bn)))
    return pairs


def cast_weights(network: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Convert convolution and linear layers' parameters to ``dtype`` in place.

    For a network run under ``torch.autocast(dtype=dtype)``, which would cast exactly these
    weights on every forward pass. Returns ``network``.
    """
    import torch

    kinds = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)
    for module in network.modules():
        if isinstance(module, kinds):
            module.to(dtype)
    return network

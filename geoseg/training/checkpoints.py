"""Checkpoints: what a training run keeps after every epoch so it can resume.

A checkpoint folder holds ``last.pt`` (the network, optimizer, schedule and gradient scaler
state, the RNG state, the epoch history, the best epoch so far and the elapsed time) and
``best.safetensors`` (the weights of the best epoch, with the card). ``last.pt`` is written
to a temporary name and renamed, so an interrupted write never leaves a torn checkpoint,
and it is read with ``torch.load(weights_only=True)``: tensors and plain containers only,
no code. It records a fingerprint of the options a resumed run must share
(:meth:`~geoseg.training.config.TrainConfig.fingerprint`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoseg.errors import ConfigError
from geoseg.training.config import RESUMABLE_CHANGES, TrainConfig
from geoseg.training.optim import Optimiser
from geoseg.training.progress import EpochRecord

if TYPE_CHECKING:
    import torch

__all__ = [
    "BEST",
    "CHECKPOINT_FORMAT",
    "LAST",
    "ResumeState",
    "cast_state",
    "checkpoint_entries",
    "load_checkpoint",
    "restore",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "geoseg-checkpoint/1"
LAST = "last.pt"
BEST = "best.safetensors"


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """Write ``state`` to ``path`` through a temporary file (atomic rename)."""
    import torch

    from geoseg.tiling.atomic import commit, create_temporary

    tmp = create_temporary(path)
    try:
        torch.save(dict(state), tmp)
        commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, config: TrainConfig) -> dict[str, Any]:
    """Read a checkpoint that ``config`` may resume.

    Raises
    ------
    ConfigError
        If the file is unreadable, not a geoseg checkpoint, or was written by a run with
        other options than ``config`` (named in the message).
    """
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad or foreign file
        raise ConfigError(
            f"cannot read checkpoint {str(path)!r}: {err}; delete it to start afresh"
        ) from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{str(path)!r} is not a geoseg training checkpoint")
    if ckpt.get("fingerprint") != config.fingerprint():
        old = json.loads(ckpt.get("config", "{}"))
        new = config.to_dict()
        changed = sorted(k for k in new if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k))
        raise ConfigError(
            f"checkpoint {str(path)!r} was written by a run with different options "
            f"({', '.join(changed) or 'unknown'}); use another checkpoint directory or "
            f"resume=False to start afresh"
        )
    return ckpt


def checkpoint_entries(
    config: TrainConfig,
    *,
    epoch: int,
    network: torch.nn.Module,
    optimiser: Optimiser,
    cuda: bool,
    history: Sequence[EpochRecord],
    best_epoch: int,
    best_score: float | None,
    stopped: bool,
    elapsed_s: float,
) -> dict[str, Any]:
    """What ``last.pt`` holds after ``epoch``."""
    import torch

    return {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": config.fingerprint(),
        "config": json.dumps(config.to_dict()),
        "epoch": epoch,
        "model": network.state_dict(),
        **optimiser.state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if cuda else None,
        "history": json.dumps([r.to_dict() for r in history]),
        "best_epoch": best_epoch,
        "best_score": best_score,
        "stopped": stopped,
        "elapsed_s": elapsed_s,
    }


@dataclass(frozen=True, kw_only=True, slots=True)
class ResumeState:
    """Where a resumed run continues: after ``epoch``, with the run's history so far."""

    epoch: int
    history: tuple[EpochRecord, ...]
    best_epoch: int
    best_score: float | None
    stopped: bool
    elapsed_s: float


def restore(
    ckpt: Mapping[str, Any], *, network: torch.nn.Module, optimiser: Optimiser, cuda: bool
) -> ResumeState:
    """Load a checkpoint into ``network``, ``optimiser`` and torch's RNGs."""
    import torch

    network.load_state_dict(ckpt["model"])
    optimiser.load(ckpt)
    torch.set_rng_state(ckpt["torch_rng"])
    if cuda and ckpt.get("cuda_rng"):
        torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
    return ResumeState(
        epoch=int(ckpt["epoch"]),
        history=tuple(EpochRecord.from_dict(r) for r in json.loads(ckpt["history"])),
        best_epoch=int(ckpt["best_epoch"]),
        best_score=None if ckpt["best_score"] is None else float(ckpt["best_score"]),
        stopped=bool(ckpt["stopped"]),
        elapsed_s=float(ckpt["elapsed_s"]),
    )


def cast_state(state: Mapping[str, torch.Tensor], store_dtype: str) -> dict[str, torch.Tensor]:
    """The weights on the CPU, floating-point tensors cast to ``store_dtype`` (``fp16`` ...)."""
    import torch

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[store_dtype]
    return {
        k: v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().to("cpu")
        for k, v in state.items()
    }

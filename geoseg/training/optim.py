"""Optimisation: mixed precision, AdamW, the learning-rate schedule and one step of it.

Training runs under bf16 autocast on CPUs with native bf16, fp16 autocast with gradient
scaling on CUDA, or fp32; the master weights stay fp32. The schedule is a closed form of
the optimizer step, so a resumed run (even with a changed epoch count) continues on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from geoseg.errors import ConfigError
from geoseg.training.config import TrainConfig

if TYPE_CHECKING:
    import torch

__all__ = ["Optimiser", "lr_factor", "precision_name", "train_dtype"]


def train_dtype(precision: str, device: str) -> torch.dtype | None:
    """The autocast dtype of a training precision on ``device`` (``None``: fp32).

    Raises
    ------
    ConfigError
        For fp16 without CUDA.
    """
    import torch

    from geoseg.models.predictor import cpu_supports_bf16

    cuda = device.startswith("cuda")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if not cuda:
            raise ConfigError("fp16 training needs CUDA; on CPU use bf16 or fp32")
        return torch.float16
    if cuda:
        return torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else None


def precision_name(dtype: torch.dtype | None) -> str:
    """``fp32``, ``bf16`` or ``fp16``: the card's name of an autocast dtype."""
    import torch

    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def lr_factor(schedule: str, total: int) -> Callable[[int], float]:
    """Learning-rate multiplier at optimizer step ``t`` (closed form, so resumable)."""

    def cos_between(start: float, end: float, frac: float) -> float:
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(max(frac, 0.0), 1.0)))

    def onecycle(t: int) -> float:
        # torch's OneCycleLR shape: 30 % warm-up from lr/25, cosine down to lr/25e4.
        warm = max(1, round(0.3 * total))
        if t < warm:
            return cos_between(1 / 25, 1.0, t / warm)
        return cos_between(1.0, 1 / 25e4, (t - warm) / max(1, total - warm))

    def cosine(t: int) -> float:
        return cos_between(1.0, 0.01, t / max(1, total))

    def constant(t: int) -> float:
        return 1.0

    return {"onecycle": onecycle, "cosine": cosine, "constant": constant}[schedule]


class Optimiser:
    """AdamW over a network's parameters, its schedule and (fp16 on CUDA) gradient scaling.

    Parameters
    ----------
    network
        The network being trained.
    config
        ``lr``, ``weight_decay``, ``schedule`` and the total step count
        (``epochs * steps_per_epoch``).
    cuda, amp_dtype
        Whether training runs on CUDA, and its autocast dtype (gradients are scaled for
        fp16 on CUDA only).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        config: TrainConfig,
        *,
        cuda: bool,
        amp_dtype: torch.dtype | None,
    ) -> None:
        import torch

        self.optimizer = torch.optim.AdamW(
            network.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.factor = lr_factor(config.schedule, config.epochs * config.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.factor)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cuda and amp_dtype == torch.float16)

    @property
    def lr(self) -> float:
        """The learning rate of the next step."""
        return float(self.optimizer.param_groups[0]["lr"])

    def step(self, loss: torch.Tensor) -> float:
        """Back-propagate ``loss``, update the weights, advance the schedule.

        Returns the learning rate the update used.
        """
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        return float(lr)

    def state(self) -> dict[str, Any]:
        """The checkpoint entries of the optimizer, the schedule and the gradient scaler."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
        }

    def load(self, state: Mapping[str, Any]) -> None:
        """Continue from the entries :meth:`state` wrote."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # The schedule is a closed form of the step: a changed epoch count simply
        # continues on the new curve from the current step.
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True):
            group["lr"] = base * self.factor(self.scheduler.last_epoch)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

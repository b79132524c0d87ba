"""Training losses for multiclass segmentation, built from a short spec string.

A spec is a sum of weighted terms: ``"ce"``, ``"focal"``, ``"dice"``, ``"ce+dice"``,
``"0.7*ce+0.3*dice"``, ``"focal(gamma=3)+dice"``. Every term takes raw logits ``(N, C, H, W)``
and integer targets ``(N, H, W)``; pixels whose target is ``ignore_index`` (nodata,
unlabelled) contribute nothing to any term, neither to its value nor to its gradient.

segmentation-models-pytorch's losses are not used: its multiclass ``FocalLoss`` is a
one-vs-rest sigmoid focal loss (not the softmax focal loss of Lin et al.), and its
``DiceLoss`` averages over *all* channels while zeroing absent ones, so its value depends on
how many classes a batch happens to contain. The terms below are small and tested against
hand-computed values.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from geoseg.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["IGNORE_INDEX", "LOSSES", "LossTerm", "build_loss", "parse_loss_spec"]

IGNORE_INDEX = 255

# Loss name -> its parameters and their defaults.
LOSSES: Mapping[str, Mapping[str, float]] = {
    "ce": {"label_smoothing": 0.0},
    "focal": {"gamma": 2.0},
    "dice": {"smooth": 0.0},
}

_TERM = re.compile(
    r"^\s*(?:(?P<weight>\d+(?:\.\d*)?|\.\d+)\s*\*\s*)?"
    r"(?P<name>[a-z_]+)\s*(?:\((?P<args>[^)]*)\))?\s*$"
)


@dataclass(frozen=True, kw_only=True, slots=True)
class LossTerm:
    """One weighted term of a loss spec."""

    name: str
    weight: float = 1.0
    params: Mapping[str, float]

    def __post_init__(self) -> None:
        if self.name not in LOSSES:
            raise ConfigError(f"unknown loss {self.name!r}; valid: {', '.join(LOSSES)}")
        if not self.weight > 0:
            raise ConfigError(f"loss {self.name!r} has weight {self.weight}; use a weight > 0")
        bad = sorted(set(self.params) - set(LOSSES[self.name]))
        if bad:
            valid = ", ".join(LOSSES[self.name]) or "none"
            raise ConfigError(f"loss {self.name!r} has no parameter {bad[0]!r}; valid: {valid}")


def parse_loss_spec(spec: str) -> tuple[LossTerm, ...]:
    """Parse ``"0.7*ce+0.3*dice"`` into its terms.

    Raises
    ------
    ConfigError
        On an empty spec, an unknown loss or parameter, or malformed syntax.
    """
    if not spec or not spec.strip():
        raise ConfigError("empty loss spec; use e.g. 'ce', 'ce+dice' or '0.7*ce+0.3*dice'")
    terms: list[LossTerm] = []
    for part in spec.split("+"):
        m = _TERM.match(part)
        if m is None:
            raise ConfigError(
                f"cannot parse {part.strip()!r} in loss spec {spec!r}; write terms as "
                f"[weight*]name[(param=value)] joined by '+', e.g. '0.5*focal(gamma=2)+dice'"
            )
        params: dict[str, float] = {}
        for arg in filter(None, (a.strip() for a in (m["args"] or "").split(","))):
            key, sep, value = arg.partition("=")
            try:
                if not sep:
                    raise ValueError(arg)
                params[key.strip()] = float(value)
            except ValueError:
                raise ConfigError(
                    f"bad parameter {arg!r} in loss spec {spec!r}; write name=value, "
                    f"e.g. 'focal(gamma=2)'"
                ) from None
        weight = float(m["weight"]) if m["weight"] is not None else 1.0
        terms.append(LossTerm(name=m["name"], weight=weight, params=params))
    names = [t.name for t in terms]
    if len(set(names)) != len(names):
        raise ConfigError(f"loss spec {spec!r} repeats a term; combine the weights instead")
    return tuple(terms)


def _valid_mask(target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    return target != ignore_index


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Pixel-mean cross-entropy (weighted mean with class weights); 0 if all ignored."""
    import torch.nn.functional as F

    if not _valid_mask(target, ignore_index).any():
        return logits.sum() * 0.0  # keeps the graph: backward gives zero gradients
    return F.cross_entropy(
        logits.float(),
        target,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
    )


def focal(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Softmax focal loss ``-(1 - p_t)^gamma log p_t``, mean over valid pixels.

    With class weights ``w`` it is ``sum(w_t * fl) / sum(w_t)``, like weighted
    cross-entropy; ``gamma = 0`` gives exactly cross-entropy.
    """
    import torch

    valid = _valid_mask(target, ignore_index)
    if not valid.any():
        return logits.sum() * 0.0
    logp = torch.log_softmax(logits.float(), dim=1)
    t = torch.where(valid, target, torch.zeros_like(target)).unsqueeze(1)
    logp_t = logp.gather(1, t).squeeze(1)
    p_t = logp_t.exp()
    loss = -((1.0 - p_t).clamp_min(0.0) ** gamma) * logp_t
    w = valid.to(loss.dtype)
    if weight is not None:
        w = w * weight.to(loss.device, loss.dtype)[t.squeeze(1)]
    return (loss * w).sum() / w.sum().clamp_min(1e-12)


def dice(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    smooth: float = 0.0,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Soft multiclass dice loss over the whole batch.

    For each class ``c`` present in the batch's valid targets,
    ``dice_c = (2 sum(p_c y_c) + smooth) / (sum(p_c) + sum(y_c) + smooth)`` over valid
    pixels; the loss is ``1 - mean_c dice_c`` (weighted mean with class weights). Classes
    absent from the targets are left out (their false positives are the job of a
    cross-entropy or focal term).
    """
    import torch

    valid = _valid_mask(target, ignore_index)
    if not valid.any():
        return logits.sum() * 0.0
    n_classes = logits.shape[1]
    probs = torch.softmax(logits.float(), dim=1) * valid.unsqueeze(1)
    t = torch.where(valid, target, torch.zeros_like(target))
    onehot = torch.nn.functional.one_hot(t, n_classes).permute(0, 3, 1, 2).to(probs.dtype)
    onehot = onehot * valid.unsqueeze(1)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    card = probs.sum(dims) + onehot.sum(dims)
    score = (2.0 * inter + smooth) / (card + smooth).clamp_min(eps)
    present = (onehot.sum(dims) > 0).to(score.dtype)
    w = present if weight is None else present * weight.to(score.device, score.dtype)
    return 1.0 - (score * w).sum() / w.sum().clamp_min(1e-12)


_FUNCTIONS: Mapping[str, Callable[..., Any]] = {"ce": cross_entropy, "focal": focal, "dice": dice}


@functools.cache
def _loss_class() -> type:
    """The loss module class, defined on first use so importing this module needs no torch."""
    import torch

    class SegmentationLoss(torch.nn.Module):
        """A weighted sum of loss terms; ``parts`` holds each term's last value for logging."""

        def __init__(
            self, terms: Sequence[LossTerm], *, weight: torch.Tensor | None, ignore_index: int
        ) -> None:
            super().__init__()
            self.terms = tuple(terms)
            self.ignore_index = ignore_index
            self.class_weight: torch.Tensor | None
            self.register_buffer("class_weight", weight)
            self.parts: dict[str, float] = {}

        def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            total = logits.new_zeros((), dtype=torch.float32)
            for term in self.terms:
                value = _FUNCTIONS[term.name](
                    logits,
                    target,
                    weight=self.class_weight,
                    ignore_index=self.ignore_index,
                    **term.params,
                )
                self.parts[term.name] = float(value.detach())
                total = total + term.weight * value
            return total

        def extra_repr(self) -> str:
            return " + ".join(f"{t.weight:g}*{t.name}{dict(t.params) or ''}" for t in self.terms)

    return SegmentationLoss


def build_loss(
    spec: str,
    *,
    n_classes: int,
    class_weights: Sequence[float] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.nn.Module:
    """A loss module ``loss(logits (N, C, H, W), target (N, H, W) int64) -> scalar``.

    Parameters
    ----------
    spec
        Terms joined by ``+``, each ``[weight*]name[(param=value, ...)]``; names and their
        parameters are in :data:`LOSSES` (``ce(label_smoothing)``, ``focal(gamma)``,
        ``dice(smooth)``).
    n_classes
        Number of output channels (background included).
    class_weights
        One weight per class, applied by every term; ``None`` weighs classes equally.
    ignore_index
        Target value of pixels that must not contribute (nodata, unlabelled).

    Raises
    ------
    ConfigError
        On a bad spec or a class-weight list of the wrong length or with negative values.
    """
    import torch

    terms = parse_loss_spec(spec)
    if n_classes < 2:
        raise ConfigError(f"a segmentation loss needs at least 2 classes, got {n_classes}")
    weight = None
    if class_weights is not None:
        if len(class_weights) != n_classes:
            raise ConfigError(
                f"{len(class_weights)} class weights given for {n_classes} classes; "
                f"give one weight per class, background first"
            )
        if any(not w >= 0 for w in class_weights) or not any(w > 0 for w in class_weights):
            raise ConfigError(f"class weights {list(class_weights)} must be >= 0, not all 0")
        weight = torch.tensor([float(w) for w in class_weights], dtype=torch.float32)
    loss: torch.nn.Module = _loss_class()(terms, weight=weight, ignore_index=ignore_index)
    return loss

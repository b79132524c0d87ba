"""Architecture registry, and model file I/O.

Two kinds of architecture share one namespace: segmentation-models-pytorch classes
(:data:`SMP_ARCHITECTURES`) and networks written in geoseg, one module per architecture under
:mod:`geoseg.models.architectures` (:data:`GEOSEG_ARCHITECTURES`: ported published networks,
FCN, Tiramisu). Every factory is called with keyword arguments only: ``in_channels``,
``classes`` (the network's output channels, :attr:`ModelCard.network_outputs`), the card's
``params``, and, for architectures over an encoder, ``encoder_name`` and
``encoder_weights=None``.

Model files are safetensors (no pickle on the load path). Weights are never downloaded:
every encoder is built with ``encoder_weights=None`` and filled from the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoseg.errors import ModelCardError
from geoseg.models.card import CARD_KEY, ModelCard, card_to_json, read_card

if TYPE_CHECKING:
    import torch

__all__ = [
    "ARCHITECTURES",
    "GEOSEG_ARCHITECTURES",
    "SMP_ARCHITECTURES",
    "build_network",
    "import_state_dict",
    "load_network",
    "save_model",
]

# Registry name -> smp class name. Kept as names so importing geoseg does not import torch.
SMP_ARCHITECTURES: Mapping[str, str] = {
    "unet": "Unet",
    "unetplusplus": "UnetPlusPlus",
    "fpn": "FPN",
    "pspnet": "PSPNet",
    "deeplabv3": "DeepLabV3",
    "deeplabv3plus": "DeepLabV3Plus",
    "linknet": "Linknet",
    "manet": "MAnet",
    "pan": "PAN",
    "upernet": "UPerNet",
    "segformer": "Segformer",
}

# Registry name -> (module under geoseg.models.architectures, class, takes an encoder).
GEOSEG_ARCHITECTURES: Mapping[str, tuple[str, str, bool]] = {
    # Google's Dynamic World land-cover network (Sentinel-2 L1C, 9 bands), ported from TF.
    "dynamicworld": ("dynamicworld", "DynamicWorldNet", False),
    # Xin Luo's WatNet-L578 surface-water U-Net (Landsat 5/7/8 surface reflectance).
    "watnet": ("watnet", "WatNet", False),
    # Long et al. 2015 over an smp encoder; params: variant (fcn8s, fcn16s, fcn32s), upsampling.
    "fcn": ("fcn", "FCN", True),
    # FC-DenseNet (Jegou et al. 2017); params: variant (fc-densenet56, 67, 103).
    "tiramisu": ("tiramisu", "Tiramisu", False),
}

ARCHITECTURES: tuple[str, ...] = (*SMP_ARCHITECTURES, *GEOSEG_ARCHITECTURES)


def _factory(architecture: str) -> tuple[Callable[..., Any], bool]:
    """The architecture's class and whether it is built over an encoder."""
    if architecture in GEOSEG_ARCHITECTURES:
        import importlib

        module, cls_name, encoder = GEOSEG_ARCHITECTURES[architecture]
        mod = importlib.import_module(f"geoseg.models.architectures.{module}")
        return getattr(mod, cls_name), encoder
    if architecture not in SMP_ARCHITECTURES:
        raise ModelCardError(
            f"unknown architecture {architecture!r}; valid: {', '.join(ARCHITECTURES)}"
        )
    import segmentation_models_pytorch as smp

    return getattr(smp, SMP_ARCHITECTURES[architecture]), True


def build_network(card: ModelCard) -> torch.nn.Module:
    """An untrained network of the card's architecture, encoder, bands and classes."""
    factory, takes_encoder = _factory(card.architecture)
    encoder = {"encoder_name": card.encoder, "encoder_weights": None} if takes_encoder else {}
    try:
        return factory(
            **encoder,
            in_channels=len(card.bands),
            classes=card.network_outputs,
            **dict(card.params),
        )
    except (KeyError, ValueError, TypeError) as err:
        raise ModelCardError(
            f"cannot build {card.architecture}"
            + (f" with encoder {card.encoder!r}" if takes_encoder else "")
            + f" and params {dict(card.params)}: {err}"
        ) from err


def save_model(
    path: str | os.PathLike[str], card: ModelCard, state_dict: Mapping[str, torch.Tensor]
) -> Path:
    """Write weights and card into one safetensors file (atomically)."""
    from safetensors.torch import save_file

    from geoseg.tiling.atomic import commit, create_temporary

    p = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    # An unpredictable temporary created without following links (readable like any file the
    # user creates: 0666 less the umask), renamed over the model file when complete.
    tmp = create_temporary(p)
    try:
        save_file(tensors, str(tmp), metadata={CARD_KEY: card_to_json(card)})
        commit(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p


def load_network(path: str | os.PathLike[str]) -> tuple[ModelCard, torch.nn.Module]:
    """Read a model file: its card and the network with its weights, in eval mode.

    Raises
    ------
    ModelCardError
        If the card is invalid or the weights do not fit the card's architecture.
    """
    from safetensors.torch import load_file

    card = read_card(path)
    net = build_network(card)
    state = load_file(str(path))
    _load_state(net, state, source=str(path))
    net.eval()
    return card, net


def _load_state(
    net: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    card: ModelCard | None = None,
) -> None:
    """Fill ``net`` with ``state``; a mismatch is one short line naming the first layers
    that differ (missing, unexpected, of another shape) and how many more do."""

    def more(names: list[str]) -> str:
        return f" (+{len(names) - 1} more)" if len(names) > 1 else ""

    def short(value: Any) -> str:
        if isinstance(value, list | tuple):
            return "[" + ",".join(short(v) for v in value) + "]"
        return str(value)

    want = net.state_dict()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shapes = [k for k in want if k in state and tuple(state[k].shape) != tuple(want[k].shape)]
    what = "the card's architecture"
    if card is not None:
        what += f" {card.architecture}" + (f"/{card.encoder}" if card.encoder else "")
        if card.params:
            what += " " + ",".join(f"{k}={short(v)}" for k, v in card.params.items())
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[0]}{more(missing)}")
        if unexpected:
            parts.append(f"unexpected {unexpected[0]}{more(unexpected)}")
        if shapes:
            k = shapes[0]
            parts.append(
                f"shape {k}: file {short(list(state[k].shape))} vs model "
                f"{short(list(want[k].shape))}{more(shapes)}"
            )
        raise ModelCardError(f"weights in {source!r} do not fit {what}: {'; '.join(parts)}")
    try:
        net.load_state_dict(dict(state), strict=True)
    except RuntimeError as err:  # not a key or shape: e.g. a dtype torch cannot copy
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise ModelCardError(f"weights in {source!r} do not fit {what}: {first}") from err


def import_state_dict(
    state_path: str | os.PathLike[str], card: ModelCard, out: str | os.PathLike[str]
) -> Path:
    """Turn a plain smp state dict (``.pth``/``.pt`` or ``.safetensors``) into a model file.

    The network is built from ``card`` (architecture, encoder, bands, classes and ``params``,
    e.g. ``encoder_depth`` and ``decoder_channels``), so a checkpoint of any settings, or a
    geoseg model file, imports when the card names them. ``.pth`` files are read with
    ``torch.load(weights_only=True)``: tensors only, no code. A checkpoint that wraps the
    state dict (``{"state_dict": ...}`` or ``{"model": ...}``) and keys prefixed ``model.``
    / ``module.`` (Lightning, DataParallel) are accepted.
    """
    import torch

    src = Path(state_path)
    if not src.is_file():
        raise ModelCardError(f"state dict {str(src)!r} does not exist")
    try:
        if src.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(src))
        else:
            obj = torch.load(str(src), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise ModelCardError(f"cannot read {str(src)!r} as a state dict: {err}") from err
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelCardError(f"{str(src)!r} does not hold a state dict of tensors")
    state = dict(obj)
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    net = build_network(card)
    _load_state(net, state, source=str(src), card=card)
    return save_model(out, card, net.state_dict())

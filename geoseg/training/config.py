"""Training configuration: what a run of :func:`geoseg.training.loop.train` does.

:class:`TrainConfig` holds every option of a run, validated when it is built, and converts
to and from plain mappings (YAML/JSON files, the model card's reproducibility record).
:meth:`TrainConfig.fingerprint` hashes the options a resumed run must share with the run it
continues; the others (epochs, patience, output, device ...) may change between sessions.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoseg.errors import ConfigError
from geoseg.models.bands import CANONICAL_BANDS
from geoseg.models.card import ClassInfo
from geoseg.models.registry import ARCHITECTURES
from geoseg.models.spectral import METHODS
from geoseg.tiling.grid import PixelWindow
from geoseg.training.chips import Augment, ValidationSplit
from geoseg.training.labels import ClassMap, LabelSource
from geoseg.training.losses import parse_loss_spec

__all__ = [
    "KEEP",
    "RESUMABLE_CHANGES",
    "SCHEDULES",
    "STORE_DTYPES",
    "TRAIN_PRECISIONS",
    "TrainConfig",
    "TrainingInput",
    "data_relative",
    "shared_data_dir",
]

SCHEDULES = ("onecycle", "cosine", "constant")
TRAIN_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
STORE_DTYPES = ("fp32", "fp16", "bf16")
KEEP = ("best", "last")

SHARED_DATA_ENV = "GEOSEG_SHARED_DATA"


def shared_data_dir() -> Path:
    """The shared data root: ``$GEOSEG_SHARED_DATA`` or ``../shared/data`` beside the repository."""
    env = os.environ.get(SHARED_DATA_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"


def data_relative(path: str, root: str | os.PathLike[str] | None = None) -> str | None:
    """``path`` relative to ``root`` (default :func:`shared_data_dir`) when it lies under it.

    Model cards record training data this way, so they name the same files on every machine
    that has the shared data, wherever it is mounted. ``None`` when ``path`` lies elsewhere
    (or is a URL or GDAL virtual path).
    """
    if "://" in path or path.startswith("/vsi"):
        return None
    base = Path(root) if root is not None else shared_data_dir()
    try:
        return Path(path).resolve().relative_to(base.resolve()).as_posix()
    except (ValueError, OSError):
        return None


# Config fields that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = frozenset(
    {
        "epochs",
        "patience",
        "keep",
        "output",
        "checkpoint_dir",
        "resume",
        "device",
        "precision",
        "threads",
        "validate_every",
        "store_dtype",
        "command",
        "name",
        "description",
        "compare",
        "time_limit_min",
        "test",
        "scores",
        "threshold_class",
    }
)

SCORE_KEYS = ("merge", "relaxed_px", "objects")


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainingInput:
    """One image and its labels (a class raster on its grid, or a vector file)."""

    image: str
    labels: LabelSource

    def __post_init__(self) -> None:
        object.__setattr__(self, "image", os.fspath(self.image))
        if isinstance(self.labels, str | os.PathLike):
            object.__setattr__(self, "labels", LabelSource(path=os.fspath(self.labels)))
        if not isinstance(self.labels, LabelSource):
            raise ConfigError(f"labels of {self.image!r} must be a path or a LabelSource")


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainConfig:
    """Everything a training run needs; serialisable with :meth:`to_dict` / :meth:`from_dict`.

    Parameters
    ----------
    inputs
        Image/label pairs.
    class_map
        Classes (background first, with colours) and how label values map to them.
    bands
        Input band roles in model input order (``("red", "green", "blue")``).
    output
        Path of the model file to write.
    band_numbers
        Explicit 1-based band numbers (same for every input); ``None`` resolves ``bands``
        from each image's band descriptions / ``sensor`` / band order.
    architecture, encoder, params
        Registry architecture, smp encoder and extra smp keyword arguments
        (e.g. ``{"decoder_channels": [128, 64, 32, 16, 16]}``).
    chip_size, batch_size, epochs, steps_per_epoch
        Chips are ``chip_size`` square; an epoch is ``steps_per_epoch`` batches.
    lr, weight_decay, schedule
        AdamW peak learning rate and weight decay; ``onecycle`` (warm-up then cosine
        annealing), ``cosine`` (cosine decay to 1 % of ``lr``) or ``constant``.
    loss, class_weights
        Loss spec for :func:`~geoseg.training.losses.build_loss` and optional per-class weights.
    balance, min_labelled, augment
        Fraction of class-balanced chips; minimum labelled fraction of a chip; augmentations.
    validation, validate_every, patience
        Held-out split; validate every n epochs; stop after ``patience`` validations without
        improvement, a mean IoU at least 0.001 above the best (``None``: never stop early).
    keep
        Which epoch's weights the model file gets: ``"best"`` (highest validation score) or
        ``"last"``. With ``"last"`` the validation set chooses nothing, so its scores are an
        unbiased estimate (compare it with methods tuned on the training data only).
    seed
        Seeds network initialisation, chip draws and augmentation.
    device, precision, threads
        ``auto``/``cpu``/``cuda[:N]``; ``auto`` (bf16 on capable CPUs, fp16 on CUDA),
        ``fp32``, ``bf16``, ``fp16``; torch CPU threads (0: torch's default).
    tile_size, overlap
        The tile plan written to the card and used for validation.
    resolution_m
        Ground sampling distance for the card; ``None`` reads it from the first image.
    mean, std
        Fixed normalisation; ``None`` computes it from the training pixels.
    checkpoint_dir, resume
        Where per-epoch checkpoints go; whether to resume from one found there.
    store_dtype
        Floating-point type of the weights in the model file (``fp16`` halves its size).
    command
        How the run was started (recorded in the card for reproducibility).
    scores
        Scores beyond the pixel confusion matrix that ``geoseg train`` records for the
        held-out and test data (:func:`geoseg.training.output_scores.score_outputs`):
        ``merge`` (``{field_boundary: crops}``: predictions of a class scored as another),
        ``relaxed_px`` (relaxed precision/recall/F1 with that slack, e.g. 3 for roads),
        ``objects`` (polygon matching at IoU >= 0.5, for polygon labels).
    threshold_class
        A class (of a two-class model) whose decision threshold ``geoseg train`` chooses
        on the held-out data after training (the best IoU) and folds into the network's
        last bias (:mod:`geoseg.training.threshold`), so the argmax applies it. The card
        records it (``training.threshold``). The held-out scores then include that choice.
    init_from
        A model file whose weights start the network (fine-tuning), instead of a random
        initialisation; its card must describe the same network (architecture, encoder,
        params, bands, classes). Recorded in the card with the rest of the config.
    init_encoder_from
        A model file whose *encoder* weights start the network's encoder (transfer from
        another task on the same imagery, e.g. crop fields to roads); the decoder and head
        start random. Its card must name the same encoder and bands. Not with ``init_from``.
    time_limit_min
        Wall-clock budget in minutes (``None``: none): no epoch starts that would, at the
        pace of the last one, end after it. The schedule still spans ``epochs``, so set
        ``epochs`` to what fits and keep this as a guard on a busy machine.
    test
        Test inputs, never trained on nor used to choose anything: ``geoseg train`` scores
        the kept weights on them after training, into the card (``training.test``).
    compare
        Spectral index methods (``("ndwi", "mndwi")``, all finding one class of the model)
        to compare the trained model with on the held-out data. The weights do not depend
        on it: ``geoseg train`` scores them after training, each index with Otsu's threshold
        and with the fixed threshold that does best on the training area
        (:func:`geoseg.training.scoring.score_held_out`).
    """

    inputs: tuple[TrainingInput, ...]
    class_map: ClassMap
    bands: tuple[str, ...]
    output: str
    name: str = "model"
    description: str = ""
    band_numbers: tuple[int, ...] | None = None
    sensor: str | None = None
    architecture: str = "unet"
    encoder: str = "resnet18"
    params: Mapping[str, Any] = field(default_factory=dict)
    chip_size: int = 256
    batch_size: int = 8
    epochs: int = 20
    steps_per_epoch: int = 100
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "onecycle"
    loss: str = "ce+dice"
    class_weights: tuple[float, ...] | None = None
    balance: float = 0.5
    min_labelled: float = 0.05
    augment: Augment | None = field(default_factory=Augment)
    validation: ValidationSplit = field(default_factory=ValidationSplit)
    validate_every: int = 1
    patience: int | None = None
    keep: str = "best"
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    threads: int = 0
    tile_size: int = 512
    overlap: int = 64
    resolution_m: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    checkpoint_dir: str | None = None
    resume: bool = True
    store_dtype: str = "fp32"
    command: str | None = None
    compare: tuple[str, ...] = ()
    time_limit_min: float | None = None
    test: tuple[TrainingInput, ...] = ()
    init_from: str | None = None
    init_encoder_from: str | None = None
    scores: Mapping[str, Any] = field(default_factory=dict)
    threshold_class: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "test", tuple(self.test))
        trained = {os.path.realpath(i.image) for i in self.inputs}
        leaked = [t.image for t in self.test if os.path.realpath(t.image) in trained]
        if leaked:
            raise ConfigError(
                f"test image {leaked[0]!r} is also a training input; keep test images out of inputs"
            )
        for key in ("init_from", "init_encoder_from"):
            if getattr(self, key) is not None:
                object.__setattr__(self, key, os.fspath(getattr(self, key)))
        if self.init_from is not None and self.init_encoder_from is not None:
            raise ConfigError(
                "init_from and init_encoder_from both start the network: give one of them"
            )
        _check_scores(self.scores, self.class_map)
        if self.threshold_class is not None:
            names = self.class_map.class_names
            if self.threshold_class not in names[1:] or len(names) != 2:
                raise ConfigError(
                    f"threshold_class {self.threshold_class!r} must be the class of a "
                    f"two-class model (classes: {', '.join(names)})"
                )
        if self.time_limit_min is not None and not self.time_limit_min > 0:
            raise ConfigError(f"time_limit_min {self.time_limit_min} must be > 0 (or None)")
        object.__setattr__(self, "bands", tuple(self.bands))
        object.__setattr__(self, "output", os.fspath(self.output))
        if self.checkpoint_dir is not None:
            object.__setattr__(self, "checkpoint_dir", os.fspath(self.checkpoint_dir))
        if not self.inputs:
            raise ConfigError("no training inputs; give at least one (image, labels) pair")
        if not self.bands:
            raise ConfigError("no input bands; give band roles, e.g. red,green,blue")
        unknown = [b for b in self.bands if b not in CANONICAL_BANDS]
        if unknown:
            raise ConfigError(
                f"unknown band role {unknown[0]!r}; valid: {', '.join(CANONICAL_BANDS)}"
            )
        if self.band_numbers is not None:
            object.__setattr__(self, "band_numbers", tuple(self.band_numbers))
            if len(self.band_numbers) != len(self.bands) or min(self.band_numbers) < 1:
                raise ConfigError(
                    f"band numbers {list(self.band_numbers)} must be {len(self.bands)} "
                    f"1-based numbers, one per band role ({', '.join(self.bands)})"
                )
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(
                f"unknown architecture {self.architecture!r}; valid: {', '.join(ARCHITECTURES)}"
            )
        for what, size in (("chip size", self.chip_size), ("tile size", self.tile_size)):
            if size < 32 or size % 32:
                raise ConfigError(
                    f"{what} {size} is not a positive multiple of 32; "
                    f"try {max(32, round(size / 32) * 32)}"
                )
        if not 0 <= self.overlap <= self.tile_size // 2:
            raise ConfigError(f"overlap {self.overlap} must be in [0, {self.tile_size // 2}]")
        if self.batch_size < 2:
            raise ConfigError(f"batch size {self.batch_size} < 2; batch norm needs at least 2")
        for what, n in (
            ("epochs", self.epochs),
            ("steps per epoch", self.steps_per_epoch),
            ("validate_every", self.validate_every),
        ):
            if n < 1:
                raise ConfigError(f"{what} must be >= 1, got {n}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience {self.patience} must be >= 1 (or None: no early stop)")
        if self.keep not in KEEP:
            raise ConfigError(f"keep={self.keep!r}; valid: {', '.join(KEEP)}")
        if self.keep == "last" and self.patience is not None:
            raise ConfigError("keep='last' with patience: early stopping needs keep='best'")
        if not self.lr > 0 or not self.weight_decay >= 0:
            raise ConfigError(f"lr {self.lr} must be > 0 and weight decay >= 0")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        parse_loss_spec(self.loss)
        n = self.class_map.n_classes
        if self.class_weights is not None:
            object.__setattr__(self, "class_weights", tuple(float(w) for w in self.class_weights))
            if len(self.class_weights) != n:
                raise ConfigError(
                    f"{len(self.class_weights)} class weights for {n} classes; "
                    f"give one per class, background first"
                )
        if self.precision not in TRAIN_PRECISIONS:
            raise ConfigError(f"precision {self.precision!r}; valid: {', '.join(TRAIN_PRECISIONS)}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device {self.device!r}; use auto, cpu, cuda or cuda:N")
        if self.store_dtype not in STORE_DTYPES:
            raise ConfigError(f"store dtype {self.store_dtype!r}; valid: {', '.join(STORE_DTYPES)}")
        if (self.mean is None) != (self.std is None):
            raise ConfigError("give both mean and std, or neither (computed from the data)")
        if self.mean is not None and self.std is not None:
            object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
            object.__setattr__(self, "std", tuple(float(v) for v in self.std))
            if len(self.mean) != len(self.bands) or len(self.std) != len(self.bands):
                raise ConfigError(f"give one mean and one std per band ({len(self.bands)})")
            if min(self.std) <= 0:
                raise ConfigError(f"every std must be positive: {list(self.std)}")
        if self.threads < 0:
            raise ConfigError(f"threads {self.threads} must be >= 0 (0: torch's default)")
        compare = (self.compare,) if isinstance(self.compare, str) else tuple(self.compare)
        object.__setattr__(self, "compare", compare)
        _check_compare(self.compare, self.class_map)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; :meth:`from_dict` reads it back."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if name in ("inputs", "test"):
                value = [{"image": i.image, "labels": i.labels.to_dict()} for i in value]
            elif name == "class_map":
                value = value.to_dict()
            elif name == "augment":
                value = None if value is None else _augment_dict(value)
            elif name == "validation":
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = json.loads(json.dumps(dict(value)))
            out[name] = value
        # Fields newer than the shipped cards, written out only when set: configurations
        # recorded before them keep their fingerprint, so their checkpoints still resume.
        for name, unset in (
            ("init_from", None),
            ("init_encoder_from", None),
            ("time_limit_min", None),
            ("test", []),
            ("scores", {}),
            ("threshold_class", None),
        ):
            if out[name] == unset:
                del out[name]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping (a parsed YAML/JSON file).

        ``inputs`` is a list of ``{image, labels}`` where ``labels`` is a path or a mapping
        of :class:`~geoseg.training.labels.LabelSource` fields; ``class_map`` holds
        ``classes`` (``[{name, color}]``), ``values`` and ``unmapped``; ``validation``
        holds :class:`~geoseg.training.chips.ValidationSplit` fields with ``region`` as
        ``[row, col, height, width]``.

        Raises
        ------
        ConfigError
            On unknown or malformed fields.
        """
        raw = dict(data)
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(
                f"unknown training option {unknown[0]!r}; valid: "
                f"{', '.join(cls.__dataclass_fields__)}"
            )
        try:
            for key in ("inputs", "test"):
                if key in raw:
                    raw[key] = tuple(
                        TrainingInput(
                            image=i["image"],
                            labels=LabelSource(**i["labels"])
                            if isinstance(i["labels"], Mapping)
                            else LabelSource(path=i["labels"]),
                        )
                        for i in raw[key]
                    )
            cm = dict(raw["class_map"])
            raw["class_map"] = ClassMap(
                classes=tuple(ClassInfo(**c) for c in cm.pop("classes")), **cm
            )
            if raw.get("augment") is not None:
                raw["augment"] = Augment(**raw["augment"])
            if "validation" in raw:
                val = dict(raw["validation"])
                if val.get("region") is not None:
                    r, c, h, w = val["region"]
                    val["region"] = PixelWindow(row_off=r, col_off=c, height=h, width=w)
                val["tiles"] = tuple(val.get("tiles", ()))
                raw["validation"] = ValidationSplit(**val)
            for key in ("bands", "band_numbers", "class_weights", "mean", "std"):
                if raw.get(key) is not None:
                    raw[key] = tuple(raw[key])
            return cls(**raw)
        except KeyError as err:
            raise ConfigError(f"training config lacks {err.args[0]!r}") from err
        except (TypeError, ValueError) as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(f"malformed training config: {err}") from err

    def fingerprint(self) -> str:
        """Hash of the options a resumed run must share with the run it continues."""
        body = {k: v for k, v in self.to_dict().items() if k not in RESUMABLE_CHANGES}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _check_scores(scores: Mapping[str, Any], class_map: ClassMap) -> None:
    """``scores`` holds known keys with values that fit the classes."""
    bad = sorted(set(scores) - set(SCORE_KEYS))
    if bad:
        raise ConfigError(f"scores: unknown key {bad[0]!r}; valid: {', '.join(SCORE_KEYS)}")
    names = class_map.class_names
    for src, dst in dict(scores.get("merge") or {}).items():
        if src not in names[1:] or dst not in names or src == dst:
            raise ConfigError(
                f"scores.merge {src}: {dst}: both must be distinct classes ({', '.join(names)})"
            )
    px = scores.get("relaxed_px")
    if px is not None and (not isinstance(px, int) or px < 0):
        raise ConfigError(f"scores.relaxed_px {px!r} must be a whole number of pixels >= 0")
    if not isinstance(scores.get("objects", False), bool):
        raise ConfigError(f"scores.objects {scores['objects']!r} must be true or false")


def _check_compare(compare: tuple[str, ...], class_map: ClassMap) -> None:
    """Index methods that exist and all find one class of the model."""
    for name in compare:
        if name not in METHODS:
            raise ConfigError(
                f"compare: unknown index method {name!r}; valid: {', '.join(METHODS)} "
                f"(without a threshold: it is chosen on the training area)"
            )
    found = sorted({METHODS[name].class_name for name in compare})
    if len(found) > 1:
        raise ConfigError(
            f"compare: {', '.join(compare)} find different classes ({', '.join(found)}); "
            f"compare methods that find one class"
        )
    if found and found[0] not in class_map.class_names[1:]:
        raise ConfigError(
            f"compare: {', '.join(compare)} find {found[0]}, which is not a class of the model "
            f"({', '.join(class_map.class_names[1:])})"
        )


def _augment_dict(spec: Augment) -> dict[str, Any]:
    """Augment's fields; ``scale`` only when set, so configurations recorded before it
    existed keep their fingerprint (their checkpoints still resume)."""
    out = _fields(spec)
    if spec.scale is None:
        del out["scale"], out["scale_prob"]
    else:
        out["scale"] = list(spec.scale)
    return out


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}

"""Training an smp network on image/label pairs into a self-describing geoseg model file.

:func:`train` runs the whole recipe for a :class:`TrainConfig`:

1. open the inputs, resolve their bands, hold out validation tiles or a region;
2. stream once over the training pixels: per-band mean/std (for the card) and where each
   class is (for class-balanced chips);
3. train with AdamW and a one-cycle or cosine schedule on random / class-balanced chips,
   under bf16 autocast on capable CPUs or fp16 autocast + gradient scaling on CUDA, with
   channels_last memory and fp32 master weights;
4. after each epoch, predict the held-out windows with the real tiled inference
   (:class:`~geoseg.models.predictor.TorchSegmenter`, blocks and blending as in
   ``geoseg run``) and score them: per-class IoU, F1, precision, recall;
5. keep the best epoch (mean IoU of the non-background classes), stop early when it has not
   improved for ``patience`` validations, and write the model file with its card; or, with
   ``keep="last"``, keep the last epoch, so the validation scores choose nothing.

With a ``checkpoint_dir`` every epoch ends with a checkpoint (model, optimizer, schedule,
epoch, RNG state, history); calling :func:`train` again with the same configuration resumes
after the last finished epoch. Checkpoints are read with ``torch.load(weights_only=True)``:
tensors and plain containers only, no code. Chips of epoch ``e`` are drawn from a generator
seeded with ``(seed, e)``, so a resumed run draws the same chips as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geoseg.errors import ConfigError
from geoseg.models.bands import band_roles, resolve_bands
from geoseg.models.card import ModelCard
from geoseg.tiling.grid import PixelWindow
from geoseg.tiling.io import SceneInfo, read_scene_info, read_window
from geoseg.training.chips import (
    ChipLoader,
    ChipSampler,
    RunningStats,
    SceneScan,
    SplitPlan,
    TrainScene,
    plan_split,
    scan_scene,
)
from geoseg.training.config import (
    RESUMABLE_CHANGES,
    SCHEDULES,
    SHARED_DATA_ENV,
    STORE_DTYPES,
    TRAIN_PRECISIONS,
    TrainConfig,
    TrainingInput,
    data_relative,
    shared_data_dir,
)
from geoseg.training.labels import IGNORE_INDEX, LabelReader
from geoseg.training.losses import build_loss
from geoseg.training.metrics import SegmentationMetrics, compute_metrics, confusion_matrix

if TYPE_CHECKING:
    import torch

__all__ = [
    "SCHEDULES",
    "STORE_DTYPES",
    "TRAIN_PRECISIONS",
    "EpochRecord",
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "TrainingInput",
    "train",
]

CHECKPOINT_FORMAT = "geoseg-checkpoint/1"
LAST = "last.pt"
BEST = "best.safetensors"
# A validation score must beat the best by this much to count as an improvement: with bf16
# inference the mean IoU of two epochs whose weights differ only by rounding (lr 1e-12)
# differed by 1.6e-5 and 1.6e-4 here, which would otherwise reset early stopping's patience.
MIN_GAIN = 1e-3


@dataclass(frozen=True, kw_only=True, slots=True)
class EpochRecord:
    """What one epoch did."""

    epoch: int
    loss: float
    lr: float
    seconds: float
    validation: SegmentationMetrics | None = None

    @property
    def score(self) -> float | None:
        """Model-selection score: mean IoU of the non-background classes."""
        if self.validation is None:
            return None
        v = self.validation.mean_iou_foreground
        return None if math.isnan(v) else v

    def describe(self) -> str:
        """One line for people: the loss and, when validated, mean and per-class IoU / F1.

        ``loss 0.3120 val mIoU 0.612 (water IoU 0.700 F1 0.824, crops IoU 0.524 F1 0.688)``;
        the classes are those of the score (background left out), undefined values ``n/a``.
        """
        text = f"loss {self.loss:.4f}"
        v = self.validation
        if v is None:
            return text
        per_class = ", ".join(f"{c.name} IoU {_fmt(c.iou)} F1 {_fmt(c.f1)}" for c in v.classes[1:])
        return f"{text} val mIoU {_fmt(v.mean_iou_foreground)} ({per_class})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "loss": round(self.loss, 6),
            "lr": self.lr,
            "seconds": round(self.seconds, 2),
            "validation": None if self.validation is None else self.validation.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EpochRecord:
        val = data.get("validation")
        return cls(
            epoch=int(data["epoch"]),
            loss=float(data["loss"]),
            lr=float(data["lr"]),
            seconds=float(data["seconds"]),
            validation=None if val is None else SegmentationMetrics.from_dict(val),
        )


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainProgress:
    """A progress report.

    ``stage`` is ``scan`` (reading statistics; ``step`` of ``steps`` blocks), ``train``
    (``step`` of ``steps`` batches of ``epoch``, with the batch ``loss`` and ``lr``),
    ``validate`` (``step`` of ``steps`` blocks), ``epoch`` (``record`` holds the finished
    epoch; its checkpoint is written) or ``done``.
    """

    stage: str
    epoch: int
    epochs: int
    step: int = 0
    steps: int = 0
    loss: float | None = None
    lr: float | None = None
    record: EpochRecord | None = None
    message: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainResult:
    """The outcome of :func:`train`."""

    model_path: Path
    card: ModelCard
    history: tuple[EpochRecord, ...]
    best_epoch: int
    best_score: float | None
    stopped_early: bool
    resumed_from: int | None
    wall_time_s: float
    steps: int

    def describe(self) -> str:
        """One line for people: which epoch the model file holds, its score, the time."""
        score = "no validation score" if self.best_score is None else f"score {self.best_score:.3f}"
        best = self.card.training.get("kept") == "best" and self.best_score is not None
        which = "best" if best else "last"
        return f"{which} epoch {self.best_epoch}, {score}, {self.wall_time_s / 60:.1f} min"


# --- setup ---------------------------------------------------------------------------------


def _open_inputs(config: TrainConfig) -> tuple[list[SceneInfo], list[TrainScene]]:
    infos, scenes = [], []
    for item in config.inputs:
        info = read_scene_info(item.image)
        roles = band_roles(info.descriptions, sensor=config.sensor)
        bands = resolve_bands(
            config.bands,
            count=info.count,
            roles=roles,
            explicit=config.band_numbers,
            model_name=f"model {config.name!r}",
        )
        labels = LabelReader(item.labels, image=info, class_map=config.class_map)
        infos.append(info)
        scenes.append(TrainScene(path=info.path, bands=bands, labels=labels))
    return infos, scenes


def _resolution_m(info: SceneInfo) -> float | None:
    if info.crs is None:
        return None
    if info.crs.is_projected:
        factor = info.crs.linear_units_factor[1]
        return round(float(info.res[0] * factor), 6)
    return round(float(info.res[1] * 111_320.0), 3)  # degrees of latitude, approximately


def _cell_size(chip: int, infos: Sequence[SceneInfo]) -> int:
    """Class-count cells: an eighth of a chip, coarser for huge images (<= ~4M cells)."""
    largest = max(i.width * i.height for i in infos)
    return max(8, chip // 8, math.ceil(math.sqrt(largest / 4e6)))


def _scan(
    config: TrainConfig,
    infos: Sequence[SceneInfo],
    scenes: Sequence[TrainScene],
    plan: SplitPlan,
    emit: Callable[[TrainProgress], None],
) -> tuple[list[SceneScan], RunningStats, np.ndarray]:
    n = config.class_map.n_classes
    cell = _cell_size(config.chip_size, infos)
    block = max(cell, 1024 // cell * cell)  # as scan_scene rounds it: whole cells per block
    windows = [(a.index, infos[a.index].window, a) for a in plan.train]
    val_windows = [(i, w, None) for i, w in plan.validation]
    total = sum(
        math.ceil(w.height / block) * math.ceil(w.width / block)
        for _, w, _ in [*windows, *val_windows]
    )
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        emit(TrainProgress(stage="scan", epoch=0, epochs=config.epochs, step=done, steps=total))

    scans, stats = [], RunningStats(len(config.bands))
    for index, window, area in windows:
        scan = scan_scene(
            scenes[index].path,
            bands=scenes[index].bands,
            labels=scenes[index].labels,
            n_classes=n,
            cell=cell,
            window=window,
            area=area,
            stats=config.mean is None,
            block=block,
            on_block=tick,
        )
        scans.append(scan)
        if scan.stats is not None:
            stats.merge(scan.stats)
    val_pixels = np.zeros(n, dtype=np.int64)
    for index, window, _ in val_windows:
        scan = scan_scene(
            scenes[index].path,
            bands=scenes[index].bands,
            labels=scenes[index].labels,
            n_classes=n,
            cell=cell,
            window=window,
            stats=False,
            block=block,
            on_block=tick,
        )
        val_pixels += scan.class_pixels
    train_pixels = sum((s.class_pixels for s in scans), np.zeros(n, dtype=np.int64))
    names = config.class_map.class_names
    if not train_pixels[1:].any():
        raise ConfigError(
            f"the training area holds no labelled pixel of {', '.join(names[1:])}; "
            f"check the class map and the labels"
        )
    if plan.validation and not val_pixels[1:].any():
        raise ConfigError(
            f"the validation split holds no labelled pixel of {', '.join(names[1:])}; "
            f"hold out another tile or region"
        )
    if config.mean is None and stats.count == 0:
        raise ConfigError("the training images hold no valid pixel to compute mean/std from")
    return scans, stats, np.stack([train_pixels, val_pixels])


def _train_dtype(precision: str, device: str) -> torch.dtype | None:
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


def _precision_name(dtype: torch.dtype | None) -> str:
    import torch

    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def _lr_factor(schedule: str, total: int) -> Callable[[int], float]:
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


# --- validation ----------------------------------------------------------------------------


def _validate(
    network: torch.nn.Module,
    card: ModelCard,
    scenes: Sequence[TrainScene],
    windows: Sequence[tuple[int, PixelWindow]],
    *,
    device: str,
    precision: str,
    batch_size: int,
    on_block: Callable[[int, int], None],
) -> SegmentationMetrics:
    """Score the held-out windows with the tiled, blended inference of ``geoseg run``."""
    from geoseg.config import InferenceOptions
    from geoseg.models.predictor import TorchSegmenter
    from geoseg.tiling.grid import TilingSpec, plan_blocks

    seg = TorchSegmenter(
        card,
        network,
        options=InferenceOptions(device=device, precision=precision, batch_size=batch_size),
    )
    spec = TilingSpec(tile=card.tile_size, overlap=card.overlap, block=max(2048, card.tile_size))
    n = len(card.classes)
    cm = np.zeros((n, n), dtype=np.int64)
    jobs = [
        (index, win, blk)
        for index, win in windows
        for blk in plan_blocks(win.height, win.width, spec=spec)
    ]
    for done, (index, win, blk) in enumerate(jobs, start=1):
        scene = scenes[index]
        read = _shift(blk.read, win)
        image, valid = read_window(scene.path, read, bands=scene.bands)
        probs = seg.predict(image, valid)
        rows, cols = blk.core_in_read
        pred = probs[:, rows, cols].argmax(axis=0)
        labels = scene.labels.read(_shift(blk.core, win))
        labels[~valid[rows, cols]] = IGNORE_INDEX
        cm += confusion_matrix(labels, pred, n_classes=n)
        on_block(done, len(jobs))
    network.train()
    return compute_metrics(cm, card.class_names)


def _shift(window: PixelWindow, origin: PixelWindow) -> PixelWindow:
    return replace(
        window, row_off=window.row_off + origin.row_off, col_off=window.col_off + origin.col_off
    )


# --- checkpoints ---------------------------------------------------------------------------


def _save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.partial")
    torch.save(dict(state), tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, config: TrainConfig) -> dict[str, Any]:
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


def _cast_state(state: Mapping[str, torch.Tensor], store_dtype: str) -> dict[str, torch.Tensor]:
    import torch

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[store_dtype]
    return {
        k: v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().to("cpu")
        for k, v in state.items()
    }


# --- the training loop ---------------------------------------------------------------------


def train(
    config: TrainConfig, *, progress: Callable[[TrainProgress], None] | None = None
) -> TrainResult:
    """Train a model and write it, with its card, to ``config.output``.

    Parameters
    ----------
    config
        The run.
    progress
        Called with a :class:`TrainProgress` at every scan block, batch, validation block
        and epoch. An exception it raises stops training (after the last checkpoint).

    Raises
    ------
    ConfigError
        On inconsistent inputs (bands, labels, split), or a checkpoint of another run.
    SceneReadError
        If an input cannot be read.
    """
    import torch

    from geoseg.models.predictor import resolve_device
    from geoseg.models.registry import build_network, save_model

    start = time.perf_counter()
    emit = progress or (lambda _event: None)
    device = resolve_device(config.device)
    amp_dtype = _train_dtype(config.precision, device)
    precision = _precision_name(amp_dtype)
    if config.threads and not device.startswith("cuda"):
        torch.set_num_threads(config.threads)

    ckpt_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else None
    ckpt: dict[str, Any] | None = None
    if ckpt_dir is not None and config.resume and (ckpt_dir / LAST).is_file():
        ckpt = _load_checkpoint(ckpt_dir / LAST, config)  # fails fast on another run's

    infos, scenes = _open_inputs(config)
    plan = plan_split(
        config.validation, [(i.height, i.width) for i in infos], chip=config.chip_size
    )
    scans, stats, pixels = _scan(config, infos, scenes, plan, emit)
    mean = config.mean if config.mean is not None else stats.mean
    std = config.std if config.std is not None else stats.std
    resolution = config.resolution_m if config.resolution_m is not None else _resolution_m(infos[0])
    card = ModelCard(
        name=config.name,
        architecture=config.architecture,
        encoder=config.encoder,
        bands=config.bands,
        mean=tuple(mean),
        std=tuple(std),
        classes=config.class_map.classes,
        tile_size=config.tile_size,
        overlap=config.overlap,
        resolution_m=resolution,
        sensor=config.sensor,
        params=dict(config.params),
        description=config.description,
    )

    torch.manual_seed(config.seed)
    net = build_network(card).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total_steps = config.epochs * config.steps_per_epoch
    factor = _lr_factor(config.schedule, total_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    cuda = device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and amp_dtype == torch.float16)
    loss_fn = build_loss(
        config.loss, n_classes=len(card.classes), class_weights=config.class_weights
    ).to(device)
    sampler = ChipSampler(plan.train, chip=config.chip_size, scans=scans, balance=config.balance)
    loader = ChipLoader(
        scenes,
        sampler,
        mean=mean,
        std=std,
        augment_spec=config.augment,
        min_labelled=config.min_labelled,
    )

    history: list[EpochRecord] = []
    best_epoch, best_score, stopped, elapsed = 0, None, False, 0.0
    best_state: dict[str, torch.Tensor] | None = None
    first_epoch, resumed_from = 1, None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if ckpt is None:  # a fresh start must not pick up an earlier run's best weights
            (ckpt_dir / BEST).unlink(missing_ok=True)
        else:
            net.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            # The schedule is a closed form of the step: a changed epoch count simply
            # continues on the new curve from the current step.
            for group, base in zip(opt.param_groups, sched.base_lrs, strict=True):
                group["lr"] = base * factor(sched.last_epoch)
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            torch.set_rng_state(ckpt["torch_rng"])
            if cuda and ckpt.get("cuda_rng"):
                torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
            history = [EpochRecord.from_dict(r) for r in json.loads(ckpt["history"])]
            best_epoch, stopped = int(ckpt["best_epoch"]), bool(ckpt["stopped"])
            best_score = None if ckpt["best_score"] is None else float(ckpt["best_score"])
            elapsed = float(ckpt["elapsed_s"])
            first_epoch = resumed_from = int(ckpt["epoch"])
            first_epoch += 1

    run_start = start - elapsed  # wall time includes setup, summed over resumed sessions
    for epoch in range(first_epoch, config.epochs + 1):
        if stopped:
            break
        t_epoch = time.perf_counter()
        rng = np.random.default_rng([config.seed, epoch])
        net.train()
        losses = []
        for step in range(1, config.steps_per_epoch + 1):
            x, y = loader.batch(rng, config.batch_size)
            xt = torch.from_numpy(x).to(device).contiguous(memory_format=torch.channels_last)
            yt = torch.from_numpy(y).to(device)
            with torch.autocast(
                device.split(":")[0], dtype=amp_dtype, enabled=amp_dtype is not None
            ):
                logits = net(xt)
            loss = loss_fn(logits.float(), yt)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            lr = opt.param_groups[0]["lr"]
            sched.step()
            losses.append(float(loss.detach()))
            emit(
                TrainProgress(
                    stage="train",
                    epoch=epoch,
                    epochs=config.epochs,
                    step=step,
                    steps=config.steps_per_epoch,
                    loss=losses[-1],
                    lr=lr,
                )
            )
        metrics = None
        if plan.validation and (epoch % config.validate_every == 0 or epoch == config.epochs):

            def on_block(done: int, total: int, epoch: int = epoch) -> None:
                emit(
                    TrainProgress(
                        stage="validate", epoch=epoch, epochs=config.epochs, step=done, steps=total
                    )
                )

            metrics = _validate(
                net,
                card,
                scenes,
                plan.validation,
                device=device,
                precision=precision,
                batch_size=config.batch_size,
                on_block=on_block,
            )
        record = EpochRecord(
            epoch=epoch,
            loss=float(np.mean(losses)),
            lr=float(opt.param_groups[0]["lr"]),
            seconds=time.perf_counter() - t_epoch,
            validation=metrics,
        )
        history.append(record)
        score = record.score
        improved = (
            config.keep == "last"
            or not plan.validation
            or (score is not None and (best_score is None or score > best_score + MIN_GAIN))
        )
        if improved:
            best_epoch, best_score = epoch, score
            if ckpt_dir is not None:
                save_model(ckpt_dir / BEST, card, net.state_dict())
            else:
                best_state = {
                    k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()
                }
        if config.patience is not None and plan.validation:
            waiting = [r for r in history if r.epoch > best_epoch and r.validation is not None]
            stopped = len(waiting) >= config.patience
        if ckpt_dir is not None:
            _save_checkpoint(
                ckpt_dir / LAST,
                {
                    "format": CHECKPOINT_FORMAT,
                    "fingerprint": config.fingerprint(),
                    "config": json.dumps(config.to_dict()),
                    "epoch": epoch,
                    "model": net.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if cuda else None,
                    "history": json.dumps([r.to_dict() for r in history]),
                    "best_epoch": best_epoch,
                    "best_score": best_score,
                    "stopped": stopped,
                    "elapsed_s": time.perf_counter() - run_start,
                },
            )
        emit(TrainProgress(stage="epoch", epoch=epoch, epochs=config.epochs, record=record))

    wall = time.perf_counter() - run_start
    if best_state is None:
        if ckpt_dir is not None and (ckpt_dir / BEST).is_file():
            from safetensors.torch import load_file

            best_state = load_file(str(ckpt_dir / BEST))
        else:
            best_state = dict(net.state_dict())
    done_epochs = history[-1].epoch if history else 0
    summary = _summary(
        config,
        infos,
        plan,
        pixels,
        history=history,
        best_epoch=best_epoch,
        stopped=stopped,
        wall=wall,
        device=device,
        precision=precision,
    )
    final = card.with_training(**summary)
    path = save_model(config.output, final, _cast_state(best_state, config.store_dtype))
    emit(TrainProgress(stage="done", epoch=done_epochs, epochs=config.epochs, message=str(path)))
    return TrainResult(
        model_path=path,
        card=final,
        history=tuple(history),
        best_epoch=best_epoch,
        best_score=best_score,
        stopped_early=stopped,
        resumed_from=resumed_from,
        wall_time_s=wall,
        steps=done_epochs * config.steps_per_epoch,
    )


def _summary(
    config: TrainConfig,
    infos: Sequence[SceneInfo],
    plan: SplitPlan,
    pixels: np.ndarray,
    *,
    history: Sequence[EpochRecord],
    best_epoch: int,
    stopped: bool,
    wall: float,
    device: str,
    precision: str,
) -> dict[str, Any]:
    import segmentation_models_pytorch as smp
    import torch

    import geoseg

    root = shared_data_dir()
    under_root = False

    def portable(path: str) -> str:
        nonlocal under_root
        rel = data_relative(path, root)
        under_root |= rel is not None
        return path if rel is None else rel

    def portable_input(item: Mapping[str, Any]) -> dict[str, Any]:
        labels = item["labels"]
        return {
            "image": portable(item["image"]),
            "labels": {**labels, "path": portable(labels["path"])},
        }

    held = {i: w for i, w in plan.validation}
    areas = {a.index: a for a in plan.train}
    recorded = config.to_dict()
    recorded["inputs"] = [portable_input(i) for i in recorded["inputs"]]
    data = []
    for i, (item, info) in enumerate(zip(recorded["inputs"], infos, strict=True)):
        entry: dict[str, Any] = {**item, "size": [info.height, info.width]}
        if i in held and i not in areas:
            entry["use"] = "validation (whole tile held out)"
        elif i in held:
            w = held[i]
            entry["use"] = "training, with a validation region held out"
            entry["held_out"] = [w.row_off, w.col_off, w.height, w.width]
            entry["gap"] = areas[i].gap
        else:
            entry["use"] = "training"
        data.append(entry)
    names = config.class_map.class_names
    best = next((r for r in history if r.epoch == best_epoch), None)
    # Training data under the shared data root is recorded relative to it.
    data_root = (
        f"${SHARED_DATA_ENV} (default ../shared/data beside the repository); relative "
        f"training data paths are relative to it"
        if under_root
        else None
    )
    return {
        "data": data,
        **({"data_root": data_root} if data_root else {}),
        "class_pixels": {
            "training": {n: int(c) for n, c in zip(names, pixels[0], strict=True)},
            "validation": {n: int(c) for n, c in zip(names, pixels[1], strict=True)},
        },
        "epochs": history[-1].epoch if history else 0,
        "steps": (history[-1].epoch if history else 0) * config.steps_per_epoch,
        "steps_per_epoch": config.steps_per_epoch,
        "batch_size": config.batch_size,
        "chip_size": config.chip_size,
        "wall_time_s": round(wall, 1),
        "loss": config.loss,
        "final_loss": round(history[-1].loss, 6) if history else None,
        "best_epoch": best_epoch,
        "kept": config.keep,
        "stopped_early": stopped,
        "validation": None
        if best is None or best.validation is None
        else best.validation.to_dict(),
        "history": [
            {
                "epoch": r.epoch,
                "loss": round(r.loss, 6),
                "lr": r.lr,
                "score": None if r.score is None else round(r.score, 6),
                "seconds": round(r.seconds, 2),
                # Per-class validation scores of every validated epoch, background included.
                "classes": None
                if r.validation is None
                else {
                    c.name: {"iou": _round(c.iou), "f1": _round(c.f1)} for c in r.validation.classes
                },
            }
            for r in history
        ],
        "device": device,
        "precision": precision,
        "weights_dtype": config.store_dtype,
        "reproducibility": {
            "seed": config.seed,
            "command": config.command,
            "config": recorded,
            **({"data_root": data_root} if data_root else {}),
            # The CPU threads torch used (``threads: 0`` is torch's default, which varies by
            # machine); float sums, hence the weights, depend on it.
            "torch_threads": torch.get_num_threads(),
            "versions": {
                "geoseg": geoseg.__version__,
                "torch": torch.__version__,
                "segmentation_models_pytorch": smp.__version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
            },
        },
    }

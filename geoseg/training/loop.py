"""Training an smp network on image/label pairs into a self-describing geoseg model file.

:func:`train` runs the whole recipe for a :class:`TrainConfig`:

1. open the inputs, resolve their bands, hold out validation tiles or a region, and
   stream once over the training pixels: per-band mean/std (for the card) and where each
   class is (for class-balanced chips) (:mod:`geoseg.training.dataset`);
2. train with AdamW and a one-cycle or cosine schedule on random / class-balanced chips
   (:mod:`geoseg.training.chips`), under bf16 autocast on capable CPUs or fp16 autocast +
   gradient scaling on CUDA (:mod:`geoseg.training.optim`), with channels_last memory and
   fp32 master weights;
3. after each epoch, predict the held-out windows with the real tiled inference and score
   them: per-class IoU, F1, precision, recall (:mod:`geoseg.training.validation`);
4. keep the best epoch (mean IoU of the non-background classes), stop early when it has not
   improved for ``patience`` validations, and write the model file with its card; or, with
   ``keep="last"``, keep the last epoch, so the validation scores choose nothing.

With a ``checkpoint_dir`` every epoch ends with a checkpoint
(:mod:`geoseg.training.checkpoints`); calling :func:`train` again with the same
configuration resumes after the last finished epoch. Chips of epoch ``e`` are drawn from a
generator seeded with ``(seed, e)``, so a resumed run draws the same chips as an
uninterrupted one. The card's ``training`` section is built by
:func:`~geoseg.training.summary.training_summary`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geoseg.models.card import ModelCard
from geoseg.training.checkpoints import (
    BEST,
    LAST,
    cast_state,
    checkpoint_entries,
    load_checkpoint,
    restore,
    save_checkpoint,
)
from geoseg.training.config import TrainConfig
from geoseg.training.dataset import TrainingData, chip_loader, prepare_data
from geoseg.training.losses import build_loss
from geoseg.training.optim import Optimiser, precision_name, train_dtype
from geoseg.training.progress import EpochRecord, TrainProgress, TrainResult
from geoseg.training.summary import training_summary
from geoseg.training.validation import validate

if TYPE_CHECKING:
    import torch

__all__ = ["MIN_GAIN", "model_card", "train"]

# A validation score must beat the best by this much to count as an improvement: with bf16
# inference the mean IoU of two epochs whose weights differ only by rounding (lr 1e-12)
# differed by 1.6e-5 and 1.6e-4 here, which would otherwise reset early stopping's patience.
MIN_GAIN = 1e-3


def model_card(config: TrainConfig, data: TrainingData) -> ModelCard:
    """The card of the model being trained (its ``training`` section comes at the end)."""
    return ModelCard(
        name=config.name,
        architecture=config.architecture,
        encoder=config.encoder,
        bands=config.bands,
        mean=data.mean,
        std=data.std,
        classes=config.class_map.classes,
        tile_size=config.tile_size,
        overlap=config.overlap,
        resolution_m=data.resolution_m,
        sensor=config.sensor,
        params=dict(config.params),
        description=config.description,
    )


def _initialise(net: torch.nn.Module, card: ModelCard, path: str) -> None:
    """Start ``net`` from the weights of the model file ``path`` (fine-tuning).

    Raises
    ------
    ConfigError
        If that file's network is not the one being trained.
    """
    from safetensors.torch import load_file

    from geoseg.errors import ConfigError
    from geoseg.models.card import read_card

    source = read_card(path)
    mine = (card.architecture, card.encoder, dict(card.params), card.bands, card.class_names)
    theirs = (
        source.architecture,
        source.encoder,
        dict(source.params),
        source.bands,
        source.class_names,
    )
    if mine != theirs:
        raise ConfigError(
            f"init_from {path!r} is a {theirs[0]}/{theirs[1]} over {', '.join(theirs[3])} "
            f"with classes {', '.join(theirs[4])}; the config trains a {mine[0]}/{mine[1]} "
            f"over {', '.join(mine[3])} with classes {', '.join(mine[4])}"
        )
    try:
        net.load_state_dict(load_file(path), strict=True)
    except RuntimeError as err:
        raise ConfigError(f"weights of init_from {path!r} do not fit the network: {err}") from err


def _initialise_encoder(net: torch.nn.Module, card: ModelCard, path: str) -> int:
    """Start ``net``'s encoder from the encoder of the model file ``path``; the number of
    tensors loaded.

    Raises
    ------
    ConfigError
        If that file's encoder or bands are not those being trained, or it has no encoder
        weights that fit.
    """
    import torch
    from safetensors.torch import load_file

    from geoseg.errors import ConfigError
    from geoseg.models.card import read_card

    source = read_card(path)
    if (source.encoder, source.bands) != (card.encoder, card.bands):
        raise ConfigError(
            f"init_encoder_from {path!r} has a {source.encoder} encoder over "
            f"{', '.join(source.bands)}; the config trains a {card.encoder} encoder over "
            f"{', '.join(card.bands)}"
        )
    encoder = getattr(net, "encoder", None)
    prefix = "encoder."
    theirs = {k.removeprefix(prefix): v for k, v in load_file(path).items() if k.startswith(prefix)}
    if not isinstance(encoder, torch.nn.Module) or not theirs:
        raise ConfigError(
            f"the encoder weights of init_encoder_from {path!r} do not fit the network "
            f"({len(theirs)} encoder tensors in the file)"
        )
    try:
        encoder.load_state_dict(theirs, strict=True)
    except RuntimeError as err:
        raise ConfigError(
            f"the encoder weights of init_encoder_from {path!r} do not fit the network: {err}"
        ) from err
    return len(theirs)


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
    amp_dtype = train_dtype(config.precision, device)
    precision = precision_name(amp_dtype)
    if config.threads and not device.startswith("cuda"):
        torch.set_num_threads(config.threads)

    ckpt_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else None
    ckpt: dict[str, Any] | None = None
    if ckpt_dir is not None and config.resume and (ckpt_dir / LAST).is_file():
        ckpt = load_checkpoint(ckpt_dir / LAST, config)  # fails fast on another run's

    data = prepare_data(config, emit)
    plan = data.plan
    card = model_card(config, data)

    torch.manual_seed(config.seed)
    net = build_network(card).to(device).to(memory_format=torch.channels_last)
    cuda = device.startswith("cuda")
    optimiser = Optimiser(net, config, cuda=cuda, amp_dtype=amp_dtype)
    loss_fn = build_loss(
        config.loss, n_classes=len(card.classes), class_weights=config.class_weights
    ).to(device)
    loader = chip_loader(config, data)

    history: list[EpochRecord] = []
    best_epoch, best_score, stopped, elapsed = 0, None, False, 0.0
    best_state: dict[str, torch.Tensor] | None = None
    first_epoch, resumed_from = 1, None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if ckpt is None:  # a fresh start must not pick up an earlier run's best weights
            (ckpt_dir / BEST).unlink(missing_ok=True)
        else:
            resumed = restore(ckpt, network=net, optimiser=optimiser, cuda=cuda)
            history = list(resumed.history)
            best_epoch, stopped = resumed.best_epoch, resumed.stopped
            best_score, elapsed = resumed.best_score, resumed.elapsed_s
            resumed_from = resumed.epoch
            first_epoch = resumed.epoch + 1
    if ckpt is None and config.init_from is not None:
        _initialise(net, card, config.init_from)
    if ckpt is None and config.init_encoder_from is not None:
        _initialise_encoder(net, card, config.init_encoder_from)

    run_start = start - elapsed  # wall time includes setup, summed over resumed sessions
    for epoch in range(first_epoch, config.epochs + 1):
        if stopped:
            break
        if config.time_limit_min is not None and history:
            pace = history[-1].seconds
            if time.perf_counter() - start + pace > 60 * config.time_limit_min:
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
            lr = optimiser.step(loss)
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

            metrics = validate(
                net,
                card,
                data.scenes,
                plan.validation,
                device=device,
                precision=precision,
                batch_size=config.batch_size,
                on_block=on_block,
            )
        record = EpochRecord(
            epoch=epoch,
            loss=float(np.mean(losses)),
            lr=optimiser.lr,
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
            entries = checkpoint_entries(
                config,
                epoch=epoch,
                network=net,
                optimiser=optimiser,
                cuda=cuda,
                history=history,
                best_epoch=best_epoch,
                best_score=best_score,
                stopped=stopped,
                elapsed_s=time.perf_counter() - run_start,
            )
            save_checkpoint(ckpt_dir / LAST, entries)
        emit(TrainProgress(stage="epoch", epoch=epoch, epochs=config.epochs, record=record))

    wall = time.perf_counter() - run_start
    if best_state is None:
        if ckpt_dir is not None and (ckpt_dir / BEST).is_file():
            from safetensors.torch import load_file

            best_state = load_file(str(ckpt_dir / BEST))
        else:
            best_state = dict(net.state_dict())
    done_epochs = history[-1].epoch if history else 0
    summary = training_summary(
        config,
        data,
        history=history,
        best_epoch=best_epoch,
        stopped=stopped,
        wall=wall,
        device=device,
        precision=precision,
    )
    final = card.with_training(**summary)
    path = save_model(config.output, final, cast_state(best_state, config.store_dtype))
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

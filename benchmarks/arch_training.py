"""Every architecture trained with one recipe and one CPU-time budget on real data (issue #20).

U-Net, FCN-8s, PSPNet and DeepLabV3+ over ResNet-34, and FC-DenseNet56 (Tiramisu), each
trained from scratch (no pretrained encoder, no ``init_from``) on two datasets of
``../shared/data`` with the training recipe of ``workflows/train``:

- ``crops``: ``crops.yaml``'s inputs, class map (crops, field_boundary), 5 validation
  images and 10 test images, ce+dice with its class weights;
- ``roads``: ``roads-v3.yaml``'s split (5 tiles train, 10228795_15 chooses the epoch,
  10678810_15 is scored once), focal+dice; no threshold is chosen or folded in
  (``threshold_class`` is dropped), so every network is scored at argmax.

The shared recipe overrides the files where they differ between networks or datasets:
chips 256, batch 8, AdamW lr 1e-3 and weight decay 1e-4, one-cycle schedule, flips,
90° rotations and brightness/contrast 0.1 (no scale augmentation), ``keep: best`` on the
validation data, torch threads 1, seed 0, the architecture's default parameters.
Each file's sampling (``balance``, ``min_labelled``), loss and class weights stay.

The budget is CPU time, not wall time (the machine is shared): the CPU cost of one
training step (``time.process_time`` over a few steps after a warm-up, forward, loss,
backward and update on random chips, one thread: the compute the step needs) is measured
once per architecture, and each network gets ``budget / step cost`` steps, rounded to
whole epochs of six, validated every second epoch (three validations). The time spent
reading chips is not in the step cost but is in ``train CPU s``, the CPU time the training
steps took (validation left out).

After training, the kept weights are scored once on the test data through the real
``geoseg run`` pipeline without smoothing (``training.scores`` of the card): crops as
cropland (field_boundary predictions counted as crops, as ``crops.yaml``'s ``scores``
does) with the field F1 of the polygons matched to the labelled fields at IoU >= 0.5;
roads with the road IoU and the relaxed F1 at 3 px. ``s/tile`` and ``peak MB`` (per
512 x 512 tile, bf16, one thread, batch norms folded) come from
``benchmarks/architectures.py``'s measuring function, run in a fresh process per network
in the same invocation, before the trainings.

Models, checkpoints and one JSON per finished run go to ``--out``; a second invocation
skips finished runs and resumes an interrupted one from its last epoch.

Usage: python benchmarks/arch_training.py [--budget-min 5] [--out /tmp/arch_training]
       [--only "U-Net R34,FC-DenseNet56"] [--datasets crops,roads] [--max-steps N] [--report]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, SHARED, table

RECIPES = REPO / "workflows" / "train"
DATASETS = {"crops": RECIPES / "crops.yaml", "roads": RECIPES / "roads-v3.yaml"}
# Registry architecture, encoder ("" without one) and parameters of each network; the
# names are benchmarks/architectures.py's, whose measuring function gives s/tile and peak MB.
ARCHITECTURES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "U-Net R34": ("unet", "resnet34", {}),
    "FC-DenseNet56": ("tiramisu", "", {"variant": "fc-densenet56"}),
    "FCN-8s R34": ("fcn", "resnet34", {"variant": "fcn8s"}),
    "DeepLabV3+ R34": ("deeplabv3plus", "resnet34", {}),
    "PSPNet R34": ("pspnet", "resnet34", {}),
}
# The recipe every network and dataset shares (the files' other options stay).
SHARED_RECIPE: dict[str, Any] = {
    "chip_size": 256,
    "batch_size": 8,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "schedule": "onecycle",
    "augment": {"flips": True, "rotate90": True, "brightness": 0.1, "contrast": 0.1},
    "keep": "best",
    "patience": None,
    "seed": 0,
    "threads": 1,
    "precision": "auto",
    "init_from": None,
    "threshold_class": None,
    "time_limit_min": None,  # the budget is CPU time, set through the step count
    "compare": [],
}
EPOCHS = 6
VALIDATIONS = 3


@dataclass(frozen=True, kw_only=True, slots=True)
class StepPlan:
    """Epochs and steps that spend a CPU budget, and how often to validate."""

    epochs: int
    steps_per_epoch: int
    validate_every: int

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def plan_steps(
    step_cpu_s: float,
    budget_s: float,
    *,
    epochs: int = EPOCHS,
    validations: int = VALIDATIONS,
    max_steps: int | None = None,
) -> StepPlan:
    """The steps ``budget_s`` CPU seconds buy at ``step_cpu_s`` a step, in whole epochs.

    ``epochs`` epochs (fewer when the budget buys fewer steps) of equal length, the total
    as close to ``budget_s / step_cpu_s`` as whole epochs allow (at least one step),
    validated ``validations`` times (every ``epochs // validations`` epochs, and after the
    last). ``max_steps`` caps the total (smoke runs).
    """
    if not step_cpu_s > 0 or not budget_s > 0:
        raise ValueError(f"step cost {step_cpu_s} and budget {budget_s} must be > 0")
    steps = budget_s / step_cpu_s
    if max_steps is not None:
        steps = min(steps, max_steps)
    n_epochs = max(1, min(epochs, round(steps)))
    per_epoch = max(1, round(steps / n_epochs))
    return StepPlan(
        epochs=n_epochs,
        steps_per_epoch=per_epoch,
        validate_every=max(1, n_epochs // validations),
    )


def build_config(
    recipe: Path, arch: str, plan: StepPlan, out: Path, **extra: Any
) -> Any:  # TrainConfig
    """``recipe`` with the shared recipe, the network ``arch`` and the step plan."""
    from geoseg.training.config_file import read_train_file

    architecture, encoder, params = ARCHITECTURES[arch]
    slug = run_slug(recipe.stem, arch)
    overrides = {
        **SHARED_RECIPE,
        "architecture": architecture,
        "encoder": encoder,
        "params": params,
        "name": f"arch-{slug}",
        "description": f"{arch} trained by benchmarks/arch_training.py on {recipe.name}'s data",
        "epochs": plan.epochs,
        "steps_per_epoch": plan.steps_per_epoch,
        "validate_every": plan.validate_every,
        "output": str(out / f"{slug}.safetensors"),
        "checkpoint_dir": str(out / f"{slug}.ckpt"),
        "command": "python benchmarks/arch_training.py",
        **extra,
    }
    return read_train_file(recipe, overrides=overrides)


def run_slug(dataset: str, arch: str) -> str:
    name = arch.lower().replace("+", "plus").replace(" ", "-")
    return f"{dataset.split('-')[0]}-{name}"


def step_cpu_seconds(config: Any, *, warmup: int = 1, steps: int = 3) -> float:
    """CPU seconds of one training step of ``config``'s network on random chips.

    Forward under the config's autocast, loss, backward and AdamW update, as the training
    loop does them, with ``config.threads`` torch threads (1: the process's CPU time is the
    step's compute whatever else runs on the machine).
    """
    import numpy as np
    import torch

    from geoseg.models.registry import build_network
    from geoseg.training.loop import model_card
    from geoseg.training.losses import build_loss
    from geoseg.training.optim import Optimiser, train_dtype

    torch.set_num_threads(config.threads or 1)
    n_bands, n_classes = len(config.bands), config.class_map.n_classes
    data = SimpleNamespace(mean=(0.0,) * n_bands, std=(1.0,) * n_bands, resolution_m=1.0)
    card = model_card(config, data)  # type: ignore[arg-type]
    torch.manual_seed(config.seed)
    net = build_network(card).to(memory_format=torch.channels_last).train()
    amp = train_dtype(config.precision, "cpu")
    optimiser = Optimiser(net, config, cuda=False, amp_dtype=amp)
    loss_fn = build_loss(config.loss, n_classes=n_classes, class_weights=config.class_weights)
    rng = np.random.default_rng(0)
    size = (config.batch_size, n_bands, config.chip_size, config.chip_size)
    x = torch.from_numpy(rng.standard_normal(size, dtype=np.float32))
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(rng.integers(0, n_classes, size=(size[0], *size[2:]), dtype=np.int64))

    def step() -> None:
        with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
            logits = net(x)
        optimiser.step(loss_fn(logits.float(), y))

    for _ in range(warmup):
        step()
    t0 = time.process_time()
    for _ in range(steps):
        step()
    return (time.process_time() - t0) / steps


def tile_costs(arch: str, *, tile: int = 512, repeats: int = 2) -> dict[str, Any]:
    """s/tile, peak MB and activation MB of ``arch`` (bf16, one thread), in a fresh process."""
    cmd = [sys.executable, __file__, "--tile-child", arch, "--tile", str(tile)]
    cmd += ["--repeats", str(repeats)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _tile_child(arch: str, *, tile: int, repeats: int) -> None:
    import architectures

    architectures.THREADS = 1  # the trainings' thread count
    print(json.dumps(architectures.child(arch, "bf16", repeats=repeats, tile=tile)))


def train_and_score(config: Any) -> dict[str, Any]:
    """Train ``config`` with geoseg's training loop, score its test data; the record."""
    from geoseg.cli.training import _evaluate_outputs
    from geoseg.models.card import read_card
    from geoseg.training.loop import train
    from geoseg.training.progress import TrainProgress
    from geoseg.training.scoring import score_outputs_into_card

    cpu = {"train": 0.0, "last": time.process_time()}

    def progress(p: TrainProgress) -> None:
        now = time.process_time()
        if p.stage == "train":
            cpu["train"] += now - cpu["last"]
        cpu["last"] = now
        if p.stage == "epoch" and p.record is not None:
            print(f"  epoch {p.epoch}/{p.epochs} {p.record.describe()}", flush=True)

    load0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    result = train(config, progress=progress)
    train_wall, train_cpu_all = time.perf_counter() - t0, time.process_time() - c0
    score_outputs_into_card(
        result.model_path, config, evaluate_outputs=_evaluate_outputs, smooth=("none",)
    )
    pooled = read_card(result.model_path).training["scores"]["test"]["none"]["pooled"]
    return {
        "steps": result.steps,
        "best_epoch": result.best_epoch,
        "val_score": result.best_score,
        "train_cpu_s": cpu["train"],
        "run_cpu_s": train_cpu_all,
        "wall_s": train_wall,
        "score_wall_s": time.perf_counter() - t0 - train_wall,
        "load": [load0, os.getloadavg()[0]],
        "test": pooled,
        "model": str(result.model_path),
    }


def headline(dataset: str, test: dict[str, Any]) -> tuple[float | None, float | None]:
    """The test IoU of the class and its F1: field objects for crops, relaxed for roads."""
    if dataset == "crops":
        return test["classes"]["crops"]["iou"], test["objects"]["crops"]["f1"]
    return test["classes"]["roads"]["iou"], test["relaxed"]["roads"]["f1"]


def _load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _save_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--budget-min", type=float, default=5.0, help="CPU minutes per training")
    ap.add_argument("--out", type=Path, default=Path("/tmp/arch_training"))
    ap.add_argument("--only", default="", help="comma-separated architecture names")
    ap.add_argument("--datasets", default="crops,roads")
    ap.add_argument("--max-steps", type=int, help="cap the steps of every run (smoke runs)")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--report", action="store_true", help="train nothing: the table of the finished runs"
    )
    ap.add_argument("--tile-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.tile_child:
        _tile_child(args.tile_child, tile=args.tile, repeats=args.repeats)
        return
    if not SHARED.is_dir():
        sys.exit(f"shared data not found at {SHARED}")
    os.environ.setdefault("GEOSEG_SHARED_DATA", str(SHARED))
    names = [n for n in ARCHITECTURES if not args.only or n in args.only.split(",")]
    datasets = [d for d in args.datasets.split(",") if d]
    budget_s = 60 * args.budget_min
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"load average at the start: {os.getloadavg()}", flush=True)

    # Per network, once: its s/tile and peak memory, and the CPU cost of a training step
    # (on the first dataset's recipe: the loss and class count barely change it).
    costs_path = args.out / "costs.json"
    costs = _load_json(costs_path)
    for arch in names:
        if arch in costs or args.report:
            continue
        probe = build_config(DATASETS[datasets[0]], arch, plan_steps(1, 1), args.out)
        entry = {"step_cpu_s": step_cpu_seconds(probe)}
        entry.update(tile_costs(arch, tile=args.tile, repeats=args.repeats))
        costs[arch] = entry
        _save_json(costs_path, costs)
        print(f"{arch}: {entry}", flush=True)

    rows = []
    # Dataset by dataset (in --datasets order): a run cut short by the clock leaves whole
    # comparisons on the datasets done first.
    for dataset in datasets:
        for arch in names:
            if arch not in costs:
                continue
            step_s = costs[arch]["step_cpu_s"]
            plan = plan_steps(step_s, budget_s, max_steps=args.max_steps)
            config = build_config(DATASETS[dataset], arch, plan, args.out)
            record_path = args.out / f"{run_slug(dataset, arch)}.json"
            record = _load_json(record_path)
            if not record and args.report:
                print(f"{dataset} / {arch}: not run", flush=True)
                continue
            if not record:
                print(
                    f"{dataset} / {arch}: {plan.steps} steps ({plan.epochs} x "
                    f"{plan.steps_per_epoch}) at {step_s:.2f} CPU s a step",
                    flush=True,
                )
                record = {"plan": plan.steps, "budget_s": budget_s, **train_and_score(config)}
                _save_json(record_path, record)
                print(f"  {record}", flush=True)
            iou, f1 = headline(dataset, record["test"])
            rows.append(
                {
                    "architecture": arch,
                    "dataset": dataset,
                    "params M": costs[arch]["params"] / 1e6,
                    "step CPU s": step_s,
                    "steps": record["steps"],
                    "train CPU s": record["train_cpu_s"],
                    "best epoch": record["best_epoch"],
                    "val mIoU": record["val_score"],
                    "test IoU": iou,
                    # None: nothing predicted, so no precision (nor F1).
                    "test F1": "n/a" if f1 is None else f1,
                    "s/tile": costs[arch]["s_per_tile"],
                    "peak MB/tile": costs[arch]["peak_mb"],
                    "act MB/tile": costs[arch]["act_mb"],
                    "budget CPU s": record["budget_s"],
                }
            )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\nbudget {args.budget_min:g} CPU min of training steps per network and dataset "
        f"(torch threads 1, seed 0); test IoU: cropland (crops with field_boundary merged) "
        f"or road, argmax, no smoothing; test F1: fields as objects (IoU >= 0.5) or roads "
        f"relaxed 3 px; s/tile, peak MB, act MB: 512^2 tile, bf16, 1 thread; "
        f"{time.perf_counter() - started:.0f} s; load average at the end {load} on "
        f"{os.cpu_count()} cores\n"
    )
    print(table(rows))


if __name__ == "__main__":
    main()

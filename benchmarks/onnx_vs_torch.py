"""onnxruntime against torch (fp32, bf16) on the benchmark U-Net (issue #21 part 4).

A U-Net ResNet-34 (smp, ``encoder_weights=None``: speed does not depend on the weights), 512 px
tiles, 4 bands (``--bands 3`` for RGB), 2 classes, exported with ``geoseg models export --onnx``.
Measured in the same run, on CPU, one 512 x 512 tile per forward pass:

- torch fp32 and torch bf16 as geoseg runs them (``TorchSegmenter``: batch norms folded,
  channels_last, bf16 autocast with pre-cast weights);
- onnxruntime fp32 as geoseg runs it (``load_onnx``: the session as the segmenter's network,
  probabilities turned back into logits) and the bare session (``session.run`` alone);
- each as one pass on 2 threads, and as 2 model slots of 1 thread each (two passes at once, as
  the local cluster runs a CPU model: ``concurrent_batches`` = cores).

Repetitions are interleaved (one pass of every configuration per round), so load from other
processes falls on all of them alike; the table gives the median. ``vs torch fp32`` is the
speed-up over torch fp32 in the same layout (> 1 is faster); ``max |dp|`` the largest
difference of a class probability from torch fp32 on the same tile, ``same class`` the share
of its pixels given torch fp32's class (the untrained network's batch norms are set to its
activations' statistics first, so it behaves as a trained one).

Usage: python benchmarks/onnx_vs_torch.py [--bands 4] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table

from geoseg.config import InferenceOptions
from geoseg.models.card import ClassInfo, ModelCard
from geoseg.models.onnx import export_onnx, load_onnx
from geoseg.models.predictor import TorchSegmenter, cpu_supports_bf16
from geoseg.models.registry import build_network, load_network, save_model

TILE = 512
THREADS = 2


def _card(bands: int) -> ModelCard:
    names = ("red", "green", "blue", "nir")[:bands]
    return ModelCard(
        name="bench-unet-r34",
        architecture="unet",
        encoder="resnet34",
        bands=names,
        mean=(0.0,) * bands,
        std=(255.0,) * bands,
        classes=(ClassInfo(name="background"), ClassInfo(name="water")),
        tile_size=TILE,
        overlap=64,
    )


def _calibrated(card: ModelCard) -> torch.nn.Module:
    """An untrained network whose batch norms hold the statistics of their inputs.

    With smp's initial statistics (mean 0, variance 1) activations grow layer after layer
    and the logits reach the thousands, where any rounding flips classes; set from a few
    passes they are of the scale a trained network has, so the probability differences below
    mean what they would for a trained model.
    """
    net = build_network(card)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a cumulative average over the passes
    net.train()
    with torch.no_grad():
        for _ in range(4):
            net(torch.randn(2, len(card.bands), 256, 256))
    return net.eval()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bands", type=int, default=4, choices=(3, 4))
    ap.add_argument("--rounds", type=int, default=4, help="timed passes per configuration")
    args = ap.parse_args()
    torch.manual_seed(0)
    card = _card(args.bands)
    with tempfile.TemporaryDirectory(prefix="geoseg-onnx-bench-") as tmp:
        measure(args, card, Path(tmp))


def measure(args: argparse.Namespace, card: ModelCard, work: Path) -> None:
    import onnxruntime as ort

    model = save_model(work / "unet34.safetensors", card, _calibrated(card).state_dict())
    t0 = time.perf_counter()
    onnx_path = export_onnx(model, work / "unet34.onnx")
    export_s = time.perf_counter() - t0

    rng = np.random.default_rng(0)
    batch = rng.standard_normal((1, args.bands, TILE, TILE)).astype(np.float32)

    def torch_seg(precision: str, slots: int) -> TorchSegmenter:
        _, net = load_network(model)
        opts = InferenceOptions(
            device="cpu", precision=precision, threads=THREADS, concurrent_batches=slots
        )
        return TorchSegmenter(card, net, options=opts, copy=False)

    def onnx_seg(slots: int) -> TorchSegmenter:
        opts = InferenceOptions(
            device="cpu", precision="fp32", threads=THREADS, concurrent_batches=slots
        )
        c, net, o = load_onnx(onnx_path, options=opts)
        return TorchSegmenter(c, net, options=o, copy=False)

    def bare(slots: int) -> Callable[[np.ndarray], np.ndarray]:
        opts = InferenceOptions(device="cpu", threads=THREADS, concurrent_batches=slots)
        session = load_onnx(onnx_path, options=opts)[1].session
        return lambda x: session.run(None, {"input": x})[0]

    # name -> (forward of one tile, torch threads while it runs, slots)
    configs: dict[str, tuple[Callable[[np.ndarray], np.ndarray], int, int]] = {}
    for slots in (1, 2):
        per_pass = THREADS // slots
        layout = f"{slots} x {per_pass} thread" + ("s" if per_pass > 1 else "")
        configs[f"torch fp32, {layout}"] = (torch_seg("fp32", slots).forward, per_pass, slots)
        if cpu_supports_bf16():
            configs[f"torch bf16, {layout}"] = (torch_seg("bf16", slots).forward, per_pass, slots)
        configs[f"onnxruntime, {layout}"] = (onnx_seg(slots).forward, per_pass, slots)
        configs[f"onnxruntime bare, {layout}"] = (bare(slots), per_pass, slots)

    pool = ThreadPoolExecutor(max_workers=2)

    def one_round(fn: Callable[[np.ndarray], np.ndarray], threads: int, slots: int) -> float:
        torch.set_num_threads(threads)
        t = time.perf_counter()
        if slots == 1:
            fn(batch)
        else:
            for f in [pool.submit(fn, batch) for _ in range(slots)]:
                f.result()
        return (time.perf_counter() - t) / slots  # seconds per tile

    reference = configs["torch fp32, 1 x 2 threads"][0](batch)
    diffs: dict[str, tuple[float, float]] = {}
    for name, (fn, threads, _) in configs.items():
        torch.set_num_threads(threads)
        out = fn(batch)
        diffs[name] = (
            float(np.max(np.abs(out - reference))),
            float(np.mean(out.argmax(1) == reference.argmax(1))),
        )
    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, (fn, threads, slots) in configs.items():
            times[name].append(one_round(fn, threads, slots))
    load_after = os.getloadavg()[0]
    pool.shutdown()

    rows = []
    for name, samples in times.items():
        s = median(samples)
        layout = name.split(", ")[1]
        base = median(times[f"torch fp32, {layout}"])
        rows.append(
            {
                "configuration": name,
                "s/tile": s,
                "tiles/s": 1 / s,
                "vs torch fp32": base / s,
                "max |dp|": diffs[name][0],
                "same class": f"{100 * diffs[name][1]:.2f} %",
            }
        )
    print(
        f"U-Net ResNet-34, {args.bands} bands, {TILE} px tiles, batch 1; {THREADS} threads; "
        f"{args.rounds} interleaved rounds (median)\n"
        f"CPU: {_cpu_name()}, {os.cpu_count()} logical cores; native bf16: "
        f"{cpu_supports_bf16()}; torch {torch.__version__}, onnxruntime {ort.__version__}; "
        f"load average {load_before:.1f} before, {load_after:.1f} after timing; "
        f"export {export_s:.1f} s\n"
    )
    print(table(rows))


if __name__ == "__main__":
    main()

"""Convert the Dynamic World "forward" TensorFlow SavedModel to a geoseg safetensors state dict.

One-time conversion, run in a throw-away environment OUTSIDE the repo: TensorFlow is never a
geoseg dependency. The script reads the SavedModel's variables, maps them onto
``geoseg.models.architectures.dynamicworld.DynamicWorldNet`` (imported from this checkout), writes
the state dict, and proves the port on real imagery:

1. ``ScaleAndTranslate`` (triangle kernel, antialiased, as the graph calls it) from TensorFlow
   against the torch resize on random data, even and odd sizes;
2. TensorFlow's probabilities (softmax of its logits) against the port's on the 512 x 512
   Sentinel-2 chip, normalised as in the published notebook (max absolute difference; target
   < 1e-3), computed with the weights read back from the written file;
3. the same on two small windows of the chip (64 x 64 and an odd 45 x 51), whose TensorFlow
   probabilities are saved to ``tests/data/dynamicworld_tf_reference.npz`` so that
   ``tests/models/test_architectures.py`` can check the port without TensorFlow.

Commands (Python 3.11; ``torch==2.14.1`` installs from the local wheel on the geoseg machines)::

    python3.11 -m venv /tmp/tfconv/venv
    /tmp/tfconv/venv/bin/pip install tensorflow-cpu numpy rasterio safetensors torch==2.14.1
    /tmp/tfconv/venv/bin/python tools/convert_dynamicworld.py \\
        --saved-model ../shared/models/dynamicworld/model/forward \\
        --chip ../shared/data/sen1floods11_s2/Spain_7370579_S2Hand.tif \\
        --out /work/staging/dynamicworld.safetensors \\
        --reference tests/data/dynamicworld_tf_reference.npz

Run it from the repo root. TensorFlow runs with ``TF_ENABLE_ONEDNN_OPTS=0`` (its reference
kernels). The written file is a plain state dict (float32 weights and running statistics, plus
BatchNorm's int64 ``num_batches_tracked`` counters so that strict loading works), no metadata.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Band names of the 13-band Sen1Floods11 chip, and the 9 Dynamic World bands in model order.
CHIP_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
DW_BANDS = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B11", "B12")

# From single_image_runner.ipynb (google/dynamicworld), full precision: per band (a, b) for
# (ln(0.005 x + 1) - a) / b.
NORM_PERCENTILES = np.array(
    [
        [1.7417268007636313, 2.023298706048351],
        [1.7261204997060209, 2.038905204308012],
        [1.6798346251414997, 2.179592821212937],
        [1.7734969472909623, 2.2890068333026603],
        [2.289154079164943, 2.6171674549378166],
        [2.382939712192371, 2.773418590375327],
        [2.3828939530384052, 2.7578332604178284],
        [2.1952484264967844, 2.789092484314204],
        [1.554812948247501, 2.4140534947492487],
    ]
)

# Reference windows saved for the repo test: (row_off, col_off, height, width).
REFERENCE_WINDOWS = {"even": (208, 256, 64, 64), "odd": (101, 333, 45, 51)}


def _blocks() -> list[tuple[str, str, str]]:
    """(torch prefix, TF conv layer, TF batch-norm layer) for every conv-BN-Mish unit."""
    pairs = [("stem", "conv2d", "batch_normalization")]

    def block(name: str, convs: list[str], bns: list[int], shortcut: tuple[str, int]) -> None:
        for i, (conv, bn) in enumerate(zip(convs, bns, strict=True)):
            pairs.append((f"{name}.layers.{i}", conv, f"batch_normalization_{bn}"))
        pairs.append((f"{name}.shortcut", shortcut[0], f"batch_normalization_{shortcut[1]}"))

    block(
        "block1",
        ["conv2d_2", "depthwise_conv2d_1", "conv2d_3", "depthwise_conv2d_2", "conv2d_4",
         "depthwise_conv2d_3"],
        [3, 4, 5, 6, 7, 8],
        ("conv2d_5", 9),
    )  # fmt: skip
    block(
        "block2",
        ["conv2d_6", "depthwise_conv2d_4", "conv2d_7", "depthwise_conv2d_5", "conv2d_8",
         "depthwise_conv2d_6"],
        [10, 11, 12, 13, 14, 15],
        ("conv2d_9", 16),
    )  # fmt: skip
    pairs.append(("side.0", "conv2d_1", "batch_normalization_1"))
    pairs.append(("side.1", "depthwise_conv2d", "batch_normalization_2"))
    block(
        "block3",
        ["conv2d_10", "depthwise_conv2d_7", "conv2d_11", "depthwise_conv2d_8", "conv2d_12",
         "depthwise_conv2d_9"],
        [17, 18, 19, 20, 21, 22],
        ("conv2d_13", 23),
    )  # fmt: skip
    return pairs


def tf_variables(model: object) -> dict[str, np.ndarray]:
    """The SavedModel's variables by layer/name (``conv2d/kernel``), as float32 arrays."""
    out = {}
    for v in model.variables:  # type: ignore[attr-defined]
        out[v.name.removesuffix(":0")] = np.asarray(v.numpy(), dtype=np.float32)
    return out


def to_state_dict(tf_vars: dict[str, np.ndarray], template: dict) -> dict:
    """Map TF variables onto the torch module's state dict (every variable used exactly once)."""
    import torch

    used: set[str] = set()
    state = {}

    def take(name: str) -> np.ndarray:
        used.add(name)
        return tf_vars[name]

    for prefix, conv, bn in _blocks():
        if conv.startswith("depthwise"):
            kernel = take(f"{conv}/depthwise_kernel").transpose(2, 3, 0, 1)  # HWC1 -> C1HW
        else:
            kernel = take(f"{conv}/kernel").transpose(3, 2, 0, 1)  # HWIO -> OIHW
        state[f"{prefix}.conv.weight"] = kernel
        state[f"{prefix}.conv.bias"] = take(f"{conv}/bias")
        state[f"{prefix}.bn.weight"] = take(f"{bn}/gamma")
        state[f"{prefix}.bn.bias"] = take(f"{bn}/beta")
        state[f"{prefix}.bn.running_mean"] = take(f"{bn}/moving_mean")
        state[f"{prefix}.bn.running_var"] = take(f"{bn}/moving_variance")
    state["head.weight"] = take("conv2d_14/kernel").transpose(3, 2, 0, 1)
    state["head.bias"] = take("conv2d_14/bias")
    unused = set(tf_vars) - used
    if unused:
        raise RuntimeError(f"TF variables not mapped: {sorted(unused)}")
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    for key, value in template.items():
        if key.endswith("num_batches_tracked"):
            tensors[key] = value.clone()
        elif tuple(value.shape) != tuple(tensors[key].shape):
            raise RuntimeError(
                f"{key}: TF {tuple(tensors[key].shape)} vs torch {tuple(value.shape)}"
            )
    missing = set(template) - set(tensors)
    if missing:
        raise RuntimeError(f"torch keys without a TF variable: {sorted(missing)}")
    return tensors


def normalise(dn: np.ndarray) -> np.ndarray:
    """Notebook normalisation of (9, H, W) digital numbers, in float64, returned as float32."""
    x = np.log(dn.astype(np.float64) * 0.005 + 1)
    x = (x - NORM_PERCENTILES[:, 0, None, None]) / NORM_PERCENTILES[:, 1, None, None]
    e = np.exp(x * 5 - 1)
    return (e / (e + 1)).astype(np.float32)


def tf_probabilities(model: object, x_chw: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    logits = model(tf.constant(x_chw.transpose(1, 2, 0)[None]))  # type: ignore[operator]
    return np.asarray(tf.nn.softmax(logits)[0]).transpose(2, 0, 1)


def torch_probabilities(net: object, x_chw: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        logits = net(torch.from_numpy(x_chw)[None])  # type: ignore[operator]
    return torch.softmax(logits, dim=1)[0].numpy()


def check_resize(*, seed: int = 0) -> float:
    """Max abs difference of TF's ScaleAndTranslate (as the graph calls it) and the port's resize.

    The graph's node has ``kernel_type="triangle"`` and no ``antialias`` attribute, so the op
    default ``antialias=True`` applies; size ``(H // 2, W // 2)``, scale ``size / (H, W)`` in
    float32, translation 0. Even, odd and tiny sizes.
    """
    import tensorflow as tf
    import torch

    from geoseg.models.architectures.dynamicworld import antialiased_triangle_resize

    rng = np.random.default_rng(seed)
    worst = 0.0
    for h, w in [(8, 8), (7, 9), (45, 51), (64, 63), (101, 2), (3, 3), (2, 5)]:
        x = rng.normal(size=(1, h, w, 5)).astype(np.float32)
        size = np.array([h // 2, w // 2], dtype=np.int32)
        expected = tf.raw_ops.ScaleAndTranslate(
            images=x,
            size=size,
            scale=size.astype(np.float32) / np.array([h, w], dtype=np.float32),
            translation=np.zeros(2, dtype=np.float32),
            kernel_type="triangle",
            antialias=True,
        ).numpy()
        got = antialiased_triangle_resize(
            torch.from_numpy(x.transpose(0, 3, 1, 2)), (h // 2, w // 2)
        )
        worst = max(worst, float(np.abs(got.numpy().transpose(0, 2, 3, 1) - expected).max()))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saved-model", type=Path, required=True)
    parser.add_argument("--chip", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True)
    args = parser.parse_args(argv)

    import rasterio
    import tensorflow as tf
    import torch
    from safetensors.torch import load_file, save_file

    from geoseg.models.architectures.dynamicworld import DynamicWorldNet

    tf_model = tf.saved_model.load(str(args.saved_model))
    tf_vars = tf_variables(tf_model)
    net = DynamicWorldNet(in_channels=9, classes=9).eval()
    state = to_state_dict(tf_vars, net.state_dict())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out))
    net.load_state_dict(load_file(str(args.out)), strict=True)

    with rasterio.open(args.chip) as src:
        names = src.descriptions if all(src.descriptions) else CHIP_BANDS
        dn = src.read([names.index(b) + 1 for b in DW_BANDS])
        if src.nodata is not None and bool((dn == src.nodata).any()):
            print(f"note: {int((dn == src.nodata).all(0).sum())} nodata pixels in the chip")
    x = normalise(dn)

    print(f"TensorFlow {tf.__version__}, torch {torch.__version__}")
    print(f"TF variables: {len(tf_vars)}, {sum(v.size for v in tf_vars.values()):,} values")
    trainable = sum(p.numel() for p in net.parameters())
    print(f"torch parameters: {trainable:,} trainable; wrote {args.out}")
    print(f"ScaleAndTranslate vs port, max abs diff: {check_resize():.3g}")

    p_tf = tf_probabilities(tf_model, x)
    p_pt = torch_probabilities(net, x)
    agree = float((p_tf.argmax(0) == p_pt.argmax(0)).mean())
    print(
        f"full chip {x.shape[1]}x{x.shape[2]}: max abs diff of probabilities "
        f"{np.abs(p_tf - p_pt).max():.3g}, argmax agreement {agree:.6f}"
    )
    classes = ("water", "trees", "grass", "flooded_veg", "crops", "shrub", "built", "bare", "snow")
    share = np.bincount(p_tf.argmax(0).ravel(), minlength=9) / p_tf[0].size
    print(
        "TF class shares: " + ", ".join(f"{c} {s:.3f}" for c, s in zip(classes, share, strict=True))
    )

    saved: dict[str, np.ndarray] = {
        "bands": np.array(DW_BANDS),
        "chip_bands": np.array(CHIP_BANDS),
        "norm_percentiles": NORM_PERCENTILES,
    }
    for name, (row, col, height, width) in REFERENCE_WINDOWS.items():
        xw = x[:, row : row + height, col : col + width]
        p_tf_w = tf_probabilities(tf_model, xw)
        diff = np.abs(p_tf_w - torch_probabilities(net, xw)).max()
        print(f"window {name} (row {row}, col {col}, {height}x{width}): max abs diff {diff:.3g}")
        saved[f"{name}_window"] = np.array([row, col, height, width], dtype=np.int64)
        saved[f"{name}_probabilities"] = p_tf_w.astype(np.float32)
    args.reference.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.reference, **saved)
    print(f"wrote {args.reference} ({args.reference.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

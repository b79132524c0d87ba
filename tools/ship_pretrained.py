"""Install the converted Dynamic World and WatNet-L578 weights as geoseg model files, with cards.

Reads the plain state dicts written by ``tools/convert_dynamicworld.py`` and
``tools/convert_watnet.py``, strict-loads each into its geoseg architecture, and writes
``geoseg/models/weights/dynamicworld-s2l1c.safetensors`` and ``watnet-l578.safetensors``: the
same float32 tensors with a full model card (bands, units, normalisation, classes, tile plan,
training summary, what was measured here, licence and attribution). The licence texts are
copied beside them (``*.LICENSE.txt``), Dynamic World's with its NOTICE.

The figures measured here (port fidelity, IoU, water fractions) are constants below; they come
from ``tools/convert_dynamicworld.py`` (fidelity) and ``benchmarks/pretrained_accuracy.py``
(everything else), which print them. Command, from the repo root::

    .venv/bin/python tools/ship_pretrained.py \\
        --dynamicworld /work/staging/dynamicworld.safetensors \\
        --watnet /work/staging/watnet_l578.safetensors \\
        --licences ../shared/models

Pass ``--separate-flooded-vegetation`` (with ``--out-dir`` elsewhere) for a Dynamic World file
whose ``water`` is open water only and whose flooded vegetation is a class of its own.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from geoseg.models.card import ClassInfo, ModelCard  # noqa: E402
from geoseg.models.normalisation import Transform  # noqa: E402

# --------------------------------------------------------------------------- Dynamic World

DW_FILE = "dynamicworld-s2l1c.safetensors"
DW_SOURCE = "https://github.com/google/dynamicworld (commit 0dd288f, model/forward)"
# Per band (a, b) of (ln(0.005 x + 1) - a) / b, single_image_runner.ipynb, full precision:
# "30/70 percentiles measured across a diverse set of surface conditions after a log transform".
DW_PERCENTILES = (
    (1.7417268007636313, 2.023298706048351),  # B2
    (1.7261204997060209, 2.038905204308012),  # B3
    (1.6798346251414997, 2.179592821212937),  # B4
    (1.7734969472909623, 2.2890068333026603),  # B5
    (2.289154079164943, 2.6171674549378166),  # B6
    (2.382939712192371, 2.773418590375327),  # B7
    (2.3828939530384052, 2.7578332604178284),  # B8
    (2.1952484264967844, 2.789092484314204),  # B11
    (1.554812948247501, 2.4140534947492487),  # B12
)
DW_BANDS = (
    "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "swir1", "swir2",
)  # fmt: skip
# Network output channels (softmax) and Dynamic World's own palette.
DW_CHANNELS = (
    ("water", "#419bdf"),
    ("trees", "#397d49"),
    ("grass", "#88b053"),
    ("flooded_vegetation", "#7a87c6"),
    ("crops", "#e49635"),
    ("shrub_and_scrub", "#dfc35a"),
    ("built", "#c4281b"),
    ("bare", "#a59b8f"),
    ("snow_and_ice", "#b39fe1"),
)
DW_NOTICE = (
    "This source code is available under an Apache 2 open source license and requires\n"
    "the following attribution:\n"
    "\n"
    "This code is produced for the Dynamic World Project by Google in partnership\n"
    "with National Geographic and the World Resources Institute.\n"
)
DW_COPYRIGHT = "Copyright 2021 Google LLC."
# Apache-2.0 section 4(b): modified files carry a prominent notice that they were changed.
DW_CHANGES = (
    "Changed by geoseg: the TensorFlow SavedModel's variables were converted to a PyTorch "
    "safetensors state dict for a re-implementation of the network "
    "(tools/convert_dynamicworld.py); the weight values are unchanged."
)

# Measured here (tools/convert_dynamicworld.py; benchmarks/pretrained_accuracy.py).
DW_MEASURED: dict[str, Any] = {
    "port_fidelity": {
        "reference": "TensorFlow 2.21.0 (CPU, oneDNN off) running the SavedModel",
        "input": "Sen1Floods11 chip Spain_7370579_S2Hand.tif (512 x 512, 13-band L1C, no nodata)",
        "network_fp32_max_abs_diff_probabilities": 1.91e-06,
        "network_fp32_argmax_agreement": 1.0,
        "card_normalisation_fp32_max_abs_diff_64px_window": 1.16e-06,
        "predictor_fp32_vs_port_max_abs_diff_chip": 2.95e-06,
        "predictor_bf16_vs_port_max_abs_diff_chip": 0.0375,
        "predictor_bf16_vs_port_argmax_agreement_chip": 0.9908,
    },
    "chip_water_fraction": {
        "note": "no labels for the chip; a flood in Spain (Sen1Floods11)",
        "tensorflow_argmax_water": 0.300,
        "tensorflow_argmax_water_or_flooded_vegetation": 0.371,
        "geoseg_water_unsmoothed_fp32": 0.447,
        "geoseg_water_default_smoothing_fp32": 0.497,
        "geoseg_water_default_smoothing_bf16": 0.500,
        "mndwi_above_0_unsmoothed": 0.427,
        "watnet_l578_on_dn_over_10000_unsmoothed": 0.307,
        "agreement_with_watnet_unsmoothed": 0.825,
        "iou_with_watnet_unsmoothed": 0.624,
    },
}

# --------------------------------------------------------------------------- WatNet-L578

WATNET_FILE = "watnet-l578.safetensors"
WATNET_SOURCE = (
    "https://github.com/xinluo2018/landsat578-water (commit 3867428, model/trained/watnet_l578.pth)"
)
WATNET_MIT = (
    "MIT License\n\nCopyright (c) 2021 xin luo\n\n"
    "Permission is hereby granted, free of charge, to any person obtaining a copy\n"
    'of this software and associated documentation files (the "Software"), to deal\n'
    "in the Software without restriction, including without limitation the rights\n"
    "to use, copy, modify, merge, publish, distribute, sublicense, and/or sell\n"
    "copies of the Software, and to permit persons to whom the Software is\n"
    "furnished to do so, subject to the following conditions:\n\n"
    "The above copyright notice and this permission notice shall be included in all\n"
    "copies or substantial portions of the Software.\n\n"
    'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR\n'
    "IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,\n"
    "FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE\n"
    "AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER\n"
    "LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,\n"
    "OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE\n"
    "SOFTWARE.\n"
)
WATNET_BANDS = ("blue", "green", "red", "nir", "swir1", "swir2")
# Typical reflectance per band, for the units check and CRF image scaling only (WatNet's
# training statistics are not published): mean and std of the Landsat 7 scene here as ETM+ TOA
# reflectance (benchmarks/pretrained_accuracy.py, sun elevation 50 degrees).
WATNET_TYPICAL: tuple[tuple[float, ...], tuple[float, ...]] = (
    (0.115, 0.104, 0.095, 0.24, 0.18, 0.106),
    (0.023, 0.03, 0.039, 0.057, 0.057, 0.048),
)
# benchmarks/pretrained_accuracy.py: IoU of water (strata_landcover class 6) on the Landsat 7
# scene, every model through geoseg's pipeline, fp32.
WATNET_MEASURED: dict[str, Any] = {
    "landsat7_nc": {
        "input": (
            "lsat7_2000_stack.tif 8-bit ETM+ DNs converted to TOA reflectance (Chander et al. "
            "2009 gains and ESUN, bands 1-3, 5, 7 high gain and 4 low gain, sun elevation 50 "
            "deg assumed: the scene has no metadata); no atmospheric correction"
        ),
        "pixels": (
            "B7 (SWIR2) is nodata over 38 % of the scene: scored where every band has data "
            "(held-out region of landsat7-water-crops: 17,275 labelled pixels; whole scene: "
            "135,092)"
        ),
        "water_iou": {
            "held_out_default_smoothing": {
                "watnet-l578": 0.496,
                "landsat7-water-crops": 0.524,
                "ndwi:0.35": 0.507,
            },
            "held_out_unsmoothed": {
                "watnet-l578": 0.504,
                "landsat7-water-crops": 0.518,
                "ndwi:0.35": 0.507,
            },
            "whole_scene_default_smoothing": {"watnet-l578": 0.393, "ndwi:0.35": 0.420},
            "whole_scene_unsmoothed": {"watnet-l578": 0.398, "ndwi:0.35": 0.410},
            "landsat96_polygons": {"watnet-l578": 0.557, "ndwi:0.35": 0.679},
        },
        "watnet_precision_recall_whole_scene": [0.922, 0.406],
        "sensitivity": (
            "held-out IoU unsmoothed at sun elevation 40 / 50 / 60 deg: 0.421 / 0.504 / 0.530; "
            "with dark-object subtraction 0.143; the default water smoothing (crf+morph) "
            "removed all held-out water at 40 deg (IoU 0): the scene's unknown calibration "
            "matters more than the model here"
        ),
    },
    "sentinel2_chip": {
        "input": "Sen1Floods11 L1C chip, B2, B3, B4, B8, B11, B12 DN / 10000 (TOA, out of domain)",
        "water_fraction_unsmoothed": 0.307,
        "water_fraction_default_smoothing": 0.316,
        "iou_with_dynamic_world_water_unsmoothed": 0.624,
    },
}


def dynamicworld_card(*, separate_flooded_vegetation: bool = False) -> ModelCard:
    """The card of the shipped Dynamic World file."""
    water = (0,) if separate_flooded_vegetation else (0, 3)
    classes = [ClassInfo(name="background", color="#000000")]
    for channel, (name, color) in enumerate(DW_CHANNELS):
        if name == "water":
            classes.append(ClassInfo(name=name, color=color, channels=water))
        elif name == "flooded_vegetation" and not separate_flooded_vegetation:
            continue
        else:
            classes.append(ClassInfo(name=name, color=color, channels=(channel,)))
    # Typical input, for the units check and CRF scaling: the digital numbers at the middle
    # of the published 30/70 log percentiles; spread from them as for a normal distribution
    # (the 30-70 interval is 1.049 standard deviations).
    dn = [(math.exp(v) - 1) / 0.005 for pair in DW_PERCENTILES for v in pair]
    mean = tuple(round((math.exp((a + b) / 2) - 1) / 0.005, 1) for a, b in DW_PERCENTILES)
    std = tuple(round((hi - lo) / 1.049, 1) for lo, hi in zip(dn[::2], dn[1::2], strict=True))
    water_note = (
        "water is open water only; flooded_vegetation is its own class"
        if separate_flooded_vegetation
        else "water = Dynamic World water + flooded vegetation (flood extent: flooded fields "
        "and marsh count as water); the other classes are Dynamic World's own"
    )
    return ModelCard(
        name="dynamicworld-s2l1c" + ("-open-water" if separate_flooded_vegetation else ""),
        architecture="dynamicworld",
        bands=DW_BANDS,
        mean=mean,
        std=std,
        classes=tuple(classes),
        tile_size=512,
        overlap=64,
        resolution_m=10.0,
        sensor="sentinel2-l1c",
        normalisation=(
            Transform(op="scale", params={"factor": 0.005}),
            Transform(op="log1p"),
            Transform(
                op="zscore",
                params={
                    "mean": tuple(a for a, _ in DW_PERCENTILES),
                    "std": tuple(b for _, b in DW_PERCENTILES),
                },
            ),
            Transform(op="sigmoid", params={"gain": 5.0, "shift": -1.0}),
        ),
        reflectance_scale=10000.0,
        activation="softmax",
        outputs=9,
        licence="Apache-2.0",
        attribution=DW_NOTICE + "\n" + DW_COPYRIGHT + "\n\n" + DW_CHANGES,
        source=DW_SOURCE,
        description=(
            "Google's Dynamic World land use / land cover network (Brown et al. 2022), the "
            "'forward' model, ported to PyTorch. Input: Sentinel-2 Level-1C top-of-atmosphere "
            "reflectance x 10000 (the digital numbers of L1C products before processing "
            "baseline 04.00 and of harmonised archives), bands B2, B3, B4, B5, B6, B7, B8, B11, "
            "B12 at 10 m. One date, no cloud mask: missed clouds tend to come out as "
            "snow_and_ice and cloud shadows as water. " + water_note + "."
        ),
        training={
            "trained_by": (
                "Google, with National Geographic and the World Resources Institute "
                "(Brown et al. 2022); geoseg did not train or fine-tune it"
            ),
            "publication": (
                "Brown, C. F., Brumby, S. P., Guzder-Williams, B., et al. (2022). Dynamic World, "
                "Near real-time global 10 m land use land cover mapping. Scientific Data 9, 251. "
                "https://doi.org/10.1038/s41597-022-01307-4"
            ),
            "data": (
                "Sentinel-2 L1C tiles sampled worldwide, hand-annotated by experts and "
                "non-experts into the nine Dynamic World classes (see the paper)"
            ),
            "published_accuracy": (
                "the paper validates against held-out expert-annotated tiles (its Technical "
                "Validation section); not restated here: the figures could not be checked "
                "against the paper from this machine"
            ),
            "known_limits": (
                "strongest in temperate and tree-dominated biomes; arid shrublands and "
                "rangelands confuse crops and shrub (WRI data page)"
            ),
            "conversion": (
                "tools/convert_dynamicworld.py --saved-model "
                "../shared/models/dynamicworld/model/forward --chip "
                "../shared/data/sen1floods11_s2/Spain_7370579_S2Hand.tif --out "
                "/work/staging/dynamicworld.safetensors --reference "
                "tests/data/dynamicworld_tf_reference.npz (throw-away venv with tensorflow-cpu "
                "2.21.0, torch 2.14.1), then tools/ship_pretrained.py"
            ),
            "classes_from_channels": (
                "water = channels 0 (water) + 3 (flooded vegetation); trees 1, grass 2, "
                "crops 4, shrub_and_scrub 5, built 6, bare 7, snow_and_ice 8"
                if not separate_flooded_vegetation
                else "one class per channel"
            ),
            "measured_here": DW_MEASURED,
        },
    )


def watnet_card() -> ModelCard:
    """The card of the shipped WatNet-L578 file."""
    mean, std = WATNET_TYPICAL
    return ModelCard(
        name="watnet-l578",
        architecture="watnet",
        bands=WATNET_BANDS,
        mean=mean,
        std=std,
        classes=(
            ClassInfo(name="background", color="#000000"),
            ClassInfo(name="water", color="#1f78b4"),
        ),
        tile_size=512,
        overlap=64,
        resolution_m=30.0,
        normalisation=(Transform(op="clip", params={"min": 0.0, "max": 1.0}),),
        reflectance_scale=1.0,
        activation="sigmoid",
        licence="MIT",
        attribution=WATNET_MIT,
        source=WATNET_SOURCE,
        description=(
            "Xin Luo's WatNet-L578 surface-water U-Net for Landsat 5 TM, 7 ETM+ and 8 OLI. "
            "Input: surface reflectance 0-1 (Landsat SR digital numbers / 10000 in its "
            "training; Collection 2 Level-2 DNs become reflectance with scale 2.75e-5 and "
            "offset -0.2: --sensor landsat89-c2l2 or landsat57-c2l2, or the file's own scale "
            "and offset), bands blue, green, red, NIR, SWIR1, SWIR2, clipped to 0-1; heights "
            "and widths multiples of 16. Output: one logit, sigmoid = water probability. A "
            "small model (270 k parameters) trained on 43 scenes and weakly validated."
        ),
        training={
            "trained_by": "Xin Luo (github xinluo2018); geoseg did not train or fine-tune it",
            "data": (
                "dset-l578: 43 Landsat 5/7/8 surface-reflectance scenes with hand-labelled "
                "water, 36 for training and 7 for validation (split by scene); random 256 x 256 "
                "crops, one per scene per epoch; scene / 10000; batch 4; Adam lr 1e-3; BCE; "
                "20 epochs (trainer.ipynb)"
            ),
            "published_accuracy": (
                "no paper for WatNet-L578; trainer.ipynb prints, at epoch 20, training OA 0.95 "
                "/ mIoU 0.89 and validation OA 0.87 / mIoU 0.76 (best validation mIoU 0.93 at "
                "epoch 9); whether the saved weights are exactly that run is not stated"
            ),
            "conversion": (
                ".venv/bin/python tools/convert_watnet.py --pth "
                "../shared/models/watnet_l578/watnet_l578.pth --chip "
                "../shared/data/sen1floods11_s2/Spain_7370579_S2Hand.tif --out "
                "/work/staging/watnet_l578.safetensors, then tools/ship_pretrained.py"
            ),
            "port_fidelity": (
                "bit-identical probabilities to the notebook's network on the Sentinel-2 chip "
                "(max abs diff 0); the .pth loads strictly"
            ),
            "validation": {
                "data": (
                    "not WatNet's own validation: the Landsat 7 scene here (never seen in "
                    "training), whole scene where every band has data, as TOA reflectance, "
                    "default smoothing; see measured_here"
                ),
                "classes": {"water": {"iou": 0.393, "precision": 0.922, "recall": 0.406}},
            },
            "measured_here": WATNET_MEASURED,
        },
    )


def _install(state_path: Path, card: ModelCard, out: Path) -> Path:
    from geoseg.models.registry import import_state_dict

    return import_state_dict(state_path, card, out)  # strict load into the card's network


def _licence_file(out: Path, *parts: Path) -> Path:
    text = "\n\n".join(p.read_text(encoding="utf-8").rstrip() + "\n" for p in parts)
    out.write_text(text, encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dynamicworld", type=Path, required=True)
    parser.add_argument("--watnet", type=Path, required=True)
    parser.add_argument("--licences", type=Path, required=True, help="../shared/models")
    parser.add_argument("--out-dir", type=Path, default=REPO / "geoseg" / "models" / "weights")
    parser.add_argument("--separate-flooded-vegetation", action="store_true")
    args = parser.parse_args(argv)
    out = args.out_dir
    dw_card = dynamicworld_card(separate_flooded_vegetation=args.separate_flooded_vegetation)
    dw = out / (f"{dw_card.name}.safetensors")
    written = [
        _install(args.dynamicworld, dw_card, dw),
        _install(args.watnet, watnet_card(), out / WATNET_FILE),
        _licence_file(
            out / "dynamicworld-s2l1c.LICENSE.txt",
            args.licences / "dynamicworld" / "NOTICE",
            args.licences / "dynamicworld" / "LICENSE",
        ),
        _licence_file(out / "watnet-l578.LICENSE.txt", args.licences / "watnet_l578" / "LICENSE"),
    ]
    for path in written:
        print(f"{path}  {path.stat().st_size:,} B")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

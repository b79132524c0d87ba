"""GPU batch size from a network's measured activation memory (no GPU needed)."""

from __future__ import annotations

import pytest
import torch

from geoseg.errors import ConfigError
from geoseg.models.batch_size import (
    MAX_BATCH,
    activation_bytes_per_tile,
    batch_for_memory,
    peak_live_bytes,
)
from geoseg.models.card import ClassInfo, ModelCard
from geoseg.models.registry import build_network

MB = 2**20


def _network(architecture: str, encoder: str = "", **params: object) -> torch.nn.Module:
    card = ModelCard(
        name="probe",
        architecture=architecture,
        encoder=encoder,
        bands=("red", "green", "blue"),
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        classes=(ClassInfo(name="background"), ClassInfo(name="roads")),
        params=params,
    )
    return build_network(card)


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    return _network("unet", "resnet34")


@pytest.fixture(scope="module")
def tiramisu() -> torch.nn.Module:
    return _network("tiramisu", variant="fc-densenet56")


def test_fc_densenet_needs_several_times_the_unet_per_tile(
    unet: torch.nn.Module, tiramisu: torch.nn.Module
) -> None:
    dense = activation_bytes_per_tile(tiramisu, bands=3, tile=512, probe=64)
    plain = activation_bytes_per_tile(unet, bands=3, tile=512, probe=64)
    # Measured at 512 x 512 in bf16: 417 MB against 39.8 MB (benchmarks/architectures.py).
    assert dense > 5 * plain, (dense / MB, plain / MB)
    assert 20 * MB < plain < 80 * MB
    # So a GPU gets several times fewer FC-DenseNet tiles per batch.
    free = 8e9
    assert batch_for_memory(free, dense) * 5 <= batch_for_memory(free, plain)


def test_the_probe_predicts_a_larger_tile(unet: torch.nn.Module) -> None:
    # Measured directly (probe = tile) at 128 and 256 px: activation memory grows with the
    # pixels (benchmarks/architectures.py measures 4.0 from 256 to 512 px for all seven
    # networks) ...
    small = activation_bytes_per_tile(unet, bands=3, tile=128, probe=128)
    large = activation_bytes_per_tile(unet, bands=3, tile=256, probe=256)
    assert large / small == pytest.approx(4.0, rel=0.05)
    # ... so a 64 px probe scaled to 256 px is what a 256 px pass measures.
    assert activation_bytes_per_tile(unet, bands=3, tile=256, probe=64) == pytest.approx(
        large, rel=0.05
    )


def test_estimate_leaves_the_network_as_it_was(unet: torch.nn.Module) -> None:
    before = {k: (v.dtype, v.clone()) for k, v in unet.state_dict().items()}
    batch_norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in unet.modules())
    activation_bytes_per_tile(unet, bands=3, tile=256, probe=64)
    after = unet.state_dict()
    assert set(after) == set(before)
    for k, (dtype, value) in before.items():
        assert after[k].dtype == dtype and torch.equal(after[k], value), k
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in unet.modules()) == batch_norms


def test_peak_live_bytes_counts_what_is_alive_at_once() -> None:
    class Chain(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = x * 2  # 4 MB
            b = a + 1  # 4 MB, a still alive
            del a
            return b * 3  # 4 MB, a freed: two live at once, never three

    x = torch.zeros(1024, 1024)
    assert peak_live_bytes(Chain(), x) == 2 * 4 * MB
    # Under bf16 autocast the casts count too: the input's and the weight's bf16 copies
    # (2 MB each) beside the 2 MB output; weights cast beforehand are not copied.
    lin = torch.nn.Linear(1024, 1024, bias=False)
    assert peak_live_bytes(lin, x) == 4 * MB
    assert peak_live_bytes(lin, x, dtype=torch.bfloat16) == 6 * MB
    assert peak_live_bytes(lin.to(torch.bfloat16), x, dtype=torch.bfloat16) == 4 * MB


@pytest.mark.parametrize("per_tile", [1e6, 4e7, 4.2e8])
def test_batch_for_memory_grows_with_free_memory_and_never_drops_below_one(
    per_tile: float,
) -> None:
    frees = [0, 1e8, 5e8, 1e9, 4e9, 8e9, 16e9, 80e9]
    batches = [batch_for_memory(f, per_tile, weights_bytes=5e7) for f in frees]
    assert batches == sorted(batches)
    assert min(batches) == 1
    assert max(batches) <= MAX_BATCH


def test_batch_for_memory_shrinks_with_the_cost_of_a_tile() -> None:
    costs = [1e7, 4e7, 1e8, 4.2e8, 1e9, 1e11]
    batches = [batch_for_memory(16e9, c, weights_bytes=1e8) for c in costs]
    assert batches == sorted(batches, reverse=True)
    assert batches[0] == MAX_BATCH and batches[-1] == 1


def test_batch_for_memory_keeps_the_margin_and_the_weights_free() -> None:
    # 10 GB free, 40 % kept back, 1 GB of weights: 5 GB for tiles of 1 GB.
    assert batch_for_memory(10e9, 1e9, weights_bytes=1e9, margin=0.4) == 5
    assert batch_for_memory(10e9, 1e9, weights_bytes=1e9, margin=0.0) == 9
    assert batch_for_memory(10e9, 1e9, weights_bytes=20e9) == 1


@pytest.mark.parametrize(
    ("free", "per_tile", "margin"), [(1e9, 0, 0.4), (-1, 1e8, 0.4), (1e9, 1e8, 1.0)]
)
def test_batch_for_memory_rejects_bad_inputs(free: float, per_tile: float, margin: float) -> None:
    with pytest.raises(ConfigError):
        batch_for_memory(free, per_tile, margin=margin)


def test_activation_estimate_rejects_a_tile_off_the_grid(unet: torch.nn.Module) -> None:
    with pytest.raises(ConfigError, match="multiple of 32"):
        activation_bytes_per_tile(unet, bands=3, tile=500)


def test_the_predictor_sizes_a_gpu_batch_by_the_network_it_runs(
    unet: torch.nn.Module, tiramisu: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A GPU with 8 GiB free, faked: the predictor's default batch for FC-DenseNet56 is a
    # fraction of the U-Net's (its activations per tile are ~10x), where the fixed 0.4 GB a
    # tile gave both the same batch. The CPU default does not look at the network.
    from geoseg.models.predictor import _default_batch

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * 2**30, 16 * 2**30))
    light = _default_batch("cuda:0", 512, unet, bands=3, half=True)
    heavy = _default_batch("cuda:0", 512, tiramisu, bands=3, half=True)
    assert heavy >= 1 and light >= 5 * heavy
    assert _default_batch("cuda:0", 512, None) == batch_for_memory(8 * 2**30, 0.4e9)
    assert _default_batch("cpu", 256, tiramisu) == _default_batch("cpu", 256, unet) == 4

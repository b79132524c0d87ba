"""Model files are written through unpredictable temporaries, never through a link."""

from __future__ import annotations

from pathlib import Path

import torch

from geoseg.models.card import ClassInfo, ModelCard, read_card
from geoseg.models.registry import save_model

CARD = ModelCard(
    name="t", architecture="unet", encoder="resnet18", bands=("red",), mean=(0.0,), std=(1.0,),
    classes=(ClassInfo(name="background"), ClassInfo(name="water")),
)  # fmt: skip


def test_a_link_at_the_old_temporary_name_or_the_target_is_never_written_through(
    tmp_path: Path,
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "m.safetensors"
    (tmp_path / ".m.safetensors.partial").symlink_to(victim)  # the name used to be fixed
    save_model(out, CARD, {"w": torch.zeros(2)})
    assert victim.read_text() == "keep me"
    assert read_card(out).name == "t"
    out.unlink()
    out.symlink_to(victim)  # a link at the model's own name is replaced, not followed
    save_model(out, CARD, {"w": torch.ones(2)})
    assert victim.read_text() == "keep me" and not out.is_symlink()
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == [".m.safetensors.partial", "m.safetensors", "victim.txt"]

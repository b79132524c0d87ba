"""The README's set-up block and examples stay true."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from geoseg.training.config import TrainConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_first_block_holds_the_two_setup_commands_and_ci_runs_the_second() -> None:
    first = re.search(r"```\n(.*?)```", README.read_text(), flags=re.S)
    assert first is not None
    lines = [ln for ln in first.group(1).splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines == ["make demo", "make test"]
    assert "make test" in (README.parent / ".ci" / "run").read_text()


def test_training_example_is_a_valid_config() -> None:
    (example,) = [b for b in _blocks("yaml") if "class_map" in b]
    config = TrainConfig.from_dict(yaml.safe_load(example))
    assert config.class_map.class_names == ("background", "roads")
    assert len(config.inputs) == 2 and config.inputs[1].labels.all_touched

"""Training files: the YAML that ``geoseg train`` reads into a :class:`TrainConfig`.

A training file holds the fields of :class:`~geoseg.training.config.TrainConfig`
(see :meth:`~geoseg.training.config.TrainConfig.from_dict`) and, optionally, ``data_root``:

- relative paths resolve against the file's folder, so a file means the same data from
  any working directory;
- with ``data_root``, relative input paths (images and labels) resolve against it instead
  (``output`` and ``checkpoint_dir`` still against the file's folder). It may name
  environment variables as ``${VAR}`` or ``${VAR:-default}`` (``default`` when ``VAR`` is
  unset or empty), e.g. ``${GEOSEG_SHARED_DATA:-../../../shared/data}``; a relative result
  resolves against the file's folder;
- ``checkpoint_dir`` defaults to ``<output>.ckpt``, so an interrupted run resumes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from geoseg.errors import ConfigError
from geoseg.training.config import TrainConfig

__all__ = ["expand_variables", "read_train_file"]

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_variables(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in ``text`` from the environment.

    Raises
    ------
    ConfigError
        If a variable without a default is unset.
    """
    env = os.environ if environ is None else environ

    def value(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = env.get(name)
        if found:
            return found
        if default is None:
            raise ConfigError(
                f"{text!r} names ${{{name}}}, which is not set; set it or give a default: "
                f"${{{name}:-DEFAULT}}"
            )
        return default

    return _VARIABLE.sub(value, text)


def _is_local_relative(path: str) -> bool:
    return not (path.startswith("/vsi") or "://" in path or Path(path).is_absolute())


def _resolve_paths(data: Mapping[str, Any], base: Path, data_root: Path | None) -> dict[str, Any]:
    """The file's relative paths made absolute (inputs against ``data_root`` when given)."""
    inputs_base = data_root or base

    def fix(p: str, against: Path) -> str:
        return str(against / p) if _is_local_relative(p) else p

    out = dict(data)
    for key in ("inputs", "test"):
        if out.get(key):
            out[key] = _resolve_inputs(out[key], fix, inputs_base)
    for key in ("output", "checkpoint_dir", "init_from", "init_encoder_from"):
        value = out.get(key)
        if isinstance(value, str) and _is_local_relative(value):
            out[key] = str((base / value).resolve())
    return out


def _resolve_inputs(items: Any, fix: Any, inputs_base: Path) -> Any:
    if not isinstance(items, list):
        return items  # TrainConfig.from_dict says what is wrong with it
    inputs = []
    for item in items:
        if not isinstance(item, Mapping):
            inputs.append(item)  # TrainConfig.from_dict says what is wrong with it
            continue
        item = dict(item)
        if "image" in item:
            item["image"] = fix(str(item["image"]), inputs_base)
        labels = item.get("labels")
        if isinstance(labels, str):
            item["labels"] = fix(labels, inputs_base)
        elif isinstance(labels, Mapping) and "path" in labels:
            item["labels"] = {**labels, "path": fix(str(labels["path"]), inputs_base)}
        inputs.append(item)
    return inputs


def read_train_file(
    path: str | os.PathLike[str], *, overrides: Mapping[str, Any] | None = None
) -> TrainConfig:
    """Read a training file into a :class:`~geoseg.training.config.TrainConfig`.

    Parameters
    ----------
    path
        The YAML file.
    overrides
        Fields that replace the file's (e.g. ``output``, ``epochs``, ``command``), taken as
        given: their paths are not resolved against the file's folder.

    Raises
    ------
    ConfigError
        If the file cannot be read, is not a mapping of training options, gives no output
        (nor do ``overrides``), or holds an invalid option.
    """
    import yaml

    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read training file {str(path)!r}: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"training file {str(path)!r} must hold a mapping of options")
    base = file.parent.resolve()
    root = data.pop("data_root", None)
    data_root = None
    if root is not None:
        if not isinstance(root, str | os.PathLike):
            raise ConfigError(f"data_root must be a folder path, not {root!r}")
        data_root = (base / Path(expand_variables(os.fspath(root))).expanduser()).resolve()
    data = _resolve_paths(data, base, data_root)
    data.update(overrides or {})
    if not data.get("output"):
        raise ConfigError("no output model file: set `output:` in the file or pass -o")
    data.setdefault("checkpoint_dir", f"{data['output']}.ckpt")
    return TrainConfig.from_dict(data)

"""Batch workflow files: many scenes and how to segment them, validated before any work.

:func:`load_workflow` reads a workflow YAML file and checks everything that can be checked
before a pixel is read: keys and types, classes and their models (cards read, files hashed),
smoothing, tiling and inference options, the inputs (glob patterns, explicit files, a folder
of STAC item JSON files pointing at GeoTIFF assets) and where each scene's outputs go. Every
problem is collected and reported at once as ``file:line: key: problem`` in one
:class:`~geoseg.errors.WorkflowError`, and nothing is created. The result is a
:class:`~geoseg.batch.workflow.Workflow`: the scenes, one :class:`~geoseg.config.RunConfig`
and the config hash that tells the manifest whether a done scene is still up to date.

Running a workflow (:func:`run_workflow`) lives in :mod:`geoseg.batch.runner`, its state
(:func:`workflow_status`) in :mod:`geoseg.batch.manifest`. The schema is documented in
``workflows/README.md``.
"""

from __future__ import annotations

import difflib
import glob
import hashlib
import itertools
import json
import os
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import yaml  # type: ignore[import-untyped, unused-ignore]

from geoseg import __version__
from geoseg.batch.manifest import InputStamp, Scene
from geoseg.batch.workflow import TEMPLATE_FIELDS, Workflow
from geoseg.batch.yaml_guard import MAX_MESSAGE, excerpt, first_alias
from geoseg.config import InferenceOptions, parse_class_list, run_config
from geoseg.errors import ConfigError, GeosegError, WorkflowError
from geoseg.models.defaults import DEFAULT_MODELS, WEIGHTS_DIR
from geoseg.run.outputs import output_paths
from geoseg.tiling.stac import is_remote, stac_asset

__all__ = ["load_workflow"]


def _default_identity(cls: str) -> str:
    """Config-hash identity of a class's default models: the candidates and their sha256."""
    from geoseg.models.spectral import is_spectral

    parts = []
    for source in DEFAULT_MODELS[cls]:
        path = WEIGHTS_DIR / source
        if is_spectral(source):
            parts.append(source.lower())
        elif path.is_file():
            parts.append(f"sha256:{_sha256(path)}")
        else:
            parts.append(f"missing:{source}")
    return "default:" + "|".join(parts)


_TOP_KEYS = (
    "version", "name", "inputs", "classes", "models", "bands", "sensor", "smoothing", "tiling",
    "inference", "output", "min_area_m2", "simplify_m", "scheduler", "workers", "threads",
    "concurrency", "retries",
)  # fmt: skip
_SECTION_KEYS = {
    "inputs": ("glob", "files", "stac", "stac_asset", "checksum"),
    "smoothing": ("method", "params"),
    "tiling": ("block", "tile", "overlap"),
    "inference": ("device", "precision", "batch_size", "tta"),
    "output": (
        "folder",
        "name",
        "overwrite",
        "raster",
        "probabilities",
        "uncertainty",
        "cog",
        "crs",
        "centerlines",
        "prune_m",
    ),
}
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_MAGIC = re.compile(r"[*?[]")


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True, slots=True)
class _Field:
    """A value in the file, its dotted key and the line of that key."""

    key: str
    node: yaml.Node
    value: Any
    at: int

    @property
    def line(self) -> int:
        """The line of the value itself (a list item's, not its key's)."""
        return int(self.node.start_mark.line) + 1


@dataclass(frozen=True, slots=True)
class _Input:
    path: str
    label: str
    item: str | None = None
    item_id: str | None = None
    date: str | None = None
    checksum: str | None = None


@dataclass(frozen=True, slots=True)
class _OutputSpec:
    folder: Path | None
    template: str
    line: int
    overwrite: bool
    raster: bool
    probabilities: bool
    uncertainty: bool
    cog: bool
    crs: str | None
    centerlines: bool
    prune_m: float


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(value), "a list" if isinstance(value, list) else "a mapping" if value else "empty"
    )


class _Parser:
    """Turns the YAML node tree into a :class:`Workflow`, collecting every problem."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.base = path.parent
        self.problems: list[tuple[int, str, str]] = []
        self.warnings: list[str] = []
        self.loader = yaml.SafeLoader(text)

    def problem(self, line: int, key: str, message: str) -> None:
        self.problems.append((line, excerpt(key, 80), excerpt(message, MAX_MESSAGE)))

    def bad(self, f: _Field, message: str) -> None:
        self.problem(f.at, f.key, message)

    def fail_if_any(self) -> None:
        if not self.problems:
            return
        lines = [f"{self.path}:{ln}: {key}: {msg}" for ln, key, msg in sorted(set(self.problems))]
        n = len(lines)
        header = f"{self.path} is not a valid workflow ({n} problem{'s' if n > 1 else ''}):"
        raise WorkflowError("\n".join([header, *lines]))

    # ---- typed access to nodes

    def _value(self, node: yaml.Node) -> Any:
        return self.loader.construct_object(node, deep=True)

    def fields(self, f: _Field | None, allowed: Sequence[str] | None) -> dict[str, _Field]:
        """The keys of a mapping; unknown (not in ``allowed``) and repeated keys are problems.

        ``allowed`` None: any key (the classes a ``models`` mapping may name are unknown when
        ``classes`` itself is invalid; its models are still checked).
        """
        if f is None or f.value is None:
            return {}
        if not isinstance(f.node, yaml.MappingNode):
            self.bad(f, f"must be a mapping, not {_type_name(f.value)}")
            return {}
        out: dict[str, _Field] = {}
        for knode, vnode in f.node.value:
            name = str(self._value(knode))
            key, line = (f"{f.key}.{name}" if f.key else name), knode.start_mark.line + 1
            if allowed is not None and name not in allowed:
                near = difflib.get_close_matches(name, allowed, n=1)
                hint = f"did you mean {near[0]!r}?" if near else f"valid: {', '.join(allowed)}"
                self.problem(line, key, f"unknown key; {hint}")
            elif name in out:
                self.problem(line, key, f"given twice (first on line {out[name].at})")
            else:
                out[name] = _Field(key, vnode, self._value(vnode), line)
        return out

    def typed(self, f: _Field | None, kinds: tuple[type, ...], what: str, default: Any) -> Any:
        if f is None or f.value is None:
            return default
        if not isinstance(f.value, kinds) or (isinstance(f.value, bool) and bool not in kinds):
            self.bad(f, f"must be {what}, not {_type_name(f.value)} ({excerpt(repr(f.value))})")
            return default
        return f.value

    def number(self, f: _Field | None, default: Any, *, minimum: float, whole: bool) -> Any:
        kinds: tuple[type, ...] = (int,) if whole else (int, float)
        value = self.typed(f, kinds, "a whole number" if whole else "a number", default)
        if f is not None and value is not None and value < minimum:
            self.bad(f, f"must be at least {minimum:g}, not {value}")
            return default
        return value

    def paths(self, f: _Field | None) -> list[tuple[str, int]]:
        """A string or a list of strings, each with its line."""
        if f is None or f.value is None:
            return []
        nodes = f.node.value if isinstance(f.node, yaml.SequenceNode) else [f.node]
        out = []
        for i, node in enumerate(nodes):
            value, line = self._value(node), node.start_mark.line + 1
            if isinstance(value, str) and value.strip():
                out.append((value, line))
            else:
                self.problem(line, f"{f.key}[{i}]", f"must be a path, not {_type_name(value)}")
        return out

    # ---- the document

    def parse(self) -> Workflow | None:
        try:
            root = self.loader.get_single_node()
            if root is None:
                self.problem(1, "(file)", "empty; start from an example in workflows/")
                return None
            if alias := first_alias(root):
                # Refused before any value is built: nested aliases expand exponentially
                # (a "billion laughs" of a few lines takes minutes and gigabytes).
                self.problem(
                    alias.start_mark.line + 1,
                    "(file)",
                    "the value anchored here (&name) is used again through an alias (*name); "
                    "workflow files may not use aliases: write the value out where it is needed",
                )
                return None
            if not isinstance(root, yaml.MappingNode):
                what = _type_name(self._value(root))
                self.problem(
                    root.start_mark.line + 1,
                    "(file)",
                    f"must be a mapping of workflow keys (version, inputs, classes, output, "
                    f"...), not {what}; start from an example in workflows/",
                )
                return None
            top = self.fields(_Field("", root, self._value(root), 1), _TOP_KEYS)
            return self._build(top, root.start_mark.line + 1)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            problem = getattr(err, "problem", None) or str(err)
            self.problem(mark.line + 1 if mark else 1, "(file)", f"not valid YAML: {problem}")
            return None
        finally:
            self.loader.dispose()

    def _build(self, top: dict[str, _Field], first: int) -> Workflow | None:
        for required in ("version", "inputs", "classes", "output"):
            if required not in top:
                self.problem(first, required, "missing (required)")
            elif top[required].value in (None, "", [], {}):
                self.bad(top[required], "is empty (required)")
        version = self.typed(top.get("version"), (int,), "1", 1)
        if version != 1:
            self.bad(top["version"], f"{version} is not supported; use 1")
        name = self.typed(top.get("name"), (str,), "a string", self.path.stem)
        if not _NAME.match(name):
            self.bad(top["name"], "may only hold letters, digits, '.', '_' and '-'")
        classes = self._classes(top.get("classes"))
        at = top["classes"].at if "classes" in top else first
        models, model_hashes = self._models(top.get("models"), classes, at)
        bands = self._bands(top.get("bands"))
        sensor = self._sensor(top.get("sensor"))
        smooth, smooth_params = self._smoothing(top.get("smoothing"))
        block, tile, overlap = self._tiling(top.get("tiling"))
        inference = self._inference(top.get("inference"), tile=tile, overlap=overlap)
        out = self._output(top.get("output"))
        min_area = float(self.number(top.get("min_area_m2"), 0.0, minimum=0, whole=False))
        simplify = float(self.number(top.get("simplify_m"), 0.0, minimum=0, whole=False))
        scheduler = self._scheduler(top.get("scheduler"))
        workers = self.number(top.get("workers"), None, minimum=1, whole=True)
        threads = self.number(top.get("threads"), None, minimum=1, whole=True)
        concurrency = self.number(top.get("concurrency"), 2, minimum=1, whole=True)
        retries = self.number(top.get("retries"), 2, minimum=0, whole=True)
        inputs, checksum = self._inputs(top.get("inputs"), out.folder)
        scenes = self._scenes(inputs, out, checksum=checksum)
        config = None
        try:
            config = run_config(
                classes=classes,
                models=models,
                bands=bands,
                sensor=sensor,
                block=block,
                tile=tile,
                overlap=overlap,
                device=inference.device,
                precision=inference.precision,
                batch_size=inference.batch_size,
                tta=inference.tta,
                smooth=smooth,
                smooth_params=smooth_params,
                min_area_m2=min_area,
                simplify_m=simplify,
                raster=out.raster,
                probabilities=out.probabilities,
                uncertainty=out.uncertainty,
                cog=out.cog,
                dst_crs=out.crs,
                centerlines=out.centerlines,
                prune_m=out.prune_m,
                overwrite=out.overwrite,
            )
        except ConfigError as err:
            if classes:  # no classes is reported at its key already
                self.problem(first, "(settings)", str(err))
        if config is None or out.folder is None or self.problems:
            return None
        settings: dict[str, Any] = {
            "geoseg_version": __version__,
            "classes": list(classes),
            "models": model_hashes,
            "bands": list(bands) if bands else None,
            "sensor": sensor,
            "smoothing": {"method": smooth, "params": list(smooth_params)},
            "tiling": {"block": block, "tile": tile, "overlap": overlap},
            "precision": inference.precision,
            # only when set, so the hashes of workflows without the key stay what they were
            **({"tta": inference.tta} if inference.tta != "auto" else {}),
            "min_area_m2": min_area,
            "simplify_m": simplify,
            "outputs": {
                "raster": out.raster,
                "probabilities": out.probabilities,
                "cog": out.cog,
                "crs": out.crs,
            },
        }
        # Only when set otherwise than the default, so the hash of a workflow written before
        # these keys existed (and of every workflow that leaves them out) stays what it was.
        if not out.centerlines or out.prune_m != 20.0:
            settings["centerlines"] = {"enabled": out.centerlines, "prune_m": out.prune_m}
        if out.uncertainty:
            settings["outputs"]["uncertainty"] = True
        return Workflow(
            path=self.path,
            name=name,
            scenes=tuple(scenes),
            config=config,
            folder=out.folder,
            overwrite=out.overwrite,
            scheduler=scheduler,
            workers=workers,
            threads=threads,
            concurrency=concurrency,
            retries=retries,
            config_hash=_hash(settings),
            settings=settings,
            warnings=tuple(self.warnings),
        )

    # ---- what to run

    def _classes(self, f: _Field | None) -> tuple[str, ...]:
        if f is None or f.value in (None, [], ""):
            return ()  # reported as missing
        if not isinstance(f.value, list) or not all(isinstance(c, str) for c in f.value):
            self.bad(f, "must be a list of class names, e.g. [water, roads]")
            return ()
        try:
            return parse_class_list(",".join(f.value))
        except ConfigError as err:
            self.bad(f, str(err))
            return ()

    def _models(
        self, f: _Field | None, classes: tuple[str, ...], first: int
    ) -> tuple[tuple[str, ...], dict[str, str]]:
        """The run's model tuple, ordered so that each class comes from the model named for it.

        Returns the models and, for the config hash, each class's model identity (the file's
        sha256, or the built-in method with its threshold).
        """
        from geoseg.models.card import ModelCard, read_card
        from geoseg.models.spectral import is_spectral, spectral_card

        # Invalid classes (reported at their key) do not hide problems with the models:
        # each one is still checked, against the class it is named for.
        given = self.fields(f, classes or None)
        chosen: dict[str, tuple[str, ModelCard]] = {}
        hashes: dict[str, str] = {}
        for cls in classes:
            if cls in given:
                continue
            # The package default: chosen per scene (by its bands) when the scene runs.
            if cls in DEFAULT_MODELS:
                hashes[cls] = _default_identity(cls)
            else:
                hint = f"models: {{{cls}: FILE.safetensors}}"
                have = ", ".join(DEFAULT_MODELS)
                self.problem(
                    f.at if f else first,
                    "models",
                    f"no model for class {cls!r} (defaults exist for {have}); add {hint}",
                )
        for cls, g in given.items():
            line, key, source = g.line, g.key, g.value
            if not isinstance(source, str) or not source.strip():
                what = _type_name(source)
                self.problem(
                    line, key, f"must be a model file or a built-in method (e.g. ndwi), not {what}"
                )
                continue
            try:
                if is_spectral(source):
                    card, digest = spectral_card(source), source.lower()
                else:
                    path = (self.base / source).resolve()
                    card, source = read_card(path), str(path)
                    digest = f"sha256:{_sha256(path)}"
            except GeosegError as err:
                self.problem(line, key, str(err))
                continue
            if cls not in card.class_names[1:]:
                gives = ", ".join(card.class_names[1:])
                self.problem(line, key, f"model {card.name!r} gives {gives}, not {cls!r}")
                continue
            chosen[cls], hashes[cls] = (source, card), digest
        if not classes:
            return (), {}  # nothing to run; every problem above is reported
        # plan_run gives each model, in order, every remaining class it produces: a model goes
        # after any model named for a class it also produces.
        remaining = list(dict.fromkeys(src for src, _ in chosen.values()))
        cards = {src: card for src, card in chosen.values()}
        ordered: list[str] = []
        while remaining:
            free = [
                s
                for s in remaining
                if not any(
                    other != s and other in remaining and c in cards[s].class_names
                    for c, (other, _) in chosen.items()
                )
            ]
            if not free:
                msg = "each model produces a class named for another; use one model for both"
                self.problem(f.at if f else first, "models", msg)
                break
            ordered.append(free[0])
            remaining.remove(free[0])
        return tuple(ordered), hashes

    def _bands(self, f: _Field | None) -> tuple[int, ...] | None:
        if f is None or f.value is None:
            return None
        values = f.value if isinstance(f.value, list) else []
        if not values or not all(type(b) is int and b >= 1 for b in values):
            self.bad(f, "must be a list of 1-based band numbers, e.g. [2, 4]")
            return None
        return tuple(values)

    def _sensor(self, f: _Field | None) -> str | None:
        from geoseg.models.bands import band_roles

        sensor = self.typed(f, (str,), "a sensor name", None)
        if f is not None and sensor is not None:
            try:
                band_roles([], sensor=sensor)
            except ConfigError as err:
                self.bad(f, str(err))
        return sensor

    def _smoothing(self, f: _Field | None) -> tuple[str | None, tuple[str, ...]]:
        fields = self.fields(f, _SECTION_KEYS["smoothing"])
        if not fields:
            return None, ()
        from geoseg.postprocess.recipes import METHODS, parse_overrides

        method = self.typed(fields.get("method"), (str,), "a method name", None)
        if method is not None and method not in METHODS:
            self.bad(
                fields["method"], f"{method!r} is not known; choose one of {', '.join(METHODS)}"
            )
        p = fields.get("params")
        items: list[str] = []
        if p is not None and isinstance(p.value, dict):
            items = [f"{k}={v}" for k, v in p.value.items()]
        elif p is not None and p.value is not None:
            self.bad(p, "must be a mapping, e.g. {min_object_area_m2: 500, crf.iterations: 5}")
        if p is not None and items:
            try:
                parse_overrides(items)
            except ConfigError as err:
                self.bad(p, str(err))
        return method, tuple(items)

    def _tiling(self, f: _Field | None) -> tuple[int, int | None, int | None]:
        fields = self.fields(f, _SECTION_KEYS["tiling"])
        block = self.number(fields.get("block"), 2048, minimum=64, whole=True)
        tile = self.number(fields.get("tile"), None, minimum=32, whole=True)
        overlap = self.number(fields.get("overlap"), None, minimum=0, whole=True)
        if tile is not None:
            from geoseg.tiling.grid import TilingSpec

            try:
                TilingSpec(tile=tile, overlap=overlap or 0, block=max(block, tile))
                InferenceOptions(tile=tile, overlap=overlap)
            except ConfigError as err:
                self.bad(fields["tile"], str(err))
                tile = None  # reported: the other settings are still checked
        return block, tile, overlap

    def _inference(
        self, f: _Field | None, *, tile: int | None, overlap: int | None
    ) -> InferenceOptions:
        fields = self.fields(f, _SECTION_KEYS["inference"])
        options = {
            "device": self.typed(fields.get("device"), (str,), "auto, cpu or cuda", "auto"),
            "precision": self.typed(fields.get("precision"), (str,), "a precision", "auto"),
            "batch_size": self.number(fields.get("batch_size"), 0, minimum=0, whole=True),
            "tta": self.typed(fields.get("tta"), (str,), "auto, none, flips or d4", "auto"),
        }
        for key in ("device", "precision", "tta"):
            try:
                InferenceOptions(**{key: options[key]})
            except ConfigError as err:
                self.bad(fields[key], str(err))
                options[key] = "auto"
        return InferenceOptions(**options, tile=tile, overlap=overlap)

    def _output(self, f: _Field | None) -> _OutputSpec:
        fields = self.fields(f, _SECTION_KEYS["output"])
        if fields and "folder" not in fields:
            self.problem(f.at if f else 1, "output.folder", "missing (required)")
        text = self.typed(fields.get("folder"), (str,), "a folder path", None)
        folder = (self.base / text).resolve() if text else None
        if folder is not None and folder.exists() and not folder.is_dir():
            self.bad(fields["folder"], f"{str(folder)!r} is a file, not a folder")
        name = fields.get("name")
        template = self.typed(name, (str,), "a file name template", "{stem}.gpkg")
        try:
            used = {n for _, n, _, _ in string.Formatter().parse(template) if n is not None}
        except ValueError as err:
            used = {f"bad template: {err}"}
        unknown = sorted(used - set(TEMPLATE_FIELDS))
        if name is not None and unknown:
            allowed = ", ".join(f"{{{n}}}" for n in TEMPLATE_FIELDS)
            self.bad(name, f"{template!r}: unknown field {unknown[0]!r}; use {allowed}")
            template = "{stem}.gpkg"
        elif name is not None and not template.lower().endswith(".gpkg"):
            self.bad(name, f"{template!r} must end in .gpkg")
            template = "{stem}.gpkg"
        return _OutputSpec(
            folder=folder,
            template=template,
            line=name.line if name else f.at if f else 1,
            overwrite=self.typed(fields.get("overwrite"), (bool,), "true or false", False),
            raster=self.typed(fields.get("raster"), (bool,), "true or false", True),
            probabilities=self.typed(fields.get("probabilities"), (bool,), "true or false", False),
            uncertainty=self.typed(fields.get("uncertainty"), (bool,), "true or false", False),
            cog=self.typed(fields.get("cog"), (bool,), "true or false", True),
            crs=self._crs(fields.get("crs")),
            centerlines=self.typed(fields.get("centerlines"), (bool,), "true or false", True),
            prune_m=float(self.number(fields.get("prune_m"), 20.0, minimum=0, whole=False)),
        )

    def _crs(self, f: _Field | None) -> str | None:
        text = self.typed(f, (str,), "a CRS such as EPSG:3857", None)
        if f is not None and text is not None:
            from rasterio.crs import CRS
            from rasterio.errors import CRSError

            try:
                CRS.from_user_input(text)
            except CRSError as err:
                self.bad(f, f"{text!r} is not a CRS (e.g. EPSG:3857): {err}")
        return text

    def _scheduler(self, f: _Field | None) -> str:
        value = self.typed(f, (str,), "local, sync or a scheduler address", "local")
        if f is not None and not (
            value in ("local", "sync") or "://" in value or re.match(r"^[\w.\-]+:\d+$", value)
        ):
            self.bad(f, f"{value!r} is not local, sync or a scheduler address (tcp://host:8786)")
        return str(value)

    # ---- which scenes

    def _inputs(self, f: _Field | None, folder: Path | None) -> tuple[list[_Input], bool]:
        fields = self.fields(f, _SECTION_KEYS["inputs"])
        found: dict[str, _Input] = {}
        for pattern, line in self.paths(fields.get("glob")):
            matches = [
                Path(m).resolve()
                for m in sorted(glob.glob(str(self.base / pattern), recursive=True))
                if os.path.isfile(m)
            ]
            # A glob over a tree that holds the output folder must not pick up class rasters.
            matches = [m for m in matches if folder is None or not m.is_relative_to(folder)]
            if not matches:
                self._nothing_yet(line, "inputs.glob", pattern, _glob_root(self.base / pattern))
            for m in matches:
                found.setdefault(str(m), _Input(path=str(m), label=self._label(m)))
        for name, line in self.paths(fields.get("files")):
            if is_remote(name):
                found.setdefault(name, _Input(path=name, label=name))
                continue
            path = (self.base / name).resolve()
            if not path.is_file():
                self.problem(line, "inputs.files", f"{name!r} does not exist")
            elif folder is not None and path.is_relative_to(folder):
                self.problem(line, "inputs.files", f"{name!r} lies inside output.folder")
            else:
                found.setdefault(str(path), _Input(path=str(path), label=self._label(path)))
        asset = self.typed(fields.get("stac_asset"), (str,), "an asset key", None)
        for name, line in self.paths(fields.get("stac")):
            for item in self._stac(name, line, asset):
                found.setdefault(item.path, item)
        if fields and not fields.keys() & {"glob", "files", "stac"}:
            self.problem(f.at if f else 1, "inputs", "lists no scene; give glob, files or stac")
        checksum = self.typed(fields.get("checksum"), (bool,), "true or false", False)
        return list(found.values()), checksum

    def _label(self, path: Path) -> str:
        return os.path.relpath(path, self.base)

    def _nothing_yet(self, line: int, key: str, pattern: str, folder: Path) -> None:
        """A pattern or STAC folder that finds no scene.

        Its folder missing is a problem (a typo, a share not mounted: the run would silently
        do nothing). An existing folder with nothing in it yet is how a monitoring workflow
        starts: a warning, and the file is valid. A file named in ``files`` must exist.
        """
        folder = folder.resolve()
        if not folder.is_dir():
            self.problem(line, key, f"{pattern!r} matches no file: {str(folder)!r} does not exist")
        else:
            self.warnings.append(
                f"{self.path}:{line}: {key}: {pattern!r} matches no file in {str(folder)!r} yet"
            )

    def _stac(self, name: str, line: int, asset_key: str | None) -> list[_Input]:
        where = (self.base / name).resolve()
        files = sorted(where.glob("*.json")) if where.is_dir() else [where]
        if not where.exists():
            self.problem(line, "inputs.stac", f"{name!r} does not exist")
            return []
        if not files:
            self._nothing_yet(line, "inputs.stac", name, where)
            return []
        out = []
        for file in files:
            label = self._label(file)
            try:
                doc = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as err:
                self.problem(line, "inputs.stac", f"{label}: not a JSON file: {err}")
                continue
            try:
                asset = stac_asset(doc, file, asset_key)
            except ValueError as err:
                self.problem(line, "inputs.stac", f"{label}: {err}")
                continue
            if asset is not None:
                remote = is_remote(asset.path)
                out.append(
                    _Input(
                        path=asset.path,
                        label=asset.path if remote else self._label(Path(asset.path)),
                        item=asset.item,
                        item_id=asset.item_id,
                        date=asset.date,
                        checksum=asset.checksum,
                    )
                )
        return out

    def _scenes(self, inputs: list[_Input], out: _OutputSpec, *, checksum: bool) -> list[Scene]:
        # Without a valid output.folder (reported at its key) the names are still checked,
        # against a stand-in: whether they stay inside it or collide does not depend on it.
        root = out.folder or Path(os.path.abspath(os.sep)) / "output.folder"
        scenes: list[Scene] = []
        seen: dict[Path, str] = {}
        for inp in inputs:
            stamp, mtime = _stamp(inp, checksum=checksum)
            pure = PurePosixPath(inp.path)
            values = {
                "stem": pure.stem,
                "name": pure.name,
                "parent": pure.parent.name,
                "date": inp.date or (_utc_date(mtime) if mtime is not None else "undated"),
                "id": inp.item_id or pure.stem,
            }
            try:
                rel = out.template.format(**values)
            except (ValueError, KeyError, IndexError) as err:
                self.problem(out.line, "output.name", f"{out.template!r}: {err}")
                break
            gpkg = Path(os.path.normpath(root / rel))
            if not gpkg.is_relative_to(root):
                where = f" {str(out.folder)!r}" if out.folder else ""
                msg = f"{rel!r} (for {inp.label}) lies outside output.folder{where}"
                self.problem(out.line, "output.name", msg)
                break
            if gpkg in seen:
                msg = f"{seen[gpkg]} and {inp.label} would both write {rel!r}; add {{parent}}, "
                self.problem(out.line, "output.name", msg + "{date} or {id}")
                break
            seen[gpkg] = inp.label
            paths = output_paths(
                gpkg,
                raster=out.raster,
                probabilities=out.probabilities,
                uncertainty=out.uncertainty,
            )
            scenes.append(
                Scene(
                    input=inp.path,
                    label=inp.label,
                    gpkg=gpkg,
                    outputs=tuple(paths.all()),
                    stamp=stamp,
                    item=inp.item,
                )
            )
        return scenes


def _glob_root(pattern: Path) -> Path:
    """The folder a glob pattern searches: its leading parts without wildcards."""
    parts = pattern.parts
    fixed = [p for p in itertools.takewhile(lambda p: not _MAGIC.search(p), parts)]
    if len(fixed) == len(parts):  # no wildcard: a file name
        fixed = fixed[:-1]
    return Path(*fixed) if fixed else Path(".")


def _stamp(inp: _Input, *, checksum: bool) -> tuple[InputStamp, float | None]:
    if is_remote(inp.path):
        return InputStamp(checksum=inp.checksum), None
    st = os.stat(inp.path)
    digest = f"sha256:{_sha256(Path(inp.path))}" if checksum else None
    return InputStamp(size=st.st_size, mtime_ns=st.st_mtime_ns, checksum=digest), st.st_mtime


def _utc_date(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).date().isoformat()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hash(settings: Mapping[str, Any]) -> str:
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_workflow(path: str | os.PathLike[str]) -> Workflow:
    """Read and validate a workflow file; creates nothing.

    Relative paths in the file (inputs, models, output folder) resolve against its folder.

    Raises
    ------
    WorkflowError
        Listing every problem, one per line: ``file:line: key: problem``.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise WorkflowError(f"cannot read workflow {str(p)!r}: {err}") from err
    parser = _Parser(p, text)
    workflow = parser.parse()
    parser.fail_if_any()
    if workflow is None:  # pragma: no cover - parse() returns None only with problems
        raise WorkflowError(f"{p} is not a valid workflow")
    return workflow

"""Workflow files: every problem listed with its line, nothing created; STAC folders; hashes."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from geoseg.batch.runner import run_workflow
from geoseg.batch.workflow_file import load_workflow
from geoseg.cli import main
from geoseg.errors import WorkflowError
from tests.helpers import write_scene

GOOD = """\
version: 1
inputs:
  glob: scenes/*.tif
classes: [water]
models: {water: ndwi}
bands: [2, 4]
output: {folder: out}
scheduler: sync
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two tiny scenes in ``scenes/``."""
    (tmp_path / "scenes").mkdir()
    for i in range(2):
        write_scene(tmp_path / "scenes" / f"s{i}.tif", 32, 32, seed=i)
    return tmp_path


def _write(folder: Path, text: str, name: str = "wf.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def test_relative_paths_resolve_against_the_workflow_file(folder: Path) -> None:
    wf = load_workflow(_write(folder, GOOD))
    assert [Path(s.input).name for s in wf.scenes] == ["s0.tif", "s1.tif"]
    assert wf.folder == folder / "out"
    assert [s.gpkg for s in wf.scenes] == [folder / "out" / "s0.gpkg", folder / "out" / "s1.gpkg"]
    assert wf.scenes[0].outputs == (
        folder / "out" / "s0.gpkg",
        folder / "out" / "s0_classes.tif",
        folder / "out" / "s0_classes.qml",
    )
    more = load_workflow(
        _write(
            folder,
            GOOD.replace("{folder: out}", "{folder: out, raster: false, probabilities: true}"),
        )
    )
    assert [p.name for p in more.scenes[1].outputs] == ["s1.gpkg", "s1_probabilities.tif"]
    assert (more.config.raster, more.config.probabilities) == (False, True)
    assert wf.config.models == ("ndwi",) and wf.config.bands == (2, 4)
    assert (wf.concurrency, wf.retries, wf.max_attempts) == (2, 2, 3)
    assert not (folder / "out").exists()


# (workflow text, expected lines after "wf.yaml:"); each case also must create nothing.
BAD_CASES = {
    "unknown key": (
        GOOD.replace("classes:", "clases:"),
        ["4: clases: unknown key; did you mean 'classes'?", "1: classes: missing (required)"],
    ),
    "wrong type": (
        GOOD + "concurrency: two\nretries: 1.5\n",
        [
            "9: concurrency: must be a whole number, not a string ('two')",
            "10: retries: must be a whole number, not a number (1.5)",
        ],
    ),
    "missing inputs": (
        GOOD.replace(
            "glob: scenes/*.tif",
            "glob: [scenes/*.tif, nowhere/*.tif]\n  files: [x.tif, scenes/s0.tif]\n  stac: it/",
        ),
        [
            "3: inputs.glob: 'nowhere/*.tif' matches no file: '",  # its folder does not exist
            "nowhere' does not exist",
            "4: inputs.files: 'x.tif' does not exist",
            "5: inputs.stac: 'it/' does not exist",
        ],
    ),
    "output outside the folder": (
        GOOD.replace("{folder: out}", '{folder: out, name: "../{stem}.gpkg"}'),
        ["7: output.name: '../s0.gpkg' (for scenes/s0.tif) lies outside output.folder"],
    ),
    "template field": (
        GOOD.replace("{folder: out}", '{folder: out, name: "{scene}.gpkg"}'),
        ["7: output.name: '{scene}.gpkg': unknown field 'scene'; use {stem}, {name}"],
    ),
    "two scenes, one output": (
        GOOD.replace("{folder: out}", '{folder: out, name: "{parent}.gpkg"}'),
        ["7: output.name: scenes/s0.tif and scenes/s1.tif would both write 'scenes.gpkg'"],
    ),
    "no model for a class": (
        GOOD.replace("[water]", "[water, forest]"),
        [
            "5: models: no model for class 'forest' (defaults exist for roads, water, crops, "
            "trees, grass, built, bare, shrub_and_scrub, snow_and_ice); add models: {forest: "
        ],
    ),
    "model lacks the class": (
        GOOD.replace("{water: ndwi}", "{water: ndvi}"),
        ["5: models.water: model 'ndvi-otsu' gives vegetation, not 'water'"],
    ),
    "missing model file": (
        GOOD.replace("{water: ndwi}", "{water: models/w.safetensors}"),
        ["5: models.water: model file '"],
    ),
    "options checked by their owners": (
        GOOD.replace("scheduler: sync", "scheduler: tcp//x")
        + "smoothing: {method: blur, params: {radius: 2}}\n"
        + "tiling: {tile: 100}\ninference: {precision: fp8}\nclasses: [roads]\n",
        [
            "8: scheduler: 'tcp//x' is not local, sync or a scheduler address",
            "9: smoothing.method: 'blur' is not known; choose one of none, morph, crf",
            "9: smoothing.params: unknown smoothing parameter 'radius'",
            "10: tiling.tile: tile size 100 is not a positive multiple of 32; try 96",
            "11: inference.precision: precision 'fp8' is not one of auto, fp32",
            "12: classes: given twice (first on line 4)",
        ],
    ),
    "tile over the bound": (
        GOOD + "tiling: {tile: 65536}\n",
        ["9: tiling.tile: tile size 65536 is too large; use at most 8192"],
    ),
    "not YAML": ("version: 1\ninputs: [a\n", ["3: (file): not valid YAML: expected ',' or ']'"]),
    "not a mapping": (
        "- version: 1\n- inputs: x\n",
        ["1: (file): must be a mapping of workflow keys (version, inputs, classes, output, ...),"],
    ),
    # An invalid value does not hide the checks that depend on it.
    "models checked when classes are invalid": (
        GOOD.replace("[water]", "water").replace("{water: ndwi}", "{water: 3, roads: ndvi}"),
        [
            "4: classes: must be a list of class names",
            "5: models.water: must be a model file or a built-in method (e.g. ndwi), not an int",
            "5: models.roads: model 'ndvi-otsu' gives vegetation, not 'roads'",
        ],
    ),
    "names checked without an output folder": (
        GOOD.replace("{folder: out}", '{folder: 3, name: "../{stem}.gpkg"}'),
        [
            "7: output.folder: must be a folder path, not an integer (3)",
            "7: output.name: '../s0.gpkg' (for scenes/s0.tif) lies outside output.folder",
        ],
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_invalid_workflow_lists_each_problem_exits_2_and_creates_nothing(
    folder: Path, case: str
) -> None:
    text, expected = BAD_CASES[case]
    path = _write(folder, text)
    before = sorted(folder.rglob("*"))
    for args in (["batch", str(path)], ["batch", "run", str(path)], ["batch", "status", str(path)]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert "is not a valid workflow" in result.stderr
        for line in expected:
            full = line if line[0].isalpha() else f"{path}:{line}"
            assert full in result.stderr, result.stderr
        assert f"{path}:1: : " not in result.stderr  # every problem names its key
    assert sorted(folder.rglob("*")) == before  # not even the output folder or the manifest


def test_a_glob_over_an_empty_folder_is_valid_and_warned_about(folder: Path) -> None:
    """A monitoring workflow is set up before its first acquisition arrives."""
    (folder / "incoming").mkdir()
    text = GOOD.replace("glob: scenes/*.tif", "glob: [scenes/*.tif, incoming/*.tif]")
    wf = load_workflow(_write(folder, text))
    assert len(wf.scenes) == 2
    assert wf.warnings == (
        f"{folder / 'wf.yaml'}:3: inputs.glob: 'incoming/*.tif' matches no file in "
        f"'{folder / 'incoming'}' yet",
    )
    only = _write(folder, GOOD.replace("scenes/*.tif", "incoming/*.tif"), "only.yaml")
    result = CliRunner().invoke(main, ["batch", str(only)])
    assert result.exit_code == 0, result.output
    assert "geoseg: warning: " in result.stderr and "matches no file in" in result.stderr
    assert "ran 0 of 0 scenes" in result.stderr
    (summary,) = (folder / "out" / "runs").glob("*.json")
    assert json.loads(summary.read_text())["warnings"] == list(load_workflow(only).warnings)
    assert "warning" in (folder / "out" / "geoseg-batch.log").read_text()


def test_all_problems_come_in_one_error(folder: Path) -> None:
    text = GOOD.replace("version: 1", "version: 2").replace("[water]", "[]") + "workers: 0\n"
    with pytest.raises(WorkflowError) as err:
        load_workflow(_write(folder, text))
    lines = str(err.value).splitlines()
    assert lines[0].endswith("is not a valid workflow (3 problems):")
    assert [ln.split(": ", 1)[0].rsplit(":", 1)[1] for ln in lines[1:]] == ["1", "4", "9"]


def _item(folder: Path, name: str, href: str, when: str, **assets: dict) -> None:
    doc = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": name,
        "properties": {"datetime": when},
        "assets": {"image": {"href": href, "type": "image/tiff; application=geotiff"}, **assets},
    }
    (folder / f"{name}.json").write_text(json.dumps(doc))


def test_stac_folder_expands_to_its_geotiff_assets(folder: Path) -> None:
    items = folder / "items"
    items.mkdir()
    thumb = {"thumbnail": {"href": "t.png", "type": "image/png"}}
    _item(items, "S2A_0001", "../scenes/s0.tif", "2026-07-01T10:00:00Z", **thumb)
    _item(items, "S2A_0002", "../scenes/s1.tif", "2026-07-11T10:00:00Z")
    (items / "collection.json").write_text(json.dumps({"type": "Collection", "id": "c"}))
    text = GOOD.replace("glob: scenes/*.tif", "stac: items/").replace(
        "{folder: out}", '{folder: out, name: "{date}/{id}.gpkg"}'
    )
    text += "smoothing: {method: none}\n"
    wf = load_workflow(_write(folder, text))
    assert [s.input for s in wf.scenes] == [str(folder / "scenes" / f"s{i}.tif") for i in (0, 1)]
    assert [s.gpkg.relative_to(folder / "out").as_posix() for s in wf.scenes] == [
        "2026-07-01/S2A_0001.gpkg",
        "2026-07-11/S2A_0002.gpkg",
    ]
    assert [Path(s.item or "").name for s in wf.scenes] == ["S2A_0001.json", "S2A_0002.json"]
    result = run_workflow(wf)
    assert result.exit_code == 0 and result.count("done") == 2
    assert (folder / "out" / "2026-07-11" / "S2A_0002.gpkg").is_file()


def test_stac_problems_name_the_item(folder: Path) -> None:
    items = folder / "items"
    items.mkdir()
    _item(items, "a", "../scenes/gone.tif", "2026-07-01T00:00:00Z")
    _item(items, "b", "../scenes/s0.tif", "2026-07-01T00:00:00Z", other={"href": "x.tif"})
    (items / "c.json").write_text("{not json")
    text = GOOD.replace("glob: scenes/*.tif", "stac: items/")
    with pytest.raises(WorkflowError) as err:
        load_workflow(_write(folder, text))
    message = str(err.value)
    assert "wf.yaml:3: inputs.stac: items/a.json: asset 'image': '../scenes/gone.tif' does not" in (
        message
    )
    assert "items/b.json: needs one GeoTIFF asset (found: image, other); pick with stac_asset" in (
        message
    )
    assert "items/c.json: not a JSON file" in message
    chosen = text.replace("stac: items/", "stac: items/b.json\n  stac_asset: image")
    ok = load_workflow(_write(folder, chosen))
    assert len(ok.scenes) == 1


def _model_file(path: Path, value: float) -> None:
    from safetensors.numpy import save_file

    from geoseg.models.card import CARD_KEY, card_to_json
    from geoseg.models.spectral import spectral_card

    card = card_to_json(spectral_card("ndwi"))
    save_file({"w": np.full(4, value, dtype=np.float32)}, str(path), metadata={CARD_KEY: card})


def test_config_hash_follows_the_results_not_the_machinery(folder: Path) -> None:
    base = load_workflow(_write(folder, GOOD)).config_hash
    assert load_workflow(_write(folder, GOOD)).config_hash == base
    how = GOOD.replace("scheduler: sync", "scheduler: local\nconcurrency: 4\nretries: 0")
    assert load_workflow(_write(folder, how)).config_hash == base
    for change in ("min_area_m2: 100\n", "tiling: {block: 1024}\n", "bands: [2, 3]\n"):
        text = GOOD.replace("bands: [2, 4]\n", "") + change
        if "bands" not in change:
            text += "bands: [2, 4]\n"
        assert load_workflow(_write(folder, text)).config_hash != base, change
    # A model file is hashed by content: same path, new weights -> new hash.
    model = folder / "water.safetensors"
    _model_file(model, 0.0)
    text = GOOD.replace("{water: ndwi}", "{water: water.safetensors}")
    first = load_workflow(_write(folder, text)).config_hash
    _model_file(model, 1.0)
    assert load_workflow(_write(folder, text)).config_hash not in (first, base)


def test_a_class_without_a_model_uses_the_package_default_per_scene(folder: Path) -> None:
    text = GOOD.replace("models: {water: ndwi}\n", "").replace("bands: [2, 4]\n", "sensor: naip\n")
    wf = load_workflow(_write(folder, text))
    assert wf.config.models == (), "the default is chosen per scene, by its bands"
    assert wf.config_hash != load_workflow(_write(folder, GOOD)).config_hash
    summary = run_workflow(wf)
    assert summary.count("done") == 2 and summary.exit_code == 0, summary
    # the synthetic scenes have blue, green, red, nir (naip order) but no swir: ndwi was used
    import sqlite3

    with sqlite3.connect(folder / "out" / "s0.gpkg") as db:
        (models,) = db.execute("SELECT value FROM geoseg_provenance WHERE key='models'").fetchone()
    assert json.loads(models)[0]["name"].startswith("ndwi")


REPO = Path(__file__).resolve().parents[2]


def test_shipped_examples_are_valid() -> None:
    water = load_workflow(REPO / "workflows" / "water-monitoring.yaml")
    assert [Path(s.input).name for s in water.scenes] == ["beaufort_s2.tif"]
    assert water.config.models == ("ndwi:0.35",)
    assert water.config.smooth == "morph" and water.config.min_area_m2 == 500
    assert water.warnings == ()
    # roads.yaml reads the Massachusetts Roads tiles at a fixed place, ../shared/data.
    data = REPO.parent / "shared" / "data"
    if not data.is_dir():
        pytest.skip(f"roads.yaml reads {data / 'mass_roads'}, absent here")
    roads = load_workflow(REPO / "workflows" / "roads.yaml")
    # ../shared may be a symlink: compare where the paths lead, not how they are spelt
    tiles = sorted(t.resolve() for t in (data / "mass_roads").glob("*_image.tif"))
    assert tiles and [Path(s.input).resolve() for s in roads.scenes] == tiles
    assert roads.warnings == ()
    # no models entry: the shipped default roads model, chosen per scene by its bands
    assert roads.config.classes == ("roads",) and roads.config.models == ()
    assert roads.settings["models"]["roads"].startswith("default:sha256:")
    assert roads.config.smooth == "morph"


def test_airflow_dag_runs_the_cli_for_each_workflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """The DAG file imports against Airflow's API (stubbed here: Airflow is not a dependency)."""
    import importlib.util
    import sys
    import types

    made: list[dict] = []

    class DAG:
        def __init__(self, **kw: object) -> None:
            self.dag_id, self.kw = kw["dag_id"], kw

        def __enter__(self) -> DAG:
            made.append({"dag": self.kw, "tasks": []})
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    class BashOperator:
        def __init__(self, **kw: object) -> None:
            made[-1]["tasks"].append(kw)

        def __rshift__(self, other: object) -> object:
            return other

    airflow = types.ModuleType("airflow")
    airflow.DAG = DAG  # type: ignore[attr-defined]
    bash = types.ModuleType("airflow.operators.bash")
    bash.BashOperator = BashOperator  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "airflow", airflow)
    monkeypatch.setitem(sys.modules, "airflow.operators", types.ModuleType("airflow.operators"))
    monkeypatch.setitem(sys.modules, "airflow.operators.bash", bash)
    spec = importlib.util.spec_from_file_location(
        "dag", REPO / "workflows" / "airflow_geoseg_dag.py"
    )
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    commands = {d["dag"]["dag_id"]: [t["bash_command"] for t in d["tasks"]] for d in made}
    assert set(commands) == {"geoseg_water_monitoring", "geoseg_roads"}
    run, status = commands["geoseg_water_monitoring"]
    assert run.endswith("geoseg batch run /opt/geoseg/workflows/water-monitoring.yaml -q")
    assert "geoseg batch status /opt/geoseg/workflows/water-monitoring.yaml" in status
    assert all((REPO / "workflows" / f"{n}.yaml").is_file() for n in ("water-monitoring", "roads"))


def _bomb(levels: int) -> str:
    """A "billion laughs": ``levels`` anchors, each a list of nine aliases of the one before."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("key", ["smoothing: {params: {x: *l8}}", "min_area_m2: *l8"])
def test_a_yaml_alias_bomb_is_refused_before_anything_is_built(folder: Path, key: str) -> None:
    """Before: 9**9 strings were built (a minute and 6 GB; a 34 MB error line for min_area_m2)."""
    import time

    path = _write(folder, GOOD + _bomb(9) + key + "\n")
    t0 = time.perf_counter()
    with pytest.raises(WorkflowError) as caught:
        load_workflow(path)
    assert time.perf_counter() - t0 < 2.0
    header, problem = str(caught.value).splitlines()
    assert header.endswith("is not a valid workflow (1 problem):")
    assert problem == (
        f"{path}:9: (file): the value anchored here (&name) is used again through an alias "
        "(*name); workflow files may not use aliases: write the value out where it is needed"
    )
    assert not (folder / "out").exists()


def test_a_huge_bad_value_is_quoted_as_a_short_excerpt(folder: Path) -> None:
    path = _write(folder, GOOD + f"simplify_m: [{', '.join(['12345'] * 20_000)}]\n")
    with pytest.raises(WorkflowError) as caught:
        load_workflow(path)
    (problem,) = str(caught.value).splitlines()[1:]
    assert problem.startswith(f"{path}:9: simplify_m: must be a number, not a list ([12345, ")
    assert problem.endswith(f"... ({len(repr([12345] * 20_000))} characters))")
    assert len(problem) < 200 + len(str(path))


def test_anchors_without_aliases_are_fine(folder: Path) -> None:
    wf = load_workflow(_write(folder, GOOD.replace("classes: [water]", "classes: &c [water]")))
    assert wf.config.classes == ("water",)

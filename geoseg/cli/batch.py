"""``geoseg batch run | status``: workflow files over many scenes."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from geoseg.cli._base import (
    _common,
    _fail,
    _handles_errors,
    _setup_logging,
    _worker_log_level,
    main,
)


class _BatchGroup(click.Group):
    """A group whose default command is ``run``: ``geoseg batch FILE`` runs FILE."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@main.group(cls=_BatchGroup)
def batch() -> None:
    """Run batch workflows: many scenes from one YAML file, safe to re-run any time.

    \b
    geoseg batch FILE           same as `geoseg batch run FILE`
    geoseg batch run FILE       run what is missing: new, changed and failed scenes
    geoseg batch status FILE    each scene: done, failed, pending or running, with times
    Exit codes of run: 0 every scene done, 1 some failed, 2 invalid workflow file,
    130 interrupted. See workflows/README.md for the file format.
    """


def _workflow_or_exit(path: str, *, verbose: bool) -> Any:
    """The validated workflow, or every problem on stderr and exit code 2."""
    from geoseg.batch.workflow_file import load_workflow
    from geoseg.errors import WorkflowError

    try:
        return load_workflow(path)
    except WorkflowError as err:
        _fail(err, verbose=verbose)
        sys.exit(2)


_BATCH_STYLE = {"done": "green", "failed": "red", "pending": "yellow", "running": "cyan"}


@contextmanager
def _batch_progress(*, quiet: bool) -> Iterator[Callable[[Any], None]]:
    """Render batch events: rich bars on a terminal, one line per scene otherwise."""
    if quiet:
        yield lambda event: None
        return
    if not sys.stderr.isatty():

        def line(event: Any) -> None:
            if event.kind in ("done", "failed"):  # a stop is told once, at the end
                note = f": {event.message}" if event.message else ""
                click.echo(f"geoseg: {event.kind} {event.scene}{note}", err=True)

        yield line
        return
    import threading

    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    lock = threading.Lock()
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    ) as bar:
        overall = bar.add_task("scenes", total=None)
        tasks: dict[str, Any] = {}

        def update(event: Any) -> None:
            with lock:
                if event.kind == "plan":
                    bar.update(overall, total=event.total)
                elif event.kind == "start":
                    tasks[event.scene] = bar.add_task(f"  {escape(event.scene)}", total=None)
                elif event.kind == "progress" and event.scene in tasks:
                    bar.update(tasks[event.scene], completed=event.done, total=event.total)
                elif event.kind in ("done", "failed", "stopped"):
                    if event.scene in tasks:
                        bar.remove_task(tasks.pop(event.scene))
                    if event.kind == "stopped":  # told once, at the end
                        return
                    bar.advance(overall)
                    colour = {"done": "green", "failed": "red"}.get(event.kind, "yellow")
                    note = f": {escape(event.message)}" if event.message else ""
                    bar.console.print(
                        f"[{colour}]{event.kind}[/] {escape(event.scene)}{note}", highlight=False
                    )

        yield update


def _interrupted_line(workflow: Any, result: Any) -> str:
    """One line for a stopped batch: what was kept and what a re-run does."""
    if result is None:  # interrupted again while stopping: no summary of the stop
        return (
            f"{workflow.name}: interrupted; finished scenes are kept, the others are pending: "
            f"`geoseg batch {workflow.path}` goes on with them"
        )
    done, pending, failed = (result.count(s) for s in ("done", "pending", "failed"))
    stopped = f" ({result.stopped} stopped mid-scene)" if result.stopped else ""
    return (
        f"{workflow.name}: interrupted; {done} done ({result.ran} in this run), {pending} "
        f"pending{stopped}" + (f", {failed} failed" if failed else "") + ". Done scenes are "
        f"kept; `geoseg batch {workflow.path}` "
        + (f"does the {pending} pending" if pending else "has nothing pending to do")
        + (" (reusing the blocks they finished)" if result.stopped else "")
        + (" and retries the failed" if failed else "")
    )


@batch.command("run")
@click.argument("workflow_file", type=click.Path(dir_okay=False))
@click.option("--retry-failed", is_flag=True, help="Also retry scenes whose retries are used up.")
@_common
@_handles_errors
def batch_run(workflow_file: str, retry_failed: bool, verbose: bool, quiet: bool) -> None:
    """Run WORKFLOW_FILE: every scene not yet done with its current input and settings."""
    import distributed  # noqa: F401  (configures its loggers on import; quiet them after)

    from geoseg.batch.runner import run_workflow

    workflow = _workflow_or_exit(workflow_file, verbose=verbose)
    _setup_logging(verbose=verbose, quiet=quiet)
    if not quiet:
        for warning in workflow.warnings:
            click.echo(f"geoseg: warning: {warning}", err=True)
    try:
        with _batch_progress(quiet=quiet) as on_event:
            result = run_workflow(
                workflow,
                on_event=on_event,
                retry_failed=retry_failed,
                worker_log_level=_worker_log_level(verbose=verbose),
            )
    except KeyboardInterrupt as err:
        click.echo(f"geoseg: {_interrupted_line(workflow, getattr(err, 'result', None))}", err=True)
        sys.exit(130)
    if not quiet:
        counts = ", ".join(
            f"{result.count(s)} {s}" for s in ("done", "failed", "pending") if result.count(s)
        )
        click.echo(
            f"geoseg: {workflow.name}: ran {result.ran} of {len(result.scenes)} scenes; "
            f"{counts or 'no scenes'}; summary in {result.summary}",
            err=True,
        )
    if result.exit_code:
        sys.exit(result.exit_code)


@batch.command("status")
@click.argument("workflow_file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@_common
@_handles_errors
def batch_status(workflow_file: str, as_json: bool, verbose: bool, quiet: bool) -> None:
    """Show each scene of WORKFLOW_FILE: done, failed, pending or running, with times."""
    import json

    from geoseg.batch.manifest import workflow_status

    workflow = _workflow_or_exit(workflow_file, verbose=verbose)
    if not quiet and not as_json:
        for warning in workflow.warnings:
            click.echo(f"geoseg: warning: {warning}", err=True)
    rows: list[dict[str, Any]] = []
    for s in workflow_status(workflow):
        r = s.record
        rows.append(
            {
                "scene": s.scene.label,
                "input": s.scene.input,
                "status": s.status,
                "note": s.reason,
                "attempts": r.attempts if r else 0,
                "started": r.started if r else None,
                "finished": r.finished if r else None,
                "seconds": r.seconds if r else None,
                "features": dict(r.features) if r else {},
                "gpkg": str(s.scene.gpkg),
                "error": r.error if r and s.status != "done" else None,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{workflow.name} -> {workflow.folder}", title_justify="left")
    for column in ("scene", "status", "tries", "started (UTC)", "seconds", "polygons", "note"):
        table.add_column(column, overflow="fold")
    for row in rows:
        status = row["status"]
        started = (row["started"] or "").replace("T", " ").removesuffix("Z")
        seconds = f"{row['seconds']:.1f}" if row["seconds"] is not None else ""
        polygons = str(sum(row["features"].values())) if row["features"] else ""
        note = row["note"] + (f": {row['error']}" if row["error"] else "")
        note = note if len(note) <= 90 else note[:89] + "…"  # all of it: --json
        table.add_row(
            escape(row["scene"]),
            f"[{_BATCH_STYLE.get(status, '')}]{status}[/]",
            str(row["attempts"] or ""),
            started,
            seconds,
            polygons,
            escape(note),
        )
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    console.print(table)
    totals = {k: sum(r["status"] == k for r in rows) for k in _BATCH_STYLE}
    console.print(", ".join(f"{v} {k}" for k, v in totals.items() if v) or "no scenes")

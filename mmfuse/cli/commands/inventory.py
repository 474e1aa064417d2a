"""Commands that show what a workspace holds: ``list`` and ``show``."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from mmfuse.cli import render
from mmfuse.cli.app import command_app
from mmfuse.cli.options import HelpCommand, Workspace_, complete_runs, run_name
from mmfuse.errors import MmfuseError
from mmfuse.workspace import Workspace

app = command_app()


@app.command(cls=HelpCommand, name="list", short_help="List the data sets and runs.")
def list_cmd(
    what: Annotated[str, typer.Argument(help="all, runs or datasets.", metavar="[all|runs|datasets]")] = "all",
    json_out: Annotated[bool, typer.Option("--json", help="Print the rows as JSON on stdout.")] = False,
    workspace: Workspace_ = None,
) -> None:
    """List the workspace's data sets and runs: task, size on disk, when made, best validation score.

    Examples:

    \b
      mmfuse list
      mmfuse list runs --json
    """
    from mmfuse.inventory import list_datasets, list_runs

    if what not in ("all", "runs", "datasets"):
        raise MmfuseError(f"list takes all, runs or datasets, got {what!r}")
    ws = Workspace.open(workspace)
    rows = {"datasets": list_datasets(ws) if what != "runs" else None,
            "runs": list_runs(ws) if what != "datasets" else None}
    if json_out:
        typer.echo(json.dumps({k: v for k, v in rows.items() if v is not None}, indent=2, ensure_ascii=False))
        return
    render.print_listing(ws.root, rows["datasets"], rows["runs"])


@app.command(cls=HelpCommand, name="show", short_help="Show one run in full.")
def show_cmd(
    run: Annotated[Optional[str], typer.Argument(help="Run to show (default: the most recent).", show_default=False,
                                                 autocompletion=complete_runs)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print everything as JSON on stdout.")] = False,
    workspace: Workspace_ = None,
) -> None:
    """Show one run: its config, the validation scores of every epoch (best marked), its evaluation
    reports and its files with their sizes.

    Examples:

    \b
      mmfuse show demo
    """
    from mmfuse.inventory import show_run

    ws = Workspace.open(workspace)
    summary = show_run(ws, run_name(ws, run))
    if json_out:
        typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    render.print_run(summary)

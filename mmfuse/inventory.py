"""What a workspace holds: its data sets and runs with their size, task, date and best score
(``mmfuse list``), and one run in full (``mmfuse show``). Reads JSON files only (no torch), so it
answers at once."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mmfuse.errors import MmfuseError
from mmfuse.workspace import RunDir, Workspace, read_json


def list_datasets(workspace: Workspace) -> list[dict[str, Any]]:
    """One row per data set: name, task, source, images and captions/samples per split, created, bytes."""
    rows = []
    for name in workspace.dataset_names():
        path = workspace.dataset_dir(name)
        manifest = _json_or_none(path / "manifest.json")
        splits = manifest.get("splits", {}) if isinstance(manifest, dict) else {}
        rows.append({"name": name, "task": _get(manifest, "task"), "source": _get(manifest, "source"),
                     "splits": {s: c.get("images") for s, c in splits.items() if isinstance(c, dict)},
                     "created": _created(path / "manifest.json"), "bytes": disk_bytes(path)})
    return rows


def list_runs(workspace: Workspace) -> list[dict[str, Any]]:
    """One row per run: name, task, data, fusion, epochs, best epoch and validation score, created, bytes."""
    makers = _comparisons(workspace)
    return [{**_run_row(workspace.run(name)), "made_by": makers.get(name)} for name in workspace.run_names()]


def show_run(workspace: Workspace, name: str) -> dict[str, Any]:
    """Everything about one run: its row, config, per-epoch history, evaluation reports and files."""
    run = RunDir(workspace.existing_run(name))
    reports = {}
    for path in sorted(run.path.glob("eval-*.json")):
        report = _json_or_none(path)
        if isinstance(report, dict):
            reports[path.stem.removeprefix("eval-")] = report.get("metrics")
    files = {p.name: p.stat().st_size for p in sorted(run.path.iterdir()) if p.is_file() and not p.name.startswith(".")}
    return {**_run_row(run), "made_by": _comparisons(workspace).get(name), "config": _json_or_none(run.config),
            "history": run.history(), "evaluations": reports, "files": files, "path": str(run.path)}


def _run_row(run: RunDir) -> dict[str, Any]:
    config = _json_or_none(run.config)
    model = config.get("model", {}) if isinstance(config, dict) else {}
    train = config.get("train", {}) if isinstance(config, dict) else {}
    history = run.history()
    best = next((r for r in reversed(history) if r.get("best")), None)
    metric = _selection_metric(train.get("select_metric"), model.get("task"))
    return {"name": run.name, "task": model.get("task"), "data": train.get("data"), "fusion": model.get("fusion"),
            "encoder": model.get("encoder"), "epochs": f"{len(history)}/{train.get('epochs')}",
            "best_epoch": best.get("epoch") if best else None, "metric": metric,
            "best": best.get(f"val_{metric}") if best else None,
            "resumable": run.checkpoint.is_file(),
            "created": _created(run.config), "bytes": disk_bytes(run.path)}


def _comparisons(workspace: Workspace) -> dict[str, str]:
    """Run name -> the comparison that made it."""
    folder = workspace.root / "compare"
    names = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return {run: name for name in names for run in workspace.compared_runs(name)}


def _selection_metric(select: Any, task: Any) -> str:
    if isinstance(select, str) and select != "auto":
        return select
    return {"classify": "accuracy", "answer": "vqa_accuracy"}.get(task, "cider_d")


def disk_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder``, each file (inode) counted once however many names it has."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                info = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
    return total


def _json_or_none(path: Path) -> Any:
    try:
        return read_json(path, "file") if path.is_file() else None
    except MmfuseError:
        return None


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else None


def _created(path: Path) -> str | None:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M")
    except OSError:
        return None

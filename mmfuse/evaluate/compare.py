"""``mmfuse compare``: train several fusions under the same data, encoder, seed and budget, evaluate
each (optionally with one modality ablated), and rank them in a leaderboard.

Each fusion becomes the run ``<name>-<fusion>``, listed before it trains in ``compare/<name>/runs.json``
(the runs the comparison made); a run of that name that it did not make is never replaced without
``overwrite``. The leaderboard is written
to ``compare/<name>/leaderboard.json`` and ``leaderboard.csv``. A comparison stopped by Ctrl-C or
SIGTERM keeps the fusions it finished (``compare/<name>/finished/``); the same command continues.
"""

from __future__ import annotations

import csv
import io
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from mmfuse.config import RunConfig, to_dict
from mmfuse.data.records import load_manifest
from mmfuse.errors import Interrupted, MmfuseError, Terminated
from mmfuse.evaluate.reports import Ablation, evaluate_run
from mmfuse.models.parts import resolve_parts
from mmfuse.train.loop import EpochHook, train
from mmfuse.workspace import (
    COMPARED_RUNS,
    Workspace,
    atomic_write_json,
    atomic_write_text,
    check_name,
    read_json,
)

CAPTION_COLUMNS = ("bleu4", "cider_d", "rouge_l", "meteor")
CLASSIFY_COLUMNS = ("accuracy", "macro_f1")
RANKED_BY = {"caption": "cider_d", "classify": "accuracy", "answer": "vqa_accuracy"}
Notify = Callable[[str], None]


def compare(workspace: Workspace, base: RunConfig, fusions: list[str], name: str, ablate: list[str],
            with_meteor: bool = True, notify: Notify | None = None, on_epoch: EpochHook | None = None,
            overwrite: bool = False) -> dict[str, Any]:
    """Train and evaluate ``base`` with each of ``fusions``; return (and write) the leaderboard."""
    check_name(name, "comparison")
    task = str(load_manifest(workspace.existing_dataset(base.train.data)).get("task", "caption"))
    configs = _configs(base, fusions, name, task)
    if base.train.encoder_from:  # one image encoder for every fusion: check it before anything trains
        workspace.existing_run(base.train.encoder_from)
        if base.train.encoder_from in {c.train.run for c in configs}:
            raise MmfuseError(f"--encoder-from {base.train.encoder_from!r} is one of the runs this comparison replaces; "
                              "copy it under another name or choose another --name")
    ablations = [Ablation(m).resolve(task) for m in _unique(ablate)]
    _claim(workspace, configs, name, overwrite)
    done = _Finished(workspace.compare_dir(name) / "finished", ablations, with_meteor)
    rows = []
    for cfg in configs:
        row = done.row(workspace, cfg)
        if row is not None:
            if notify:
                notify(f"[{len(rows) + 1}/{len(configs)}] fusion {cfg.model.fusion}: trained and scored by the "
                       f"interrupted comparison (run {cfg.train.run}), kept")
            rows.append(row)
            continue
        if notify:
            notify(f"[{len(rows) + 1}/{len(configs)}] training fusion {cfg.model.fusion} as run {cfg.train.run}")
        try:
            row = _train_and_score(workspace, cfg, task, ablations, with_meteor, on_epoch)
        except (KeyboardInterrupt, Interrupted) as exc:  # (train and evaluate report their own interruption)
            kept = f"the {len(rows)} fusion(s) finished so far are kept" if rows else "no fusion had finished"
            code = exc if isinstance(exc, KeyboardInterrupt) else Terminated() if exc.exit_code == 143 else None
            raise Interrupted(f"compare interrupted at fusion {cfg.model.fusion}; {kept}: run the same command "
                              f"again to continue", code) from None
        done.keep(workspace, cfg, row)
        rows.append(row)
    metric = RANKED_BY[task]
    rows.sort(key=lambda r: -r[metric])
    board = {"name": name, "data": base.train.data, "task": task, "ranked_by": metric,
             "encoder_from": base.train.encoder_from or None,
             "ablations": [f"{a.modality}:{a.mode}" for a in ablations], "rows": rows}
    _write(workspace, name, board)
    done.clear()
    return board


class _Finished:
    """The fusions an interrupted comparison finished: per fusion, its config, the evaluation
    settings, a fingerprint of its run's best weights and its leaderboard row (``finished/<fusion>.json``
    in the comparison's folder). The same command run again keeps them, as long as the run is still
    the one it trained; the folder goes once the leaderboard is written."""

    def __init__(self, folder: Path, ablations: list[Ablation], with_meteor: bool):
        self.folder = folder
        self.scoring = {"ablations": [f"{a.modality}:{a.mode}" for a in ablations], "meteor": with_meteor}

    def row(self, workspace: Workspace, cfg: RunConfig) -> dict[str, Any] | None:
        """The kept row of ``cfg``'s fusion, or None when it must be trained (again)."""
        path = self.folder / f"{cfg.model.fusion}.json"
        if not path.is_file():
            return None
        try:
            kept = read_json(path, "comparison record")
        except MmfuseError:
            return None  # damaged: train that fusion again
        same = isinstance(kept, dict) and kept.get("config") == to_dict(cfg) and kept.get("scoring") == self.scoring
        if not same or kept.get("weights") != _fingerprint(workspace, cfg.train.run):
            return None
        return kept.get("row") if isinstance(kept.get("row"), dict) else None

    def keep(self, workspace: Workspace, cfg: RunConfig, row: dict[str, Any]) -> None:
        record = {"config": to_dict(cfg), "scoring": self.scoring, "weights": _fingerprint(workspace, cfg.train.run),
                  "row": row}
        atomic_write_json(self.folder / f"{cfg.model.fusion}.json", record)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _claim(workspace: Workspace, configs: list[RunConfig], name: str, overwrite: bool) -> None:
    """Refuse, before anything trains, to replace a run this comparison did not make (unless
    ``overwrite``); then record every run it is about to make as its own."""
    made = workspace.compared_runs(name)
    for cfg in configs:
        run = cfg.train.run
        if workspace.run_dir(run).exists() and run not in made and not overwrite:
            raise MmfuseError(f"run {run!r} exists and was not made by comparison {name!r}: compare would replace "
                              f"it; choose another --name, or pass --overwrite to replace it")
    folder = workspace.compare_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / COMPARED_RUNS, _unique(made + [c.train.run for c in configs]))


def _fingerprint(workspace: Workspace, run: str) -> list[int] | None:
    """Size and modification time of a run's best weights (None when there are none)."""
    try:
        info = workspace.run(run).weights("best").stat()
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns]


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _configs(base: RunConfig, fusions: list[str], name: str, task: str) -> list[RunConfig]:
    """One validated config per fusion; every bad name or pairing fails before anything trains."""
    if not fusions:
        raise MmfuseError("--fusion needs at least one fusion name (comma-separated)")
    configs = []
    for fusion in _unique(fusions):
        cfg = replace(base, model=replace(base.model, fusion=fusion),
                      train=replace(base.train, run=f"{name}-{fusion}", overwrite=True))
        cfg.validate()
        resolve_parts(replace(cfg.model, task=task), task)
        configs.append(cfg)
    return configs


def _train_and_score(workspace: Workspace, cfg: RunConfig, task: str, ablations: list[Ablation],
                     with_meteor: bool, on_epoch: EpochHook | None) -> dict[str, Any]:
    start = time.perf_counter()
    result = train(workspace, cfg, on_epoch)
    seconds = time.perf_counter() - start
    run = result.config.train.run
    model = result.config.model
    row: dict[str, Any] = {
        "fusion": model.fusion,
        "sequence_model": model.text_encoder if task == "classify" else model.decoder,
        "parameters": _parameters(workspace, run),
        "train_seconds": round(seconds, 1),
        "samples_per_s": round(sum(h["images_per_s"] for h in result.history) / len(result.history), 1),
        "best_epoch": result.best_epoch,
        "run": run,
    }
    report = evaluate_run(workspace, run, with_meteor=with_meteor)
    row.update(_scores(report, task))
    row.update({f"group:{g}": v["accuracy"] for g, v in report.get("per_group", {}).items() if g})
    row.update({f"group:{g}": v["vqa_accuracy"] for g, v in report.get("per_question_type", {}).items() if g})
    for ablation in ablations:
        scores = _scores(evaluate_run(workspace, run, with_meteor=False, ablation=ablation), task)
        row.update({f"{k}_without_{ablation.modality}": v for k, v in scores.items()
                    if k not in ("majority_rate", "answer_prior")})
    return row


def _parameters(workspace: Workspace, run: str) -> int:
    from mmfuse.models.checkpoint import read_metadata

    return int(read_metadata(workspace.run(run).weights("best")).get("parameters", 0))


def _scores(report: dict[str, Any], task: str) -> dict[str, float]:
    metrics = report["metrics"]
    if task == "caption":
        return {k: metrics[k] for k in CAPTION_COLUMNS if k in metrics}
    if task == "answer":  # beside the answer prior: the most frequent training answer per question type
        return {"vqa_accuracy": metrics["vqa_accuracy"], "exact_match": metrics["exact_match"],
                "answer_prior": report["prior"]["metrics"]["vqa_accuracy"]}
    return {**{k: metrics[k] for k in CLASSIFY_COLUMNS}, "majority_rate": report["majority_rate"]}


def _write(workspace: Workspace, name: str, board: dict[str, Any]) -> None:
    out = workspace.compare_dir(name)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "leaderboard.json", board)
    atomic_write_text(out / "leaderboard.csv", to_csv(board["rows"]))


def to_csv(rows: list[dict[str, Any]]) -> str:
    """The leaderboard rows as CSV (columns in first-seen order)."""
    columns = _unique([k for row in rows for k in row])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()

"""What the commands print for humans (on stderr, through rich): tables of scores, examples,
leaderboards, and the one-line summaries. Results for programs go to stdout elsewhere."""

from __future__ import annotations

import codecs
import json
import sys
from pathlib import Path
from typing import Any

import orjson

from mmfuse.config import DecodeConfig, from_dict


def print_epoch(rec: dict[str, Any]) -> None:
    from mmfuse.ui import console

    mark = " *best*" if rec["best"] else ""
    if "val_cider_d" in rec:
        scores = f"val BLEU-4 {rec['val_bleu4']:.4f}  CIDEr-D {rec['val_cider_d']:.4f}"
    elif "val_vqa_accuracy" in rec:
        scores = f"val VQA accuracy {rec['val_vqa_accuracy']:.4f}  exact match {rec['val_exact_match']:.4f}"
    else:
        scores = f"val accuracy {rec['val_accuracy']:.4f}  macro F1 {rec['val_macro_f1']:.4f}"
    console().print(f"epoch {rec['epoch']}: loss {rec['train_loss']:.3f}  {scores}  ({rec['images_per_s']:.0f} samples/s){mark}")


_METRIC_NAMES = {"bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3", "bleu4": "BLEU-4",
                 "meteor": "METEOR", "rouge_l": "ROUGE-L", "cider_d": "CIDEr-D"}


def report_json(report: dict[str, Any]) -> str:
    """A report as indented JSON with one line per image (or question). The lines are written by
    orjson: on 8,092 images 19 ms against 93 ms for the standard library's C encoder (most of that
    is writing the 48,000 scores' floats), and ``json.dumps(indent=2)`` took 0.2 s. Non-ASCII text is
    escaped as ``json.dumps`` escapes it, which reads back the same and never fails on a terminal
    without UTF-8."""
    key = "questions" if "questions" in report else "images"
    items = report.get(key)
    if not isinstance(items, list) or not items:
        return json.dumps(report, indent=2)
    head = json.dumps({k: v for k, v in report.items() if k != key}, indent=2)
    body = ",\n    ".join(map(_json_line, items))
    return f'{head[:-2]},\n  "{key}": [\n    {body}\n  ]\n}}'


def _json_line(item: Any) -> str:
    """One item as compact ASCII JSON, each line escaped alone: joined first, one non-ASCII character
    makes the whole text 2 or 4 bytes a character, and on 8,092 images (a quarter of them with curly
    quotes or accents) the report took 24-35 ms to write instead of 17-18."""
    try:  # string keys, as every item has: the option for other keys cost 1.4 ms of 15 on 8,092 images
        line = orjson.dumps(item)
    except TypeError:
        try:
            line = orjson.dumps(item, option=orjson.OPT_NON_STR_KEYS)
        except TypeError:  # a type orjson does not write (numpy's floats): the standard encoder's rules
            return json.dumps(item, separators=(",", ":"))
    if line.isascii():
        return line.decode("ascii")
    return line.decode("utf-8").encode("ascii", _JSON_ESCAPE).decode("ascii")


def _escaped(error: UnicodeError) -> tuple[str, int]:
    """A codec error handler: the characters ASCII cannot encode as JSON escapes (``\\u00e9``, and a
    UTF-16 surrogate pair outside the basic plane)."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    out = []
    for char in error.object[error.start:error.end]:
        code = ord(char)
        if code >= 0x10000:
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
        else:
            out.append(f"\\u{code:04x}")
    return "".join(out), error.end


_JSON_ESCAPE = "mmfuse-json-escape"
codecs.register_error(_JSON_ESCAPE, _escaped)


def get_ready() -> None:
    """Load what printing a report takes (rich's console and tables, 23-28 ms on the 2-core machine):
    scoring files does it while its second process finishes."""
    import rich.table  # noqa: F401

    from mmfuse.ui import console

    console()


def print_report(report: dict[str, Any], show: int, worst: int) -> None:
    from rich.table import Table

    from mmfuse.evaluate.scoring import worst as worst_images
    from mmfuse.ui import console

    _print_heading(report, f"{report['num_images']} images")
    table = Table()
    names = [k for k in _METRIC_NAMES if k in report["metrics"]]
    for name in names:
        table.add_column(_METRIC_NAMES[name], justify="right")
    table.add_row(*(f"{report['metrics'][k]:.4f}" for k in names))
    console().print(table)
    if report["meteor"].startswith("unavailable"):
        console().print(f"METEOR {report['meteor']}", markup=False)
    if show:
        print_images("examples", report["images"][:show])
    if worst:
        print_images(f"{worst} lowest CIDEr-D", worst_images(report, worst), with_score=True)


def _print_heading(report: dict[str, Any], scored: str) -> None:
    """What was scored: a run on a split with its decoding settings, or a results file against references."""
    from mmfuse.ui import console

    if "run" in report:
        decode = from_dict(DecodeConfig, report["decode"], "report")
        console().print(f"[bold]{report['run']}[/] on {report['data']}/{report['split']}: {scored}, "
                        f"{decode.describe()}, {report['checkpoint']} weights (epoch {report['epoch']})"
                        f"{ablation_note(report)}")
    else:
        console().print(f"{report['predictions']} against {report['references']}: {scored}", markup=False)


def print_answers(report: dict[str, Any], show: int, worst: int) -> None:
    """VQA accuracy and exact match overall, per answer type and per question type; examples."""
    _print_heading(report, f"{report['num_questions']} questions")
    rows = {"all": {**report["metrics"], "questions": report["num_questions"]}}
    if "prior" in report:  # the answer priors: the most frequent training answer per question type, and overall
        rows["prior: per question type"] = {**report["prior"]["metrics"], "questions": report["num_questions"]}
        rows["prior: one answer"] = {**report["prior"]["no_question"]["metrics"], "questions": report["num_questions"]}
    _answer_table(None, rows)
    for title, key in (("per answer type", "per_answer_type"), ("per question type", "per_question_type")):
        if report[key]:
            _answer_table(title, report[key])
    if show:
        print_questions("examples", report["questions"][:show])
    if worst:
        lowest = sorted(report["questions"], key=lambda q: q["scores"]["vqa_accuracy"])[:worst]
        print_questions(f"{worst} lowest VQA accuracy", lowest)


def _answer_table(title: str | None, groups: dict[str, dict[str, Any]]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from mmfuse.ui import console

    table = Table(title=title)
    for column in ("", "VQA accuracy", "exact match", "questions"):
        table.add_column(column, justify="left" if not column else "right")
    for name, g in groups.items():
        table.add_row(escape(name), f"{g['vqa_accuracy']:.4f}", f"{g['exact_match']:.4f}", str(g["questions"]))
    console().print(table)


def print_questions(title: str, questions: list[dict[str, Any]]) -> None:
    """Questions with the predicted answer, the humans' answers (with counts) and the accuracy."""
    from collections import Counter

    from rich.markup import escape
    from rich.table import Table

    from mmfuse.ui import console

    table = Table(title=title, show_lines=True)
    for column in ("question", "answer", "human answers", "VQA acc."):
        table.add_column(column, justify="right" if column == "VQA acc." else "left")
    for q in questions:
        humans = ", ".join(f"{a} x{n}" if n > 1 else a for a, n in Counter(q["answers"]).most_common())
        table.add_row(escape(q["question"] or str(q["id"])), escape(q["answer"]), escape(humans),
                      f"{q['scores']['vqa_accuracy']:.3f}")
    console().print(table)


def ablation_note(report: dict[str, Any]) -> str:
    a = report.get("ablation")
    return f", [bold]{a['modality']} ablated ({a['mode']})[/]" if a else ""


def print_classification(report: dict[str, Any], show: int, worst: int) -> None:
    from rich.markup import escape
    from rich.table import Table

    from mmfuse.evaluate.reports import confident_mistakes
    from mmfuse.ui import console

    m = report["metrics"]
    console().print(f"[bold]{report['run']}[/] on {report['data']}/{report['split']}: {report['num_samples']} samples, "
                    f"{report['checkpoint']} weights (epoch {report['epoch']}){ablation_note(report)}")
    table = Table()
    names = ["accuracy", "macro_precision", "macro_recall", "macro_f1"] + (["auroc"] if "auroc" in m else [])
    for name in names + ["majority class rate"]:
        table.add_column(name.replace("_", " "), justify="right")
    table.add_row(*(f"{m[k]:.4f}" for k in names), f"{report['majority_rate']:.4f}")
    console().print(table)
    confusion = Table(title="confusion matrix (rows: true, columns: predicted)")
    confusion.add_column("")
    for label in report["labels"]:
        confusion.add_column(escape(label), justify="right")
    for label, row in zip(report["labels"], m["confusion_matrix"]):
        confusion.add_row(escape(label), *map(str, row))
    console().print(confusion)
    if "per_group" in report:
        groups = Table(title="accuracy per group")
        for name in ("group", "accuracy", "samples"):
            groups.add_column(name, justify="left" if name == "group" else "right")
        for name, g in report["per_group"].items():
            groups.add_row(escape(name or "(none)"), f"{g['accuracy']:.4f}", str(g["support"]))
        console().print(groups)
    if show:
        print_samples("examples", report["samples"][:show])
    if worst:
        print_samples(f"{worst} most confident mistakes", confident_mistakes(report, worst))


def print_samples(title: str, samples: list[dict[str, Any]]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from mmfuse.ui import console

    table = Table(title=title)
    for column in ("image", "text", "label", "prediction", "probability"):
        table.add_column(column, justify="right" if column == "probability" else "left")
    for s in samples:
        table.add_row(escape(Path(s["image"]).name), escape(s["text"]), escape(s["label"]), escape(s["prediction"]),
                      f"{s['probabilities'][s['prediction']]:.3f}")
    console().print(table)


def print_images(title: str, items: list[dict[str, Any]], with_score: bool = False) -> None:
    from rich.markup import escape
    from rich.table import Table

    from mmfuse.ui import console

    table = Table(title=title, show_lines=True)
    table.add_column("image")
    if with_score:
        table.add_column("CIDEr-D", justify="right")
    table.add_column("generated")
    table.add_column("references")
    for item in items:
        name = Path(item["image"]).name if "image" in item else str(item["id"])
        score = [f"{item['scores']['cider_d']:.3f}"] if with_score else []
        table.add_row(escape(name), *score, escape(item["caption"]), escape("\n".join(item["references"])))
    console().print(table)


_BOARD_HEADERS = {"fusion": "fusion", "sequence_model": "model", "parameters": "params", "train_seconds": "train s",
                  "samples_per_s": "samples/s", "accuracy": "accuracy", "macro_f1": "macro F1",
                  "majority_rate": "majority", "vqa_accuracy": "VQA acc.", "exact_match": "exact match",
                  "answer_prior": "answer prior", **_METRIC_NAMES}


def print_leaderboard(board: dict[str, Any]) -> None:
    """The leaderboard's main columns (every column is in the JSON and CSV files)."""
    from rich.markup import escape
    from rich.table import Table

    from mmfuse.ui import console

    main = board["ranked_by"]
    columns = [c for c in _BOARD_HEADERS if c in board["rows"][0]]
    ablated = [k for k in board["rows"][0] if k.startswith(f"{main}_without_")]
    groups = [k for k in board["rows"][0] if k.startswith("group:")]  # accuracy per group (e.g. question kind)
    if board["task"] == "answer":  # per question type: in the JSON and CSV files (too many for one table)
        groups = []
    table = Table(title=f"{board['data']} ({board['task']}), ranked by {_BOARD_HEADERS[main]}")
    for column in columns:
        table.add_column(_BOARD_HEADERS[column], justify="left" if column in ("fusion", "sequence_model") else "right")
    for column in ablated:
        table.add_column(f"{_BOARD_HEADERS[main]} w/o {column.rsplit('_', 1)[1]}", justify="right")
    for column in groups:
        table.add_column(escape(column.split(":", 1)[1]), justify="right")
    for row in board["rows"]:
        table.add_row(*(cell(c, row.get(c, "")) for c in columns + ablated + groups))
    console().print(table)


def cell(column: str, value: Any) -> str:
    if column == "parameters":
        return f"{value / 1e6:.2f}M"
    if isinstance(value, float):
        return f"{value:.4f}" if column not in ("train_seconds", "samples_per_s") else f"{value:.0f}"
    return str(value)


SMALL_SPLIT = 20  # images below which a val or test split's scores say little


def warn(message: str) -> None:
    """One ``mmfuse: warning:`` line on stderr."""
    sys.stderr.write(f"mmfuse: warning: {message}\n")


def note(message: str) -> None:
    """One ``mmfuse:`` line on stderr (what the tool chose for the user)."""
    sys.stderr.write(f"mmfuse: {message}\n")


def print_prepared(result: Any) -> None:
    """prepare-data's summary: splits, vocabulary, coverage, caption lengths, skipped samples."""
    from rich.markup import escape

    from mmfuse.ui import console

    m = result.manifest
    unit = "captions" if m["task"] == "caption" else "samples"
    counts = ", ".join(f"{s} {c['images']} images / {c.get('captions') or c['samples']} {unit}" for s, c in m["splits"].items())
    console().print(f"data set [bold]{m['name']}[/] at {escape(str(result.path))}: {counts}; "
                    f"vocabulary {m['vocab_size']} words")
    stats = m["stats"]
    lengths = stats["caption_length"]
    coverage = ", ".join(f"{s} {100 * v:.1f} %" for s, v in stats["vocab_coverage"].items())
    console().print(f"vocabulary coverage of the tokens: {coverage}"
                    + (f"; caption length in tokens (train): median {lengths['p50']}, 90th percentile {lengths['p90']}, "
                       f"99th {lengths['p99']}, max {lengths['max']}" if m["task"] == "caption" else "")
                    + (f"; {stats['captions_cut']} captions cut to {stats['max_length']} tokens" if stats["max_length"] else ""),
                    markup=False)
    if stats["skipped_samples"]:
        console().print(f"skipped {stats['skipped_samples']} sample(s) whose image is missing or unreadable or that have "
                        f"no caption: listed in {result.path / 'report.json'}", markup=False)
    for split, c in m["splits"].items():
        if split != "train" and c["images"] < SMALL_SPLIT:
            warn(f"split {split} has only {c['images']} image(s): a score on fewer than {SMALL_SPLIT} says little")


def print_cached(result: Any) -> None:
    """cache-features' summary."""
    from mmfuse.ui import console

    console().print(f"features of {result.images} images in {result.path}: {result.bytes / 2**20:.1f} MiB, "
                    f"{result.bytes / result.images / 1024:.1f} KiB per image; {result.new} encoded now "
                    f"({result.images - result.new} were already there)", markup=False)


def print_trained(result: Any) -> None:
    """train's closing line."""
    from rich.markup import escape

    from mmfuse.ui import console

    console().print(f"run [bold]{result.config.train.run}[/] at {escape(str(result.run_dir))}: best epoch "
                    f"{result.best_epoch}, val {result.config.train.select_metric} {result.best_score:.4f}")


def print_lm_epoch(epoch: int, loss: float, perplexity: float) -> None:
    from mmfuse.ui import console

    console().print(f"epoch {epoch}: loss {loss:.3f}  val perplexity {perplexity:.3f}", markup=False)


def print_trained_lm(result: Any) -> None:
    """train-lm's closing lines: where the model is and how to use it."""
    from mmfuse.ui import console

    console().print(f"language model ({result.parameters:,} parameters, {result.vocab_size} tokens, val perplexity "
                    f"{result.val_perplexity:.3f}, {result.seconds:.0f} s) written to {result.path}\n"
                    f"use it: mmfuse train --decoder hf:{result.path} --fusion mlp", markup=False)


def size(n: int) -> str:
    """Bytes for humans (1024-based)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def print_listing(root: Path, datasets: list[dict[str, Any]] | None, runs: list[dict[str, Any]] | None) -> None:
    """``mmfuse list``: a table of data sets and one of runs."""
    from rich.markup import escape
    from rich.table import Table

    from mmfuse.ui import console

    if datasets is not None:
        table = Table(title=f"data sets in {escape(str(root))}")
        for column in ("name", "task", "source", "images (train/val/test)", "size", "created"):
            table.add_column(column, justify="right" if column in ("size",) else "left")
        for d in datasets:
            counts = "/".join(str(d["splits"].get(s, 0)) for s in ("train", "val", "test"))
            table.add_row(escape(d["name"]), str(d["task"]), str(d["source"]), counts, size(d["bytes"]),
                          d["created"] or "")
        console().print(table if datasets else f"no data sets in {escape(str(root))} (mmfuse prepare-data shapes)")
    if runs is not None:
        table = Table(title=f"runs in {escape(str(root))}")
        for column in ("name", "task", "data", "fusion", "encoder", "epochs", "best epoch", "best val", "size",
                       "created"):
            table.add_column(column, justify="right" if column in ("size", "best val", "best epoch") else "left")
        for r in runs:
            best = f"{_METRIC_NAMES.get(r['metric'], r['metric'])} {r['best']:.4f}" if isinstance(r["best"], float) else ""
            epochs = r["epochs"] + (" (resumable)" if r["resumable"] else "")
            table.add_row(escape(r["name"]), str(r["task"]), escape(str(r["data"])), str(r["fusion"]),
                          str(r["encoder"]), epochs, str(r["best_epoch"] or ""), best, size(r["bytes"]),
                          r["created"] or "")
        console().print(table if runs else f"no runs in {escape(str(root))} (mmfuse train --data NAME --run NAME)")


def print_run(summary: dict[str, Any]) -> None:
    """``mmfuse show RUN``: the run's settings, history, evaluations and files."""
    from rich.markup import escape
    from rich.table import Table

    from mmfuse.ui import console

    out = console()
    out.print(f"[bold]{escape(summary['name'])}[/] at {escape(summary['path'])}: {summary['task']} on "
              f"{escape(str(summary['data']))}, {summary['epochs']} epochs, {size(summary['bytes'])}"
              + (f", made by comparison {escape(summary['made_by'])}" if summary["made_by"] else ""))
    config = summary["config"] or {}
    for section in ("model", "train", "decode"):
        values = config.get(section, {})
        out.print(f"{section}: " + ", ".join(f"{k}={v!r}" for k, v in values.items()), markup=False)
    if summary["history"]:
        keys = [k for k in summary["history"][0] if k.startswith("val_")]
        table = Table(title="validation per epoch (* best)")
        for column in ["epoch", "train loss"] + [_METRIC_NAMES.get(k[4:], k[4:]) for k in keys] + ["best"]:
            table.add_column(column, justify="right")
        for r in summary["history"]:
            table.add_row(str(r.get("epoch")), f"{r.get('train_loss', float('nan')):.3f}",
                          *(f"{r[k]:.4f}" for k in keys), "*" if r.get("best") else "")
        out.print(table)
    for split, metrics in summary["evaluations"].items():
        shown = ", ".join(f"{_METRIC_NAMES.get(k, k)} {v:.4f}" for k, v in (metrics or {}).items()
                          if isinstance(v, float))
        out.print(f"evaluation {split}: {shown}", markup=False)
    out.print("files: " + ", ".join(f"{name} ({size(n)})" for name, n in summary["files"].items()), markup=False)

"""``mmfuse compare``: same budget for every fusion, a ranked leaderboard in JSON and CSV, ablations,
and bad fusions refused before anything trains."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from mmfuse.models.captioner import count_parameters
from mmfuse.models.checkpoint import load_run
from tests.conftest import TINY, invoke

SMALL = ["--epochs", "1", "--batch-size", "16", "--no-meteor"]


@pytest.mark.slow
def test_compare_ranks_fusions_and_writes_the_leaderboard(workspace: Path) -> None:
    assert invoke("prepare-data", "shapes", *TINY).exit_code == 0
    res = invoke("compare", "--fusion", "concat,attention", "--ablate", "image,text", "--name", "cmp", "--json",
                 *SMALL[:-1])  # METEOR on, as evaluate's default
    assert res.exit_code == 0, res.stderr
    board = json.loads(res.stdout)
    assert board["task"] == "caption" and board["ranked_by"] == "cider_d"
    assert board["ablations"] == ["image:shuffle", "text:zero"]
    rows = board["rows"]
    assert sorted(r["fusion"] for r in rows) == ["attention", "concat"]
    assert [r["cider_d"] for r in rows] == sorted((r["cider_d"] for r in rows), reverse=True)
    for row in rows:
        run = load_run(workspace / "runs" / f"cmp-{row['fusion']}")
        assert row["parameters"] == count_parameters(run.model)
        assert run.config.train.epochs == 1 and run.config.train.seed == 0
        assert row["train_seconds"] > 0 and row["samples_per_s"] > 0
        assert {"bleu4", "rouge_l", "meteor", "cider_d_without_image", "cider_d_without_text"} <= set(row)
        ablated = json.loads((workspace / "runs" / row["run"] / "eval-test-ablate-image-shuffle.json").read_text())
        assert ablated["metrics"]["cider_d"] == row["cider_d_without_image"]
    out = workspace / "compare" / "cmp"
    assert json.loads((out / "leaderboard.json").read_text()) == board
    table = list(csv.DictReader(io.StringIO((out / "leaderboard.csv").read_text())))
    assert [r["fusion"] for r in table] == [r["fusion"] for r in rows]
    assert "leaderboard" not in res.stdout and "cider" in res.stderr.lower()  # table on stderr, JSON on stdout


def test_compare_refuses_bad_fusions_before_training_anything(workspace: Path) -> None:
    assert invoke("prepare-data", "shapes", *TINY).exit_code == 0
    res = invoke("compare", "--fusion", "concat,late", *SMALL)
    assert res.exit_code == 1 and "decision-level" in res.stderr
    res = invoke("compare", "--fusion", "concat,nope", *SMALL)
    assert res.exit_code == 1 and "unknown fusion 'nope'" in res.stderr
    res = invoke("compare", "--fusion", "concat", "--ablate", "sound", *SMALL)
    assert res.exit_code == 1 and "--ablate must be image or text" in res.stderr
    assert not (workspace / "runs").exists()


def test_compare_on_questions_reports_accuracy_per_kind(workspace: Path) -> None:
    assert invoke("prepare-data", "shapes-qa", "--name", "qa", *TINY).exit_code == 0
    res = invoke("compare", "--data", "qa", "--fusion", "sum", "--name", "qa-cmp", "--json", *SMALL)
    assert res.exit_code == 0, res.stderr
    (row,) = json.loads(res.stdout)["rows"]
    report = json.loads((workspace / "runs" / row["run"] / "eval-test.json").read_text())
    kinds = {k.split(":", 1)[1]: v for k, v in row.items() if k.startswith("group:")}
    assert kinds == {g: v["accuracy"] for g, v in report["per_group"].items()} and len(kinds) >= 2
    assert all(kind in res.stderr for kind in kinds)  # per-kind columns in the printed table

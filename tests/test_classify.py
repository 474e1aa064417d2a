"""The classifier task end to end: train, evaluate (with ablations), predict, and the errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmfuse.data.dataset import ImageGroupedSampler
from mmfuse.data.records import load_labelled_split
from mmfuse.train.loop import balanced_class_weights
from tests.conftest import TINY, invoke


def _report(ws: Path, *extra: str) -> dict:
    res = invoke("evaluate", "--run", "q", "--json", "-w", str(ws), *extra)
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def test_run_records_the_resolved_task_parts_and_labels(trained_qa: Path) -> None:
    run = trained_qa / "runs" / "q"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["task"] == "classify" and cfg["model"]["text_encoder"] == "lstm"
    assert cfg["train"]["select_metric"] == "accuracy"
    assert json.loads((run / "labels.json").read_text()) == ["no", "yes"]
    assert "val_accuracy" in json.loads((run / "metrics.jsonl").read_text().splitlines()[0])


def test_evaluate_reports_metrics_that_match_the_written_predictions(trained_qa: Path) -> None:
    report = _report(trained_qa)
    results = json.loads((trained_qa / "runs" / "q" / "results-test.json").read_text())
    records = load_labelled_split(trained_qa / "datasets" / "qa", "test")
    assert [r["id"] for r in results] == [r.id for r in records]
    correct = sum(r["prediction"] == r["label"] for r in results)
    m = report["metrics"]
    assert m["accuracy"] == pytest.approx(correct / len(results))
    assert sum(map(sum, m["confusion_matrix"])) == len(results) == report["num_samples"]
    assert 0.0 <= m["auroc"] <= 1.0 and report["majority_rate"] == pytest.approx(0.5)
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in results)
    assert report["samples"] == results


def test_evaluate_reports_accuracy_per_question_kind(trained_qa: Path) -> None:
    report = _report(trained_qa)
    results = json.loads((trained_qa / "runs" / "q" / "results-test.json").read_text())
    kinds = {r["group"] for r in results}
    assert kinds <= {"existence", "attribute", "relation"} and len(kinds) >= 2
    for kind in kinds:
        mine = [r for r in results if r["group"] == kind]
        expected = sum(r["prediction"] == r["label"] for r in mine) / len(mine)
        assert report["per_group"][kind] == {"accuracy": pytest.approx(expected), "support": len(mine)}
    assert sum(g["support"] for g in report["per_group"].values()) == len(results)
    shown = invoke("evaluate", "--run", "q", "-w", str(trained_qa))
    assert "accuracy per group" in shown.stderr + shown.stdout and "existence" in shown.stderr + shown.stdout


def test_evaluate_shows_examples_and_confident_mistakes(trained_qa: Path) -> None:
    from mmfuse.evaluate.reports import confident_mistakes

    res = invoke("evaluate", "--run", "q", "--show", "2", "--worst", "3", "-w", str(trained_qa))
    assert res.exit_code == 0, res.stderr
    assert "examples" in res.stderr and "most confident mistakes" in res.stderr
    report = _report(trained_qa)
    mistakes = confident_mistakes(report, 3)
    assert all(m["prediction"] != m["label"] for m in mistakes)
    confidence = [m["probabilities"][m["prediction"]] for m in mistakes]
    assert confidence == sorted(confidence, reverse=True)


@pytest.mark.parametrize("modality,mode", [("image", "shuffle"), ("image", "zero"), ("text", "shuffle"), ("text", "zero")])
def test_ablations_take_one_modality_away_and_are_written_apart(trained_qa: Path, modality: str, mode: str) -> None:
    report = _report(trained_qa, "--ablate", modality, "--ablate-mode", mode)
    assert report["ablation"] == {"modality": modality, "mode": mode}
    run = trained_qa / "runs" / "q"
    results = json.loads((run / f"results-test-ablate-{modality}-{mode}.json").read_text())
    records = load_labelled_split(trained_qa / "datasets" / "qa", "test")
    if modality == "image" and mode == "shuffle":
        assert [r["image"] for r in results] != [str(r.image) for r in records]
        assert sorted(r["image"] for r in results) == sorted(str(r.image) for r in records)
    if modality == "image" and mode == "zero" or modality == "text" and mode == "zero":
        # one modality constant: the prediction depends on the other one only
        key = "text" if modality == "image" else "image"
        by_key: dict[str, set] = {}
        for r in results:
            by_key.setdefault(r[key], set()).add(round(r["probabilities"]["yes"], 4))
        assert all(len(v) == 1 for v in by_key.values())


def test_predict_prints_tsv_or_jsonl_in_input_order(trained_qa: Path, tmp_path: Path) -> None:
    images = sorted((trained_qa / "datasets" / "qa" / "images" / "test").glob("*.png"))[:3]
    res = invoke("predict", *map(str, images), "--text", "is there a small red circle ?", "--run", "q", "-w", str(trained_qa))
    assert res.exit_code == 0, res.stderr
    rows = [line.split("\t") for line in res.stdout.splitlines()]
    assert [r[0] for r in rows] == list(map(str, images))
    assert all(r[1] == "is there a small red circle ?" and r[2] in ("yes", "no") for r in rows)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": str(p), "text": t}) + "\n"
                             for p, t in zip(images, ["is the circle red ?", "is there a large blue square ?", ""])))
    res = invoke("predict", "--pairs", str(pairs), "--run", "q", "--json", "-w", str(trained_qa))
    assert res.exit_code == 0, res.stderr
    out = [json.loads(line) for line in res.stdout.splitlines()]
    assert [o["text"] for o in out] == ["is the circle red ?", "is there a large blue square ?", ""]
    assert all(o["label"] == max(o["probabilities"], key=o["probabilities"].get) for o in out)


def test_predict_errors_are_one_clear_line(trained_qa: Path, tmp_path: Path, trained: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"image": "a.png", "text": "x"}\nnot json\n')
    res = invoke("predict", "--pairs", str(pairs), "--run", "q", "-w", str(trained_qa))
    assert res.exit_code == 1 and f"{pairs}:2:" in res.stderr and "Traceback" not in res.stderr
    res = invoke("predict", "img.png", "--run", "q", "-w", str(trained_qa))
    assert res.exit_code == 1 and "--text" in res.stderr
    image = next((trained / "datasets" / "tiny" / "images" / "test").glob("*.png"))
    res = invoke("predict", str(image), "--text", "x", "--run", "r", "-w", str(trained))
    assert res.exit_code == 1 and "is a captioner" in res.stderr


def test_task_mismatches_are_refused_clearly(trained_qa: Path, trained: Path) -> None:
    res = invoke("train", "--data", "qa", "--task", "caption", "-w", str(trained_qa))
    assert res.exit_code == 1 and "is for task 'classify'" in res.stderr
    res = invoke("train", "--data", "tiny", "--class-weights", "balanced", "--run", "x", "-w", str(trained))
    assert res.exit_code == 1 and "--class-weights applies to classification" in res.stderr
    res = invoke("train", "--data", "qa", "--select-metric", "cider_d", "--run", "x", "-w", str(trained_qa))
    assert res.exit_code == 1 and "does not apply to task classify" in res.stderr
    res = invoke("train", "--data", "tiny", "--fusion", "late", "--run", "x", "-w", str(trained))
    assert res.exit_code == 1 and "decision-level" in res.stderr
    assert not (trained / "runs" / "x").exists()


def test_balanced_class_weights_follow_scikit_learn() -> None:
    weights = balanced_class_weights([0, 0, 0, 1], 3)  # class 2 never seen
    assert torch.allclose(weights, torch.tensor([4 / (3 * 3), 4 / (3 * 1), 4 / (3 * 1)]))


def test_class_weighted_training_runs(workspace: Path) -> None:
    assert invoke("prepare-data", "shapes-qa", *TINY).exit_code == 0
    res = invoke("train", "--data", "shapes-qa", "--class-weights", "balanced", "--fusion", "late", "--epochs", "1",
                 "--run", "w", "--feature-dim", "16", "--embed-dim", "8", "--hidden-dim", "16")
    assert res.exit_code == 0, res.stderr
    assert json.loads((workspace / "runs" / "w" / "config.json").read_text())["train"]["class_weights"] == "balanced"


def test_training_order_keeps_each_images_questions_together_and_draws_each_once() -> None:
    keys = [f"img{i // 3}" if i < 30 else f"img{i}" for i in range(40)]  # 10 images x 3 samples, then 10 x 1
    sampler = ImageGroupedSampler(keys, torch.Generator().manual_seed(0))
    first, second = list(sampler), list(sampler)
    for order in (first, second):
        assert sorted(order) == list(range(40)) and len(sampler) == 40
        runs = [k for i, k in enumerate(keys[j] for j in order) if i == 0 or k != keys[order[i - 1]]]
        assert len(runs) == len(set(keys)), "an image's samples are split"
    assert first != second  # a new order every epoch
    assert first == list(ImageGroupedSampler(keys, torch.Generator().manual_seed(0)))  # seeded

"""Learning tests: on the built-in sets with a fixed seed, short CPU runs must learn clearly, and
the image+text classifier must need both modalities. (Full budgets and every fusion: README,
"Measured".)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import invoke

# measured with these budgets (seed 0): concat 0.51, attention 0.66
MIN_TEST_BLEU4 = {"concat": 0.40, "attention": 0.55}
# transformer fusion (GRU text encoder, then the joint Transformer); measured 0.7275 (image ablated
# 0.4975, text ablated 0.515); 0.695 when the Transformer read the image tokens and raw words together
MIN_QA_ACCURACY = 0.65
MAX_ABLATED_ACCURACY = 0.56  # the majority-class rate is 0.50


@pytest.mark.parametrize("fusion", sorted(MIN_TEST_BLEU4))
def test_short_training_learns_shapes_captions(workspace: Path, fusion: str) -> None:
    res = invoke("prepare-data", "shapes", "--train-images", "1500", "--val-images", "60", "--test-images", "150")
    assert res.exit_code == 0, res.stderr
    res = invoke("train", "--epochs", "4", "--run", "learn", "--seed", "0", "--fusion", fusion)
    assert res.exit_code == 0, res.stderr
    report = json.loads(invoke("evaluate", "--run", "learn", "--json", "--no-meteor").stdout)
    assert report["metrics"]["bleu4"] >= MIN_TEST_BLEU4[fusion], report["metrics"]
    # the model must describe each image, not emit one caption for all
    assert len({c["caption"] for c in report["images"]}) >= 30


def test_classifier_answers_shapes_qa_only_with_both_modalities(workspace: Path) -> None:
    res = invoke("prepare-data", "shapes-qa", "--train-images", "1500", "--val-images", "60", "--test-images", "200")
    assert res.exit_code == 0, res.stderr
    res = invoke("train", "--data", "shapes-qa", "--fusion", "transformer", "--epochs", "6", "--lr", "5e-4", "--run", "qa", "--seed", "0")
    assert res.exit_code == 0, res.stderr
    accuracy = {}
    for ablate in (None, "image", "text"):
        extra = ["--ablate", ablate] if ablate else []
        res = invoke("evaluate", "--run", "qa", "--json", *extra)
        assert res.exit_code == 0, res.stderr
        accuracy[ablate] = json.loads(res.stdout)["metrics"]["accuracy"]
    assert accuracy[None] >= MIN_QA_ACCURACY, accuracy
    assert accuracy["image"] <= MAX_ABLATED_ACCURACY and accuracy["text"] <= MAX_ABLATED_ACCURACY, accuracy

"""How far can text alone steer a frozen ``train-lm`` model? An upper bound for frozen connectors.

A connector on a frozen language model can only write embeddings before the caption. This script
gives the frozen model the best such context a connector could hope to produce, as real word
embeddings: a reference caption of the test image itself, then ``</s> <s>``, and decodes greedily
(Hugging Face ``generate``). It repeats that with the caption's words shuffled (what a connector
that says *which* attributes are present, but not which belongs to which shape, can convey), with
the objects alone, in order (``a large red circle a small blue square``: everything the image
shows, bound and ordered, without the caption's other words), and with no context at all (the
text-only level). Scores are test BLEU-4 against the references.

    python benchmarks/lm_text_oracle.py [--lm DIR] [--images 300]

Without ``--lm`` it builds the ``shapes`` set and the default ``train-lm`` model in a temporary
workspace first (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmfuse.data.records import load_split  # noqa: E402
from mmfuse.data.sources.shapes import COLOURS, SHAPES, SIZES  # noqa: E402
from mmfuse.metrics.captions import score_texts  # noqa: E402
from mmfuse.train.language_model import LMTrainSettings, train_language_model  # noqa: E402
from mmfuse.workspace import Workspace  # noqa: E402

OBJECT = re.compile(rf"({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})")


def _build(root: Path) -> tuple[Path, Path]:
    from typer.testing import CliRunner

    from mmfuse.cli import app

    res = CliRunner().invoke(app, ["prepare-data", "shapes", "-w", str(root)])
    assert res.exit_code == 0, res.stderr
    out = root / "lm"
    train_language_model(Workspace.open(root), "shapes", out, LMTrainSettings())
    return out, root / "datasets" / "shapes"


def _decode(model, tok, prefixes: list[list[int]]) -> list[str]:
    hyps = []
    for ids in prefixes:  # one at a time: no padding to get wrong
        out = model.generate(torch.tensor([ids]), max_new_tokens=25, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        hyps.append(tok.decode(out[0, len(ids):], skip_special_tokens=True))
    return hyps


def oracle(lm: Path, data: Path, images: int) -> dict[str, float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(lm)
    model = AutoModelForCausalLM.from_pretrained(lm).eval()
    records = load_split(data, "test")[:images]
    refs = [list(r.captions) for r in records]
    rnd = random.Random(0)

    def words(text: str) -> list[int]:
        return tok(text, add_special_tokens=False).input_ids

    def shuffled(text: str) -> str:
        w = text.split()
        rnd.shuffle(w)
        return " ".join(w)

    def objects(text: str) -> str:  # the first caption names the objects left to right
        return " ".join(f"a {' '.join(o)}" for o in OBJECT.findall(text))

    bos, eos = tok.bos_token_id, tok.eos_token_id
    layouts: dict[str, Callable[[str], list[int]]] = {
        "no context (text-only level)": lambda c: [bos],
        "its caption's words, shuffled": lambda c: [bos, *words(shuffled(c)), eos, bos],
        "its objects, in order": lambda c: [bos, *words(objects(c)), eos, bos],
        "its caption, in order": lambda c: [bos, *words(c), eos, bos],
    }
    with torch.no_grad():
        return {name: score_texts(_decode(model, tok, [f(r.captions[0]) for r in records]), refs)["corpus"]["bleu4"]
                for name, f in layouts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm", type=Path, help="a train-lm model directory (default: build one)")
    parser.add_argument("--data", type=Path, help="the data set it was trained on (default: workspace/datasets/shapes)")
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        lm, data = (args.lm, args.data or Path("workspace/datasets/shapes")) if args.lm else _build(Path(tmp))
        scores = oracle(lm, data, args.images)
    print(f"frozen LM {lm.name}, {args.images} test images, greedy; context before the caption -> test BLEU-4")
    for name, value in scores.items():
        print(f"  {name:32s} {value:.4f}")


if __name__ == "__main__":
    main()

"""Caption metrics: mmfuse vs pycocoevalcap on the same 5,000 images x 5 references, in one run.

Both sides include tokenization (mmfuse: pure-Python PTB-equivalent tokenizer; pycocoevalcap:
Stanford's Java PTBTokenizer) and compute BLEU-1..4, ROUGE-L and CIDEr-D. Prints both times, the
ratio, and the largest score difference. Needs pycocoevalcap and Java (`pip install -e ".[dev]"`).

    python benchmarks/metrics.py [--images 5000]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmfuse.metrics.captions import score_texts  # noqa: E402
from tests.caption_corpus import captions  # noqa: E402


def corpus(n_images: int) -> tuple[list[str], list[list[str]]]:
    texts = captions(n_images * 6, seed=11)
    rng = random.Random(3)
    refs = [texts[i * 6 : i * 6 + 5] for i in range(n_images)]
    hyps = [rng.choice(r) if rng.random() < 0.2 else texts[i * 6 + 5] for i, r in enumerate(refs)]
    return hyps, refs


def run_mmfuse(hyps, refs) -> dict[str, float]:
    return score_texts(hyps, refs)["corpus"]


def run_coco(hyps, refs) -> dict[str, float]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in r] for i, r in enumerate(refs)})
    res = tok.tokenize({i: [{"caption": h}] for i, h in enumerate(hyps)})
    b, _ = Bleu(4).compute_score(gts, res, verbose=0)
    r, _ = Rouge().compute_score(gts, res)
    c, _ = Cider().compute_score(gts, res)
    return {"bleu1": b[0], "bleu2": b[1], "bleu3": b[2], "bleu4": b[3], "rouge_l": float(r), "cider_d": float(c)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    args = parser.parse_args()
    hyps, refs = corpus(args.images)
    t0 = time.perf_counter()
    ours = run_mmfuse(hyps, refs)
    t1 = time.perf_counter()
    theirs = run_coco(hyps, refs)
    t2 = time.perf_counter()
    diff = max(abs(ours[k] - theirs[k]) for k in theirs)
    print(f"images: {args.images} x 5 references")
    print(f"mmfuse        {t1 - t0:8.2f} s")
    print(f"pycocoevalcap {t2 - t1:8.2f} s")
    print(f"speed-up      {(t2 - t1) / (t1 - t0):8.1f}x  (target >= 10x)")
    print(f"max |score difference| {diff:.2e}")
    for k in theirs:
        print(f"  {k:8s} mmfuse {ours[k]:.6f}  pycocoevalcap {theirs[k]:.6f}")


if __name__ == "__main__":
    main()

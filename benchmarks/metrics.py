"""Scoring as a whole process: ``mmfuse evaluate --predictions`` vs a pycocoevalcap process, same files.

What a user waits for when scoring a results file: the whole command, from start to exit. Both sides
read the same COCO-format files (results JSON, captions annotation JSON) and compute BLEU-1..4,
ROUGE-L and CIDEr-D with the PTB tokenizer first (mmfuse: ``--no-meteor --json``; pycocoevalcap:
``PTBTokenizer`` (Java) then ``Bleu(4)``, ``Rouge()``, ``Cider()``, the scorers coco-caption's
``COCOEvalCap`` runs). The caption set is generated with a real set's statistics (Flickr8k: 8,092
images x 5 references, about 12 tokens each, about 8,300 distinct words; ``tests/caption_corpus.py``).

Each process runs once untimed (which also writes both sides' bytecode caches: this sandbox sets
``PYTHONDONTWRITEBYTECODE``, which a user's machine does not, so the runs get a ``PYTHONPYCACHEPREFIX``
of their own), then ``--repeats`` times, the two sides alternating; the median is reported, with the
ratio, the largest difference of the corpus scores and of the per-image scores, and mmfuse's own
per-step timings. Needs pycocoevalcap and Java (``pip install -e ".[dev]"``). Run it on an idle
machine: another busy process changes both sides' times.

    python benchmarks/metrics.py [--sizes 1000 8092] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.caption_corpus import caption_set  # noqa: E402

METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider_d")
TARGET = 20.0

# The pycocoevalcap side, as a user would write it: read the files, tokenize, score, print JSON.
COCO_SCRIPT = """
import json, sys
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
results = json.load(open(sys.argv[1]))
gts, res = {}, {}
for a in json.load(open(sys.argv[2]))["annotations"]:
    gts.setdefault(a["image_id"], []).append({"caption": a["caption"]})
for r in results:
    res[r["image_id"]] = [{"caption": r["caption"]}]
gts = {i: gts[i] for i in res}
tokenizer = PTBTokenizer()
gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
ids = list(res)
b, b_images = Bleu(4).compute_score(gts, res, verbose=0)
r, r_images = Rouge().compute_score(gts, res)
c, c_images = Cider().compute_score(gts, res)
metrics = {"bleu1": b[0], "bleu2": b[1], "bleu3": b[2], "bleu4": b[3], "rouge_l": float(r), "cider_d": float(c)}
images = {str(i): [b_images[0][k], b_images[1][k], b_images[2][k], b_images[3][k], float(r_images[k]), float(c_images[k])]
          for k, i in enumerate(ids)}
print(json.dumps({"metrics": metrics, "images": images}))
"""


def write_files(folder: Path, images: int, seed: int) -> tuple[Path, Path]:
    hyps, refs = caption_set(images, seed=seed)
    preds, annotations = folder / "results.json", folder / "captions.json"
    preds.write_text(json.dumps([{"image_id": i, "caption": h} for i, h in enumerate(hyps)]))
    anns = [{"image_id": i, "id": 5 * i + j, "caption": c} for i, rs in enumerate(refs) for j, c in enumerate(rs)]
    annotations.write_text(json.dumps({"images": [{"id": i} for i in range(images)], "annotations": anns}))
    return preds, annotations


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])}... failed: {done.stderr.strip()[-500:]}")
    return elapsed, done.stdout


def compare(size: int, repeats: int, folder: Path, env: dict[str, str]) -> dict:
    preds, refs = write_files(folder, size, seed=size)
    ours_cmd = [sys.executable, "-m", "mmfuse", "evaluate", "--predictions", str(preds), "--references", str(refs),
                "--no-meteor", "--json", "-w", str(folder / "workspace")]
    coco_cmd = [sys.executable, "-c", COCO_SCRIPT, str(preds), str(refs)]
    timed(ours_cmd, env), timed(coco_cmd, env)  # untimed: bytecode caches, file caches
    ours_t, coco_t = [], []
    for _ in range(repeats):
        t, ours_out = timed(ours_cmd, env)
        ours_t.append(t)
        t, coco_out = timed(coco_cmd, env)
        coco_t.append(t)
    ours, coco = json.loads(ours_out), json.loads(coco_out)
    corpus_diff = max(abs(ours["metrics"][k] - coco["metrics"][k]) for k in METRICS)
    image_diff = max(abs(item["scores"][k] - coco["images"][str(item["id"])][m])
                     for item in ours["images"] for m, k in enumerate(METRICS))
    return {"images": size, "mmfuse_s": statistics.median(ours_t), "pycocoevalcap_s": statistics.median(coco_t),
            "corpus_diff": corpus_diff, "image_diff": image_diff, "timings": ours["timings"],
            "metrics": ours["metrics"], "coco_metrics": coco["metrics"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 8092])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        for size in args.sizes:
            folder = Path(tmp) / str(size)
            folder.mkdir()
            rows.append(compare(size, args.repeats, folder, env))
    print(f"whole processes, median of {args.repeats}; 5 references per image")
    print(f"{'images':>7} {'mmfuse':>9} {'pycocoevalcap':>14} {'ratio':>7}  max |diff| corpus / per image")
    for r in rows:
        print(f"{r['images']:7d} {r['mmfuse_s']:8.3f}s {r['pycocoevalcap_s']:13.3f}s "
              f"{r['pycocoevalcap_s'] / r['mmfuse_s']:6.1f}x  {r['corpus_diff']:.1e} / {r['image_diff']:.1e}")
    for r in rows:
        steps = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in r["timings"].items())
        print(f"mmfuse's steps at {r['images']} images (in-process, last run): {steps}")
    big = rows[-1]
    print(f"target: >= {TARGET:.0f}x at {big['images']} images: "
          f"{'met' if big['pycocoevalcap_s'] / big['mmfuse_s'] >= TARGET else 'MISSED'}")
    for k in METRICS:
        print(f"  {k:8s} mmfuse {big['metrics'][k]:.9f}  pycocoevalcap {big['coco_metrics'][k]:.9f}")


if __name__ == "__main__":
    main()

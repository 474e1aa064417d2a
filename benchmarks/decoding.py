"""Decoding speed, measured side by side in one run with the same trained models:

1. beam search (beam 5) batched over 64 images vs one image at a time (target: >= 10x captions/s),
   end to end (image encoder + search, as ``caption`` runs it) and the search alone (features
   computed beforehand);
2. a Transformer decoder with its key/value cache vs re-running the sequence every step (greedy and
   beam 5, batch 64).

Each pair must produce the same captions; the script says so. Every figure is the best of five
runs, the two sides of a comparison measured alternately. Reading the image files is not timed.
Without ``--run``/``--transformer-run`` it first prepares a small ``shapes`` set and trains two
captioners on it in a temporary workspace (an LSTM with concat fusion, and a Transformer decoder
with prefix fusion, default sizes, one epoch each; about a minute on 2 CPU cores), so the models
write real captions, not random ones.

    python benchmarks/decoding.py [--images 128] [--single-images 32]
    python benchmarks/decoding.py -w workspace --run demo --transformer-run tr
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmfuse.cli import app  # noqa: E402
from mmfuse.config import DecodeConfig  # noqa: E402
from mmfuse.data.images import image_transform, load_rgb  # noqa: E402
from mmfuse.data.records import load_split  # noqa: E402
from mmfuse.generate.decoding import beam_search, generate  # noqa: E402
from mmfuse.models.checkpoint import load_run  # noqa: E402


def cli(*args: str) -> None:
    app(list(args), standalone_mode=False)


def train_models(ws: Path) -> tuple[str, str]:
    """A small shapes set and two captioners trained for one epoch each: (lstm run, transformer run)."""
    cli("prepare-data", "shapes", "--train-images", "3000", "--val-images", "50", "--test-images", "200", "-w", str(ws))
    cli("train", "--data", "shapes", "--fusion", "concat", "--run", "lstm", "--epochs", "1", "-w", str(ws))
    cli("train", "--data", "shapes", "--fusion", "prefix", "--decoder", "transformer", "--run", "tr", "--epochs", "1",
        "-w", str(ws))
    return "lstm", "tr"


def decode_all(model, images: torch.Tensor, cfg: DecodeConfig, batch: int) -> tuple[float, list]:
    """Seconds to decode ``images`` in batches of ``batch``, and the best caption of each."""
    start = time.perf_counter()
    out = []
    for i in range(0, images.size(0), batch):
        out.extend(o[0].tokens for o in generate(model, images[i:i + batch], cfg))
    return time.perf_counter() - start, out


def search_all(model, images: torch.Tensor, cfg: DecodeConfig, batch: int) -> tuple[float, list]:
    """Seconds of the beam search alone over ``images`` (image features computed beforehand, untimed)."""
    with torch.inference_mode():
        features = [model.encode(images[i:i + batch]) for i in range(0, images.size(0), batch)]
        start = time.perf_counter()
        out = [o[0].tokens for f in features for o in beam_search(model, f, cfg)]
    return time.perf_counter() - start, out


def side_by_side(model, a: tuple, b: tuple, repeats: int, run=decode_all) -> tuple[tuple[float, list], tuple[float, list]]:
    """Captions/s of two settings ``(images, cfg, batch)`` timed by ``run``, measured alternately
    ``repeats`` times; each keeps its best run (as timeit does: other load on the machine only ever slows a run down)."""
    best = [float("inf"), float("inf")]
    outs: list = [None, None]
    for _ in range(repeats):
        for i, (images, cfg, batch) in enumerate((a, b)):
            seconds, outs[i] = run(model, images, cfg, batch)
            best[i] = min(best[i], seconds)
    return (a[0].size(0) / best[0], outs[0]), (b[0].size(0) / best[1], outs[1])


def report(name: str, fast: tuple[float, list], slow: tuple[float, list], fast_name: str, slow_name: str) -> None:
    same = sum(a == b for a, b in zip(fast[1], slow[1]))
    print(f"{name}: {fast_name} {fast[0]:.1f} captions/s, {slow_name} {slow[0]:.1f} captions/s, "
          f"ratio {fast[0] / slow[0]:.1f}x; identical captions {same}/{len(slow[1])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-w", "--workspace", type=Path)
    parser.add_argument("--run", help="captioner for the batched-vs-single comparison (default: train one)")
    parser.add_argument("--transformer-run", help="captioner with a Transformer decoder (default: train one)")
    parser.add_argument("--images", type=int, default=128, help="images decoded in batches")
    parser.add_argument("--single-images", type=int, default=32, help="images decoded one at a time")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each measurement (the best counts)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ws = args.workspace or Path(tmp) / "ws"
        runs = (args.run, args.transformer_run) if args.run and args.transformer_run else train_models(ws)
        bench(ws, runs, args.images, args.single_images, args.repeats)


def bench(ws: Path, runs: tuple[str, str], n_images: int, n_single: int, repeats: int) -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    lstm, tr = (load_run(ws / "runs" / r) for r in runs)
    size = lstm.config.model.image_size
    paths = [r.image for r in load_split(ws / "datasets" / lstm.config.train.data, "test")][:n_images]
    transform = image_transform(size)
    images = torch.stack([transform(load_rgb(p)) for p in paths])  # (N, 3, S, S)
    beam5 = DecodeConfig(beam_size=5, max_length=32)
    print(f"{len(paths)} test images, {runs[0]}: {lstm.config.model.fusion}/{lstm.config.model.decoder}, "
          f"{runs[1]}: {tr.config.model.fusion}/{tr.config.model.decoder}")
    for name, loaded in ((runs[0], lstm), (runs[1], tr)):
        decode_all(loaded.model, images[:64], beam5, 64)  # warm-up (allocations of the batch's sizes)
        batched, single = side_by_side(loaded.model, (images, beam5, 64), (images[:n_single], beam5, 1), repeats)
        report(f"beam 5, {name}, encoder + search", (batched[0], batched[1][:n_single]), single, "batch 64",
               "one image at a time")
        batched, single = side_by_side(loaded.model, (images, beam5, 64), (images[:n_single], beam5, 1), repeats,
                                       search_all)
        report(f"beam 5, {name}, search alone", (batched[0], batched[1][:n_single]), single, "batch 64",
               "one image at a time")
    for label, cfg in (("greedy", DecodeConfig(max_length=32)), ("beam 5", beam5)):
        cached, rerun = side_by_side(tr.model, (images, cfg, 64), (images, cfg.override(use_cache=False), 64), repeats)
        report(f"{label}, {runs[1]} (Transformer decoder), batch 64", cached, rerun, "with cache", "without cache")


if __name__ == "__main__":
    main()

"""Peak memory (max RSS of the process) of two commands at two input sizes, side by side in one run:

1. ``mmfuse caption DIR --format jsonl`` over N small PNG images (N = 2,500 and 10,000): results
   stream out, so memory should not grow with N;
2. ``mmfuse prepare-data folder`` of a CSV with M captions over 1,000 images (M = 250,000 and
   1,000,000).

Each command runs in its own process (``os.wait4`` gives its peak RSS); the captioner is a tiny
model trained first on a small ``shapes`` set in a temporary workspace (about 15 s).

    python benchmarks/memory.py [--images 2500 10000] [--captions 250000 1000000]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image


def peak_rss(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of ``python -m mmfuse ARGS``; its stdout is discarded."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "mmfuse", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"mmfuse {' '.join(args[:2])} failed: {err.strip().splitlines()[-1:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs=2, default=[2500, 10000])
    parser.add_argument("--captions", type=int, nargs=2, default=[250_000, 1_000_000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {**os.environ, "MMFUSE_WORKSPACE": str(root / "ws")}
        for step in (["prepare-data", "shapes", "--name", "tiny", "--train-images", "200", "--val-images", "20",
                      "--test-images", "20"],
                     ["train", "--data", "tiny", "--run", "r", "--epochs", "1", "--feature-dim", "32",
                      "--embed-dim", "16", "--hidden-dim", "32"]):
            peak_rss(step, env)
        picture = root / "one.png"
        Image.new("RGB", (64, 64), (200, 40, 40)).save(picture)
        print(f"caption --format jsonl (tiny LSTM captioner, 64x64 PNGs), {os.cpu_count()} CPUs:")
        for n in args.images:
            folder = root / f"images-{n}"
            folder.mkdir()
            for i in range(n):
                shutil.copyfile(picture, folder / f"{i:06d}.png")
            mib, seconds = peak_rss(["caption", str(folder), "--run", "r", "--format", "jsonl"], env)
            print(f"  {n:>9,} images: peak RSS {mib:7.1f} MiB, {seconds:6.1f} s")
            shutil.rmtree(folder)
        print("prepare-data folder (CSV, captions over 1,000 images):")
        images = root / "pictures"
        images.mkdir()
        for i in range(1000):
            shutil.copyfile(picture, images / f"{i:04d}.png")
        for m in args.captions:
            table = root / f"captions-{m}.csv"
            with table.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["image", "caption"])
                for i in range(m):
                    writer.writerow([f"{i % 1000:04d}.png", f"a red square number {i % 997} on a plain background"])
            mib, seconds = peak_rss(["prepare-data", "folder", "--name", f"d{m}", "--images", str(images),
                                     "--captions", str(table)], env)
            print(f"  {m:>9,} captions: peak RSS {mib:7.1f} MiB, {seconds:6.1f} s")


if __name__ == "__main__":
    main()

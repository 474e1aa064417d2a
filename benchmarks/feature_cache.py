"""The feature cache with a frozen resnet50, measured side by side in one run:

1. training throughput (image-caption pairs/s, one epoch, the same model and data) reading the
   cache vs reading pixels (target: >= 5x);
2. the cache's size per image;
3. building the cache (reading, decoding, encoding, writing) vs the bare backbone forward pass over
   the same images already in memory as tensors (target: >= 90 %).

The data: a ``shapes`` set of 224x224 images (no download). The resnet50 weights: a random state
dict saved to a file and passed with ``--weights`` (torchvision's ImageNet weights would take the
same time; nothing is downloaded).

    python benchmarks/feature_cache.py [--images 256] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmfuse.cli import app  # noqa: E402
from mmfuse.config import ModelConfig  # noqa: E402
from mmfuse.data.features import (
    _all_images,  # noqa: E402
    cache_dataset_features,  # noqa: E402
)
from mmfuse.data.images import image_transform, load_rgb  # noqa: E402
from mmfuse.models.encoders import build_image_encoder  # noqa: E402
from mmfuse.workspace import Workspace  # noqa: E402


def cli(*args: str) -> None:
    app(list(args), standalone_mode=False)


def train_pairs_per_s(ws: Path, run: str, weights: Path) -> float:
    """Pairs/s of one training epoch (validation excluded), from the run's metrics."""
    cli("train", "--data", "shapes", "--run", run, "--encoder", "resnet50", "--weights", str(weights), "--epochs", "1",
        "--batch-size", "32", "--captions-per-image", "1", "-w", str(ws))
    record = json.loads((ws / "runs" / run / "metrics.jsonl").read_text().splitlines()[0])
    return float(record["images_per_s"])  # one caption per image per step: pairs/s


def bare_forward_images_per_s(ws: Path, cfg: ModelConfig, batch: int) -> float:
    """The backbone alone over the same images, decoded and resized beforehand (untimed)."""
    encoder = build_image_encoder(cfg).eval()
    transform = image_transform(cfg.image_size)
    images = torch.stack([transform(load_rgb(p)) for p in _all_images(ws / "datasets" / "shapes")])
    with torch.inference_mode():
        encoder.backbone_features(images[:batch])  # warm-up
        start = time.perf_counter()
        for i in range(0, images.size(0), batch):
            encoder.backbone_features(images[i:i + batch])
    return images.size(0) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="training images (val and test add 16 each)")
    parser.add_argument("--workers", type=int, default=2, help="image-reading processes when building the cache")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        cli("prepare-data", "shapes", "--train-images", str(args.images), "--val-images", "16", "--test-images", "16",
            "--image-size", "224", "-w", str(ws))
        weights = Path(tmp) / "resnet50.pth"
        torch.save(torchvision.models.resnet50().state_dict(), weights)
        cfg = ModelConfig(encoder="resnet50", weights=str(weights), image_size=224)

        pixels = train_pairs_per_s(ws, "pixels", weights)
        start = time.perf_counter()
        result = cache_dataset_features(Workspace.open(ws), "shapes", cfg, batch_size=32, workers=args.workers)
        build = result.images / (time.perf_counter() - start)
        cached = train_pairs_per_s(ws, "cached", weights)
        bare = bare_forward_images_per_s(ws, cfg, 32)

    print(f"training, frozen resnet50, {args.images} images x 1 caption: from the cache {cached:.1f} pairs/s, "
          f"from pixels {pixels:.1f} pairs/s, ratio {cached / pixels:.1f}x (target >= 5x)")
    print(f"cache: {result.bytes / result.images / 1024:.1f} KiB per image ({result.images} images, "
          f"{result.bytes / 2**20:.1f} MiB, fp16 grid 7x7x2048 + pooled 2048)")
    print(f"building the cache {build:.1f} images/s vs the bare backbone forward {bare:.1f} images/s: "
          f"{100 * build / bare:.0f} % (target >= 90 %)")


if __name__ == "__main__":
    main()

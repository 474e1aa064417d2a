"""The feature cache: a frozen backbone's outputs for every image of a data set, computed once and
stored as fp16 memory-mapped arrays, so that training a model on a frozen encoder reads features
instead of decoding and re-encoding pixels every step.

Layout (``datasets/<name>/features/<encoder>-<weights>-<size>/``): ``grid.f16`` (n, N, C) and
``pooled.f16`` (n, C) raw arrays, ``images.json`` (the image paths, in row order) and ``meta.json``
(shapes, the encoder and its weights, and ``done``: rows written so far). Rows are written in
order and ``done`` is updated atomically after each batch is flushed, so an interrupted run
resumes where it stopped and a reader never sees unfinished rows.

Shape legend: n images, N grid cells, C backbone channels, B batch.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from mmfuse.config import ModelConfig
from mmfuse.data.dataset import ImageDataset
from mmfuse.data.records import load_answer_split, load_labelled_split, load_manifest, load_split
from mmfuse.data.sources import SPLITS
from mmfuse.errors import Interrupted, MmfuseError
from mmfuse.workspace import (
    atomic_write_json,
    atomic_write_text,
    exclusive,
    read_json,
    writing,
)

CACHE_FORMAT_VERSION = 1
Progress = Callable[[int, int], None]  # (images done, images in all)


def cache_key(cfg: ModelConfig) -> str | None:
    """The cache directory name for a model's image encoder, or None when its features cannot be
    cached: the small CNN, or a backbone that trains (its features change as it learns)."""
    from mmfuse.models.backbones import SPECS
    from mmfuse.models.hub import hf_id, is_hf, locate

    if is_hf(cfg.encoder) and cfg.freeze_encoder is not False:  # a pretrained tower, frozen
        base = locate(hf_id(cfg.encoder))
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", base.id).strip("_")
        return f"hf-{name}-{base.config_sha256[:12]}-layer{cfg.vision_layer}-{cfg.image_size}"
    if cfg.encoder.startswith("timm:") and (cfg.pretrained or cfg.weights) and cfg.freeze_encoder is not False:
        return f"timm-{cfg.encoder[5:]}-{_weights_id(cfg)}-{cfg.image_size}"
    if cfg.encoder not in SPECS:
        return None
    frozen = cfg.freeze_encoder if cfg.freeze_encoder is not None else bool(cfg.pretrained or cfg.weights)
    if not frozen or not (cfg.pretrained or cfg.weights):
        return None
    return f"{cfg.encoder}-{_weights_id(cfg)}-{cfg.image_size}"


def required_key(cfg: ModelConfig) -> str:
    """:func:`cache_key`, or a clear error saying which encoders can be cached."""
    key = cache_key(cfg)
    if key is None:
        raise MmfuseError("only a frozen pretrained encoder can be cached: give --encoder resnet50 (or another "
                          "torchvision backbone, or timm:NAME) with --pretrained or --weights PATH, or --encoder "
                          "hf:MODEL, without --fine-tune")
    return key


def _weights_id(cfg: ModelConfig) -> str:
    if cfg.pretrained:
        return "imagenet"
    if not Path(cfg.weights).is_file():
        raise MmfuseError(f"--weights: no such file: {cfg.weights}")
    digest = hashlib.sha256()
    with Path(cfg.weights).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"file{digest.hexdigest()[:12]}"


@dataclass
class FeatureCache:
    """An opened, complete cache: row lookup by image path, and the two arrays (read-only memmaps)."""

    path: Path
    rows: dict[str, int]
    grid: np.ndarray  # (n, N, C) float16
    pooled: np.ndarray  # (n, C) float16

    def features(self, image: Path) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw backbone features of one image: tokens (N, C), pooled (C,), as fp16 tensors."""
        row = self.rows[str(image)]
        return torch.from_numpy(np.array(self.grid[row])), torch.from_numpy(np.array(self.pooled[row]))


def open_cache(data_dir: Path, cfg: ModelConfig) -> FeatureCache | None:
    """The complete cache for ``cfg``'s encoder in the data set, or None."""
    key = cache_key(cfg)
    if key is None or not (data_dir / "features" / key / "meta.json").is_file():
        return None
    root = data_dir / "features" / key
    meta = read_json(root / "meta.json", "feature cache metadata")
    images = read_json(root / "images.json", "feature cache image list")
    if not isinstance(meta, dict) or meta.get("done") != len(images) or not _arrays_complete(root, meta):
        return None  # unfinished: `mmfuse cache-features` resumes it
    grid, pooled = _arrays(root, meta, "r")
    return FeatureCache(root, {p: i for i, p in enumerate(images)}, grid, pooled)


@dataclass
class CacheResult:
    path: Path
    images: int  # images in the cache
    new: int  # of them encoded by this run (the rest were there from an interrupted one)
    bytes: int  # size of the two arrays


def cache_dataset_features(workspace: Any, data: str, cfg: ModelConfig, batch_size: int = 32, workers: int = 0,
                           device: str = "auto", on_progress: Progress | None = None) -> CacheResult:
    """``mmfuse cache-features``: the cache of data set ``data`` for the frozen encoder of ``cfg``
    (image size 0: the data set's, else 224), built or completed."""
    from dataclasses import replace

    from mmfuse.device import resolve_device
    from mmfuse.models.encoders import check_weights_available

    check_weights_available(cfg)
    with workspace.reading_dataset(data) as data_dir:  # prepare-data cannot replace the data set meanwhile
        if not cfg.image_size:
            from mmfuse.models.vision_towers import is_tower, tower_image_size

            size = tower_image_size(cfg.encoder) if is_tower(cfg.encoder) else load_manifest(data_dir).get("image_size")
            cfg = replace(cfg, image_size=int(size or 224))
        key = required_key(cfg)
        with exclusive(data_dir / "features" / key, f"feature cache {key} of data set {data!r}"):
            root, meta, new = build_cache(data_dir, cfg, batch_size, workers, on_progress, resolve_device(device))
    size = sum((root / name).stat().st_size for name in ("grid.f16", "pooled.f16"))
    return CacheResult(root, meta["images"], new, size)


def build_cache(data_dir: Path, cfg: ModelConfig, batch_size: int = 32, workers: int = 0,
                on_progress: Progress | None = None,
                device: torch.device | str = "cpu") -> tuple[Path, dict[str, Any], int]:
    """Run the frozen encoder of ``cfg`` over every image of the data set once (resuming an
    interrupted run); returns the cache directory, its metadata and how many images this run encoded."""
    from mmfuse.models.encoders import build_image_encoder

    key = required_key(cfg)
    encoder = build_image_encoder(cfg).eval().to(device)
    images = _all_images(data_dir)
    root = data_dir / "features" / key
    meta = _start(root, images, encoder, cfg, device)
    first = meta["done"]
    grid, pooled = _arrays(root, meta, "r+")
    loader = DataLoader(ImageDataset([Path(p) for p in images[first:]], cfg.image_size), batch_size=batch_size,
                        num_workers=workers, worker_init_fn=ignore_interrupts)
    try:
        _encode_all(loader, encoder, root, meta, grid, pooled, len(images), on_progress, device)
    except KeyboardInterrupt as exc:
        raise Interrupted(f"cache-features interrupted: the cache keeps the {meta['done']} of {len(images)} images "
                          f"encoded so far; run the same command again to continue", exc) from None
    return root, meta, meta["done"] - first


def ignore_interrupts(worker: int) -> None:
    """Data-loading workers leave Ctrl-C to the main process, which stops cleanly."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _encode_all(loader: DataLoader, encoder: Any, root: Path, meta: dict[str, Any], grid: np.ndarray,
                pooled: np.ndarray, total: int, on_progress: Progress | None, device: torch.device | str) -> None:
    """Encode the remaining images batch by batch; ``meta["done"]`` moves on only after a batch's
    rows are on disk."""
    with torch.inference_mode():
        for batch in loader:
            tokens, vectors = encoder.backbone_features(batch.to(device))  # (B, N, C), (B, C)
            start = meta["done"]
            grid[start:start + len(batch)] = tokens.to(torch.float16).cpu().numpy()
            pooled[start:start + len(batch)] = vectors.to(torch.float16).cpu().numpy()
            grid.flush()
            pooled.flush()
            meta["done"] = start + len(batch)
            atomic_write_json(root / "meta.json", meta)
            if on_progress:
                on_progress(meta["done"], total)


def _all_images(data_dir: Path) -> list[str]:
    """Every distinct image of the data set's splits, sorted."""
    task = load_manifest(data_dir).get("task", "caption")
    load = {"caption": load_split, "classify": load_labelled_split, "answer": load_answer_split}[task]
    return sorted({str(r.image) for split in SPLITS for r in load(data_dir, split)})


def _start(root: Path, images: list[str], encoder: Any, cfg: ModelConfig, device: torch.device | str) -> dict[str, Any]:
    """The metadata to continue from: the existing one when it is for the same images and shapes
    (a resumed run), else a fresh one (and the arrays are created)."""
    with torch.inference_mode():
        probe, _ = encoder.backbone_features(torch.zeros(1, 3, cfg.image_size, cfg.image_size, device=device))  # (1, N, C)
    shape = list(probe.shape[1:])
    fresh = {"format_version": CACHE_FORMAT_VERSION, "encoder": cfg.encoder, "pretrained": cfg.pretrained,
             "weights": cfg.weights, "image_size": cfg.image_size, "grid_shape": shape, "images": len(images),
             "done": 0}
    resumable = _resumable(root, fresh, images)
    if resumable is not None:
        return resumable
    root.mkdir(parents=True, exist_ok=True)
    (root / "meta.json").unlink(missing_ok=True)  # no metadata while the rest changes: a crash now restarts
    n, (cells, channels) = len(images), shape
    _allocate(root / "grid.f16", n * cells * channels * 2)
    _allocate(root / "pooled.f16", n * channels * 2)
    atomic_write_text(root / "images.json", json.dumps(images))
    atomic_write_json(root / "meta.json", fresh)  # last: it says the arrays and the image list are complete
    return fresh


def _resumable(root: Path, fresh: dict[str, Any], images: list[str]) -> dict[str, Any] | None:
    """The metadata of an interrupted cache of the same images and shapes whose files are all there
    in full, or None (then the cache starts afresh: a damaged or half-created cache is no error)."""
    keys = ("grid_shape", "images", "image_size")
    try:
        meta = read_json(root / "meta.json", "feature cache metadata")
        if not isinstance(meta, dict) or {k: meta.get(k) for k in keys} != {k: fresh[k] for k in keys}:
            return None
        if not isinstance(meta.get("done"), int) or not 0 <= meta["done"] <= len(images):
            return None
        if read_json(root / "images.json", "feature cache image list") != images or not _arrays_complete(root, meta):
            return None
    except MmfuseError:
        return None
    return meta


def _arrays_complete(root: Path, meta: dict[str, Any]) -> bool:
    """Whether both array files exist at their full size."""
    n, (cells, channels) = meta["images"], meta["grid_shape"]
    sizes = {"grid.f16": n * cells * channels * 2, "pooled.f16": n * channels * 2}
    try:
        return all((root / name).stat().st_size == size for name, size in sizes.items())
    except OSError:
        return False


def _allocate(path: Path, size: int) -> None:
    """Create ``path`` with ``size`` bytes of disk reserved, so that a full disk is one error here
    rather than a crash (SIGBUS) when the memory-mapped array is written later."""
    with writing(path), path.open("wb") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, size)
        except (AttributeError, OSError) as exc:  # no posix_fallocate here, or not on this file system
            if isinstance(exc, OSError) and exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            handle.truncate(size)


def _arrays(root: Path, meta: dict[str, Any], mode: str) -> tuple[np.ndarray, np.ndarray]:
    n, (cells, channels) = meta["images"], meta["grid_shape"]
    grid = np.memmap(root / "grid.f16", dtype=np.float16, mode=mode, shape=(n, cells, channels))
    pooled = np.memmap(root / "pooled.f16", dtype=np.float16, mode=mode, shape=(n, channels))
    return grid, pooled

"""Reading a workspace data set: manifest, splits, vocabulary, and a torch ``Dataset`` over them.

Shape legend: B images in a batch, M captions in a batch (up to K per image), T tokens.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from mmfuse.data.prepare import FORMAT_VERSION
from mmfuse.data.vocab import PAD_ID, Vocab
from mmfuse.errors import MmfuseError
from mmfuse.images import image_transform, load_rgb, normalize_transform, resize_transform
from mmfuse.workspace import read_json

CACHE_LIMIT_BYTES = 2 * 2**30  # decoded training images are kept in memory up to this size


@dataclass(frozen=True)
class Record:
    """One image of a split with its references (raw and tokenized)."""

    id: str
    image: Path
    captions: tuple[str, ...]
    tokens: tuple[tuple[str, ...], ...]


def load_manifest(root: Path) -> dict[str, Any]:
    """The data set's manifest, refusing formats newer than this mmfuse reads."""
    manifest = read_json(root / "manifest.json", "data set manifest")
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if not isinstance(version, int):
        raise MmfuseError(f"data set manifest has no format_version: {root / 'manifest.json'}")
    if version > FORMAT_VERSION:
        raise MmfuseError(
            f"data set {root.name!r} has format version {version}, newer than this mmfuse reads "
            f"({FORMAT_VERSION}); upgrade mmfuse or prepare the data set again"
        )
    return manifest


def load_vocab(root: Path) -> Vocab:
    return Vocab.from_json(read_json(root / "vocab.json", "data set vocabulary"))


def load_split(root: Path, split: str) -> list[Record]:
    """All records of ``split``; a missing or empty split is a clear error."""
    path = root / f"{split}.jsonl"
    if not path.is_file():
        raise MmfuseError(f"data set {root.name!r} has no split {split!r} ({path} is missing)")
    records = [_parse(root, line, path, n) for n, line in enumerate(path.open(encoding="utf-8"), 1) if line.strip()]
    if not records:
        raise MmfuseError(f"split {split!r} of data set {root.name!r} is empty")
    return records


def _parse(root: Path, line: str, path: Path, lineno: int) -> Record:
    try:
        raw = json.loads(line)
        return Record(
            id=str(raw["id"]),
            image=root / raw["image"],
            captions=tuple(raw["captions"]),
            tokens=tuple(tuple(t) for t in raw["tokens"]),
        )
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise MmfuseError(f"{path}:{lineno}: malformed record ({exc})") from None


class CaptionDataset(Dataset):
    """Images with all their encoded references; ``collate`` samples K references per image.

    Decoded, resized images (uint8) are kept in memory after their first use when the whole split
    fits in :data:`CACHE_LIMIT_BYTES`, so later epochs skip PNG decoding.

    Args:
        records: the split's records.
        vocab: maps tokens to ids.
        image_size: side the images are resized to.
        captions_per_image: K, references per image per batch (sampled when there are more).
        seed: seed of the reference sampling (combined with :meth:`set_epoch`).
    """

    def __init__(self, records: list[Record], vocab: Vocab, image_size: int, captions_per_image: int = 5, seed: int = 0):
        self.records = records
        self.encoded = [[vocab.encode(t) for t in r.tokens] for r in records]
        self.resize = resize_transform(image_size)
        self.normalize = normalize_transform()
        fits = len(records) * 3 * image_size**2 <= CACHE_LIMIT_BYTES
        self.cache: list[torch.Tensor | None] | None = [None] * len(records) if fits else None
        self.k = captions_per_image
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, list[list[int]], int]:
        return self.normalize(self._pixels(i)), self.encoded[i], i

    def _pixels(self, i: int) -> torch.Tensor:
        """uint8 (3, S, S), from the cache when possible."""
        if self.cache is not None and self.cache[i] is not None:
            return self.cache[i]
        pixels = self.resize(load_rgb(self.records[i].image))
        if self.cache is not None:
            self.cache[i] = pixels
        return pixels

    def collate(self, batch: list[tuple[torch.Tensor, list[list[int]], int]]) -> dict[str, torch.Tensor]:
        """-> images (B, 3, S, S), tokens (M, T) padded, image_index (M,)."""
        images, captions, index = [], [], []
        for row, (image, refs, i) in enumerate(batch):
            images.append(image)
            chosen = refs if len(refs) <= self.k else random.Random(f"{self.seed}/{self.epoch}/{i}").sample(refs, self.k)
            captions.extend(chosen)
            index.extend([row] * len(chosen))
        return {"images": torch.stack(images), "tokens": pad(captions), "image_index": torch.tensor(index)}


class ImageDataset(Dataset):
    """Just the images of a split (for generating captions), with their index."""

    def __init__(self, paths: list[Path], image_size: int):
        self.paths = paths
        self.transform = image_transform(image_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(load_rgb(self.paths[i]))


def pad(sequences: list[list[int]]) -> torch.Tensor:
    """Right-pad id lists with ``<pad>`` -> (M, T)."""
    longest = max(len(s) for s in sequences)
    out = torch.full((len(sequences), longest), PAD_ID, dtype=torch.long)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return out

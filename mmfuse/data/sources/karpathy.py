"""Karpathy's splits (``dataset_coco.json``, ``dataset_flickr8k.json``, ``dataset_flickr30k.json``),
the splits most captioning papers report on: ``train`` and ``restval`` train, ``val``, ``test``.

Each image entry has ``filename``, ``split``, ``sentences`` (``raw`` captions) and, for COCO,
``filepath`` (``train2014``/``val2014``) and ``cocoid``; the image is ``IMAGES/[filepath/]filename``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmfuse.data.sources import SOURCES, RawSample
from mmfuse.data.sources.files import (
    ListedSource,
    existing_dir,
    read_json_file,
    safe_id,
    source_options,
    text_value,
)
from mmfuse.errors import MmfuseError

SPLIT_NAMES = {"train": "train", "restval": "train", "val": "val", "test": "test"}


@dataclass
class KarpathyOptions:
    json: str
    images: str


@SOURCES.register("karpathy")
class KarpathySource(ListedSource):
    """A Karpathy split file with the image directory."""

    def __init__(self, **options: Any):
        self.opts = source_options(KarpathyOptions, options, "karpathy")
        images = existing_dir(self.opts.images, "--images")
        path = Path(self.opts.json)
        data = read_json_file(path, "Karpathy split file")
        entries = data.get("images") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise MmfuseError(f"{path}: not a Karpathy split file (expected an object with a list 'images')")
        self.samples_ = [_sample(e, n, images, path) for n, e in enumerate(entries)]


def _sample(entry: Any, n: int, images: Path, path: Path) -> RawSample:
    try:
        split = SPLIT_NAMES.get(entry["split"])
        if split is None:
            raise MmfuseError(f"{path}: image {n} has split {entry['split']!r}; expected one of "
                              f"{', '.join(SPLIT_NAMES)}")
        folder = images / entry["filepath"] if entry.get("filepath") else images
        image_id = entry.get("cocoid", entry.get("imgid", Path(entry["filename"]).stem))
        captions = [text_value(s["raw"], f"{path}: image {n}", "raw") for s in entry["sentences"]]
        name = text_value(entry["filename"], f"{path}: image {n}", "filename")
        return RawSample(split=split, id=safe_id(str(image_id)), image=folder / name, captions=captions)
    except (KeyError, TypeError) as exc:
        raise MmfuseError(f"{path}: image {n} lacks {exc} (expected filename, split, sentences[].raw)") from None

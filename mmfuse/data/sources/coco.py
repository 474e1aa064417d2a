"""COCO captions (``captions_train2017.json``, ``captions_val2014.json``, ...): the official files.

Images from an annotation file whose name says ``train`` go to the training split; the images of
the other files are divided half and half between val and test (seeded; the official test
captions are not public). With no training file at all, the images are divided by ``--val-ratio``
and ``--test-ratio`` (the rest: train). An image is looked up as
``IMAGES/<file_name>`` or ``IMAGES/<folder>/<file_name>`` (folders such as ``train2017``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmfuse.data.sources import SOURCES, RawSample
from mmfuse.data.sources.files import (
    ListedSource,
    SplitRatios,
    existing_dir,
    read_json_file,
    source_options,
    text_value,
)
from mmfuse.errors import MmfuseError


@dataclass(kw_only=True)
class CocoOptions(SplitRatios):
    """The source's options; ``val_ratio``, ``test_ratio`` and ``seed`` come from :class:`SplitRatios`."""

    annotations: list[str]
    images: str


@SOURCES.register("coco")
class CocoSource(ListedSource):
    """COCO caption annotation files (2014 or 2017) with the image directory."""

    def __init__(self, **options: Any):
        self.opts = source_options(CocoOptions, options, "coco")
        images = existing_dir(self.opts.images, "--images")
        self.files = [_read(Path(p)) for p in self.opts.annotations]
        self.samples_ = _to_samples(self.files, images, self.opts)

    def divide(self, usable: list[RawSample]) -> None:
        """Divide the held-out images again, among the usable ones only."""
        splits = _assign(self.files, self.opts, {s.id for s in usable})
        for sample in usable:
            sample.split = splits.get(sample.id, "train")


@dataclass
class _File:
    path: Path
    train: bool
    images: dict[int, str] = field(default_factory=dict)  # id -> file_name
    captions: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))


def _read(path: Path) -> _File:
    data = read_json_file(path, "COCO annotation file")
    try:
        images: dict[int, str] = {}
        for i in data["images"]:
            if int(i["id"]) in images:
                raise MmfuseError(f"{path}: image id {i['id']} is listed twice ({images[int(i['id'])]}, {i['file_name']})")
            images[int(i["id"])] = text_value(i["file_name"], f"{path}: image {i['id']}", "file_name")
        entry = _File(path, "train" in path.name.lower(), images)
        for n, a in enumerate(data["annotations"]):
            if int(a["image_id"]) not in images:
                raise MmfuseError(f"{path}: annotation {n} is for image {a['image_id']}, which the file does not list")
            entry.captions[int(a["image_id"])].append(text_value(a["caption"], f"{path}: annotation {n}", "caption"))
    except (KeyError, TypeError, ValueError) as exc:
        raise MmfuseError(f"{path}: not a COCO captions file (expected 'images' with id/file_name and "
                          f"'annotations' with image_id/caption; {type(exc).__name__}: {exc})") from None
    return entry


def _to_samples(files: list[_File], images: Path, opts: CocoOptions) -> list[RawSample]:
    splits = _assign(files, opts)
    return [RawSample(split=splits.get(str(image_id), "train"), id=str(image_id), image=_find(images, name),
                      captions=f.captions.get(image_id, []))
            for f in files for image_id, name in sorted(f.images.items())]


def _assign(files: list[_File], opts: CocoOptions, keep: set[str] | None = None) -> dict[str, str]:
    """The split of every image not in a training file (of those in ``keep``, if given): half val,
    half test (seeded) when there is a training file, else val/test/train by the ratios."""
    held_out = [str(i) for f in files if not f.train for i in f.images if keep is None or str(i) in keep]
    if not any(f.train for f in files):
        return opts.assign(held_out)
    halves = SplitRatios(0.5, 0.0, opts.seed).assign(held_out)
    return {key: "val" if split == "val" else "test" for key, split in halves.items()}


def _find(images: Path, name: str) -> Path:
    """``images/name``, else ``images/<folder>/name`` for the first folder holding it."""
    direct = images / name
    if direct.exists():
        return direct
    for folder in sorted(p for p in images.iterdir() if p.is_dir()):
        if (folder / name).exists():
            return folder / name
    return direct  # reported missing when prepared

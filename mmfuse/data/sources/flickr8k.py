"""Flickr8k in its native form: ``Flickr8k.token.txt`` (``<image>#<n><TAB><caption>`` per line) and,
with ``--splits-dir``, the lists ``Flickr_8k.trainImages.txt``, ``Flickr_8k.devImages.txt``,
``Flickr_8k.testImages.txt``; without them the images are divided by ``--val-ratio``/``--test-ratio``.
Flickr30k's ``results_20130124.token`` has the same line format.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmfuse.data.sources import SOURCES, RawSample
from mmfuse.data.sources.files import (
    ListedSource,
    SplitRatios,
    existing_dir,
    read_lines,
    safe_id,
    source_options,
    text_value,
)
from mmfuse.errors import MmfuseError

SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt", "test": "Flickr_8k.testImages.txt"}


@dataclass(kw_only=True)
class Flickr8kOptions(SplitRatios):
    """The source's options; ``val_ratio``, ``test_ratio`` and ``seed`` come from :class:`SplitRatios`."""

    captions: str
    images: str
    splits_dir: str = ""


@SOURCES.register("flickr8k")
class Flickr8kSource(ListedSource):
    """The Flickr8k (or Flickr30k) token file with the image directory."""

    def __init__(self, **options: Any):
        self.opts = source_options(Flickr8kOptions, options, "flickr8k")
        images = existing_dir(self.opts.images, "--images")
        captions = _read_tokens(Path(self.opts.captions))
        splits = _read_splits(Path(self.opts.splits_dir)) if self.opts.splits_dir else self.opts.assign(list(captions))
        self.images = images
        self.samples_ = [RawSample(split=splits[name], id=safe_id(Path(name).stem), image=images / name, captions=caps)
                         for name, caps in sorted(captions.items()) if name in splits]

    def divide(self, usable: list[RawSample]) -> None:
        """Without --splits-dir: divide the usable images by the ratios (keyed by file name)."""
        if self.opts.splits_dir:
            return
        names = {sample.image.relative_to(self.images).as_posix(): sample for sample in usable}  # type: ignore[union-attr]
        for name, split in self.opts.assign(list(names)).items():
            names[name].split = split


_LINE = re.compile(r"(?P<key>\S+#\d+)\s+(?P<caption>.*)", re.DOTALL)  # a line without a tab


def _read_tokens(path: Path) -> dict[str, list[str]]:
    """Image file name -> its captions, from ``name#n<TAB>caption`` lines; as the format's common
    readers do, any whitespace may separate ``name#n`` from the caption (copies of the file exist
    with a space on some lines), and a name may hold spaces where a tab separates."""
    captions: dict[str, list[str]] = defaultdict(list)
    for number, line in read_lines(path, "Flickr8k caption file"):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        if not (tab and re.fullmatch(r".+#\d+\s*", key)):
            match = _LINE.fullmatch(line.strip())
            if match is None:
                raise MmfuseError(f"{path}:{number}: expected '<image>#<n>', a tab or spaces, then the caption; "
                                  f"got {line[:60]!r}")
            key, caption = match["key"], match["caption"]
        captions[key.strip().rsplit("#", 1)[0]].append(text_value(caption, f"{path}:{number}", "caption"))
    if not captions:
        raise MmfuseError(f"{path}: no captions")
    return captions


def _read_splits(folder: Path) -> dict[str, str]:
    """Image file name -> split, from the three official lists in ``folder``."""
    splits: dict[str, str] = {}
    for split, name in SPLIT_FILES.items():
        for _, line in read_lines(folder / name, f"Flickr8k {split} list"):
            if line.strip():
                splits[line.strip()] = split
    return splits

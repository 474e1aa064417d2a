"""LLaVA-style instruction data: one JSON file, a list of conversations about images (task ``answer``).

Each entry is ``{"id", "image", "conversations": [{"from": "human", "value": "<image>\\n..."},
{"from": "gpt", "value": "..."}, ...]}``. Every human turn followed by a gpt turn is one sample: the
question, its answer, and the conversation's earlier turns as history (so a model learns each
answer in context, as LLaVA does; the loss covers the answer only). The ``<image>`` placeholder is
removed (the image always comes first here). Entries without an image (text-only instructions) are
left out and counted. Images are ``IMAGES/<image>`` and are divided among train, val and test by
``--val-ratio`` and ``--test-ratio`` (seeded), each image's conversations in one split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmfuse.data.sources import SOURCES, RawSample
from mmfuse.data.sources.files import (
    ListedSource,
    SplitRatios,
    existing_dir,
    read_json_file,
    safe_id,
    source_options,
    text_value,
)
from mmfuse.errors import MmfuseError

IMAGE_PLACEHOLDER = "<image>"
SPEAKERS = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}


@dataclass(kw_only=True)
class LLaVAOptions(SplitRatios):
    """The source's options; ``val_ratio``, ``test_ratio`` and ``seed`` come from :class:`SplitRatios`."""

    json: str
    images: str


@SOURCES.register("llava")
class LLaVASource(ListedSource):
    """LLaVA instruction JSON (multi-turn conversations) with the image directory."""

    task = "answer"

    def __init__(self, **options: Any):
        self.opts = source_options(LLaVAOptions, options, "llava")
        images = existing_dir(self.opts.images, "--images")
        path = Path(self.opts.json)
        entries = read_json_file(path, "LLaVA instruction file")
        if not isinstance(entries, list):
            raise MmfuseError(f"{path}: not LLaVA instruction data (expected a JSON list of conversations)")
        self.samples_: list[RawSample] = []
        self.text_only = 0
        for n, entry in enumerate(entries):
            if isinstance(entry, dict) and not entry.get("image"):
                self.text_only += 1
                continue
            self.samples_ += _samples(entry, n, images, path)
        self.divide(self.samples_)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "text_only_left_out": self.text_only}

    def divide(self, usable: list[RawSample]) -> None:
        """Each image's conversations go to one split, images divided by the ratios."""
        splits = self.opts.assign(sorted({s.image_id for s in usable}))
        for sample in self.samples_:
            sample.split = splits.get(sample.image_id, "train")


def _samples(entry: Any, n: int, images: Path, path: Path) -> list[RawSample]:
    """One sample per (human, gpt) pair of turns, each with the turns before it."""
    where = f"{path}: entry {n}"
    try:
        image = text_value(entry["image"], where, "image")
        turns = [(SPEAKERS.get(t["from"]), text_value(t["value"], where, "value")) for t in entry["conversations"]]
        key = safe_id(str(entry.get("id", Path(image).stem)))
    except (KeyError, TypeError) as exc:
        raise MmfuseError(f"{where}: expected 'image' and 'conversations' of {{\"from\", \"value\"}} "
                          f"({type(exc).__name__}: {exc})") from None
    unknown = [speaker for speaker, _ in turns if speaker is None]
    if unknown:
        raise MmfuseError(f"{where}: a turn's 'from' must be human or gpt (or user / assistant)")
    samples, history = [], []
    for k in range(len(turns) - 1):
        (speaker, question), (replier, answer) = turns[k], turns[k + 1]
        if speaker == "human" and replier == "gpt":
            question = " ".join(question.replace(IMAGE_PLACEHOLDER, " ").split())
            samples.append(RawSample(split="train", id=f"{key}-t{len(history)}", image=images / image, image_id=image,
                                     question=question, answers=[answer.strip()], history=list(history)))
            history.append((question, answer.strip()))
    return samples

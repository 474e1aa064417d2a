"""Data set sources: one module per format, each registered in ``SOURCES`` by its CLI name.

A source yields :class:`RawSample` records; :func:`mmfuse.data.prepare.prepare_data` turns them into
the workspace data set format, the same for every source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol

from mmfuse.registry import Registry

if TYPE_CHECKING:
    from PIL import Image

SPLITS = ("train", "val", "test")


@dataclass
class RawSample:
    """One sample before tokenization: an image with its reference captions (task ``caption``), an
    image with a text and its label (task ``classify``), or an image with a question and its human
    answers (task ``answer``).

    Attributes:
        split: ``train``, ``val`` or ``test``.
        id: unique id within the data set (used in results).
        image: the RGB image (written into the data set as PNG), or the path of an image file
            (checked once, then referenced where it is).
        captions: reference captions, raw text (captioning).
        text: the text paired with the image, raw (classification).
        label: the class name (classification).
        image_id: samples with the same ``image_id`` share one image file (default: ``id``).
        group: an optional subgroup name (classification), e.g. the question kind; ``evaluate``
            reports the accuracy per group.
        question: the question (answering).
        answers: the human answers, raw (answering; VQA v2 has ten).
        history: earlier (question, answer) turns of the conversation, oldest first (answering).
        question_type, answer_type: optional groups that ``evaluate`` reports apart (answering).
    """

    split: str
    id: str
    image: "Image.Image | Path"
    captions: list[str] = field(default_factory=list)
    text: str = ""
    label: str = ""
    image_id: str = ""
    group: str = ""
    question: str = ""
    answers: list[str] = field(default_factory=list)
    history: list[tuple[str, str]] = field(default_factory=list)
    question_type: str = ""
    answer_type: str = ""


class Source(Protocol):
    """What every registered source provides."""

    task: str

    def options(self) -> dict[str, Any]:
        """The resolved options, recorded in the data set's manifest."""

    def image_files(self) -> Iterator[Path]:
        """The image files the samples name, each once (none for a source that draws its images):
        ``prepare-data`` checks them all before the splits are settled."""

    def settle_splits(self, unusable: set[Path]) -> None:
        """Settle each image's split knowing which image files cannot be used (absolute paths): a
        source that divides its images by ratio divides only the usable ones (with at least one
        non-empty caption), so a bad image never leaves a split empty. Then :meth:`count` is final."""

    def count(self, split: str) -> int:
        """How many samples :meth:`samples` will yield for ``split`` (for progress bars)."""

    def samples(self) -> Iterator[RawSample]:
        """Every sample, split by split."""


class DrawnImages:
    """For sources whose images are drawn (PIL images, always usable): no files to check."""

    def image_files(self) -> Iterator[Path]:
        return iter(())

    def settle_splits(self, unusable: set[Path]) -> None:
        """Nothing to settle: every drawn image is usable."""


SOURCES: Registry[Source] = Registry("data source")

from mmfuse.data.sources import coco as _coco  # noqa: E402,F401
from mmfuse.data.sources import flickr8k as _flickr8k  # noqa: E402,F401
from mmfuse.data.sources import folder as _folder  # noqa: E402,F401
from mmfuse.data.sources import karpathy as _karpathy  # noqa: E402,F401
from mmfuse.data.sources import llava as _llava  # noqa: E402,F401
from mmfuse.data.sources import shapes as _shapes  # noqa: E402,F401  (fills SOURCES)
from mmfuse.data.sources import shapes_qa as _shapes_qa  # noqa: E402,F401
from mmfuse.data.sources import shapes_vqa as _shapes_vqa  # noqa: E402,F401
from mmfuse.data.sources import vqa as _vqa  # noqa: E402,F401

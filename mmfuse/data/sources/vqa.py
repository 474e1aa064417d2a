"""The official VQA v2 files (``v2_OpenEnded_mscoco_train2014_questions.json`` with
``v2_mscoco_train2014_annotations.json``, ...) and the COCO images: task ``answer``.

``--questions`` and ``--annotations`` are given in pairs (repeat both for several subsets, in the
same order). Every question keeps its ten human answers and its question type and answer type
(``evaluate`` reports them apart). Questions of a subset whose name says ``train`` go to the
training split; those of the other subsets are divided half and half between val and test *by
image* (seeded), so no image has questions in two splits (the official test answers are not
public). With no training subset, images are divided by ``--val-ratio`` and ``--test-ratio``. An
image is ``IMAGES/COCO_<subtype>_<id:012>.jpg``, ``IMAGES/<subtype>/COCO_...`` (e.g. ``val2014/``)
or ``IMAGES/<id:012>.jpg`` (2017 names).
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
    source_options,
    text_value,
)
from mmfuse.errors import MmfuseError


@dataclass(kw_only=True)
class VQAOptions(SplitRatios):
    """The source's options; ``val_ratio``, ``test_ratio`` and ``seed`` come from :class:`SplitRatios`."""

    questions: list[str]
    annotations: list[str]
    images: str


@dataclass
class _Subset:
    """One questions/annotations pair: whether it trains, and its samples (split still to settle)."""

    train: bool
    samples: list[RawSample]


@SOURCES.register("vqa")
class VQASource(ListedSource):
    """VQA v2 questions and annotations with the COCO image directory."""

    task = "answer"

    def __init__(self, **options: Any):
        self.opts = source_options(VQAOptions, options, "vqa")
        if len(self.opts.questions) != len(self.opts.annotations):
            raise MmfuseError(f"--questions and --annotations come in pairs: got {len(self.opts.questions)} questions "
                              f"file(s) and {len(self.opts.annotations)} annotations file(s)")
        images = existing_dir(self.opts.images, "--images")
        self.subsets = [_read(Path(q), Path(a), images) for q, a in zip(self.opts.questions, self.opts.annotations)]
        self.samples_ = [s for subset in self.subsets for s in subset.samples]
        self.divide(self.samples_)

    def divide(self, usable: list[RawSample]) -> None:
        """Training subsets train; the other subsets' images go half to val, half to test (or, with no
        training subset, every image by the ratios)."""
        held_out = [s for subset in self.subsets if not subset.train for s in subset.samples]
        keep = {id(s) for s in usable}
        images = sorted({s.image_id for s in held_out if id(s) in keep})
        if any(subset.train for subset in self.subsets):
            halves = SplitRatios(0.5, 0.0, self.opts.seed).assign(images)
            splits = {image: "val" if split == "val" else "test" for image, split in halves.items()}
        else:
            splits = self.opts.assign(images)
        for subset in self.subsets:
            for sample in subset.samples:
                sample.split = "train" if subset.train else splits.get(sample.image_id, "test")


def _read(questions_path: Path, annotations_path: Path, images: Path) -> _Subset:
    questions = read_json_file(questions_path, "VQA questions file")
    annotations = read_json_file(annotations_path, "VQA annotations file")
    try:
        asked = {q["question_id"]: q for q in questions["questions"]}
        subtype = str(questions.get("data_subtype", ""))
        samples = [_sample(a, asked, subtype, images, annotations_path) for a in annotations["annotations"]]
    except (KeyError, TypeError) as exc:
        raise MmfuseError(f"{questions_path} / {annotations_path}: not a VQA v2 pair (expected 'questions' with "
                          f"question_id/question/image_id and 'annotations' with question_id/answers; "
                          f"{type(exc).__name__}: {exc})") from None
    train = "train" in questions_path.name.lower() or "train" in subtype
    return _Subset(train, samples)


def _sample(annotation: dict, asked: dict, subtype: str, images: Path, path: Path) -> RawSample:
    question_id = annotation["question_id"]
    if question_id not in asked:
        raise MmfuseError(f"{path}: question {question_id} is annotated but not in the questions file")
    where = f"{path}: question {question_id}"
    question = asked[question_id]
    image_id = int(question["image_id"])
    answers = [text_value(a["answer"], where, "answer") for a in annotation["answers"]]
    return RawSample(split="train", id=str(question_id), image=_find(images, subtype, image_id),
                     image_id=str(image_id), question=text_value(question["question"], where, "question"),
                     answers=answers, question_type=text_value(annotation.get("question_type", ""), where,
                                                               "question_type"),
                     answer_type=text_value(annotation.get("answer_type", ""), where, "answer_type"))


def _find(images: Path, subtype: str, image_id: int) -> Path:
    """The COCO image file of ``image_id`` under ``images`` (see the module doc); the first name
    tried when none exists (reported missing when prepared)."""
    names = [f"COCO_{subtype}_{image_id:012d}.jpg", f"{image_id:012d}.jpg"]
    candidates = [images / n for n in names] + [images / subtype / n for n in names]
    return next((c for c in candidates if c.exists()), candidates[0])

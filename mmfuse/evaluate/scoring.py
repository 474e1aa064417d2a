"""Scoring captions that are already written: anyone's results file against references, and the report
that every caption evaluation shares. Imports neither torch nor spaCy (a test holds it to that), so
``mmfuse evaluate --predictions`` costs what the metrics cost; nor numpy and the metrics until the
files are read, so that a second scoring process can import them meanwhile (:mod:`mmfuse.metrics.halves`).

The report says how long each step took (``timings``, seconds): reading the files, the PTB
tokenizer, the n-gram table the metrics share, each metric, and METEOR's jar when asked.
"""

from __future__ import annotations

import ctypes
import gc
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

from mmfuse.beside import Pending
from mmfuse.errors import MmfuseError
from mmfuse.evaluate.results import (
    HumanAnswers,
    Predictions,
    ResultKind,
    read_answer_references,
    read_predictions,
    read_references,
)
from mmfuse.metrics import halves
from mmfuse.metrics.timings import Timings, timed
from mmfuse.workspace import Workspace

# the shortest entry of a caption results file: a file smaller than TWO_PROCESSES_FROM of them is scored
# in one process, and needs no second one started
SHORTEST_ENTRY = len('{"image_id":0,"caption":""}')


def evaluate_files(workspace: Workspace, predictions: Path, references: str, split: str = "test",
                   with_meteor: bool = True, *, meanwhile: Callable[[], object] | None = None) -> dict[str, Any]:
    """Score a results file against references (a COCO captions or VQA annotation file, or a workspace
    data set name): captions with the caption metrics, answers with VQA accuracy.

    Only the images (questions) that have a prediction are scored, as coco-caption does; a prediction
    for one that has no reference is an error. A large set of captions is scored in two processes, the
    second started before the files are read (:mod:`mmfuse.metrics.halves`). ``meanwhile``: the
    caller's own work, called once, while the second process finishes its part where there is one
    (:func:`mmfuse.metrics.captions.scored_texts`).
    """
    with _cyclic_gc_paused(), _second_process(predictions) as second:
        return _evaluate_files(workspace, predictions, references, split, with_meteor, meanwhile, second)


def _second_process(predictions: Path) -> ContextManager[Pending[Any, Any, Any] | None]:
    """A second scoring process, started before the files are read, where the predictions file is large
    enough to hold a set that two processes score (:mod:`mmfuse.metrics.halves`); else none."""
    try:
        size = predictions.stat().st_size
    except OSError:  # reading it says what is wrong
        return nullcontext()
    return halves.start() if size >= halves.TWO_PROCESSES_FROM * SHORTEST_ENTRY else nullcontext()


# glibc's mallopt parameters (malloc.h), and the largest block its heap serves that every glibc accepts
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HEAP_BLOCKS_UP_TO = 32 << 20  # bytes


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep the memory this process frees for its next allocations, rather than
    handing it back to the system, and to serve blocks up to 32 MiB from its heap: for a short process
    whose arrays come and go. Scoring 8,092 images, each large array otherwise took fresh pages from
    the system, a page fault per 4 KiB (100k faults over the two processes and 0.23 s of system time;
    65k and 0.15 s this way). Permanent for the process (the command line calls it, not the library);
    False where the C library has no ``mallopt`` (macOS, musl) or refuses the values."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    # the threshold first: the trim setting alone would pin the mmap threshold at its 128 KiB default
    return bool(mallopt(M_MMAP_THRESHOLD, HEAP_BLOCKS_UP_TO)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block. Scoring files builds a few hundred thousand
    containers (the parsed files, each text's tokens, each image's scores) and no reference cycles, so
    the collector's passes free nothing: on 8,092 images they took 56 ms of the scoring process's time
    (266 young, 24 middle and 2 full collections, timed with ``gc.callbacks``) in a 0.75 s command.
    The objects made meanwhile then go straight to the oldest generation (``freeze`` + ``unfreeze``):
    otherwise the first two collections after the block scan them all again (22 ms)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.freeze()
            gc.unfreeze()
            gc.enable()


def _evaluate_files(workspace: Workspace, predictions: Path, references: str, split: str, with_meteor: bool,
                    meanwhile: Callable[[], object] | None, second: Pending[Any, Any, Any] | None) -> dict[str, Any]:
    timings: Timings = {}
    preds = timed(timings, "read", lambda: read_predictions(predictions))
    if preds.kind is ResultKind.ANSWER:
        if second is not None:
            second.cancel()  # answers are scored in one process
        refs = timed(timings, "read", lambda: read_answer_references(references, workspace, split))
        _check_covered(preds, refs, predictions, references)
        report = answer_report(list(preds.by_id), list(preds.by_id.values()), [refs[i] for i in preds.by_id])
        report["unanswered"] = len(refs) - len(preds.by_id)
        report["timings"] = {**{k: round(v, 4) for k, v in timings.items()}, **report["timings"]}
        if meanwhile is not None:
            meanwhile()
    else:
        refs = timed(timings, "read", lambda: read_references(references, workspace, split))
        _check_covered(preds, refs, predictions, references)
        ids = list(preds.by_id)
        hypotheses, references_of = list(preds.by_id.values()), [refs[i] for i in ids]
        # before this process loads the metrics, which the second process has done meanwhile
        half = halves.hand_over(second, hypotheses, references_of, halves.STARTED_EARLY) if second is not None else None
        report = score_report(ids, hypotheses, references_of, with_meteor, timings, second=half, meanwhile=meanwhile)
    report.update({"predictions": str(predictions), "references": references})
    return report


def _check_covered(preds: Predictions, refs: dict, predictions: Path, references: str) -> None:
    missing = [i for i in preds.by_id if i not in refs]
    if missing:
        shown = ", ".join(map(str, missing[:5]))
        raise MmfuseError(f"{predictions}: {len(missing)} {preds.kind.noun}(s) have no references in {references} "
                          f"(e.g. {shown})")


def answer_report(ids: list[Any], answers: list[str], references: list[HumanAnswers]) -> dict[str, Any]:
    """VQA accuracy and exact match of predicted answers, overall, per answer type and per question
    type, with every question's figures, as a report dict."""
    from mmfuse.metrics.vqa import vqa_scores

    timings: Timings = {}
    scores = timed(timings, "vqa_accuracy", lambda: vqa_scores(
        answers, [r.answers for r in references], [r.question_type for r in references],
        [r.answer_type for r in references]))
    questions = [{"id": i, "question": r.question, "answer": a, "answers": list(r.answers),
                  "question_type": r.question_type, "answer_type": r.answer_type, "scores": s}
                 for i, a, r, s in zip(ids, answers, references, scores["per_question"])]
    return {"task": "answer", "num_questions": len(ids), "metrics": scores["overall"],
            "per_answer_type": scores["per_answer_type"], "per_question_type": scores["per_question_type"],
            "questions": questions, "timings": {step: round(seconds, 4) for step, seconds in timings.items()}}


def score_report(ids: list[Any], hypotheses: list[str], references: list[list[str]], with_meteor: bool,
                 timings: Timings | None = None, *, second: halves.SecondHalf | None = None,
                 meanwhile: Callable[[], object] | None = None) -> dict[str, Any]:
    """Corpus and per-image scores of raw-text captions, as a report dict with the time of each step;
    ``second``: a second process given the images from its cut on, and ``meanwhile``, as
    :func:`mmfuse.metrics.captions.scored_texts` takes them."""
    from mmfuse.metrics.captions import scored_texts

    timings = {} if timings is None else timings
    scores, tokens = scored_texts(hypotheses, references, timings,  # tokenized once, for every metric
                                  second=second, meanwhile=meanwhile)
    corpus, per_image = scores["corpus"], scores["per_image"]
    meteor_note = "not requested"
    if with_meteor:
        sentences = tokens.sentences()
        hyp_tokens, ref_tokens, at = sentences[:len(ids)], [], len(ids)
        for refs in references:
            ref_tokens.append(sentences[at:at + len(refs)])
            at += len(refs)
        meteor_note = timed(timings, "meteor", lambda: _add_meteor(hyp_tokens, ref_tokens, corpus, per_image))
    images = [{"id": i, "caption": h, "references": r, "scores": s}
              for i, h, r, s in zip(ids, hypotheses, references, per_image)]
    return {"num_images": len(ids), "metrics": corpus, "meteor": meteor_note, "images": images,
            "timings": {step: round(seconds, 4) for step, seconds in timings.items()}}


def worst(report: dict[str, Any], n: int, metric: str = "cider_d") -> list[dict[str, Any]]:
    """The ``n`` images with the lowest ``metric`` (ties in input order)."""
    return sorted(report["images"], key=lambda item: item["scores"][metric])[:n]


def _add_meteor(hypotheses: list[list[str]], references: list[list[list[str]]], corpus: dict,
                per_image: list[dict]) -> str:
    """Add METEOR of tokenized captions to the scores when the jar runs; return 'computed' or why not."""
    from mmfuse.metrics.meteor import MeteorUnavailable, meteor

    try:
        score, images = meteor(hypotheses, references)
    except MeteorUnavailable as exc:
        return f"unavailable: {exc}"
    corpus["meteor"] = score
    for item, value in zip(per_image, images):
        item["meteor"] = value
    return "computed"

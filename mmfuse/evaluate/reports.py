"""``evaluate``: score generated captions with the coco-caption metrics, classifiers with the
classification metrics, and generated answers with VQA accuracy beside the answer prior.

Two entry points: :func:`evaluate_run` captions (or classifies) a split of a run's data set with the
run's model, optionally with one modality taken away (:class:`Ablation`);
:func:`mmfuse.evaluate.scoring.evaluate_files` scores anyone's results file (COCO results JSON or
JSONL) against a COCO captions annotation file or a workspace data set, without torch. Both tokenize
raw text as coco-caption does and report corpus and per-image BLEU-1..4, ROUGE-L, CIDEr-D and, where
Java runs it, METEOR.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mmfuse.config import to_dict
from mmfuse.data.dataset import LabelledDataset, labelled_dataset
from mmfuse.data.records import AnswerRecord, load_answer_split, load_labelled_split, load_split
from mmfuse.data.vocab import Vocab
from mmfuse.device import resolve_device
from mmfuse.errors import Interrupted, MmfuseError
from mmfuse.evaluate.results import HumanAnswers, question_id
from mmfuse.evaluate.scoring import answer_report, score_report
from mmfuse.generate.answers import answer_files
from mmfuse.generate.inference import caption_files, predict_probabilities
from mmfuse.metrics.classification import classification_report
from mmfuse.metrics.vqa import majority_answer, vqa_scores
from mmfuse.models.answerer import answer_text
from mmfuse.models.checkpoint import LoadedRun, load_run, read_metadata
from mmfuse.workspace import Workspace, atomic_write_json, check_writable

ABLATE_MODALITIES = ("image", "text")
ABLATE_MODES = ("auto", "shuffle", "zero")


@dataclass(frozen=True)
class Ablation:
    """Take one modality away at evaluation to measure what it contributes.

    ``image``: ``shuffle`` gives each sample another sample's image (a fixed permutation), ``zero`` a
    mean-colour image. ``text`` (classification, answering): ``shuffle`` gives each sample another
    sample's text (question), ``zero`` an empty one. ``text`` (captioning): the word inputs of the decoder are zeroed,
    so it must caption from the image (and its own state) alone; only ``zero`` applies.
    ``auto`` is ``zero`` there and ``shuffle`` everywhere else.
    """

    modality: str
    mode: str = "auto"
    seed: int = 0

    def resolve(self, task: str) -> "Ablation":
        """This ablation with ``auto`` chosen for ``task``; a clear error for what does not apply."""
        if self.modality not in ABLATE_MODALITIES:
            raise MmfuseError(f"--ablate must be image or text, got {self.modality!r}")
        if self.mode not in ABLATE_MODES:
            raise MmfuseError(f"--ablate-mode must be auto, shuffle or zero, got {self.mode!r}")
        caption_text = task == "caption" and self.modality == "text"
        if caption_text and self.mode == "shuffle":
            raise MmfuseError("for a captioner the text ablation zeroes the decoder's word inputs: "
                              "use --ablate-mode zero (or auto)")
        mode = self.mode if self.mode != "auto" else ("zero" if caption_text else "shuffle")
        return Ablation(self.modality, mode, self.seed)

    @property
    def suffix(self) -> str:
        return f"-ablate-{self.modality}-{self.mode}"

    def permute(self, items: list) -> list:
        """``items`` in a fixed random order (the same seed gives the same order)."""
        order = list(range(len(items)))
        random.Random(self.seed).shuffle(order)
        return [items[i] for i in order]


def evaluate_run(
    workspace: Workspace,
    run: str,
    split: str = "test",
    decode_options: dict[str, Any] | None = None,
    checkpoint: str = "best",
    device: str = "auto",
    batch_size: int = 64,
    with_meteor: bool = True,
    ablation: Ablation | None = None,
) -> dict[str, Any]:
    """Caption (or classify) ``split`` with the run's model and score the outputs.

    Writes ``eval-<split>.json`` (the report) and ``results-<split>.json`` (captions in COCO results
    format, or every sample's prediction) into the run; with an ablation the names end in
    ``-ablate-<modality>-<mode>``. Decoding settings default to the run's; ``decode_options``
    (:class:`~mmfuse.config.DecodeConfig` fields, None = keep) override them. Only the best caption
    of an n-best list is scored.
    """
    run_dir = workspace.existing_run(run)
    check_writable(run_dir)  # the reports go there: a read-only run fails before the work, not after
    loaded = load_run(run_dir, checkpoint, resolve_device(device))
    if ablation is not None:
        ablation = ablation.resolve(loaded.config.model.task)
    try:
        with workspace.reading_dataset(loaded.config.train.data) as data_dir:
            report, results = _score_split(loaded, run, data_dir, split, decode_options, batch_size, with_meteor,
                                           ablation)
    except KeyboardInterrupt as exc:
        raise Interrupted(f"evaluate interrupted before its report was written (run {run!r} is as it was); run the "
                          f"same command again", exc) from None
    report.update({"run": run, "data": loaded.config.train.data, "split": split, "checkpoint": checkpoint,
                   "epoch": int(read_metadata(loaded.weights).get("epoch", 0)),
                   "ablation": None if ablation is None else {"modality": ablation.modality, "mode": ablation.mode}})
    suffix = ablation.suffix if ablation else ""
    files = workspace.run(run)
    atomic_write_json(files.results(split, suffix), results)
    atomic_write_json(files.report(split, suffix), report)
    return {**report, "written": [str(files.report(split, suffix)), str(files.results(split, suffix))]}


def _score_split(loaded: LoadedRun, run: str, data_dir: Path, split: str, decode_options: dict[str, Any] | None,
                 batch_size: int, with_meteor: bool, ablation: Ablation | None) -> tuple[dict[str, Any], list]:
    """The report and results of a run's model on one split of its data set."""
    if loaded.labels is not None:
        given = sorted(k for k, v in (decode_options or {}).items() if v is not None)
        if given:
            raise MmfuseError(f"run {run!r} is a classifier; decoding options (--{given[0].replace('_', '-')}) "
                              "apply to captioning runs")
        return _classify_split(loaded, data_dir, split, batch_size, ablation)
    if loaded.config.model.task == "answer":
        return _answer_split(loaded, data_dir, split, decode_options or {}, batch_size, ablation)
    return _caption_split(loaded, data_dir, split, decode_options or {}, batch_size, with_meteor, ablation)


def _caption_split(loaded: LoadedRun, data_dir: Path, split: str, decode_options: dict[str, Any],
                   batch_size: int, with_meteor: bool, ablation: Ablation | None) -> tuple[dict[str, Any], list]:
    decode = loaded.config.decode.override(**decode_options)
    decode.check_reachable(len(loaded.vocab))
    records = load_split(data_dir, split)
    paths = [r.image for r in records]
    if ablation is not None and ablation.modality == "image" and ablation.mode == "shuffle":
        paths = ablation.permute(paths)
    blank = ablation is not None and ablation.modality == "image" and ablation.mode == "zero"
    loaded.model.text_ablation = ablation is not None and ablation.modality == "text"
    try:
        hyps = [" ".join(words) for words in caption_files(loaded.model, loaded.vocab, paths,
                                                            loaded.config.model.image_size, decode, batch_size, blank)]
    finally:
        loaded.model.text_ablation = False
    report = score_report([r.id for r in records], hyps, [list(r.captions) for r in records], with_meteor)
    report["task"], report["decode"] = "caption", to_dict(decode)
    for item, path in zip(report["images"], paths):
        item["image"] = str(path)
    return report, [{"image_id": r.id, "caption": h} for r, h in zip(records, hyps)]


def _answer_split(loaded: LoadedRun, data_dir: Path, split: str, decode_options: dict[str, Any], batch_size: int,
                  ablation: Ablation | None) -> tuple[dict[str, Any], list]:
    """Answers generated to a split's questions, scored with VQA accuracy beside the answer prior."""
    decode = loaded.config.decode.override(**decode_options)
    decode.check_reachable(len(loaded.vocab))
    records, text = load_answer_split(data_dir, split), answer_text(loaded.vocab)
    paths, prompts = [r.image for r in records], [text.prompt(r) for r in records]
    if ablation is not None and ablation.modality == "image" and ablation.mode == "shuffle":
        paths = ablation.permute(paths)
    if ablation is not None and ablation.modality == "text":
        prompts = ablation.permute(prompts) if ablation.mode == "shuffle" else \
            [text.prompt(replace(r, question="", question_tokens=(), history=(), history_tokens=())) for r in records]
    blank = ablation is not None and ablation.modality == "image" and ablation.mode == "zero"
    answers = [" ".join(words) for words in answer_files(loaded.model, text, paths, prompts,
                                                          loaded.config.model.image_size, decode, batch_size, blank)]
    references = [HumanAnswers(r.answers, r.question_type, r.answer_type, r.question) for r in records]
    report = answer_report([question_id(r.id) for r in records], answers, references)
    report["prior"] = answer_prior(load_answer_split(data_dir, "train"), records)
    report["decode"] = to_dict(decode)
    for item, path in zip(report["questions"], paths):
        item["image"] = str(path)
    return report, [{"question_id": question_id(r.id), "answer": a} for r, a in zip(records, answers)]


def answer_prior(train: list[AnswerRecord], records: list[AnswerRecord]) -> dict[str, Any]:
    """The answer-prior baselines, scored as a model's answers are. Per question type: each question
    answered with the most frequent (majority) training answer of its type (of all training
    questions where the type is new or not given): what a model that ignores the image can reach,
    knowing what kind of question it is. ``no_question``: every question answered with the most
    frequent training answer: what a model that knows neither reaches."""
    by_type: dict[str, Counter] = {}
    for r in train:
        by_type.setdefault(r.question_type, Counter())[majority_answer(r.answers)] += 1
    overall = sum(by_type.values(), Counter()).most_common(1)[0][0]
    guesses = [by_type[r.question_type].most_common(1)[0][0] if r.question_type in by_type else overall
               for r in records]
    scores = vqa_scores(guesses, [r.answers for r in records], [r.question_type for r in records],
                        [r.answer_type for r in records])
    blind = vqa_scores([overall] * len(records), [r.answers for r in records], [""] * len(records),
                       [""] * len(records))
    return {"metrics": scores["overall"], "per_question_type": scores["per_question_type"],
            "answers": {t: c.most_common(1)[0][0] for t, c in sorted(by_type.items())},
            "no_question": {"answer": overall, "metrics": blind["overall"]}}


def _classify_split(loaded: LoadedRun, data_dir: Path, split: str, batch_size: int,
                    ablation: Ablation | None) -> tuple[dict[str, Any], list]:
    labels = loaded.labels or []
    records = load_labelled_split(data_dir, split)
    dataset = labelled_dataset(records, loaded.vocab, labels, loaded.config.model.image_size)
    if ablation is not None:
        _ablate(dataset, ablation, loaded.vocab)
    probs = predict_probabilities(loaded.model, dataset, batch_size)  # (n, C)
    predicted = probs.argmax(1).tolist()
    report = classification_report(dataset.labels, predicted, len(labels),
                                   probs[:, 1].tolist() if len(labels) == 2 else None, labels)
    counts = Counter(dataset.labels)
    report = {"task": "classify", "num_samples": len(records), "labels": labels, "metrics": report,
              "majority_rate": max(counts.values()) / len(records)}
    groups = [r.group for r in records]
    if any(groups):
        report["per_group"] = group_accuracy(groups, dataset.labels, predicted)
    results = [{"id": r.id, "image": str(path), "text": r.text, "label": r.label, "prediction": labels[p],
                "probabilities": dict(zip(labels, [round(x, 6) for x in row])),
                **({"group": r.group} if r.group else {})}
               for r, path, p, row in zip(records, dataset.paths, predicted, probs.tolist())]
    report["samples"] = results
    return report, results


def group_accuracy(groups: list[str], y_true: list[int], y_pred: list[int]) -> dict[str, dict[str, Any]]:
    """Accuracy and support of each group (samples without a group count as ``""``), by name."""
    hits: dict[str, list[int]] = {}
    for group, t, p in zip(groups, y_true, y_pred):
        hits.setdefault(group, []).append(int(t == p))
    return {g: {"accuracy": sum(h) / len(h), "support": len(h)} for g, h in sorted(hits.items())}


def confident_mistakes(report: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """The ``n`` wrong predictions of a classification report made with the highest probability."""
    wrong = [s for s in report["samples"] if s["prediction"] != s["label"]]
    return sorted(wrong, key=lambda s: -s["probabilities"][s["prediction"]])[:n]


def _ablate(dataset: LabelledDataset, ablation: Ablation, vocab: Vocab) -> None:
    """Take ``ablation.modality`` away from ``dataset`` in place."""
    if ablation.modality == "image":
        if ablation.mode == "shuffle":
            dataset.paths = ablation.permute(dataset.paths)
        else:
            dataset.blank = True
    elif ablation.mode == "shuffle":
        dataset.token_ids = ablation.permute(dataset.token_ids)
    else:
        dataset.token_ids = [vocab.encode([]) for _ in dataset.token_ids]

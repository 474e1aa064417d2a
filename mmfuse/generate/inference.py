"""Inference with a loaded model, in batches, in input order: captions for image files, and class
probabilities for (image, text) pairs."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader

from mmfuse.config import DecodeConfig
from mmfuse.data.dataset import ImageDataset, LabelledDataset, pad
from mmfuse.data.images import image_transform, load_rgb
from mmfuse.data.records import AnswerRecord
from mmfuse.data.tokenize import tokenize, tokenize_many
from mmfuse.data.vocab import BOS_ID, UNK_ID, Vocab
from mmfuse.device import resolve_device
from mmfuse.errors import MmfuseError
from mmfuse.generate.answers import answer_images
from mmfuse.generate.decoding import generate
from mmfuse.generate.inputs import Captioned, InputItem, check_images
from mmfuse.models.answerer import AnswerText, answer_text
from mmfuse.models.captioner import Captioner
from mmfuse.models.checkpoint import LoadedRun, load_run
from mmfuse.models.fusion import ATTENTION
from mmfuse.workspace import Workspace, printable


def caption_files(
    model: Captioner,
    vocab: Vocab,
    paths: list[Path],
    image_size: int,
    decode: DecodeConfig,
    batch_size: int = 64,
    blank_images: bool = False,
) -> Iterator[list[str]]:
    """Yield each image's best caption (tokens) in the order of ``paths``; the model stays in eval mode.

    ``blank_images`` feeds mean-colour images instead (the image ablation)."""
    device = next(model.parameters()).device
    loader = DataLoader(ImageDataset(paths, image_size, blank_images), batch_size=batch_size, shuffle=False)
    with _eval_mode(model):
        first = 0
        for images in loader:
            for options in generate(model, images.to(device), decode, first):
                yield vocab.decode(options[0].tokens)
            first += images.size(0)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def caption_run(
    workspace: Workspace,
    run: str,
    items: Iterable[InputItem],
    decode_options: dict[str, Any] | None = None,
    checkpoint: str = "best",
    device: str = "auto",
    batch_size: int = 64,
    attention_dir: Path | None = None,
) -> tuple[DecodeConfig, Iterator[Captioned]]:
    """Caption the images of ``items`` (see :func:`~mmfuse.generate.inputs.expand_inputs`) with a
    run's model: returns the decoding settings and a stream of results in input order. An input
    that is missing or not a readable image is reported in its result, not raised; the stream holds
    only one batch in memory at a time.

    Raises before any output: unknown run, invalid decoding settings, ``attention_dir`` for a model
    without attention over the image.
    """
    loaded = load_run(workspace.existing_run(run), checkpoint, resolve_device(device))
    if loaded.labels is not None:
        raise MmfuseError(f"run {run!r} is a classifier; use 'mmfuse predict' (caption is for captioning runs)")
    if loaded.config.model.task == "answer":
        raise MmfuseError(f"run {run!r} answers questions; use 'mmfuse ask IMAGE --question TEXT' (caption is for "
                          f"captioning runs)")
    decode = loaded.config.decode.override(**(decode_options or {}))
    decode.check_reachable(len(loaded.vocab))
    if attention_dir is not None and loaded.model.fusion.kind != ATTENTION:
        raise MmfuseError(f"--attention-map needs a run with attention over the image (--fusion attention); run "
                          f"{run!r} uses fusion {loaded.config.model.fusion!r}, which has none")
    if attention_dir is not None:
        _writable_directory(attention_dir)
    stream = _caption_stream(loaded, items, decode, batch_size, attention_dir)
    return decode, stream


def ask_run(workspace: Workspace, run: str, items: Iterable[InputItem], decode_options: dict[str, Any] | None = None,
            checkpoint: str = "best", device: str = "auto", batch_size: int = 64,
            warn: Callable[[str], None] | None = None) -> tuple[DecodeConfig, Iterator[Captioned]]:
    """Answer each item's question about its image with an answering run's model: the decoding
    settings and a stream of results in input order (each with its question and answers), as
    :func:`caption_run` streams captions. Raises before any output for an unknown or non-answering
    run and invalid decoding settings. ``warn`` hears of the words of a question that the model's
    vocabulary lacks (read as ``<unk>``), once per question text."""
    loaded = load_run(workspace.existing_run(run), checkpoint, resolve_device(device))
    if loaded.config.model.task != "answer":
        kind = "a classifier; use 'mmfuse predict'" if loaded.labels is not None else "a captioner; use 'mmfuse caption'"
        raise MmfuseError(f"run {run!r} is {kind} (ask is for runs trained on a question-answering data set)")
    decode = loaded.config.decode.override(**(decode_options or {}))
    decode.check_reachable(len(loaded.vocab))
    return decode, _answer_stream(loaded, items, decode, batch_size, warn)


def _answer_stream(loaded: LoadedRun, items: Iterable[InputItem], decode: DecodeConfig, batch_size: int,
                   warn: Callable[[str], None] | None) -> Iterator[Captioned]:
    text = answer_text(loaded.vocab)
    if warn is not None:
        items = _warn_unknown(items, text, warn)
    transform = image_transform(loaded.config.model.image_size)
    seen = 0
    with _eval_mode(loaded.model), ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for results in _loaded_batches(items, batch_size, transform, pool):
            good = [(captioned, pixels) for captioned, pixels in results if pixels is not None]
            if good:
                _answer_batch(loaded, text, good, decode, seen)
            seen += len(good)
            yield from (captioned for captioned, _ in results)


def _answer_batch(loaded: LoadedRun, text: AnswerText, batch: list[tuple[Captioned, torch.Tensor]], decode: DecodeConfig,
                  first_index: int) -> None:
    """Fill in the answers of a batch of readable images with their questions."""
    device = next(loaded.model.parameters()).device
    images = torch.stack([pixels for _, pixels in batch]).to(device)  # (B, 3, S, S)
    prompts = [text.prompt(question_record(captioned.question or "")) for captioned, _ in batch]
    for (captioned, _), options in zip(batch, answer_images(loaded.model, images, prompts, decode, first_index)):
        if any(g.score == float("-inf") for g in options):
            captioned.problem = (f"no answer about {printable(str(captioned.path))} meets the decoding constraints "
                                 f"({decode.describe()})")
            continue
        captioned.captions = [(text.decode(g.tokens), g.score) for g in options]


def _warn_unknown(items: Iterable[InputItem], text: AnswerText, warn: Callable[[str], None]) -> Iterator[InputItem]:
    """``items``, warning once per question text of the words the model never saw."""
    said: set[str] = set()
    for item in items:
        question = item.question or ""
        if question not in said:
            said.add(question)
            unknown = text.unknown_words(question_record(question))
            if unknown:
                warn(f"{', '.join(map(repr, unknown))} in {question!r}: not in the model's vocabulary (read as <unk>)")
        yield item


def question_record(question: str) -> AnswerRecord:
    """A question asked of an image, as the record an answerer's text codec reads (tokenized as
    prepare-data tokenizes, for mmfuse's own vocabulary)."""
    return AnswerRecord(id="asked", image=Path(), question=question, answers=(),
                        question_tokens=_question_tokens(question), answer_tokens=())


@lru_cache(maxsize=4096)
def _question_tokens(question: str) -> tuple[str, ...]:
    """spaCy's tokens of ``question``, once per text: ``ask`` usually puts one question to many
    images, and both the unknown-word check and every batch's prompts read it."""
    return tuple(tokenize(question))


def _writable_directory(path: Path) -> None:
    """Create ``path`` (and parents) for output files, or fail with one clear line."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MmfuseError(f"cannot write attention maps into {path}: {exc.strerror or exc}") from None


def _caption_stream(loaded: LoadedRun, items: Iterable[InputItem], decode: DecodeConfig, batch_size: int,
                    attention_dir: Path | None) -> Iterator[Captioned]:
    model = loaded.model
    transform = image_transform(loaded.config.model.image_size)
    names: set[str] = set()  # heat-map file names used so far
    seen = 0  # images captioned so far: the position of the next one (sampling seeds)
    with _eval_mode(model), ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for results in _loaded_batches(items, batch_size, transform, pool):
            good = [i for i, (_, pixels) in enumerate(results) if pixels is not None]
            if good:
                _caption_batch(loaded, [results[i] for i in good], decode, seen, attention_dir, names)
            seen += len(good)
            yield from (captioned for captioned, _ in results)


def _loaded_batches(items: Iterable[InputItem], size: int, transform: Any,
                    pool: ThreadPoolExecutor) -> Iterator[list[tuple[Captioned, torch.Tensor | None]]]:
    """Batches of loaded images, in order; the next batch is read by ``pool`` while the caller
    decodes this one (so at most two batches are in memory)."""
    batches = _batches(items, size)
    pending = [pool.submit(_load, item, transform) for item in next(batches, [])]
    while pending:
        upcoming = [pool.submit(_load, item, transform) for item in next(batches, [])]
        yield [future.result() for future in pending]
        pending = upcoming


def _caption_batch(loaded: LoadedRun, batch: list[tuple[Captioned, torch.Tensor]], decode: DecodeConfig,
                   first_index: int, attention_dir: Path | None, names: set[str]) -> None:
    """Fill in the captions (and heat-maps) of a batch of readable images."""
    device = next(loaded.model.parameters()).device
    images = torch.stack([pixels for _, pixels in batch]).to(device)  # (B, 3, S, S)
    outcomes = generate(loaded.model, images, decode, first_index)
    maps = _attention_maps(loaded.model, images, outcomes) if attention_dir is not None else None
    for j, (captioned, _) in enumerate(batch):
        if any(g.score == float("-inf") for g in outcomes[j]):  # every word was forbidden at some step
            captioned.problem = (f"no caption of {printable(str(captioned.path))} meets the decoding constraints "
                                 f"({decode.describe()})")
            continue
        captioned.captions = [(loaded.vocab.decode(g.tokens), g.score) for g in outcomes[j]]
        if maps is not None and attention_dir is not None:
            captioned.attention_map = _save_map(captioned, maps[j], attention_dir, names)


def _batches(items: Iterable[InputItem], size: int) -> Iterator[list[InputItem]]:
    batch: list[InputItem] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _load(item: InputItem, transform: Any) -> tuple[Captioned, torch.Tensor | None]:
    """The model input for one item (None, with the problem recorded, if it cannot be read)."""
    if item.problem is not None:
        return Captioned(item.path, problem=item.problem, question=item.question), None
    try:
        return Captioned(item.path, question=item.question), transform(load_rgb(item.path))
    except MmfuseError as exc:
        return Captioned(item.path, problem=str(exc), question=item.question), None


@torch.inference_mode()
def _attention_maps(model: Captioner, images: torch.Tensor, outcomes: list) -> list[torch.Tensor]:
    """Per image, the attention (T, N) while generating each word of its best caption."""
    best = [options[0].tokens for options in outcomes]
    tokens = pad([[BOS_ID] + ids for ids in best]).to(images.device)  # (B, T+1)
    weights = model.attention_weights(model.encode(images), tokens)  # (B, T+1, N)
    return [w[: len(ids)].cpu() for w, ids in zip(weights, best)]


def _save_map(captioned: Captioned, weights: torch.Tensor, attention_dir: Path, names: set[str]) -> Path:
    """Write the heat-map figure of one image as DIR/<image stem>.png (-2, -3... on a name clash)."""
    from mmfuse.generate.heatmaps import attention_figure, write_figure

    stem, n = captioned.path.stem, 1
    while (name := stem if n == 1 else f"{stem}-{n}") in names:
        n += 1
    names.add(name)
    target = attention_dir / f"{name}.png"
    write_figure(attention_figure(captioned.path, captioned.captions[0][0], weights), target)
    return target


@torch.inference_mode()
def predict_probabilities(model: nn.Module, dataset: LabelledDataset, batch_size: int = 128) -> torch.Tensor:
    """Class probabilities (n, C) for every sample of ``dataset``, in order; the model's mode is kept."""
    device = next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=dataset.collate)
    with _eval_mode(model):
        return torch.cat([torch.softmax(model(b["images"].to(device), b["tokens"].to(device)).float(), -1).cpu()
                          for b in loader])


def predict_run(workspace: Workspace, run: str, paths: list[Path], texts: list[str], checkpoint: str = "best",
                device: str = "auto", batch_size: int = 64,
                warn: Callable[[str], None] | None = None) -> Iterator[tuple[Path, str, dict[str, float]]]:
    """Classify (image, text) pairs with a classification run: yields (path, text, {label: probability}).

    All images are checked before the model runs, so a bad one fails before any output. ``warn``
    hears of the words the model never saw (read as ``<unk>``), once per text that has some.
    """
    loaded = load_run(workspace.existing_run(run), checkpoint, resolve_device(device))
    if loaded.labels is None:
        kind = "answers questions; use 'mmfuse ask'" if loaded.config.model.task == "answer" else \
            "is a captioner; use 'mmfuse caption'"
        raise MmfuseError(f"run {run!r} {kind} (predict is for classification runs)")
    check_images(paths)
    tokens = list(tokenize_many(texts))
    token_ids = [loaded.vocab.encode(t) for t in tokens]
    for text, words, ids in zip(texts, tokens, token_ids):
        unknown = list(dict.fromkeys(w for w, i in zip(words, ids[1:]) if i == UNK_ID))  # ids[0]: <bos>
        if unknown and warn:
            warn(f"{', '.join(map(repr, unknown))} in {text!r}: not in the model's vocabulary (read as <unk>)")
    dataset = LabelledDataset(paths, token_ids, [-1] * len(paths), loaded.config.model.image_size)
    probs = predict_probabilities(loaded.model, dataset, batch_size)
    for path, text, row in zip(paths, texts, probs.tolist()):
        yield path, text, dict(zip(loaded.labels, row))

"""Checkpoints: tensors in safetensors, everything else in JSON. Nothing is pickled.

A run directory holds ``config.json`` (the resolved :class:`~mmfuse.config.RunConfig`),
``vocab.json``, ``labels.json`` (classifiers) and ``best.safetensors`` / ``last.safetensors``
(weights + string metadata).
Tensors are saved from CPU, so a checkpoint written on a GPU loads anywhere.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from mmfuse.config import ModelConfig, RunConfig, read_run_config
from mmfuse.data.vocab import Vocab
from mmfuse.errors import MmfuseError, first_line
from mmfuse.models.caption_models import build_caption_model
from mmfuse.models.vision_towers import RebuiltFromBase
from mmfuse.models.classifier import build_classifier
from mmfuse.workspace import RunDir, atomic_write_bytes, open_regular, read_json

WEIGHT_FILES = ("best", "last")
# Tensor names older mmfuse wrote -> today's (prefixes). 9ad19ab: the LSTM and GRU decoders share one
# recurrent base, whose layers are ``rnn`` (they were ``lstm`` / ``gru``).
RENAMED = {"decoder.lstm.": "decoder.rnn.", "decoder.gru.": "decoder.rnn."}


@runtime_checkable
class SavesParts(Protocol):
    """A model whose checkpoints hold only some of its tensors (what trained); the rest is rebuilt
    from elsewhere (a pretrained language model's own weights)."""

    def saved_state(self) -> dict[str, torch.Tensor]: ...


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint of ``model`` holds: :meth:`SavesParts.saved_state`, else all."""
    return model.saved_state() if isinstance(model, SavesParts) else model.state_dict()


def save_weights(path: Path, model: nn.Module, metadata: dict[str, str]) -> None:
    """Write the model's tensors (moved to CPU) atomically, with string ``metadata``."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model_tensors(model).items()}
    atomic_write_bytes(path, st_save(tensors, metadata=metadata))


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, on CPU; a missing or damaged file is a clear error."""
    if not os.path.lexists(path):
        raise MmfuseError(f"weights file is missing: {path}")
    try:
        with open_regular(path, "weights") as handle:
            return st_load(handle.read())
    except (SafetensorError, ValueError, OSError) as exc:
        raise MmfuseError(f"weights file is damaged or not safetensors: {path}: {exc}") from None


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata stored in a safetensors file's header."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


@dataclass
class LoadedRun:
    """A trained run ready for inference (``labels`` is None for a captioner)."""

    config: RunConfig
    vocab: Any  # the text codec: the vocabulary, or a language model's tokenizer (LMText)
    model: nn.Module
    weights: Path
    labels: list[str] | None = None


def load_run(run_dir: Path, which: str = "best", device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild a run's model from its JSON config and safetensors weights, in eval mode."""
    config = read_run_config(run_dir)
    config.validate()
    files = RunDir(run_dir)
    vocab = Vocab.from_json(read_json(files.vocab, "run vocabulary"), str(files.vocab))
    weights = pick_weights(run_dir, which)
    labels = None
    if config.model.task == "classify":
        labels = _read_labels(run_dir)
        model: nn.Module = build_classifier(config.model, len(vocab), len(labels))
    else:
        model, vocab = build_caption_model(config.model, vocab, run_dir.name)  # vocab: the model's text codec
    state = migrate_names(read_weights(weights), model.state_dict())
    load_checked(model, state, f"weights {weights}", "the run's config")
    if labels is not None:
        _check_label_order(weights, labels, run_dir)
    return LoadedRun(config, vocab, model.to(device).eval(), weights, labels)


def load_checked(model: nn.Module, state: dict[str, torch.Tensor], what: str, against: str) -> None:
    """Load ``state`` into ``model`` only if it has exactly the model's tensors, shapes and dtypes
    (torch would silently cast another dtype); else one line naming the first differences."""
    problem = _mismatch(model_tensors(model), state)
    if not problem:
        try:
            model.load_state_dict(state, strict=not isinstance(model, SavesParts))
            return
        except RuntimeError as exc:
            problem = first_line(exc)
    raise MmfuseError(f"{what} do not match {against} ({problem}); were they written by another version of "
                      f"mmfuse or changed by hand? Retrain the run")


def _check_label_order(weights: Path, labels: list[str], run_dir: Path) -> None:
    """The class names the weights were trained with (in their metadata, since this version) must be
    ``labels.json``'s, in the same order: otherwise every prediction would carry the wrong name."""
    recorded = read_metadata(weights).get("labels")
    if recorded is None:
        return  # written by an older mmfuse: the head's size was checked with the tensors
    try:
        trained = json.loads(recorded)
    except ValueError:
        trained = None
    if trained != labels:
        def shown(names: Any) -> str:
            names = [str(n) for n in names] if isinstance(names, list) else [str(names)]
            return ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        raise MmfuseError(f"{run_dir / 'labels.json'} lists the classes {shown(labels)} but the weights "
                          f"{weights.name} were trained for {shown(trained if trained is not None else recorded)} "
                          f"(in that order); restore labels.json or retrain the run")


def migrate_names(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with the tensor names an older mmfuse wrote (:data:`RENAMED`) changed to today's,
    where the model expects the new name and not the old one; other names are left as they are."""
    def today(name: str) -> str:
        for old, new in RENAMED.items():
            if name.startswith(old) and name not in expected and new + name[len(old):] in expected:
                return new + name[len(old):]
        return name
    return {today(name): tensor for name, tensor in state.items()}


def _read_labels(run_dir: Path) -> list[str]:
    labels = read_json(RunDir(run_dir).labels, "run labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise MmfuseError(f"{run_dir / 'labels.json'}: expected a non-empty JSON list of class names")
    return labels


def pick_weights(run_dir: Path, which: str) -> Path:
    if which not in WEIGHT_FILES:
        raise MmfuseError(f"checkpoint must be one of {', '.join(WEIGHT_FILES)}, got {which!r}")
    path = RunDir(run_dir).weights(which)
    if not path.is_file():
        raise MmfuseError(f"run {run_dir.name!r} has no {which} weights yet ({path} is missing; did training finish an epoch?)")
    return path


def _mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    """What differs between the model's tensors and the file's, in a few words ("" if nothing)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    resized = sorted(k for k in set(expected) & set(found) if expected[k].shape != found[k].shape)
    retyped = sorted(k for k in set(expected) & set(found) if expected[k].shape == found[k].shape
                     and expected[k].dtype != found[k].dtype)
    parts = [f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
             for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", resized),
                                 ("other dtype", retyped)) if keys]
    return "; ".join(parts)


def load_encoder_from_run(encoder: nn.Module, run_dir: Path, model_cfg: ModelConfig) -> int:
    """Copy the image-encoder tensors of ``run_dir``'s best checkpoint into ``encoder`` (the
    ``encoder`` of a model built from ``model_cfg``); returns how many tensors were copied.

    The run may be a captioner or a classifier; it must use the same image encoder and feature
    width. Only the encoder is taken (its BatchNorm statistics included); nothing else of the run.
    """
    source = read_run_config(run_dir).model
    for field in ("encoder", "feature_dim"):
        mine, theirs = getattr(model_cfg, field), getattr(source, field)
        if mine != theirs:
            raise MmfuseError(f"cannot start the image encoder from run {run_dir.name!r}: its {field} is {theirs!r}, "
                              f"this model's is {mine!r} (pass --{field.replace('_', '-')} {theirs} or another run)")
    state = read_weights(pick_weights(run_dir, "best"))
    prefix = "encoder."
    tensors = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    rebuilt = encoder.rebuilt_prefixes() if isinstance(encoder, RebuiltFromBase) else ()  # a frozen tower's own weights
    expected = {k: v for k, v in encoder.state_dict().items() if not k.startswith(rebuilt)}
    problem = _mismatch(expected, tensors)
    if problem:
        raise MmfuseError(f"the image encoder of run {run_dir.name!r} does not match this model's ({problem})")
    encoder.load_state_dict(tensors, strict=not rebuilt)
    return len(tensors)

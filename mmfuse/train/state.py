"""The resumable training checkpoint: everything an interrupted run needs to continue exactly.

One file, ``runs/<run>/checkpoint.safetensors``, written atomically: the model's and the optimiser's
tensors and the random number generators' states as safetensors tensors; the optimiser's
hyper-parameters, the scheduler, the gradient scaler, Python's and NumPy's generators and the
progress (epoch, batches done in it, loss so far, best score, patience, history) as JSON in the
file's metadata. Nothing is pickled, so loading it cannot run code.

On CPU a run resumed from it reproduces the uninterrupted run's losses and final weights exactly:
the data order of the epoch is re-drawn from the generator state saved at its start and the
batches already done are skipped.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from mmfuse.errors import MmfuseError, first_line
from mmfuse.models.checkpoint import load_checked, model_tensors, read_metadata
from mmfuse.workspace import RunDir, atomic_write_bytes

CHECKPOINT = RunDir(Path()).checkpoint.name  # the file name, for callers that build paths
FORMAT = 1


@dataclass
class Progress:
    """Where a run stands: what the training loop advances and the resumable checkpoint saves (as
    JSON, field by field)."""

    epoch: int = 1  # the epoch in progress (1-based)
    batches_done: int = 0  # batches of it already trained
    step: int = 0  # optimiser steps since the run started
    loss_sum: float = 0.0  # the epoch's summed loss over its target tokens (or samples)
    loss_count: float = 0.0  # ... and their number
    samples: int = 0  # samples the epoch has trained on
    seconds: float = 0.0  # training time of the epoch before the last save
    best_epoch: int = 0
    best: float = -1.0  # the best validation score so far
    stale: int = 0  # epochs since it improved (early stopping)
    done: bool = False  # the run has finished: nothing is left to resume
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per finished epoch

    def next_epoch(self) -> None:
        """Start counting the next epoch."""
        self.epoch += 1
        self.batches_done, self.loss_sum, self.loss_count, self.samples, self.seconds = 0, 0.0, 0.0, 0, 0.0

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.loss_count, 1e-9)


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    scaler: Any, epoch_order: torch.Tensor, progress: Progress) -> None:
    """Write the resumable state atomically (see the module doc). ``epoch_order``: the data-order
    generator's state at the start of the current epoch."""
    tensors = {f"model.{k}": v.detach().to("cpu").contiguous() for k, v in model_tensors(model).items()}
    optim = optimizer.state_dict()
    for index, values in optim["state"].items():
        for name, value in values.items():
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value).detach().to("cpu").contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.epoch_order"] = epoch_order
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    numpy_state = np.random.get_state()
    meta = {
        "format": FORMAT,
        "optimizer_groups": optim["param_groups"],
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng_python": _jsonable(random.getstate()),
        "rng_numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "progress": asdict(progress),
    }
    atomic_write_bytes(path, st_save(tensors, metadata={"mmfuse": json.dumps(meta)}))


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    scaler: Any) -> tuple[Progress, torch.Tensor]:
    """Restore what :func:`save_checkpoint` wrote into these objects and the global generators;
    returns the progress and the data-order generator's state at the start of that epoch."""
    try:
        tensors = st_load(path.read_bytes())
        meta = json.loads(read_metadata(path)["mmfuse"])
    except FileNotFoundError:
        raise MmfuseError(f"nothing to resume: {path} is missing (the run saves it after its first epoch, "
                          "every --save-every steps and when interrupted)") from None
    except (SafetensorError, KeyError, ValueError, OSError) as exc:
        raise MmfuseError(f"resume checkpoint is damaged: {path}: {exc}") from None
    if not isinstance(meta, dict):
        raise MmfuseError(f"resume checkpoint is damaged: {path}: its metadata is not a JSON object")
    if not isinstance(meta.get("format", 0), int) or meta.get("format", 0) > FORMAT:
        raise MmfuseError(f"resume checkpoint {path} was written by a newer mmfuse; upgrade mmfuse")
    _check_metadata(meta, tensors, path)
    load_checked(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
                 f"the model tensors of the resume checkpoint {path}", "the run's config")
    try:
        return _restore(meta, tensors, optimizer, scheduler, scaler)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise MmfuseError(f"resume checkpoint {path} does not fit this run ({type(exc).__name__}: "
                          f"{first_line(exc)}); train the run again with --overwrite") from None


# What the progress record of a resume checkpoint holds, and of which types.
_PROGRESS_TYPES: dict[str, tuple[type, ...]] = {
    "epoch": (int,), "batches_done": (int,), "step": (int,), "loss_sum": (int, float), "loss_count": (int, float),
    "samples": (int,), "seconds": (int, float), "best_epoch": (int,), "best": (int, float), "stale": (int,),
    "done": (bool,), "history": (list,)}
_META_TYPES: dict[str, tuple[type, ...]] = {
    "optimizer_groups": (list,), "scheduler": (dict,), "scaler": (dict, type(None)), "rng_python": (list,),
    "rng_numpy": (list,), "progress": (dict,)}


def _check_metadata(meta: dict[str, Any], tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Every field the restore reads is there with the right type, or one line naming the first
    that is not (a hand-edited or damaged checkpoint)."""
    for where, record, types in (("", meta, _META_TYPES), ("progress.", meta.get("progress"), _PROGRESS_TYPES)):
        for key, kinds in types.items():
            value = record.get(key, _MISSING) if isinstance(record, dict) else _MISSING
            if value is _MISSING:
                raise MmfuseError(f"resume checkpoint is damaged: {path}: its metadata has no '{where}{key}'")
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise MmfuseError(f"resume checkpoint is damaged: {path}: '{where}{key}' should be "
                                  f"{' or '.join(k.__name__ for k in kinds)}, got {type(value).__name__}")
    for key in ("rng.torch", "rng.epoch_order"):
        if key not in tensors:
            raise MmfuseError(f"resume checkpoint is damaged: {path}: tensor {key!r} is missing")


_MISSING = object()


def _restore(meta: dict[str, Any], tensors: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
             scheduler: Any, scaler: Any) -> tuple[Progress, torch.Tensor]:
    """Put the optimiser, schedule, scaler and random generators back as they were saved."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    if meta["scaler"] is not None and scaler is not None:
        scaler.load_state_dict(meta["scaler"])
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    random.setstate(_tuples(meta["rng_python"]))
    kind, keys, *rest = meta["rng_numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    return Progress(**{k: meta["progress"][k] for k in _PROGRESS_TYPES}), tensors["rng.epoch_order"]


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value

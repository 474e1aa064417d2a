"""Choosing the torch device from ``auto|cpu|cuda[:N]``."""

from __future__ import annotations

import torch

from mmfuse.errors import MmfuseError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise MmfuseError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
        return torch.device(name)
    raise MmfuseError(f"--device must be auto, cpu or cuda[:N], got {name!r}")

"""Finding pretrained models offline: ``hf:<id or directory>`` names resolved to a local directory.

A model is read from a local directory, or from the local Hugging Face cache (``HF_HOME``,
``HF_HUB_CACHE``) without touching the network; only ``download=True`` (``--download``) lets the
hub be asked. What was found is recorded in the run's config (:class:`BaseModel`): the id, the
revision (the cache's commit hash, or ``local`` for a plain directory) and a hash of the model's
``config.json``, so a run whose base model has changed since is refused rather than silently
rebuilt on other weights.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mmfuse.errors import MmfuseError

HF_PREFIX = "hf:"
TIMM_PREFIX = "timm:"


def is_hf(name: str) -> bool:
    """Whether a part's name is a Hugging Face model (``hf:<id or directory>``)."""
    return name.startswith(HF_PREFIX)


def hf_id(name: str) -> str:
    """``hf:<id>`` -> ``<id>``; an empty id is refused."""
    model_id = name[len(HF_PREFIX):].strip()
    if not model_id:
        raise MmfuseError(f"{name!r} names no model: write hf:<model id> (e.g. hf:gpt2) or hf:<local directory>")
    return model_id


@dataclass(frozen=True)
class BaseModel:
    """A located pretrained model: what the user named, where it is, and which version it is."""

    id: str
    path: str
    revision: str
    config_sha256: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    def same_version(self, recorded: dict[str, Any]) -> bool:
        return recorded.get("revision") == self.revision and recorded.get("config_sha256") == self.config_sha256


def cache_dir() -> str:
    """The Hugging Face hub cache searched (``HF_HUB_CACHE``, else ``HF_HOME``/hub, else ~/.cache)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(home, "hub")


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # name or owner/name, as the hub spells them


def locate(model_id: str, download: bool = False) -> BaseModel:
    """The local directory of ``model_id`` (a directory, or a hub id found in the local cache).

    ``download``: ask the hub when the cache lacks it (the only network access mmfuse ever makes).
    """
    path = Path(model_id).expanduser()
    if path.is_dir():
        return _described(model_id, path, "local")
    if path.exists():
        raise MmfuseError(f"{model_id!r} is a file, not a model directory (hf: takes a directory or a hub id)")
    if not HUB_ID.fullmatch(model_id):
        raise MmfuseError(f"model directory {model_id!r} does not exist")
    folder = _from_cache(model_id, download)
    revision = folder.name if folder.parent.name == "snapshots" else "local"
    return _described(model_id, folder, revision)


def _from_cache(model_id: str, download: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(model_id, cache_dir=cache_dir(), local_files_only=not download))
    except HFValidationError:
        raise MmfuseError(f"{model_id!r} is neither a local directory nor a valid Hugging Face model id") from None
    except Exception as exc:  # noqa: BLE001 (the hub client raises many kinds; each means "not found here")
        if download:
            raise MmfuseError(f"could not download {model_id!r} from the Hugging Face hub: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
        raise MmfuseError(f"model {model_id!r} is not in the local Hugging Face cache ({cache_dir()}); fetch it on a "
                          f"connected machine with `hf download {model_id}` (then copy the cache, or set HF_HOME), "
                          f"pass a local directory as hf:<dir>, or add --download") from None


def _described(model_id: str, folder: Path, revision: str) -> BaseModel:
    config = folder / "config.json"
    if not config.is_file():
        raise MmfuseError(f"{folder} holds no config.json: it is not a Hugging Face model directory")
    digest = hashlib.sha256(config.read_bytes()).hexdigest()
    return BaseModel(model_id, str(folder.resolve()), revision, digest)


def check_unchanged(found: BaseModel, recorded: dict[str, Any], run: str) -> None:
    """Refuse to rebuild run ``run`` on a base model other than the one it was trained on."""
    if not found.same_version(recorded):
        raise MmfuseError(
            f"run {run!r} was trained on {recorded.get('id')} revision {recorded.get('revision')} (config sha256 "
            f"{str(recorded.get('config_sha256'))[:12]}), but {found.id} is now revision {found.revision} (config "
            f"sha256 {found.config_sha256[:12]}) at {found.path}; restore that version or train the run again")

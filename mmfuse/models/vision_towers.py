"""Pretrained vision towers as image encoders: ``--encoder hf:<id or dir>`` (CLIP, SigLIP, DINOv2,
ViT through transformers) and ``--encoder timm:<name>`` (any timm model).

The grid is the patch tokens of a chosen layer (``--vision-layer``, default -2: the penultimate, as
LLaVA reads CLIP), without the class and register tokens; the global vector is the model's pooled
output (CLIP, SigLIP) or its class token. Both go through one linear projection to ``feature_dim``,
as the torchvision encoders do. The tower reads the images at its own size, mean and std: mmfuse's
data sets give ImageNet-normalised pixels, which :class:`Renormalize` maps to the model's statistics
exactly (an affine map per channel).

A tower loaded with pretrained weights is frozen by default (its tensors are then not written into
the run's checkpoints: loading the run rebuilds them from the base model, as for language models);
``--fine-tune`` trains it.

Shape legend: B batch, S image side, N patches, C the tower's width, D feature width.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from mmfuse.data.images import MEAN, STD
from mmfuse.errors import MmfuseError
from mmfuse.models.encoders import CachedFeatures, ImageFeatures
from mmfuse.models.hub import TIMM_PREFIX, BaseModel, hf_id, is_hf, locate


def is_tower(name: str) -> bool:
    """Whether an encoder name is a pretrained tower (``hf:`` or ``timm:``) rather than a registered one."""
    return is_hf(name) or name.startswith(TIMM_PREFIX)


class Renormalize(nn.Module):
    """ImageNet-normalised pixels -> the tower's normalisation: ``(x * s_in + m_in - m) / s``."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        scale = torch.tensor(STD) / torch.tensor(std)
        shift = (torch.tensor(MEAN) - torch.tensor(mean)) / torch.tensor(std)
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images * self.scale + self.shift


@runtime_checkable
class RebuiltFromBase(Protocol):
    """An encoder part of whose tensors a checkpoint need not hold (rebuilt from its base model)."""

    def rebuilt_prefixes(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class TowerInfo:
    """What a tower reads: its image side, per-channel mean and std."""

    image_size: int
    mean: list[float]
    std: list[float]


def hf_tower_info(base: BaseModel) -> TowerInfo:
    """The image side (config.json) and statistics (preprocessor_config.json, CLIP's by default)."""
    config = json.loads(Path(base.path, "config.json").read_text(encoding="utf-8"))
    vision = config.get("vision_config", config)
    size = vision.get("image_size")
    if not isinstance(size, int):
        raise MmfuseError(f"{base.id}: its config.json gives no image_size; is it a vision model?")
    processor = Path(base.path, "preprocessor_config.json")
    stats = json.loads(processor.read_text(encoding="utf-8")) if processor.is_file() else {}
    mean, std = stats.get("image_mean", [0.4815, 0.4578, 0.4082]), stats.get("image_std", [0.2686, 0.2613, 0.2758])
    return TowerInfo(size, list(mean), list(std))


class _Tower(nn.Module):
    """What both kinds of tower share: the projection of the grid and the global vector, the cached
    features, and a frozen tower kept in eval mode. Subclasses set ``tower``, ``proj``, ``frozen``
    and give :meth:`backbone_features`."""

    tower: nn.Module
    proj: nn.Linear
    frozen: bool

    def backbone_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, images: torch.Tensor | CachedFeatures) -> ImageFeatures:
        """images (B, 3, S, S), ImageNet-normalised, or the tower's cached outputs -> grid (B, N, D), pooled (B, D)."""
        if isinstance(images, CachedFeatures):
            tokens, pooled = images.tokens.float(), images.pooled.float()
        else:
            tokens, pooled = self.backbone_features(images)
        return ImageFeatures(self.proj(tokens), self.proj(pooled))

    def train(self, mode: bool = True) -> "_Tower":
        """A frozen tower stays in eval mode (dropout off, normalisation statistics as loaded)."""
        super().train(mode)
        if self.frozen:
            self.tower.eval()
        return self


class HFVisionEncoder(_Tower):
    """A transformers vision tower (CLIP, SigLIP, DINOv2, ViT; the vision half of a CLIP/SigLIP model).

    Args:
        base: the located model. feature_dim: D. image_size: must be the tower's (0: the tower's).
        layer: which hidden state is the grid (-1 last, -2 penultimate).
        freeze: None (frozen: the weights are pretrained), True or False.
    """

    def __init__(self, base: BaseModel, feature_dim: int, image_size: int = 0, layer: int = -2,
                 freeze: bool | None = None):
        super().__init__()
        from transformers import AutoModel

        from mmfuse.models.language_model import quiet_transformers

        quiet_transformers()
        info = hf_tower_info(base)
        if image_size and image_size != info.image_size:
            raise MmfuseError(f"{base.id} reads {info.image_size}x{info.image_size} images, not {image_size}: leave "
                              f"--image-size at 0 (the tower's size)")
        try:
            model = AutoModel.from_pretrained(base.path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise MmfuseError(f"{base.id}: the vision model in {base.path} does not load "
                              f"({str(exc).splitlines()[0]})") from None
        self.tower = getattr(model, "vision_model", model)  # CLIPModel / SiglipModel: their vision half
        self.width = int(self.tower.config.hidden_size)
        patch = int(self.tower.config.patch_size)
        self.patches = (info.image_size // patch) ** 2
        self.layer = layer
        self.renormalize = Renormalize(info.mean, info.std)
        self.proj = nn.Linear(self.width, feature_dim)
        self.out_dim = feature_dim
        self.frozen = freeze is not False
        self.tower.requires_grad_(not self.frozen)

    def backbone_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, S, S), ImageNet-normalised -> patch tokens (B, N, C), pooled (B, C)."""
        out = self.tower(pixel_values=self.renormalize(images), output_hidden_states=True)
        hidden = out.hidden_states[self.layer]  # (B, extra + N, C)
        pooled = getattr(out, "pooler_output", None)
        pooled = out.last_hidden_state[:, 0] if pooled is None else pooled  # (B, C)
        return hidden[:, hidden.size(1) - self.patches:], pooled

    def rebuilt_prefixes(self) -> tuple[str, ...]:
        """Tensors a checkpoint need not hold: a frozen tower's (rebuilt from the base model)."""
        return ("tower.",) if self.frozen else ()


class TimmEncoder(_Tower):
    """A timm model: ``forward_features`` tokens (CNN maps flattened; ViT patch tokens without the
    prefix tokens) and ``forward_head(pre_logits=True)`` as the global vector.

    Weights: timm's pretrained weights from the local Hugging Face cache (``pretrained``; offline),
    a local file (``weights``), or random.
    """

    def __init__(self, name: str, feature_dim: int, image_size: int = 0, pretrained: bool = False,
                 weights: str = "", freeze: bool | None = None):
        super().__init__()
        import timm

        if name not in timm.list_models():
            raise MmfuseError(f"timm has no model {name!r} (see timm.list_models())")
        if pretrained and weights:
            raise MmfuseError("give --pretrained (timm's weights from the local Hugging Face cache) or --weights PATH, "
                              "not both")
        file = weights or (_cached_timm_weights(name) if pretrained else "")
        if file and not Path(file).is_file():
            raise MmfuseError(f"--weights: no such file: {file}")
        try:
            model = timm.create_model(name, pretrained=bool(file), num_classes=0,
                                      pretrained_cfg_overlay={"file": str(file)} if file else None)
        except RuntimeError as exc:
            raise MmfuseError(f"timm:{name}: the weights do not fit ({str(exc).splitlines()[0]})") from None
        self.tower = model
        cfg = timm.data.resolve_data_config({}, model=model)
        size = int(cfg["input_size"][-1])
        if image_size and image_size != size and getattr(model, "dynamic_img_size", True) is False:
            raise MmfuseError(f"timm:{name} reads {size}x{size} images, not {image_size}")
        self.renormalize = Renormalize(list(cfg["mean"]), list(cfg["std"]))
        self.prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))
        self.width = int(model.num_features)
        self.proj = nn.Linear(self.width, feature_dim)
        self.out_dim = feature_dim
        self.frozen = freeze if freeze is not None else bool(pretrained or weights)
        self.tower.requires_grad_(not self.frozen)

    def backbone_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.tower.forward_features(self.renormalize(images))  # (B, C, h, w) or (B, extra + N, C)
        pooled = self.tower.forward_head(features, pre_logits=True)  # (B, C)
        tokens = features.flatten(2).transpose(1, 2) if features.dim() == 4 else features[:, self.prefix_tokens:]
        return tokens, pooled

    def rebuilt_prefixes(self) -> tuple[str, ...]:
        """Only a frozen tower loaded from pretrained weights is rebuilt; a random one is saved."""
        return ()


def _cached_timm_weights(name: str) -> Path:
    """timm's default pretrained weights of ``name``, from the local Hugging Face cache (offline)."""
    import timm

    hub_id = timm.models.get_pretrained_cfg(name).hf_hub_id
    if not hub_id:
        raise MmfuseError(f"timm:{name} has no weights on the Hugging Face hub; pass --weights FILE")
    folder = Path(locate(hub_id.split("@")[0]).path)
    for candidate in ("open_clip_model.safetensors", "model.safetensors", "pytorch_model.bin"):
        if (folder / candidate).is_file():
            return folder / candidate
    raise MmfuseError(f"timm:{name}: {folder} holds no model.safetensors")


def build_tower(cfg: Any) -> nn.Module:
    """The ``hf:`` or ``timm:`` encoder a :class:`~mmfuse.config.ModelConfig` names."""
    if is_hf(cfg.encoder):
        if cfg.pretrained or cfg.weights:
            raise MmfuseError("an hf: encoder loads its own pretrained weights; --pretrained and --weights are for "
                              "torchvision and timm encoders")
        return HFVisionEncoder(locate(hf_id(cfg.encoder)), cfg.feature_dim, cfg.image_size, cfg.vision_layer,
                               cfg.freeze_encoder)
    return TimmEncoder(cfg.encoder[len(TIMM_PREFIX):], cfg.feature_dim, cfg.image_size, cfg.pretrained, cfg.weights,
                       cfg.freeze_encoder)


def tower_image_size(name: str) -> int:
    """The image side a tower reads (for ``--image-size 0``)."""
    if is_hf(name):
        return hf_tower_info(locate(hf_id(name))).image_size
    import timm

    cfg = timm.models.get_pretrained_cfg(name[len(TIMM_PREFIX):])  # read without building the model
    if cfg is None:
        raise MmfuseError(f"timm has no model {name[len(TIMM_PREFIX):]!r} (see timm.list_models())")
    return int(cfg.input_size[-1])

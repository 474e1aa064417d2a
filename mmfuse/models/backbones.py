"""torchvision backbones as image encoders: resnet18/50/101, mobilenet_v3_large, efficientnet_b0,
convnext_tiny, vit_b_16. Each gives the last feature map as a grid ``(B, N, D)`` and a global
vector ``(B, D)`` (the mean of the map; ViT: the class token), both through one linear projection
to ``feature_dim`` (so every parameter is used whichever part of the features a fusion reads).

Weights: random (default), ImageNet through torchvision's weights API from the torch hub cache
(``pretrained``; nothing is downloaded: a missing file is one clear error naming it and where it
goes), or a local state dict (``weights``, ``.pth``/``.pt`` read with ``weights_only=True``, or
``.safetensors``). A backbone with loaded weights is frozen by default (``freeze=None``): its
parameters do not train and its BatchNorm statistics stay as loaded; ``freeze=False`` fine-tunes
it all, or from ``fine_tune_from`` (a top-level module name such as ``layer4`` or ``features.6``)
onwards.

Shape legend: B batch, C backbone channels, h x w the last feature map, N = h*w, D feature width.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from mmfuse.errors import MmfuseError, first_line
from mmfuse.models.encoders import IMAGE_ENCODERS, CachedFeatures, ImageFeatures
from mmfuse.workspace import open_regular


@dataclass(frozen=True)
class BackboneSpec:
    """How to cut one torchvision model: the attribute holding its feature layers (``""``: the
    model's children before ``avgpool``), their output channels C, whether it is a ViT, and the
    file of torchvision's default ImageNet weights (``get_model_weights(name).DEFAULT``; a test
    keeps this table equal to torchvision's, so that a missing file is reported before torchvision
    is even imported)."""

    features: str
    channels: int
    weights_file: str
    vit: bool = False


SPECS = {
    "resnet18": BackboneSpec("", 512, "resnet18-f37072fd.pth"),
    "resnet50": BackboneSpec("", 2048, "resnet50-11ad3fa6.pth"),
    "resnet101": BackboneSpec("", 2048, "resnet101-cd907fc2.pth"),
    "mobilenet_v3_large": BackboneSpec("features", 960, "mobilenet_v3_large-5c1a4163.pth"),
    "efficientnet_b0": BackboneSpec("features", 1280, "efficientnet_b0_rwightman-7f5810bc.pth"),
    "convnext_tiny": BackboneSpec("features", 768, "convnext_tiny-983f1562.pth"),
    "vit_b_16": BackboneSpec("", 768, "vit_b_16-c867db91.pth", vit=True),
}
WEIGHTS_URL = "https://download.pytorch.org/models/"


class TorchvisionEncoder(nn.Module):
    """One torchvision backbone (see the module doc); :func:`_register` adds each under its name.

    Args:
        name: the torchvision model name. feature_dim: D. image_size: input side (ViT: 224 only).
        pretrained: ImageNet weights from the torch hub cache. weights: path of a local state dict.
        freeze: None (frozen when weights are loaded), True or False. fine_tune_from: with
            ``freeze=False``, train only this top-level module and the ones after it.
    """

    def __init__(self, name: str, feature_dim: int = 256, image_size: int = 224, pretrained: bool = False,
                 weights: str = "", freeze: bool | None = None, fine_tune_from: str = ""):
        super().__init__()
        import torchvision

        self.spec = SPECS[name]
        if self.spec.vit and image_size != 224:
            raise MmfuseError(f"{name} reads 224x224 images, not {image_size}x{image_size}: set the model's "
                              f"image_size to 224 (a --config file with {{\"model\": {{\"image_size\": 224}}}})")
        model = torchvision.models.get_model(name, weights=None)
        if pretrained and weights:
            raise MmfuseError("give --pretrained (torchvision's ImageNet weights) or --weights PATH, not both")
        if pretrained or weights:
            state = _cached_imagenet_weights(name) if pretrained else _local_weights(Path(weights))
            try:
                model.load_state_dict(state)
            except RuntimeError as exc:
                raise MmfuseError(f"the weights do not fit {name}: {str(exc).splitlines()[1].strip()}") from None
        if self.spec.vit:
            del model.heads  # the ImageNet classifier: unused
        self.backbone = model if self.spec.vit else _feature_layers(model, self.spec)
        self.proj = nn.Linear(self.spec.channels, feature_dim)  # one projection for grid and vector
        self.out_dim = feature_dim
        frozen = freeze if freeze is not None else bool(pretrained or weights)
        self.trained_modules = _set_trainable(self.backbone, frozen, fine_tune_from, name)

    def forward(self, images: torch.Tensor | CachedFeatures) -> ImageFeatures:
        """images (B, 3, S, S), normalised with ImageNet statistics, or the backbone's cached outputs
        -> grid (B, N, D), pooled (B, D)."""
        if isinstance(images, CachedFeatures):
            tokens, pooled = images.tokens.float(), images.pooled.float()
        else:
            tokens, pooled = self.backbone_features(images)  # (B, N, C), (B, C)
        return ImageFeatures(self.proj(tokens), self.proj(pooled))

    def backbone_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's raw outputs (what the feature cache stores): tokens (B, N, C), pooled (B, C)."""
        return self._vit(images) if self.spec.vit else self._cnn(images)

    def _cnn(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.backbone(images)  # (B, C, h, w)
        return maps.flatten(2).transpose(1, 2), maps.mean(dim=(2, 3))

    def _vit(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vit = self.backbone
        x = vit._process_input(images)  # (B, N, C) patch embeddings
        x = vit.encoder(torch.cat([vit.class_token.expand(x.size(0), -1, -1), x], dim=1))  # (B, 1+N, C)
        return x[:, 1:], x[:, 0]

    def train(self, mode: bool = True) -> "TorchvisionEncoder":
        """Frozen layers stay in eval mode (their BatchNorm statistics and dropout as loaded)."""
        super().train(mode)
        for child_name, child in self.backbone.named_children():
            if child_name not in self.trained_modules:
                child.eval()
        return self


def _feature_layers(model: nn.Module, spec: BackboneSpec) -> nn.Module:
    if spec.features:
        return getattr(model, spec.features)
    children = dict(model.named_children())
    return nn.Sequential(*[children[n] for n in list(children)[: list(children).index("avgpool")]])


def _set_trainable(backbone: nn.Module, frozen: bool, fine_tune_from: str, name: str) -> set[str]:
    """Set ``requires_grad`` per top-level module; returns the names of the modules that train."""
    names = [n for n, _ in backbone.named_children()]
    if fine_tune_from and fine_tune_from not in names:
        raise MmfuseError(f"--fine-tune-from {fine_tune_from!r} is not a top-level module of {name}; "
                          f"choose one of: {', '.join(names)}")
    if fine_tune_from and frozen:
        raise MmfuseError("--fine-tune-from goes with --fine-tune (the backbone is frozen otherwise)")
    start = names.index(fine_tune_from) if fine_tune_from else (len(names) if frozen else 0)
    trained = set(names[start:])
    for child_name, child in backbone.named_children():
        child.requires_grad_(child_name in trained)
    for param_name, param in backbone.named_parameters(recurse=False):  # e.g. ViT's class token
        param.requires_grad_(not frozen)
    return trained


def cached_weights_file(name: str) -> Path:
    """Where torchvision's default ImageNet weights of backbone ``name`` are in the torch hub cache;
    a clear error (naming the file, its URL and the directory) when they are not there."""
    file = SPECS[name].weights_file
    target = Path(torch.hub.get_dir()) / "checkpoints" / file
    if not target.is_file():
        raise MmfuseError(f"--pretrained: the ImageNet weights of {name} are not in the torch hub cache: put "
                          f"{file} (from {WEIGHTS_URL}{file}) into {target.parent}, or pass --weights PATH")
    return target


def _cached_imagenet_weights(name: str) -> dict[str, torch.Tensor]:
    """torchvision's default ImageNet weights for ``name`` from the torch hub cache, never downloaded."""
    return _torch_load(cached_weights_file(name))


def _local_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise MmfuseError(f"--weights: no such file: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load

        with open_regular(path, "weights") as handle:
            data = handle.read()
        try:
            return load(data)
        except Exception as exc:  # noqa: BLE001 (a damaged or foreign file, in any of safetensors' errors)
            raise MmfuseError(f"cannot read weights from {path}: not a valid safetensors file "
                              f"({first_line(exc)})") from None
    return _torch_load(path)


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    """A state dict read without running code from the file (``weights_only=True``); a pickle that
    holds anything but tensors is refused (loading it fully could run code)."""
    import pickle

    with open_regular(path, "weights") as handle:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # torch's note on pickle protocols, not the user's problem
                state = torch.load(handle, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise MmfuseError(f"cannot read weights from {path}: it is a pickle holding more than tensors, which "
                              f"mmfuse refuses to load (it could run code); save a state dict of tensors, or "
                              f"convert it to .safetensors") from None
        except Exception as exc:  # noqa: BLE001 (a truncated file, not a torch file)
            raise MmfuseError(f"cannot read weights from {path}: {type(exc).__name__}: {first_line(exc)}") from None
    if not isinstance(state, dict):
        raise MmfuseError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return state


def _builder(name: str) -> Callable[..., TorchvisionEncoder]:
    def build(**options: Any) -> TorchvisionEncoder:
        return TorchvisionEncoder(name, **options)

    build.__doc__ = f"torchvision {name}: the last feature map as the grid; see :class:`TorchvisionEncoder`."
    return build


IMAGE_ENCODERS.register_each(SPECS, _builder)

"""Image encoders: pixels -> a grid of region features and one global vector.

Shape legend: B batch, C channels, S image side, G grid side, N = G*G grid cells, D feature width.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from mmfuse.errors import MmfuseError
from mmfuse.registry import Registry


class ImageFeatures(NamedTuple):
    """What every image encoder returns and every fusion reads.

    Attributes:
        grid: region features, (B, N, D).
        pooled: one global vector per image, (B, D).
    """

    grid: torch.Tensor
    pooled: torch.Tensor

    def select(self, index: torch.Tensor) -> "ImageFeatures":
        """Rows ``index`` of both tensors (one image per caption, or per beam)."""
        return ImageFeatures(self.grid.index_select(0, index), self.pooled.index_select(0, index))


class CachedFeatures(NamedTuple):
    """A batch of a frozen backbone's raw outputs read from the feature cache, given to the encoder
    in place of pixels: tokens (B, N, C), pooled (B, C) (fp16 on disk)."""

    tokens: torch.Tensor
    pooled: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "CachedFeatures":
        return CachedFeatures(self.tokens.to(device, non_blocking=non_blocking),
                              self.pooled.to(device, non_blocking=non_blocking))

    def size(self, dim: int) -> int:
        return self.pooled.size(dim)

    @staticmethod
    def stack(items: list["CachedFeatures"]) -> "CachedFeatures":
        return CachedFeatures(torch.stack([i.tokens for i in items]), torch.stack([i.pooled for i in items]))


IMAGE_ENCODERS: Registry[nn.Module] = Registry("image encoder")


def _conv_block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def _folded(block: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """A :func:`_conv_block` at inference with its batch norm folded into the convolution's weights
    and the ReLU after the pooling (the same function; on CPU a fifth of the encoder's time less)."""
    conv, norm = block[0], block[1]
    weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps,
                                        norm.weight, norm.bias)
    x = conv._conv_forward(x, weight, bias)
    return torch.relu_(block[3](x) if len(block) > 3 else x)  # max-pooling first: it commutes with the ReLU


@IMAGE_ENCODERS.register("small_cnn")
class SmallCNN(nn.Module):
    """A 4-block CNN trained from scratch, for small images (the built-in data sets, quick tests).

    Runs in channels-last memory format, which is 2-4x faster for these convolutions on CPU.

    The grid is the last block's output resized to 8x8. The global vector is a learned projection
    of the whole grid, not its mean: mean-pooling would erase where things are, and captions
    talk about "left of" and "right of".

    Args:
        feature_dim: D, width of grid features and of the global vector.
        image_size: S, side of the (square) input images.
        pretrained, weights, freeze, fine_tune_from: the options every image encoder takes; the
            small CNN has no pretrained weights and always trains, so they must stay unset.
    """

    grid_side = 8

    def __init__(self, feature_dim: int = 256, image_size: int = 64, pretrained: bool = False, weights: str = "",
                 freeze: bool | None = None, fine_tune_from: str = ""):
        super().__init__()
        if pretrained or weights or freeze is not None or fine_tune_from:
            raise MmfuseError("the small CNN trains from scratch: --pretrained, --weights, --freeze/--fine-tune and "
                              "--fine-tune-from apply to the torchvision encoders (resnet18, resnet50, ...)")
        self.out_dim = feature_dim
        self.body = nn.Sequential(
            _conv_block(3, 16, pool=True),
            _conv_block(16, 32, pool=True),
            _conv_block(32, 64, pool=True),
            _conv_block(64, feature_dim, pool=False),
            nn.AdaptiveAvgPool2d(self.grid_side),
        )
        squeeze = 32
        self.to_global = nn.Sequential(
            nn.Conv2d(feature_dim, squeeze, 1),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(squeeze * self.grid_side**2, feature_dim),
            nn.ReLU(inplace=True),
        )

    def forward(self, images: torch.Tensor) -> ImageFeatures:
        """images (B, 3, S, S), normalised -> ImageFeatures(grid (B, 64, D), pooled (B, D))."""
        maps = images.contiguous(memory_format=torch.channels_last)  # (B, 3, S, S)
        fold = not self.training and not torch.is_grad_enabled()  # (the folded weights are new leaves)
        for block in self.body:
            maps = _folded(block, maps) if fold and isinstance(block, nn.Sequential) else block(maps)
        # maps: (B, D, G, G)
        grid = maps.flatten(2).transpose(1, 2)  # (B, N, D)
        return ImageFeatures(grid=grid, pooled=self.to_global(maps))


def build_image_encoder(cfg) -> nn.Module:
    """The image encoder a :class:`~mmfuse.config.ModelConfig` names, with its weight options: a
    registered one, or a pretrained tower (``hf:``, ``timm:``; :mod:`mmfuse.models.vision_towers`)."""
    from mmfuse.models.vision_towers import build_tower, is_tower

    if is_tower(cfg.encoder):
        return build_tower(cfg)
    return IMAGE_ENCODERS.create(cfg.encoder, feature_dim=cfg.feature_dim, image_size=cfg.image_size,
                                 pretrained=cfg.pretrained, weights=cfg.weights, freeze=cfg.freeze_encoder,
                                 fine_tune_from=cfg.fine_tune_from)


def check_weights_available(cfg) -> None:
    """Fail at once, before any data or model is loaded, when the weights a config asks for are
    not on this machine (``--pretrained`` without the cached file, ``--weights`` without the file)."""
    from pathlib import Path

    from mmfuse.models.hub import hf_id, is_hf, locate

    if is_hf(cfg.encoder):
        locate(hf_id(cfg.encoder))
    if cfg.pretrained and cfg.encoder in _backbones.SPECS:
        _backbones.cached_weights_file(cfg.encoder)
    if cfg.weights and not Path(cfg.weights).is_file():
        raise MmfuseError(f"--weights: no such file: {cfg.weights}")


from mmfuse.models import backbones as _backbones  # noqa: E402  (registers the torchvision encoders)

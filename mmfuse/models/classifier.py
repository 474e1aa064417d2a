"""The image + text classifier: image encoder, text encoder and fusion -> class logits.

Per fusion kind (see :mod:`mmfuse.models.fusion`): ``position`` fusions combine the text vector
with every image region (the global vector and each grid cell, tagged with a learned position
embedding), as VQA models fuse the question at every location; a small MLP reads each fused region
and the regions are max-pooled; ``attention`` attends over the grid with the text vector plus the
image's global vector as query (stacked attention, one hop); ``prefix`` fusions put image tokens
before the text encoder's word states and a joint Transformer reads both (joint self-attention over
image and text tokens: a text-only encoder first, then cross-modal layers, as in LXMERT and MCAN);
``decision`` (late) combines an image-only and a text-only classifier's predictions.

Every fusion except ``late`` also gets :class:`~mmfuse.models.grounding.WordGrounding` beside it:
where each word's referent is in the grid, combined by roles read from the text, so questions like
"is A left of B ?" can compare two positions. The head reads [fused vector; grounding vector].

Shape legend: B batch, T text positions, N grid cells, P prefix tokens, D widths, C classes.
"""

from __future__ import annotations

import torch
from torch import nn

from mmfuse.config import ModelConfig
from mmfuse.data.vocab import PAD_ID
from mmfuse.errors import MmfuseError
from mmfuse.models.encoders import ImageFeatures, build_image_encoder
from mmfuse.models.fusion import ATTENTION, DECISION, FUSIONS, POSITION, PREFIX
from mmfuse.models.grounding import WordGrounding
from mmfuse.models.parts import resolve_parts
from mmfuse.models.text_encoders import TEXT_ENCODERS, JointTransformer, masked_mean


def _head(in_dim: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes))


class Classifier(nn.Module):
    """Generic composition; :func:`build_classifier` makes one from config.

    ``forward`` returns logits (for ``late``: log-probabilities, which are valid logits).
    """

    def __init__(self, encoder: nn.Module, text_encoder: nn.Module, fusion: nn.Module, vocab_size: int,
                 embed_dim: int, hidden_dim: int, num_classes: int, dropout: float, grounding: bool = True,
                 num_layers: int = 1):
        super().__init__()
        self.encoder = encoder
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.embed_drop = nn.Dropout(dropout)
        self.text_encoder = text_encoder
        self.fusion = fusion
        kind = fusion.kind
        if kind == DECISION:
            self.image_head = _head(encoder.out_dim, hidden_dim, num_classes, dropout)
            self.text_head = _head(text_encoder.out_dim, hidden_dim, num_classes, dropout)
            return
        in_dim = text_encoder.out_dim if kind == PREFIX else fusion.out_dim
        if kind == PREFIX:
            self.joint = JointTransformer(text_encoder.out_dim, num_layers, dropout)
        if kind == POSITION:
            self.region_pos = nn.Parameter(torch.randn(self.max_regions, encoder.out_dim) * 0.02)
            self.region_mlp = nn.Sequential(nn.Linear(fusion.out_dim, hidden_dim), nn.ReLU(inplace=True))
            in_dim = hidden_dim
        self.grounding = WordGrounding(encoder.out_dim, text_encoder.out_dim, hidden_dim) if grounding else None
        self.head = _head(in_dim + (hidden_dim if grounding else 0), hidden_dim, num_classes, dropout)

    max_regions = 257  # the global vector + up to 16x16 grid cells

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S), tokens (B, T) padded -> logits (B, C)."""
        return self.classify(self.encoder(images), tokens)

    def classify(self, features: ImageFeatures, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) from encoded images and question tokens (B, T)."""
        mask = tokens != PAD_ID  # (B, T)
        words = self.embed_drop(self.embed(tokens))  # (B, T, E)
        kind = self.fusion.kind
        states, text = self.text_encoder(words, mask)  # (B, T, Dt), (B, Dt)
        if kind == DECISION:
            return self.fusion(self.image_head(features.pooled), self.text_head(text))
        if kind == PREFIX:
            fused = self._read_with_prefix(features, states, mask)  # (B, Dt)
        else:
            fused = self._fuse(features, text)  # (B, F)
        if self.grounding is not None:
            fused = torch.cat([fused, self.grounding(features.grid, states, mask)], 1)  # (B, F + H)
        return self.head(fused)

    def _fuse(self, features: ImageFeatures, text: torch.Tensor) -> torch.Tensor:
        """The fusion's joint vector (B, F) from image features and the text vector (B, Dt)."""
        if self.fusion.kind == ATTENTION:  # the question, plus the image's gist, says where to look
            fused, _ = self.fusion.step(features, text, text + self.fusion.initial_hidden(features))  # (B, F)
            return fused
        return self._fuse_regions(features, text)

    def _fuse_regions(self, features: ImageFeatures, text: torch.Tensor) -> torch.Tensor:
        """Fuse the text vector (B, Dt) with every region, MLP, max-pool -> (B, H)."""
        regions = torch.cat([features.pooled.unsqueeze(1), features.grid], 1)  # (B, R, Di), R = 1 + N
        if regions.size(1) > self.max_regions:
            raise MmfuseError(f"the classifier handles at most {self.max_regions - 1} grid cells, "
                              f"the encoder gives {regions.size(1) - 1}")
        regions = regions + self.region_pos[:regions.size(1)]  # (B, R, Di)
        per_region = ImageFeatures(grid=regions, pooled=regions)
        fused = self.fusion(per_region, text[:, None, None])[:, :, 0]  # (B, R, F): pooled broadcasts over R
        return self.region_mlp(fused).amax(1)  # (B, H)

    def _read_with_prefix(self, features: ImageFeatures, text: torch.Tensor,
                          mask: torch.Tensor) -> torch.Tensor:
        """The joint Transformer reads [image tokens; word states (B, T, Dt)] -> the mean of its
        states at the word positions (B, Dt)."""
        prefix = self.fusion.prefix(features)  # (B, P, Dt)
        seq = torch.cat([prefix, self.fusion(features, text, mask)], 1)  # (B, P+T, Dt)
        full_mask = torch.cat([mask.new_ones(prefix.shape[:2]), mask], 1)  # (B, P+T)
        states = self.joint(seq, full_mask)[:, prefix.size(1):]  # (B, T, Dt)
        return masked_mean(states, mask)


def build_classifier(cfg: ModelConfig, vocab_size: int, num_classes: int) -> Classifier:
    """A classifier with the parts named in ``cfg`` for ``num_classes`` labels."""
    cfg = resolve_parts(cfg, "classify")
    encoder = build_image_encoder(cfg)
    fusion_cls = FUSIONS.get(cfg.fusion)
    text_encoder = TEXT_ENCODERS.create(cfg.text_encoder, input_dim=cfg.embed_dim, hidden_dim=cfg.hidden_dim,
                                        num_layers=cfg.num_layers, dropout=cfg.dropout)
    text_dim = text_encoder.out_dim
    extra = {"query_dim": text_encoder.out_dim} if fusion_cls.kind == ATTENTION else {}
    fusion = FUSIONS.create(cfg.fusion, image_dim=encoder.out_dim, text_dim=text_dim, dropout=cfg.dropout, **extra)
    return Classifier(encoder, text_encoder, fusion, vocab_size, cfg.embed_dim, cfg.hidden_dim, num_classes,
                      cfg.dropout, cfg.grounding, cfg.num_layers)




"""Every registered encoder x fusion x decoder: build, forward, backward, shapes, finite values."""

from __future__ import annotations

import itertools

import pytest
import torch

from mmfuse.config import ModelConfig
from mmfuse.errors import MmfuseError
from mmfuse.models.captioner import build_captioner
from mmfuse.models.decoders import DECODERS
from mmfuse.models.encoders import IMAGE_ENCODERS
from mmfuse.models.fusion import FUSIONS

COMBOS = list(itertools.product(sorted(IMAGE_ENCODERS), sorted(FUSIONS), sorted(DECODERS)))


@pytest.mark.parametrize("encoder,fusion,decoder", COMBOS)
def test_forward_backward_shapes(encoder: str, fusion: str, decoder: str) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(encoder=encoder, fusion=fusion, decoder=decoder, image_size=32,
                      feature_dim=16, embed_dim=8, hidden_dim=12)
    model = build_captioner(cfg, vocab_size=11)
    images = torch.randn(3, 3, 32, 32)  # B=3
    tokens = torch.randint(1, 11, (5, 7))  # M=5 captions, T=7
    image_index = torch.tensor([0, 0, 1, 2, 2])
    logits = model(images, tokens, image_index)
    assert logits.shape == (5, 7, 11)
    assert torch.isfinite(logits).all()
    logits.logsumexp(-1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


def test_captions_depend_on_their_own_image() -> None:
    torch.manual_seed(0)
    model = build_captioner(ModelConfig(image_size=32, feature_dim=16, embed_dim=8, hidden_dim=12, dropout=0.0), 11).eval()
    images = torch.randn(2, 3, 32, 32)
    tokens = torch.randint(1, 11, (1, 4)).expand(2, -1)  # the same words for both captions
    same = model(images, tokens, torch.tensor([0, 0]))
    assert torch.allclose(same[0], same[1])
    other = model(images, tokens, torch.tensor([0, 1]))
    assert not torch.allclose(other[0], other[1])


def test_encoder_grid_and_pooled_shapes() -> None:
    enc = IMAGE_ENCODERS.create("small_cnn", feature_dim=24, image_size=64)
    feats = enc(torch.randn(2, 3, 64, 64))
    assert feats.grid.shape == (2, 64, 24) and feats.pooled.shape == (2, 24)


def test_unknown_part_lists_valid_names() -> None:
    with pytest.raises(MmfuseError, match="valid fusions: " + ", ".join(sorted(FUSIONS))):
        FUSIONS.create("nope", image_dim=4, text_dim=4)


def test_gated_fusion_exposes_its_modality_weights() -> None:
    torch.manual_seed(0)
    fusion = FUSIONS.create("gated", image_dim=6, text_dim=5)
    image = IMAGE_ENCODERS.create("small_cnn", feature_dim=6, image_size=32)(torch.randn(2, 3, 32, 32))
    text = torch.randn(2, 4, 5)
    z = fusion.modality_weights(image, text)
    assert z.shape == (2, 4, 5) and bool(((z > 0) & (z < 1)).all())
    with torch.no_grad():  # a gate forced to 1 passes the text branch only
        fusion.gate.bias.fill_(50.0)
        fused = fusion(image, text)
    assert torch.allclose(fused, torch.tanh(fusion.text_proj(text)), atol=1e-6)


def test_film_starts_as_identity_on_text_when_image_is_silent() -> None:
    fusion = FUSIONS.create("film", image_dim=6, text_dim=5)
    with torch.no_grad():
        fusion.film[1].weight.zero_()
        fusion.film[1].bias.zero_()
    text = torch.randn(2, 3, 5)
    feats = IMAGE_ENCODERS.create("small_cnn", feature_dim=6, image_size=32)(torch.randn(2, 3, 32, 32))
    assert torch.equal(fusion(feats, text), text)


@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_step_by_step_decoding_equals_the_full_sequence(decoder: str) -> None:
    """What generation sees one token at a time equals the teacher-forced pass (causality, state)."""
    torch.manual_seed(0)
    cfg = ModelConfig(image_size=32, feature_dim=16, embed_dim=8, hidden_dim=16, decoder=decoder, dropout=0.0)
    model = build_captioner(cfg, vocab_size=11).eval()
    with torch.no_grad():
        feats = model.encode(torch.randn(2, 3, 32, 32))
        tokens = torch.randint(1, 11, (2, 6))
        full, _ = model.decode(feats, tokens, None)  # (2, 6, 11)
        state, steps = None, []
        for t in range(tokens.size(1)):
            logits, state = model.decode(feats, tokens[:, t : t + 1], state)
            steps.append(logits)
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_transformer_decoder_refuses_too_long_sequences_clearly() -> None:
    decoder = DECODERS.create("transformer", input_dim=4, hidden_dim=8, vocab_size=5)
    with pytest.raises(MmfuseError, match="at most 128 positions"):
        decoder(torch.randn(1, 129, 4))

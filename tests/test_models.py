"""Every registered part in every valid pairing, for both tasks: build, forward, backward, shapes,
finite values; every invalid pairing refused clearly; fusion-specific behaviour."""

from __future__ import annotations

import itertools

import pytest
import torch

from mmfuse.config import ModelConfig
from mmfuse.errors import MmfuseError
from mmfuse.models.captioner import build_captioner, generation_log_probs
from mmfuse.models.decoding_states import ProjectedInputState
from mmfuse.models.classifier import build_classifier
from mmfuse.models.decoders import DECODERS
from mmfuse.models.encoders import IMAGE_ENCODERS, ImageFeatures
from mmfuse.models.fusion import FUSIONS, POSITION
from mmfuse.models.parts import resolve_parts
from mmfuse.models.text_encoders import TEXT_ENCODERS


def _valid(task: str, fusion: str, sequence_model: str) -> bool:
    cfg = ModelConfig(fusion=fusion, decoder=sequence_model, text_encoder=sequence_model)
    try:
        resolve_parts(cfg, task)
    except MmfuseError:
        return False
    return True


# Every fusion x sequence model with the small CNN, and with one torchvision backbone (tests/test_backbones.py
# runs every backbone on its own: all of them here would multiply minutes of CPU for nothing new).
ENCODERS = ["small_cnn", "resnet18"]
assert set(ENCODERS) <= set(IMAGE_ENCODERS)
ALL_CAPTION = list(itertools.product(ENCODERS, sorted(FUSIONS), sorted(DECODERS)))
ALL_CLASSIFY = list(itertools.product(ENCODERS, sorted(FUSIONS), sorted(TEXT_ENCODERS)))
CAPTION = [c for c in ALL_CAPTION if _valid("caption", c[1], c[2])]
CLASSIFY = [c for c in ALL_CLASSIFY if _valid("classify", c[1], c[2])]


def _side(fusion: str) -> int:
    """Image side for a fusion's tests: pixel-shuffle folds 2 x 2 cells, so resnet18 needs a 2 x 2 grid."""
    return 64 if fusion == "pixel-shuffle" else 32


def _check_gradients(model: torch.nn.Module) -> None:
    """Every trainable parameter has a finite gradient, some non-zero; under a connector that reads the
    grid alone (LLaVA's mlp, pixel-shuffle) the encoder's global-vector parameters have none."""
    unused = {n for n, p in model.named_parameters() if p.grad is None}
    if not getattr(model.fusion, "reads_pooled", True):
        assert all(n.startswith("encoder.") for n in unused)
        unused = set()
    assert not unused
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.parametrize("encoder,fusion,decoder", CAPTION)
def test_captioner_forward_backward_shapes(encoder: str, fusion: str, decoder: str) -> None:
    torch.manual_seed(0)
    size = _side(fusion)
    cfg = ModelConfig(encoder=encoder, fusion=fusion, decoder=decoder, image_size=size,
                      feature_dim=16, embed_dim=8, hidden_dim=12)
    model = build_captioner(cfg, vocab_size=11)
    images = torch.randn(3, 3, size, size)  # B=3
    tokens = torch.randint(1, 11, (5, 7))  # M=5 captions, T=7
    image_index = torch.tensor([0, 0, 1, 2, 2])
    logits = model(images, tokens, image_index)
    assert logits.shape == (5, 7, 11)
    assert torch.isfinite(logits).all()
    logits.logsumexp(-1).mean().backward()
    _check_gradients(model)


@pytest.mark.parametrize("encoder,fusion,text_encoder", CLASSIFY)
@pytest.mark.parametrize("classes", [2, 5])
def test_classifier_forward_backward_shapes(encoder: str, fusion: str, text_encoder: str, classes: int) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(encoder=encoder, fusion=fusion, text_encoder=text_encoder, image_size=_side(fusion),
                      feature_dim=16, embed_dim=8, hidden_dim=12)
    model = build_classifier(cfg, vocab_size=11, num_classes=classes)
    tokens = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0], [1, 2, 0, 0, 0]])  # padded, one empty text
    logits = model(torch.randn(3, 3, _side(fusion), _side(fusion)), tokens)
    assert logits.shape == (3, classes) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 1])).backward()
    _check_gradients(model)


def test_every_fusion_is_usable_for_some_task_and_pairings_are_refused_not_changed() -> None:
    usable = {c[1] for c in CAPTION} | {c[1] for c in CLASSIFY}
    with_language_models = {f for f in FUSIONS if _valid("caption", f, "hf:a-model")}
    assert with_language_models == {"mlp", "pixel-shuffle", "resampler", "qformer", "xattn", "prefix"}
    assert usable | with_language_models == set(FUSIONS)
    refused = [c for c in ALL_CAPTION if c not in CAPTION]
    assert ("small_cnn", "late", "lstm") in refused
    assert ("small_cnn", "attention", "transformer") in refused
    assert ("small_cnn", "transformer", "lstm") in refused
    with pytest.raises(MmfuseError, match="decision-level.*--task classify"):
        build_captioner(ModelConfig(fusion="late"), 11)
    with pytest.raises(MmfuseError, match="use --decoder lstm or gru"):
        build_captioner(ModelConfig(fusion="attention", decoder="transformer"), 11)
    # the classifier's joint Transformer reads any text encoder's word states (LXMERT / MCAN style)
    assert {c[2] for c in CLASSIFY if c[1] == "transformer"} == set(TEXT_ENCODERS)


def test_auto_sequence_model_follows_the_fusion() -> None:
    assert resolve_parts(ModelConfig(fusion="transformer"), "caption").decoder == "transformer"
    assert resolve_parts(ModelConfig(fusion="prefix"), "caption").decoder == "transformer"
    assert resolve_parts(ModelConfig(fusion="attention"), "caption").decoder == "lstm"
    assert resolve_parts(ModelConfig(fusion="transformer"), "classify").text_encoder == "gru"
    assert resolve_parts(ModelConfig(fusion="prefix"), "classify").text_encoder == "gru"
    assert resolve_parts(ModelConfig(fusion="concat"), "classify").text_encoder == "lstm"


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


@pytest.mark.parametrize("name", sorted(TEXT_ENCODERS))
def test_text_encoders_ignore_padding_and_evaluate_as_they_train(name: str) -> None:
    torch.manual_seed(0)
    encoder = TEXT_ENCODERS.create(name, input_dim=8, hidden_dim=16, num_layers=2, dropout=0.0)
    x, mask = torch.randn(3, 6, 8), torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6, [1, 0, 0, 0, 0, 0]]).bool()
    states, pooled = encoder(x, mask)  # training mode
    encoder.eval()
    with torch.inference_mode():  # where torch's own Transformer layers take their fast path
        eval_states, eval_pooled = encoder(x, mask)
        alone, alone_pooled = encoder(x[:1, :3], mask[:1, :3])
    assert torch.isfinite(eval_states).all()
    assert torch.allclose(states[mask], eval_states[mask], atol=1e-5) and torch.allclose(pooled, eval_pooled, atol=1e-5)
    assert torch.allclose(alone[0], eval_states[0, :3], atol=1e-5) and torch.allclose(alone_pooled[0], eval_pooled[0], atol=1e-5)


def test_unknown_part_lists_valid_names() -> None:
    with pytest.raises(MmfuseError, match="valid fusions: " + ", ".join(sorted(FUSIONS))):
        FUSIONS.create("nope", image_dim=4, text_dim=4)


def test_gated_fusion_exposes_its_modality_weights() -> None:
    torch.manual_seed(0)
    fusion = FUSIONS.create("gated", image_dim=6, text_dim=5)
    image = IMAGE_ENCODERS.create("small_cnn", feature_dim=6, image_size=32)(torch.randn(2, 3, 32, 32))
    text = torch.randn(2, 4, 5)
    z = fusion.modality_weights(image, text)
    assert z.shape == (2, 4, 10) and bool(((z > 0) & (z < 1)).all())
    with torch.no_grad():  # a gate forced to 1 passes the text branch only
        fusion.gate.bias.fill_(50.0)
        fused = fusion(image, text)
    assert torch.allclose(fused, fusion.text_proj(text), atol=1e-5)


@pytest.mark.parametrize("fusion", sorted(n for n in FUSIONS.names() if FUSIONS.get(n).kind == POSITION))
def test_position_fusions_broadcast_one_text_over_many_regions_as_if_fused_one_by_one(fusion: str) -> None:
    torch.manual_seed(0)
    module = FUSIONS.create(fusion, image_dim=6, text_dim=5).eval()
    regions, text = torch.randn(2, 7, 6), torch.randn(2, 5)  # (B, R, Di), (B, Dt)
    with torch.no_grad():
        together = module(ImageFeatures(grid=regions, pooled=regions), text[:, None, None])[:, :, 0]  # (B, R, F)
        one_by_one = torch.stack([module(ImageFeatures(grid=regions[:, r, None], pooled=regions[:, r]),
                                         text[:, None])[:, 0] for r in range(7)], 1)  # (B, R, F)
    assert together.shape == (2, 7, module.out_dim)
    assert torch.allclose(together, one_by_one, atol=1e-5)
    assert not torch.allclose(together[:, 0], together[:, 1])  # each region keeps its own features


def test_film_reduces_to_the_projected_text_when_the_image_is_silent() -> None:
    fusion = FUSIONS.create("film", image_dim=6, text_dim=5)
    with torch.no_grad():
        fusion.film[1].weight.zero_()
        fusion.film[1].bias.zero_()
    text = torch.randn(2, 3, 5)
    feats = IMAGE_ENCODERS.create("small_cnn", feature_dim=6, image_size=32)(torch.randn(2, 3, 32, 32))
    assert torch.equal(fusion(feats, text), fusion.text_proj(text))


def test_film_scale_stays_between_0_and_2_however_loud_the_image() -> None:
    torch.manual_seed(0)
    fusion = FUSIONS.create("film", image_dim=6, text_dim=5).eval()
    text = torch.randn(2, 3, 5)
    feats = IMAGE_ENCODERS.create("small_cnn", feature_dim=6, image_size=32)(torch.randn(2, 3, 32, 32))
    loud = feats._replace(pooled=feats.pooled * 100 + 10)
    with torch.no_grad():
        beta = fusion.film(loud.pooled).unsqueeze(1).chunk(2, dim=-1)[1]
        scale = (fusion(loud, text) - beta) / fusion.text_proj(text)
    assert bool(((scale >= -1e-3) & (scale <= 2 + 1e-3)).all())
    assert scale.max() > 1.5 and scale.min() < 0.5  # the image does modulate, in both directions


@pytest.mark.parametrize("encoder,fusion,decoder", CAPTION)
def test_step_by_step_decoding_equals_the_teacher_forced_pass(encoder: str, fusion: str, decoder: str) -> None:
    """What generation sees one token at a time equals training's forward (causality, state, prefix)."""
    torch.manual_seed(0)
    cfg = ModelConfig(encoder=encoder, image_size=_side(fusion), feature_dim=16, embed_dim=8, hidden_dim=16, fusion=fusion,
                      decoder=decoder, dropout=0.0)
    model = build_captioner(cfg, vocab_size=11).eval()
    images = torch.randn(2, 3, _side(fusion), _side(fusion))
    tokens = torch.randint(1, 11, (2, 6))
    with torch.no_grad():
        full = model(images, tokens, torch.tensor([0, 1]))  # (2, 6, 11)
        feats = model.encode(images)
        state, steps = model.initial_state(feats), []
        for t in range(tokens.size(1)):
            logits, state = model.decode(feats, tokens[:, t : t + 1], state)
            steps.append(logits)
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


@pytest.mark.parametrize("fusion", [name for name in FUSIONS.names() if hasattr(FUSIONS.get(name), "affine_parts")])
def test_affine_parts_rebuild_the_fusion(fusion: str) -> None:
    torch.manual_seed(0)
    module = FUSIONS.create(fusion, image_dim=6, text_dim=5).eval()
    feats = _feats(3, 6)
    text = torch.randn(3, 4, 5)
    with torch.no_grad():
        weight, bias, image_term = module.affine_parts(feats)
        assert torch.allclose(text @ weight.t() + bias + image_term.unsqueeze(1), module(feats, text), atol=1e-6)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("fusion", ["concat", "sum"])
@pytest.mark.parametrize("decoder", ["lstm", "gru"])
def test_decoding_from_projected_gates_equals_the_teacher_forced_pass(decoder: str, fusion: str, layers: int) -> None:
    """Inference steps from input gates projected once per image and per word (own cell code) give
    nn.LSTM's / nn.GRU's logits; with gradients on (training, SCST) the ordinary path is kept."""
    torch.manual_seed(1)
    cfg = ModelConfig(image_size=32, feature_dim=16, embed_dim=8, hidden_dim=16, fusion=fusion, decoder=decoder,
                      num_layers=layers, dropout=0.0)
    model = build_captioner(cfg, vocab_size=11).eval()
    images, tokens = torch.randn(3, 3, 32, 32), torch.randint(1, 11, (3, 7))
    with torch.inference_mode():
        full = model(images, tokens, torch.arange(3))  # (3, 7, 11)
        feats = model.encode(images)
        state, steps = model.decoding_state(feats), []
        assert isinstance(state, ProjectedInputState)
        for t in range(tokens.size(1)):
            log_probs, state = model.step(model.step_features(feats, state), tokens[:, t], state)
            steps.append(log_probs)
    assert torch.allclose(torch.stack(steps, 1), generation_log_probs(full), atol=1e-5)
    assert not isinstance(model.decoding_state(model.encode(images)), ProjectedInputState)


def test_small_cnn_in_eval_mode_folds_batch_norm_into_the_convolutions_without_changing_its_output() -> None:
    torch.manual_seed(0)
    encoder = IMAGE_ENCODERS.create("small_cnn", feature_dim=16, image_size=32)
    encoder(torch.randn(8, 3, 32, 32))  # train mode: running statistics move away from 0 / 1
    for norm in (m for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        torch.nn.init.normal_(norm.weight, 1.0, 0.3)  # (initialised to 1 and 0: make every term count)
        torch.nn.init.normal_(norm.bias, 0.0, 0.3)
    encoder.eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = encoder.body(images).flatten(2).transpose(1, 2)  # (2, 64, 16) through the BatchNorm modules
        assert torch.allclose(encoder(images).grid, reference, atol=1e-5)


def test_transformer_decoder_refuses_too_long_sequences_clearly() -> None:
    decoder = DECODERS.create("transformer", input_dim=4, hidden_dim=8, vocab_size=5)
    with pytest.raises(MmfuseError, match="at most 128 positions"):
        decoder(torch.randn(1, 129, 4))


def _feats(batch: int = 2, dim: int = 16):
    return IMAGE_ENCODERS.create("small_cnn", feature_dim=dim, image_size=32)(torch.randn(batch, 3, 32, 32))


def test_attention_weights_are_distributions_over_the_grid_and_follow_the_image() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(fusion="attention", image_size=32, feature_dim=16, embed_dim=8, hidden_dim=16, dropout=0.0)
    model = build_captioner(cfg, 11).eval()
    tokens = torch.randint(1, 11, (2, 5))
    with torch.no_grad():
        feats = model.encode(torch.randn(2, 3, 32, 32))
        weights = model.attention_weights(feats, tokens)  # (2, 5, N)
        assert weights.shape == (2, 5, feats.grid.size(1))
        assert torch.allclose(weights.sum(-1), torch.ones(2, 5), atol=1e-5) and bool((weights >= 0).all())
        # a grid cell made to match the attention's preference gets (almost) all the weight
        fusion = model.fusion
        fusion.grid_proj.weight.zero_()
        fusion.grid_proj.bias.zero_()
        fusion.score.weight.fill_(1.0)
        fusion.score.bias.zero_()
        feats.grid.zero_()
        feats.grid[:, 7, :] = 1.0
        fusion.grid_proj.weight[:, 0] = 20.0
        peaked = model.attention_weights(feats, tokens)
    assert bool((peaked.argmax(-1) == 7).all()) and float(peaked[..., 7].min()) > 0.9
    with pytest.raises(ValueError, match="no attention"):
        build_captioner(ModelConfig(image_size=32, feature_dim=16, embed_dim=8, hidden_dim=16), 11).attention_weights(feats, tokens)


def test_transformer_fusion_lets_image_tokens_see_each_other_but_words_only_the_past() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(fusion="transformer", image_size=32, feature_dim=16, embed_dim=8, hidden_dim=16, dropout=0.0)
    model = build_captioner(cfg, 11).eval()
    tokens = torch.randint(1, 11, (1, 6))
    with torch.no_grad():
        feats = model.encode(torch.randn(1, 3, 32, 32))
        base, _ = model.decode(feats, tokens, model.initial_state(feats))
        later = tokens.clone()
        later[0, 4:] = (later[0, 4:] % 10) + 1  # change words 4 and 5 only
        changed, _ = model.decode(feats, later, model.initial_state(feats))
        grid = feats.grid.clone()
        grid[0, -1] += 5.0  # change the last grid cell only
        first = _prefix_outputs(model, feats)[0, 0]
        first_changed = _prefix_outputs(model, feats._replace(grid=grid))[0, 0]
    assert torch.allclose(base[0, :4], changed[0, :4], atol=1e-6)  # causal over words
    assert not torch.allclose(base[0, 4:], changed[0, 4:])
    assert model.initial_state(feats).decoder.bidirectional == 1 + feats.grid.size(1)  # global token + grid
    assert not torch.allclose(first, first_changed)  # the first image token sees the last one


def _prefix_outputs(model, feats) -> torch.Tensor:
    prefix = model.fusion.prefix(feats)
    return model.decoder(prefix, None, prefix.size(1))[0]


def test_prefix_fusion_resamples_the_grid_into_k_tokens() -> None:
    fusion = FUSIONS.create("prefix", image_dim=16, text_dim=8).eval()
    feats = _feats()
    prefix = fusion.prefix(feats)
    assert prefix.shape == (2, fusion.tokens, 8)
    grid = feats.grid.clone()
    grid[0, -1] += 5.0  # one grid cell of the first image
    changed = fusion.prefix(feats._replace(grid=grid))
    assert all(not torch.allclose(prefix[0, k], changed[0, k]) for k in range(fusion.tokens))  # all attend to all cells
    assert torch.allclose(prefix[1], changed[1])


def test_late_fusion_weights_are_a_distribution_and_combine_log_probabilities() -> None:
    fusion = FUSIONS.create("late", image_dim=4, text_dim=4)
    w = fusion.modality_weights()
    assert torch.allclose(w, torch.tensor([0.5, 0.5]))
    with torch.no_grad():
        fusion.logit_weights.copy_(torch.tensor([10.0, -10.0]))  # trust the image expert only
    image_logits, text_logits = torch.randn(3, 4), torch.randn(3, 4)
    combined = fusion(image_logits, text_logits)
    assert torch.allclose(combined.exp().sum(-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(combined, torch.log_softmax(image_logits, -1), atol=1e-4)

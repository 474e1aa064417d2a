"""Pretrained language-model decoders (``--decoder hf:``) and the connectors: offline loading, decoding
equal to Hugging Face ``generate``, Flamingo's gates, LoRA, what a checkpoint holds. Every model is
a tiny random one written with ``save_pretrained`` (tests/lm_models.py): nothing is downloaded."""

from __future__ import annotations

import socket
import warnings
from pathlib import Path

import pytest
import torch

from mmfuse.config import DecodeConfig, ModelConfig, TrainConfig
from mmfuse.errors import MmfuseError
from mmfuse.generate.decoding import beam_search, greedy
from mmfuse.models.hub import locate
from mmfuse.models.language_model import LMTraining
from mmfuse.models.lm_captioner import LMCaptioner, build_lm_captioner
from mmfuse.models.parts import resolve_parts
from mmfuse.train.loop import param_groups
from tests.lm_models import ARCHITECTURES, save_in_hub_cache, save_tiny_lm

CONNECTORS = ("mlp", "pixel-shuffle", "resampler", "qformer", "xattn")


@pytest.fixture(scope="module")
def tiny_lms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lms")
    return {arch: save_tiny_lm(root / arch, arch) for arch in ARCHITECTURES}


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every socket connection and name lookup fails (and is recorded)."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def _captioner(folder: Path, fusion: str = "mlp", **options) -> LMCaptioner:
    torch.manual_seed(0)
    cfg = ModelConfig(decoder=f"hf:{folder}", fusion=fusion, image_size=32, feature_dim=16, dropout=0.0,
                      image_tokens=4, connector_layers=1, **options)
    return build_lm_captioner(resolve_parts(cfg, "caption"), locate(str(folder))).eval()


def test_a_model_in_the_hub_cache_loads_offline_and_records_its_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                        no_network: list[str]) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = save_in_hub_cache(tmp_path / "hub", "tiny-org/tiny-llama", commit="ab" * 20)
    base = locate("tiny-org/tiny-llama")
    assert Path(base.path) == snapshot.resolve() and base.revision == "ab" * 20 and len(base.config_sha256) == 64
    cfg = resolve_parts(ModelConfig(decoder="hf:tiny-org/tiny-llama", fusion="mlp", image_size=32, feature_dim=16), "caption")
    model = build_lm_captioner(cfg, base)
    assert model.lm.width == 32
    assert no_network == []


def test_a_missing_model_is_one_line_naming_the_cache_and_the_fetch_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                           no_network: list[str]) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(MmfuseError) as caught:
        locate("some-org/not-here")
    message = str(caught.value)
    assert "\n" not in message and "some-org/not-here" in message and str(tmp_path / "hub") in message
    assert "hf download some-org/not-here" in message and "--download" in message
    assert no_network == []
    with pytest.raises(MmfuseError, match="does not exist"):
        locate(str(tmp_path / "no-such-dir"))


def test_a_directory_holding_another_kind_of_model_says_what_it_holds(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path / "bert")
    save_tiny_lm(tmp_path / "lm")
    (tmp_path / "lm" / "config.json").write_bytes((tmp_path / "bert" / "config.json").read_bytes())
    with pytest.raises(MmfuseError, match="not a causal language model.*'bert'.*BertModel"):
        _captioner(tmp_path / "lm")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MmfuseError, match="holds no config.json"):
        locate(str(tmp_path / "empty"))


def test_a_tokenizer_without_a_pad_token_pads_with_its_end_token(tmp_path: Path) -> None:
    model = _captioner(save_tiny_lm(tmp_path / "gpt2", "gpt2", pad_token=False))
    assert model.text.tokenizer.pad_token_id == model.text.tokenizer.eos_token_id


def _features(model: LMCaptioner, images: int = 3):
    torch.manual_seed(1)
    return model.encode(torch.randn(images, 3, 32, 32))


def _quiet_image(model: LMCaptioner) -> None:
    """Image tokens near zero: the tiny LMs (a few steps on a few sentences) then write sentences that
    end with <eos> before the length limit, rather than run on after unfamiliar image tokens."""
    torch.manual_seed(3)
    torch.nn.init.normal_(model.fusion.proj[-1].weight, std=0.01)
    torch.nn.init.zeros_(model.fusion.proj[-1].bias)


def _hf_generate(model: LMCaptioner, features, **settings) -> list[list[int]]:
    """What Hugging Face ``generate`` makes from the same context embeddings, cut at ``<eos>``."""
    eos = model.special.end
    with torch.inference_mode():
        context, _ = model.context(features)
        out = model.lm.hf.generate(inputs_embeds=context, attention_mask=torch.ones(context.shape[:2], dtype=torch.long),
                                   do_sample=False, eos_token_id=eos, pad_token_id=model.text.tokenizer.pad_token_id,
                                   **settings)
    rows = out.tolist()
    return [row[: row.index(eos)] if eos in row else row for row in rows]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("fusion", ["mlp", "xattn"])
def test_greedy_decoding_equals_generate_with_inputs_embeds(tiny_lms: dict[str, Path], architecture: str, fusion: str) -> None:
    model = _captioner(tiny_lms[architecture], fusion)
    if fusion == "xattn":  # open the gates, or the image would change nothing
        for block in model.fusion.blocks:
            block.attn_gate.data.fill_(1.0)
    else:
        _quiet_image(model)
    features = _features(model, images=8)
    with torch.inference_mode():
        ours = [g.tokens for g in greedy(model, features, DecodeConfig(max_length=12))]
    theirs = _hf_generate(model, features, max_new_tokens=12, num_beams=1)
    assert ours == theirs
    assert fusion == "xattn" or all(len(t) < 12 for t in ours)  # they end with <eos>: its handling is compared too


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_beam_search_equals_generate_num_beams(tiny_lms: dict[str, Path], architecture: str) -> None:
    """Under the settings where both are defined the same: no length normalisation (mmfuse's GNMT
    penalty alpha 0, Hugging Face's length_penalty 0: its penalty divides by length^p, not GNMT's
    ((5 + L) / 6)^alpha, so they agree only at 0), one caption per image, the same maximum length."""
    model = _captioner(tiny_lms[architecture])
    _quiet_image(model)
    features = _features(model, images=4)
    with torch.inference_mode():
        ours = [n_best[0].tokens for n_best in beam_search(model, features, DecodeConfig(beam_size=4, max_length=10))]
    theirs = _hf_generate(model, features, max_new_tokens=10, num_beams=4, length_penalty=0.0, early_stopping=False)
    assert ours == theirs
    assert all(len(t) < 10 for t in ours)


def test_xattn_leaves_the_frozen_language_model_unchanged_at_initialisation(tiny_lms: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM

    model = _captioner(tiny_lms["llama"], "xattn", xattn_every=1)
    assert len(model.fusion.blocks) == 2
    plain = AutoModelForCausalLM.from_pretrained(tiny_lms["llama"]).eval()
    tokens = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        model.fusion.attending(model.fusion.media(_features(model, 1)))
        gated, _ = model.lm(model.lm.embed(tokens))
        assert torch.equal(gated, plain(input_ids=tokens).logits)
        for block in model.fusion.blocks:  # opened, the image changes what the model says
            block.attn_gate.data.fill_(0.5)
        opened, _ = model.lm(model.lm.embed(tokens))
    assert not torch.allclose(opened, gated)


def test_a_gated_block_updates_the_hidden_state_at_its_own_scale() -> None:
    from mmfuse.models.connectors import GatedCrossAttention

    torch.manual_seed(0)
    block = GatedCrossAttention(16, 8, 0.0).eval()
    block.attn_gate.data.fill_(0.7)
    block.ff_gate.data.fill_(0.4)
    x, media = torch.randn(2, 5, 16), torch.randn(2, 3, 8)  # hidden states (B, T, Dt), media (B, K, Dm)
    with torch.no_grad():
        small, large = block(x, media) - x, block(30 * x, media) - 30 * x
        assert small.abs().max() > 0.1 and torch.allclose(large, 30 * small, atol=1e-4)
        block.scaled = False  # Flamingo's block: the same attention update whatever the scale of x
        block.ff_gate.data.zero_()
        small, large = block(x, media) - x, block(30 * x, media) - 30 * x
    assert small.abs().max() > 0.1 and torch.allclose(large, small, atol=1e-4)


def test_an_xattn_run_written_before_the_scaled_updates_keeps_flamingos_block(tmp_path: Path) -> None:
    import json

    from mmfuse.config import RunConfig, read_run_config, to_dict
    from mmfuse.models.connectors import connector_options

    written = to_dict(RunConfig())
    (tmp_path / "config.json").write_text(json.dumps(written))
    today = read_run_config(tmp_path).model
    del written["model"]["xattn_scaled"]  # as mmfuse wrote it before
    (tmp_path / "config.json").write_text(json.dumps(written))
    older = read_run_config(tmp_path).model
    assert today.xattn_scaled and not older.xattn_scaled
    assert not connector_options("xattn", older)["shape"].scaled and connector_options("xattn", today)["shape"].scaled


def _one_step(model: LMCaptioner, lr: float = 1e-2) -> None:
    model.train()
    tokens = torch.tensor([[5, 6, 7, 2], [8, 9, 2, -100]])
    inputs, targets = model.teacher_forcing(tokens)
    logits = model(torch.randn(2, 3, 32, 32), inputs, torch.tensor([0, 1]))
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_lora_changes_only_the_adapters_and_a_checkpoint_holds_only_what_trained(tiny_lms: dict[str, Path],
                                                                                 architecture: str) -> None:
    model = _captioner(tiny_lms[architecture], lora=4)
    assert model.lm.settings.training == LMTraining.LORA
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _one_step(model)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    lm_changed = {k for k in changed if k.startswith("lm.")}
    assert lm_changed and all("lora_B" in k or "lora_A" in k for k in lm_changed)
    saved = model.saved_state()
    assert {k for k in saved if k.startswith("lm.")} == {k for k in after if k.startswith("lm.") and "lora_" in k}
    assert any(k.startswith("fusion.") for k in saved) and any(k.startswith("encoder.") for k in saved)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_lora_wraps_the_model_without_a_dependency_warning(tiny_lms: dict[str, Path], architecture: str) -> None:
    # every LoRA run printed peft's FutureWarning (it reads transformers' deprecated is_gradient_checkpointing),
    # and GPT-2's a UserWarning that fan_in_fan_out was wrong for its Conv1D projections and had been corrected
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = _captioner(tiny_lms[architecture], lora=4)
    assert model.lm.settings.training == LMTraining.LORA
    assert [str(w.message) for w in caught if "peft" in w.filename or "transformers" in w.filename] == []


def test_a_frozen_model_saves_no_language_model_tensors_and_full_fine_tuning_saves_them_all(tiny_lms: dict[str, Path]) -> None:
    frozen = _captioner(tiny_lms["llama"])
    assert not any(k.startswith("lm.") for k in frozen.saved_state())
    assert not any(p.requires_grad for p in frozen.lm.parameters())
    full = _captioner(tiny_lms["llama"], finetune_lm=True)
    saved = full.saved_state()
    assert {k for k in saved if k.startswith("lm.")} == {k for k in full.state_dict() if k.startswith("lm.")}
    from safetensors.torch import save

    save(saved)  # tied input and output embeddings are stored as two tensors, not shared memory


def test_bf16_frozen_weights_and_per_part_learning_rates(tiny_lms: dict[str, Path]) -> None:
    model = _captioner(tiny_lms["qwen2"], frozen_dtype="bf16")
    assert model.lm.dtype == torch.bfloat16 and model.fusion.proj[0].weight.dtype == torch.float32
    _one_step(model)  # the connector trains through the bf16 model
    groups = param_groups(model, TrainConfig(lr=1e-3, lr_connector=5e-3, lr_encoder=1e-4))
    rates = sorted(g["lr"] for g in groups)
    assert rates == [1e-4, 5e-3] and sum(len(g["params"]) for g in groups) == \
        sum(1 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("fusion", CONNECTORS)
def test_every_connector_feeds_every_architecture(tiny_lms: dict[str, Path], fusion: str) -> None:
    for architecture in ARCHITECTURES:
        model = _captioner(tiny_lms[architecture], fusion)
        tokens = torch.tensor([[5, 6, 2], [7, 2, -100]])
        logits = model(torch.randn(2, 3, 32, 32), *[tokens, torch.tensor([0, 1])])
        assert logits.shape == (2, 3, model.lm.vocab_size) and torch.isfinite(logits).all()
        logits.logsumexp(-1).mean().backward()
        assert all(p.grad is not None for p in model.fusion.parameters())


@pytest.mark.parametrize("flags,message", [
    ({"fusion": "concat"}, "fuses the image into every word position"),
    ({"fusion": "transformer"}, "both ways"),
])
def test_pairings_a_language_model_cannot_take_are_refused(flags: dict, message: str) -> None:
    with pytest.raises(MmfuseError, match=message):
        resolve_parts(ModelConfig(decoder="hf:some/model", **flags), "caption")


@pytest.mark.parametrize("flags,message", [
    ({"lora": 8}, "--lora applies to a pretrained language model"),
    ({"finetune_lm": True}, "--finetune-lm applies"),
    ({"prompt": "A photo of"}, "--prompt applies"),
    ({"fusion": "xattn"}, "needs --decoder hf:"),
])
def test_language_model_options_with_a_from_scratch_decoder_are_refused(flags: dict, message: str) -> None:
    with pytest.raises(MmfuseError, match=message):
        resolve_parts(ModelConfig(decoder="lstm", **{"fusion": "concat", **flags}), "caption")


def _mean_similarity(tokens: torch.Tensor) -> float:
    """Mean cosine similarity between the distinct tokens of each row of (B, K, D)."""
    unit = torch.nn.functional.normalize(tokens, dim=-1)
    k = tokens.size(1)
    return float(((unit @ unit.transpose(1, 2)).sum((1, 2)) - k).mean() / (k * (k - 1)))


@pytest.mark.parametrize("fusion", ["resampler", "qformer", "xattn"])
def test_learned_queries_give_distinct_image_tokens_at_initialisation(fusion: str) -> None:
    from mmfuse.models.connectors import ConnectorShape
    from mmfuse.models.encoders import ImageFeatures
    from mmfuse.models.fusion import FUSIONS

    torch.manual_seed(0)
    connector = FUSIONS.get(fusion)(256, 128, shape=ConnectorShape(tokens=32, layers=2)).eval()
    image = ImageFeatures(torch.randn(4, 64, 256), torch.randn(4, 256))
    with torch.no_grad():
        tokens = connector.media(image) if fusion == "xattn" else connector.prefix(image)  # (B, K, D)
    # queries at BERT's range (0.02) are swamped by the first attention's average: 0.68 (resampler),
    # 0.95 (qformer), 0.72 (xattn's media tokens), and every token then reads the image alike
    assert _mean_similarity(tokens) < 0.1

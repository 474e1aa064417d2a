"""Greedy and beam search: beam size 1 is exactly greedy; lengths and scores are consistent."""

from __future__ import annotations

import pytest
import torch

from mmfuse.config import DecodeConfig, ModelConfig
from mmfuse.data.vocab import BOS_ID, EOS_ID, PAD_ID
from mmfuse.decoding import beam_search, generate, greedy
from mmfuse.models.captioner import build_captioner, generation_log_probs
from mmfuse.models.decoders import DECODERS
from mmfuse.models.checkpoint import load_run


def _model(seed: int, decoder: str = "lstm"):
    torch.manual_seed(seed)
    model = build_captioner(ModelConfig(image_size=32, feature_dim=16, embed_dim=8, hidden_dim=16, dropout=0.0,
                                        decoder=decoder), 9)
    with torch.no_grad():  # make <eos> rare enough that captions have several words
        model.decoder.out.bias[EOS_ID] -= 2.0
    return model.eval()


def _score(model, features, ids: list[int], finished: bool) -> float:
    """Sum of log-probabilities the model gives ``ids`` (plus <eos> if ``finished``)."""
    tokens = torch.tensor([[BOS_ID] + ids])
    logits, _ = model.decode(features, tokens, None)
    logp = generation_log_probs(logits[0])
    targets = ids + ([EOS_ID] if finished else [])
    return float(sum(logp[t, w] for t, w in enumerate(targets)))


@pytest.mark.parametrize("decoder", sorted(DECODERS))
@pytest.mark.parametrize("seed", range(6))
def test_beam_size_one_is_greedy(seed: int, decoder: str) -> None:
    model = _model(seed, decoder)
    images = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        feats = model.encode(images)
        for b in range(4):
            one = feats.select(torch.tensor([b]))
            assert beam_search(model, one, beam_size=1, max_length=12) == greedy(model, one, 12)[0]


def test_beam_one_is_greedy_on_a_trained_run(trained) -> None:
    run = load_run(trained / "runs" / "r")
    images = torch.randn(6, 3, run.config.model.image_size, run.config.model.image_size)
    greedy_caps = generate(run.model, images, DecodeConfig(beam_size=1, max_length=20))
    with torch.inference_mode():
        feats = run.model.encode(images)
        beam_caps = [beam_search(run.model, feats.select(torch.tensor([b])), 1, 20) for b in range(6)]
    assert beam_caps == greedy_caps


@pytest.mark.parametrize("beam", [2, 4])
def test_beam_search_respects_max_length_and_scores_consistently(beam: int) -> None:
    model = _model(1)
    with torch.inference_mode():
        feats = model.encode(torch.randn(3, 3, 32, 32))
        for b in range(3):
            one = feats.select(torch.tensor([b]))
            ids = beam_search(model, one, beam, max_length=5)
            assert len(ids) <= 5 and EOS_ID not in ids and BOS_ID not in ids


def _exhaustive_best(model, one, vocab_size: int, max_length: int) -> float:
    """Best score over every caption of at most ``max_length`` words (ended by <eos> or the limit)."""
    import itertools

    words = [w for w in range(vocab_size) if w not in (EOS_ID, BOS_ID, PAD_ID)]
    best = -float("inf")
    for n in range(max_length + 1):
        for seq in itertools.product(words, repeat=n):
            best = max(best, _score(model, one, list(seq), finished=n < max_length))
    return best


def test_large_beam_finds_the_exhaustive_optimum() -> None:
    """With 6 emittable words and 3 steps, 36 beams never prune a prefix that could win."""
    model = _model(2)
    with torch.inference_mode():
        feats = model.encode(torch.randn(2, 3, 32, 32))
        for b in range(2):
            one = feats.select(torch.tensor([b]))
            ids = beam_search(model, one, 36, max_length=3)
            found = _score(model, one, ids, finished=len(ids) < 3)
            assert found == pytest.approx(_exhaustive_best(model, one, 9, 3), abs=1e-5)


def test_greedy_stops_at_eos_and_max_length() -> None:
    model = _model(3)
    with torch.inference_mode():
        feats = model.encode(torch.randn(5, 3, 32, 32))
        caps = greedy(model, feats, 4)
    assert len(caps) == 5 and all(len(c) <= 4 and EOS_ID not in c for c in caps)

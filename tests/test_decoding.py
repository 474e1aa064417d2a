"""Exactness of the decoding module: beam size 1 is greedy; batched beam search equals the same search
one image at a time; a large beam finds the exhaustive optimum under the same length penalty;
n-gram blocking, minimum and maximum length hold; the key/value cache changes nothing; sampling is
reproducible and respects top-k / top-p."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch

from mmfuse.config import DecodeConfig, ModelConfig
from mmfuse.data.vocab import BOS_ID, EOS_ID, PAD_ID
from mmfuse.errors import MmfuseError
from mmfuse.generate.decoding import (
    beam_search,
    filter_logits,
    generate,
    greedy,
    length_penalty,
    repeated_ngram_mask,
    sample,
)
from mmfuse.models.captioner import build_captioner, generation_log_probs
from mmfuse.models.checkpoint import load_run

VOCAB = 9  # every id but <pad> and <bos> can be generated: <eos> and 6 others
# (decoder, fusion): LSTM and GRU with a feature-level and the attention fusion, the Transformer
# decoder with feature-level, prefix and joint-Transformer fusions
MODELS = [("lstm", "concat"), ("lstm", "attention"), ("gru", "gated"), ("lstm", "prefix"),
          ("transformer", "concat"), ("transformer", "prefix"), ("transformer", "transformer")]


def _model(seed: int, decoder: str = "lstm", fusion: str = "concat", eos_bias: float = -2.0, layers: int = 1):
    torch.manual_seed(seed)
    model = build_captioner(ModelConfig(image_size=32, feature_dim=16, embed_dim=8, hidden_dim=16, dropout=0.0,
                                        decoder=decoder, fusion=fusion, num_layers=layers), VOCAB)
    with torch.no_grad():  # make <eos> rare enough that captions have several words
        model.decoder.out.bias[EOS_ID] += eos_bias
        model.decoder.out.weight.mul_(3.0)  # peakier distributions: beams disagree with greedy more often
    return model.eval()


def _features(model, n: int, seed: int = 0):
    torch.manual_seed(100 + seed)
    with torch.inference_mode():
        return model.encode(torch.randn(n, 3, 32, 32))


def _score(model, features, ids: list[int], finished: bool, alpha: float = 0.0) -> float:
    """Log-probability the model gives ``ids`` (plus <eos> if ``finished``), over the length penalty."""
    with torch.inference_mode():
        logits, _ = model.decode(features, torch.tensor([[BOS_ID] + ids]), model.initial_state(features))
    logp = generation_log_probs(logits[0])
    targets = ids + ([EOS_ID] if finished else [])
    return float(sum(logp[t, w] for t, w in enumerate(targets))) / length_penalty(len(targets), alpha)


def _one(features, b: int):
    return features.select(torch.tensor([b]))


@pytest.mark.parametrize("decoder,fusion", MODELS)
def test_beam_size_one_is_greedy(decoder: str, fusion: str) -> None:
    for seed in range(3):
        model = _model(seed, decoder, fusion)
        feats = _features(model, 6, seed)
        cfg = DecodeConfig(beam_size=1, max_length=12)
        with torch.inference_mode():
            assert [g[0] for g in beam_search(model, feats, cfg)] == greedy(model, feats, cfg)


@pytest.mark.parametrize("decoder,fusion", MODELS)
def test_batched_beam_search_equals_one_image_at_a_time(decoder: str, fusion: str) -> None:
    model = _model(4, decoder, fusion)
    feats = _features(model, 7)
    for cfg in (DecodeConfig(beam_size=4, max_length=10, n_best=3),
                DecodeConfig(beam_size=5, max_length=9, length_penalty=1.0, no_repeat_ngram=2, min_length=2),
                DecodeConfig(beam_size=6, max_length=8, diverse_groups=3, n_best=6, diversity=1.0)):
        with torch.inference_mode():
            batched = beam_search(model, feats, cfg)
            alone = [beam_search(model, _one(feats, b), cfg)[0] for b in range(7)]
        assert [[g.tokens for g in options] for options in batched] == [[g.tokens for g in o] for o in alone]
        for options, single in zip(batched, alone):
            assert [g.score for g in options] == pytest.approx([g.score for g in single], abs=1e-4)
            assert len(options) == cfg.n_best


def _exhaustive_best(model, one, max_length: int, alpha: float, min_length: int = 0) -> float:
    """Best score over every caption of at most ``max_length`` words (ended by <eos> or the limit)."""
    words = [w for w in range(VOCAB) if w not in (EOS_ID, BOS_ID, PAD_ID)]
    best = -float("inf")
    for n in range(min_length, max_length + 1):
        for seq in itertools.product(words, repeat=n):
            best = max(best, _score(model, one, list(seq), finished=n < max_length, alpha=alpha))
    return best


@pytest.mark.slow
@pytest.mark.parametrize("decoder,alpha,min_length,max_length", [
    ("lstm", 0.0, 0, 3), ("lstm", 1.5, 0, 3), ("lstm", -1.0, 0, 3), ("lstm", 0.6, 2, 3),
    ("transformer", 0.0, 0, 3), ("transformer", 1.5, 0, 3), ("transformer", 0.6, 2, 3),
    ("lstm", 4.0, 0, 4), ("transformer", 3.0, 1, 4)])
def test_large_beam_finds_the_exhaustive_optimum(decoder: str, alpha: float, min_length: int, max_length: int) -> None:
    """7 generable tokens (6 words + <eos>): a beam of 7 x 6^(L-2) keeps every continuation of every
    prefix before the last step, so beam search (with its early stop) must return the optimum under
    the same length penalty."""
    model = _model(2, decoder, eos_bias=0.0)
    feats = _features(model, 3)
    cfg = DecodeConfig(beam_size=7 * 6 ** (max_length - 2), max_length=max_length, length_penalty=alpha,
                       min_length=min_length)
    with torch.inference_mode():
        found = beam_search(model, feats, cfg)
    for b, options in enumerate(found):
        best, one = options[0], _one(feats, b)
        assert best.score == pytest.approx(_score(model, one, best.tokens, len(best.tokens) < max_length, alpha), abs=1e-5)
        assert best.score == pytest.approx(_exhaustive_best(model, one, max_length, alpha, min_length), abs=1e-5)


def test_n_best_lists_are_distinct_sorted_and_scored() -> None:
    model = _model(5, "lstm", "attention")
    feats = _features(model, 4)
    cfg = DecodeConfig(beam_size=5, n_best=5, max_length=8, length_penalty=0.6)
    with torch.inference_mode():
        for b, options in enumerate(beam_search(model, feats, cfg)):
            assert len({tuple(g.tokens) for g in options}) == 5
            assert [g.score for g in options] == sorted((g.score for g in options), reverse=True)
            for g in options:
                assert g.score == pytest.approx(_score(model, _one(feats, b), g.tokens, len(g.tokens) < 8, 0.6), abs=1e-5)


def _has_repeat(tokens: list[int], n: int) -> bool:
    grams = Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    return any(c > 1 for c in grams.values())


@pytest.mark.parametrize("decoder,fusion", [("lstm", "concat"), ("transformer", "prefix")])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_ngram_never_repeats(decoder: str, fusion: str, n: int) -> None:
    model = _model(6, decoder, fusion, eos_bias=-6.0)  # long captions, which repeat without the constraint
    feats = _features(model, 8)
    free = DecodeConfig(beam_size=3, max_length=6 if n == 1 else 20)
    blocked = free.override(no_repeat_ngram=n)
    with torch.inference_mode():
        unconstrained = [o[0].tokens for o in beam_search(model, feats, free)]
        unconstrained += [g.tokens for g in greedy(model, feats, free)]
        outputs = [o[0].tokens for o in beam_search(model, feats, blocked)]
        outputs += [g.tokens for g in greedy(model, feats, blocked)]
        outputs += [g.tokens for o in sample(model, feats, blocked.override(beam_size=1, sample=True, n_best=3)) for g in o]
    assert any(_has_repeat(t, n) for t in unconstrained)  # the constraint has something to do
    assert not any(_has_repeat(t, n) for t in outputs)


def test_repeated_ngram_mask_marks_exactly_the_completing_words() -> None:
    history = torch.tensor([[4, 5, 6, 4, 5], [7, 7, 7, 7, 8]])
    mask = repeated_ngram_mask(history, 3, 10)  # bigram so far "4 5" -> 6 is banned; "7 8" never seen
    assert mask[0].nonzero().flatten().tolist() == [6] and not mask[1].any()
    mask = repeated_ngram_mask(history, 2, 10)
    assert mask[0].nonzero().flatten().tolist() == [6] and mask[1].nonzero().flatten().tolist() == []


@pytest.mark.parametrize("strategy", ["greedy", "beam", "diverse", "sample"])
def test_min_and_max_length_are_honoured(strategy: str) -> None:
    model = _model(7, "lstm", "concat", eos_bias=4.0)  # <eos> very likely: captions would end at once
    feats = _features(model, 6)
    base = {"greedy": DecodeConfig(), "beam": DecodeConfig(beam_size=4, n_best=4),
            "diverse": DecodeConfig(beam_size=4, n_best=4, diverse_groups=2), "sample": DecodeConfig(sample=True, n_best=3)}[strategy]
    with torch.inference_mode():
        shortest = min(len(g.tokens) for o in generate(model, torch.randn(6, 3, 32, 32), base) for g in o)
        assert shortest <= 1
        for low, high in ((3, 5), (0, 2), (4, 4)):
            cfg = base.override(min_length=low, max_length=high)
            lengths = [len(g.tokens) for o in generate(model, torch.randn(6, 3, 32, 32), cfg) for g in o]
            assert all(low <= n <= high for n in lengths), (cfg, lengths)
        assert EOS_ID not in {t for o in beam_search(model, feats, DecodeConfig(beam_size=3, max_length=5)) for g in o for t in g.tokens}


@pytest.mark.parametrize("fusion", ["concat", "prefix", "transformer"])
def test_transformer_cache_gives_the_same_captions(fusion: str) -> None:
    model = _model(8, "transformer", fusion)
    images = torch.randn(5, 3, 32, 32)
    for cfg in (DecodeConfig(max_length=12), DecodeConfig(beam_size=4, n_best=2, max_length=12)):
        cached = generate(model, images, cfg)
        rerun = generate(model, images, cfg.override(use_cache=False))
        assert [[g.tokens for g in o] for o in cached] == [[g.tokens for g in o] for o in rerun]
        assert [g.score for o in cached for g in o] == pytest.approx([g.score for o in rerun for g in o], abs=1e-4)


def test_kv_cache_logits_equal_a_full_rerun() -> None:
    model = _model(9, "transformer", "prefix", layers=2)
    feats = _features(model, 3)
    tokens = torch.randint(3, VOCAB, (3, 9))
    with torch.inference_mode():
        full, _ = model.decode(feats, tokens, model.initial_state(feats, cache=False))
        state, steps = model.initial_state(feats, cache=True), []
        for t in range(9):
            logits, state = model.decode(feats, tokens[:, t:t + 1], state)
            steps.append(logits)
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_diverse_groups_differ_more_than_plain_beams() -> None:
    model = _model(10, "lstm", "concat")
    feats = _features(model, 8)
    plain = DecodeConfig(beam_size=4, n_best=4, max_length=8)
    with torch.inference_mode():
        same = beam_search(model, feats, plain)
        diverse = beam_search(model, feats, plain.override(diverse_groups=4, diversity=2.0))

    def distinct_first_words(results) -> float:
        return sum(len({tuple(g.tokens[:2]) for g in o}) for o in results) / len(results)

    assert distinct_first_words(diverse) > distinct_first_words(same)
    with torch.inference_mode():  # the first group is never penalised: a beam of one, i.e. greedy
        assert [o[0].tokens for o in diverse] == [g.tokens for g in greedy(model, feats, plain.override(beam_size=1, n_best=1))]


def test_sampling_is_reproducible_and_independent_of_batching() -> None:
    model = _model(11, "transformer", "prefix", eos_bias=-1.0)
    images = torch.randn(6, 3, 32, 32)
    cfg = DecodeConfig(sample=True, n_best=3, seed=5, max_length=10, temperature=1.3)
    with torch.inference_mode():
        whole = generate(model, images, cfg)
        again = generate(model, images, cfg)
        pieces = generate(model, images[:2], cfg, 0) + generate(model, images[2:], cfg, 2)
        other_seed = generate(model, images, cfg.override(seed=6))
    tokens = lambda results: [[g.tokens for g in o] for o in results]  # noqa: E731
    assert tokens(whole) == tokens(again) == tokens(pieces)
    assert tokens(whole) != tokens(other_seed)
    assert len({tuple(g.tokens) for o in whole for g in o}) > 6  # draws differ


def test_filter_logits_top_k_and_top_p() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    assert torch.isfinite(filter_logits(logits, 2, 1.0)).tolist() == [[True, True, False, False, False]]
    assert torch.isfinite(filter_logits(logits, 0, 0.7)).tolist() == [[True, True, False, False, False]]
    assert torch.isfinite(filter_logits(logits, 0, 0.71)).tolist() == [[True, True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, 0, 0.3)).tolist() == [[True, False, False, False, False]]


def test_top_k_one_sampling_is_greedy() -> None:
    model = _model(12, "lstm", "attention")
    feats = _features(model, 5)
    with torch.inference_mode():
        drawn = sample(model, feats, DecodeConfig(sample=True, top_k=1, n_best=2, max_length=10))
        best = greedy(model, feats, DecodeConfig(max_length=10))
    assert all(g.tokens == b.tokens for o, b in zip(drawn, best) for g in o)


def test_beam_one_is_greedy_on_a_trained_run(trained) -> None:
    run = load_run(trained / "runs" / "r")
    images = torch.randn(6, 3, run.config.model.image_size, run.config.model.image_size)
    greedy_caps = generate(run.model, images, DecodeConfig(beam_size=1, max_length=20))
    with torch.inference_mode():
        beam_caps = beam_search(run.model, run.model.encode(images), DecodeConfig(beam_size=1, max_length=20))
    assert [o[0].tokens for o in beam_caps] == [o[0].tokens for o in greedy_caps]


@pytest.mark.parametrize("options,message", [
    ({"n_best": 3}, "--n-best 3 needs --beam-size >= 3"),
    ({"beam_size": 4, "sample": True}, "does not combine with --beam-size"),
    ({"beam_size": 4, "diverse_groups": 3}, "multiple of --diverse-groups"),
    ({"min_length": 9, "max_length": 5}, "--min-length 9 is above --max-length 5"),
    ({"top_p": 0.0}, "--top-p must be in (0, 1]"),
    ({"temperature": 0.0}, "--temperature must be > 0"),
])
def test_contradictory_settings_are_refused(options: dict, message: str) -> None:
    with pytest.raises(MmfuseError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        DecodeConfig().override(**options)

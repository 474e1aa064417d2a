"""BLEU-1..4, ROUGE-L and CIDEr-D equal coco-caption's (pycocoevalcap, a test-only dependency)
to 1e-6, corpus and per image, on 2,000 images x 5 references of varied captions."""

from __future__ import annotations

import random

import pytest

from mmfuse.metrics.bleu import bleu
from mmfuse.metrics.captions import caption_scores
from mmfuse.metrics.cider import cider_d
from mmfuse.metrics.cider_reward import CiderDReward
from mmfuse.metrics.rouge import lcs_length, rouge_l

WORDS = ("a an the man woman dog cat dogs two three people red blue green white black sitting standing "
         "on in of with next to near at riding holding small large young old street table bus train "
         "'s n't is are and while grass water field room kitchen plate pizza bike skateboard -lrb- -rrb- "
         "1,000 3.5 t-shirt well-known").split()


def _caption(rng: random.Random) -> list[str]:
    kind = rng.random()
    if kind < 0.02:
        return []
    if kind < 0.05:
        return [rng.choice(WORDS)]
    length = rng.randint(2, 22)
    words = [rng.choice(WORDS[:40]) if rng.random() < 0.7 else rng.choice(WORDS) for _ in range(length)]
    if rng.random() < 0.1:  # stutters: repeated n-grams stress the clipping
        words = words[:4] * 3
    return words


def _corpus(n_images: int, seed: int = 0) -> tuple[list[list[str]], list[list[list[str]]]]:
    rng = random.Random(seed)
    refs = [[_caption(rng) or ["a"] for _ in range(5)] for _ in range(n_images)]
    hyps = []
    for r in refs:
        roll = rng.random()
        if roll < 0.15:
            hyps.append(list(rng.choice(r)))  # exactly one of the references
        elif roll < 0.5:  # a reference with edits
            h = list(rng.choice(r))
            for _ in range(rng.randint(1, 3)):
                if h and rng.random() < 0.5:
                    h[rng.randrange(len(h))] = rng.choice(WORDS)
                else:
                    h.insert(rng.randint(0, len(h)), rng.choice(WORDS))
            hyps.append(h)
        else:
            hyps.append(_caption(rng))
    return hyps, refs


@pytest.fixture(scope="module")
def corpus():
    return _corpus(2000)


@pytest.fixture(scope="module")
def coco():
    return pytest.importorskip("pycocoevalcap", reason="pycocoevalcap (test oracle, dev extra) is not installed")


def _coco_inputs(hyps, refs):
    res = {i: [" ".join(h)] for i, h in enumerate(hyps)}
    gts = {i: [" ".join(r) for r in rs] for i, rs in enumerate(refs)}
    return gts, res


def test_bleu_equals_coco_caption(corpus, coco) -> None:
    from pycocoevalcap.bleu.bleu import Bleu

    hyps, refs = corpus
    expected, expected_images = Bleu(4).compute_score(*_coco_inputs(hyps, refs), verbose=0)
    got, got_images = bleu(hyps, refs)
    assert got == pytest.approx(expected, abs=1e-6)
    for k in range(4):
        assert [g[k] for g in got_images] == pytest.approx(expected_images[k], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rouge_l", "cider_d"])
def test_rouge_l_and_cider_d_equal_coco_caption(name: str, corpus, coco) -> None:
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    hyps, refs = corpus
    oracle, ours = {"rouge_l": (Rouge, rouge_l), "cider_d": (Cider, cider_d)}[name]
    expected, expected_images = oracle().compute_score(*_coco_inputs(hyps, refs))
    got, got_images = ours(hyps, refs)
    assert got == pytest.approx(float(expected), abs=1e-6)
    assert got_images == pytest.approx(list(expected_images), abs=1e-6)


def _lcs_dp(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a, 1):
        for j, y in enumerate(b, 1):
            table[i][j] = table[i - 1][j - 1] + 1 if x == y else max(table[i - 1][j], table[i][j - 1])
    return table[-1][-1]


def test_bit_parallel_lcs_equals_dynamic_programming() -> None:
    rng = random.Random(1)
    for _ in range(500):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 30))]
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 30))]
        assert lcs_length(a, b) == _lcs_dp(a, b)


def test_known_values_without_the_oracle() -> None:
    """Identical captions: BLEU 1 (minus coco's 1e-9 smoothing), ROUGE-L 1; CIDEr-D needs IDF > 0."""
    hyps = [["a", "red", "circle", "today"], ["two", "blue", "squares", "here"]]
    refs = [[list(hyps[0])], [list(hyps[1])]]
    scores = caption_scores(hyps, refs)["corpus"]
    assert scores["bleu1"] == pytest.approx(1.0, abs=1e-8) and scores["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert scores["rouge_l"] == 1.0
    assert scores["cider_d"] == pytest.approx(10.0)  # every n-gram is unique to its image: cosine 1, x10
    short = caption_scores([["a", "red", "circle"]], [[["a", "red", "circle"]]])["corpus"]
    assert short["cider_d"] == 0.0  # one image: IDF log(1) - log(1) = 0 for every n-gram
    worse = caption_scores([["a", "blue", "circle", "today"], hyps[1]], refs)["corpus"]
    assert worse["bleu4"] < scores["bleu4"] and worse["cider_d"] < scores["cider_d"]


@pytest.mark.slow
def test_raw_text_end_to_end_equals_coco_caption(coco) -> None:
    """2,000 images x 5 real-looking references: our tokenizer + scorers vs PTBTokenizer (Java) + scorers,
    corpus and per image, and the tokens themselves."""
    import shutil

    if shutil.which("java") is None:
        pytest.skip("Java is not installed: the Stanford PTBTokenizer oracle cannot run")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    from mmfuse.metrics.captions import score_texts
    from mmfuse.metrics.ptb import coco_tokenize
    from tests.caption_corpus import captions

    texts = captions(2000 * 6, seed=5)
    refs = [texts[i * 6 : i * 6 + 5] for i in range(2000)]
    hyps = [r[i % 5] if i % 7 == 0 else texts[i * 6 + 5] for i, r in enumerate(refs)]
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in r] for i, r in enumerate(refs)})
    res = tok.tokenize({i: [{"caption": h}] for i, h in enumerate(hyps)})
    assert all(" ".join(coco_tokenize(c)) == gts[i][j] for i, r in enumerate(refs) for j, c in enumerate(r))
    assert all(" ".join(coco_tokenize(h)) == res[i][0] for i, h in enumerate(hyps))

    ours = score_texts(hyps, refs)
    b, b_images = Bleu(4).compute_score(gts, res, verbose=0)
    r, r_images = Rouge().compute_score(gts, res)
    c, c_images = Cider().compute_score(gts, res)
    expected = {"bleu1": b[0], "bleu2": b[1], "bleu3": b[2], "bleu4": b[3], "rouge_l": float(r), "cider_d": float(c)}
    assert ours["corpus"] == pytest.approx(expected, abs=1e-6)
    per_image = {f"bleu{k + 1}": b_images[k] for k in range(4)} | {"rouge_l": list(r_images), "cider_d": list(c_images)}
    for metric, values in per_image.items():
        assert [img[metric] for img in ours["per_image"]] == pytest.approx(values, abs=1e-6), metric


def test_cider_reward_on_token_ids_equals_cider_d_with_the_same_references() -> None:
    """The SCST reward (IDF counted once over its references, token ids) is coco-caption's CIDEr-D
    when scored against the references it was built from."""
    rng = random.Random(0)
    refs = [[[rng.randint(3, 12) for _ in range(rng.randint(3, 9))] for _ in range(rng.randint(1, 5))] for _ in range(25)]
    hyps = [[rng.randint(3, 12) for _ in range(rng.randint(0, 9))] for _ in range(25)]
    reward = CiderDReward(refs)(list(range(25)), hyps)
    _, expected = cider_d([[str(t) for t in h] for h in hyps], [[[str(t) for t in r] for r in rs] for rs in refs])
    assert reward == pytest.approx(expected, abs=1e-12)
    assert max(reward) > 0.5  # not trivially zero
    assert CiderDReward(refs)([1], [hyps[0]]) != pytest.approx([reward[0]])  # another image's references score differently


@pytest.mark.parametrize("block", [1 << 22, 7])  # 7: many blocks of references, longest first
def test_vectorised_rouge_l_equals_the_per_image_path(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """uint64 bit sets for hypotheses of 1..64 tokens, Python integers for empty and longer ones; empty
    references count as one empty token, as in coco-caption. The words: 8 to 10 letters, then 300
    (more than the 64 bits of the filter that spares most reference tokens their lookup), an empty
    hypothesis last."""
    from mmfuse.metrics import rouge

    monkeypatch.setattr(rouge, "BLOCK", block)
    rng = random.Random(5)
    hyps, refs = [], []
    lengths = [0, 1, 2, 63, 64, 65, 100] * 6 + [rng.randint(0, 30) for _ in range(400)] + [0]
    for n, length in enumerate(lengths):
        words = ("abcdefgh", "abcdefghij") if n < 242 else ([f"w{i}" for i in range(300)], [f"w{i}" for i in range(300)])
        hyps.append([rng.choice(words[0]) for _ in range(length)])
        refs.append([[rng.choice(words[1]) for _ in range(rng.choice([0, 1, 5, 20, 70, 130]))]
                     for _ in range(rng.randint(1, 6))])
    corpus, per_image = rouge.rouge_l(hyps, refs)
    expected = [rouge.rouge_l_image(h, r) for h, r in zip(hyps, refs)]
    assert per_image == pytest.approx(expected, abs=1e-12)
    assert corpus == pytest.approx(sum(expected) / len(expected), abs=1e-12)


# the 63-bit limit on a sort key, lowered: 4-grams from numbered trigrams while trigrams still come from
# token ids (the corpus's 57 words cubed fit, its 2,909 bigrams squared do not); trigrams from bigram ids
# as well; then two-key sorts too
@pytest.mark.parametrize("limit", ["vocab**3 * slots + 1", 10**6, 10**3])
def test_ngram_paths_for_keys_too_large_for_64_bits_give_the_same_scores(limit: int | str, corpus,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from mmfuse.metrics import ngrams
    from mmfuse.metrics.captions import MINE, THEIRS, order_scores, reference_counts
    from mmfuse.metrics.ptb import intern

    hyps, refs = corpus
    expected = caption_scores(hyps[:300], refs[:300])
    tokens = intern([*hyps[:300], *(r for rs in refs[:300] for r in rs)])
    counts = reference_counts(refs[:300])
    all_orders = order_scores(tokens, counts, ngrams.ORDERS)
    if isinstance(limit, str):
        vocab, slots = len(tokens.words), len(counts) * (int(counts.max()) + 1)
        limit = vocab**3 * slots + 1
        bigrams = next(ngrams.ngram_orders(tokens, counts, (2,)))[1].size
        assert bigrams**2 * slots > limit  # 4-grams cannot be pairs of bigram ids
    monkeypatch.setattr(ngrams, "KEY_LIMIT", limit)
    got = caption_scores(hyps[:300], refs[:300])
    for orders in (MINE, THEIRS, (3,), (4,), ngrams.ORDERS):  # what each process builds, and alone
        some = order_scores(tokens, counts, orders)
        for k in orders:
            assert some[k].matches.tolist() == all_orders[k].matches.tolist()
            assert some[k].cosine == pytest.approx(all_orders[k].cosine, abs=1e-12)
    assert got["corpus"] == pytest.approx(expected["corpus"], abs=1e-12)
    assert [g["cider_d"] for g in got["per_image"]] == pytest.approx([e["cider_d"] for e in expected["per_image"]], abs=1e-12)
    assert [g["bleu4"] for g in got["per_image"]] == pytest.approx([e["bleu4"] for e in expected["per_image"]], abs=1e-12)


def test_two_processes_score_the_same_as_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """`evaluate --predictions` scores a large set in two processes (the child tokenizes half of the
    images, swaps tokens with this process and builds the bigram and 4-gram statistics): the same
    scores, and the same tokens, as one process. Images with an empty hypothesis or words only one half has are in the set."""
    from mmfuse import beside
    from mmfuse.metrics import captions, halves
    from tests.caption_corpus import caption_set

    def taken_over(self: beside._Forked) -> None:
        raise AssertionError("the child failed and this process did its part")

    monkeypatch.setattr(beside, "usable_cpus", lambda: 2)
    monkeypatch.setattr(beside._Forked, "_take_over", taken_over)  # the child's part is the child's
    hyps, refs = caption_set(halves.TWO_PROCESSES_FROM + 1, seed=3)
    hyps[0], hyps[-1] = "", "zzyzx qwerty only in the second half"
    refs[-1] = [*refs[-1][:4], "A PLAIN? (bracketed) \u201cquote\u201d no. 5"]
    one_timings: dict[str, float] = {}
    one, one_tokens = captions.scored_texts(hyps, refs, one_timings)
    timings: dict[str, float] = {}
    two, two_tokens = halves.scored_in_two(hyps, refs, timings)
    assert "merge" in timings and "merge" not in one_timings  # it did split
    assert two["corpus"] == pytest.approx(one["corpus"], abs=1e-12)
    assert [list(s) for s in (two["corpus"], one["per_image"][0], two["per_image"][-1])] == [list(captions.METRICS)] * 3
    for metric in captions.METRICS:
        assert [s[metric] for s in two["per_image"]] == pytest.approx([s[metric] for s in one["per_image"]], abs=1e-12)
    assert two_tokens.sentences() == one_tokens.sentences()


def test_the_callers_work_is_done_while_the_other_process_finishes(monkeypatch: pytest.MonkeyPatch) -> None:
    """`meanwhile` (the command line loads what prints the report) runs once: in two processes before
    this one waits for the other's result, in one process at the end."""
    from mmfuse import beside
    from mmfuse.metrics import captions, halves
    from tests.caption_corpus import caption_set

    events: list[str] = []
    waits = beside._Forked.result
    monkeypatch.setattr(beside, "usable_cpus", lambda: 2)
    monkeypatch.setattr(beside._Forked, "result", lambda self: (events.append("wait"), waits(self))[1])
    hyps, refs = caption_set(halves.TWO_PROCESSES_FROM, seed=5)
    two, _ = halves.scored_in_two(hyps, refs, meanwhile=lambda: events.append("meanwhile"))
    assert events == ["meanwhile", "wait"]
    events.clear()
    one, _ = captions.scored_texts(hyps, refs, meanwhile=lambda: events.append("meanwhile"))
    assert events == ["meanwhile"] and one["corpus"] == pytest.approx(two["corpus"], abs=1e-12)


@pytest.mark.parametrize("bound", [1000, 2**40, 2**62])  # value and position packed in 64 bits; too large to pack: argsort
def test_a_sort_that_carries_the_positions_along(bound: int) -> None:
    import numpy as np

    from mmfuse.metrics.ngrams import _sort_carrying

    rng = np.random.default_rng(0)
    values = rng.integers(0, min(bound, 1000), 5000, dtype=np.int64) * (bound // min(bound, 1000))
    positions = np.sort(rng.choice(2**22, 5000, replace=False)).astype(np.int64)  # increasing, below 2**22
    ranked, carried = _sort_carrying(values.copy(), bound, positions, 2**22)  # (it sorts in place)
    assert ranked.dtype == carried.dtype == np.int64
    assert ranked.tolist() == sorted(values.tolist())
    by_position = dict(zip(positions.tolist(), values.tolist()))
    assert sorted(carried.tolist()) == positions.tolist() and [by_position[p] for p in carried.tolist()] == ranked.tolist()
    if bound < 2**42:  # packed: equal values keep the order of their positions
        assert all(a < b for a, b, x, y in zip(carried, carried[1:], ranked, ranked[1:]) if x == y)
    empty = _sort_carrying(values[:0], bound, positions[:0], 2**22)
    assert len(empty[0]) == len(empty[1]) == 0




def test_inputs_that_cannot_be_scored_are_errors() -> None:
    from mmfuse.metrics import captions

    with pytest.raises(ValueError, match="at least one reference"):
        captions.score_texts(["a dog", "a cat"], [["a dog"], []])
    with pytest.raises(ValueError, match="2 hypotheses but 1 reference lists"):
        captions.score_texts(["a dog", "a cat"], [["a dog"]])
    with pytest.raises(ValueError, match="no hypotheses"):
        captions.score_texts([], [])


def test_a_set_too_small_to_split_is_scored_without_a_second_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from mmfuse import beside
    from mmfuse.metrics import captions, halves
    from tests.caption_corpus import caption_set

    def no_fork() -> int:
        raise AssertionError("forked")

    monkeypatch.setattr(beside, "usable_cpus", lambda: 2)
    monkeypatch.setattr(os, "fork", no_fork)
    hyps, refs = caption_set(halves.TWO_PROCESSES_FROM - 1, seed=7)
    timings: dict[str, float] = {}
    scores, _ = halves.scored_in_two(hyps, refs, timings)
    assert "merge" not in timings
    assert scores["corpus"] == captions.score_texts(hyps, refs)["corpus"]

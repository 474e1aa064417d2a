"""Caption generation, the one module behind ``evaluate``, ``caption`` and validation during training:
greedy search, beam search batched over images (length penalty, n-best lists, diverse groups), and
sampling (temperature, top-k, top-p), all with the same constraints (minimum length, no repeated
n-grams) and the same score, as in Hugging Face ``generate``.

A caption's **score** is the sum of the log-probabilities the model gave its tokens (``<eos>``
included when it ended with one; ``<pad>``/``<bos>`` are never generated and the constraints are
applied first) divided by the GNMT length penalty ``((5 + L) / 6) ** alpha``, L = tokens scored.

All strategies decode every image of a batch at once and drop an image's rows as soon as it is
finished, so finished images stop costing compute. Generated ids exclude ``<bos>``/``<eos>``.

Shape legend: B images, A images still decoding, K beams per image (G groups of Kg = K / G),
R rows (A, or A x K, or A x n-best), t words so far, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from mmfuse.config import DecodeConfig
from mmfuse.data.vocab import EOS_ID
from mmfuse.models.captioner import Captioner
from mmfuse.models.encoders import ImageFeatures

NEG_INF = float("-inf")


@dataclass(frozen=True)
class Generated:
    """One generated caption: token ids (no ``<bos>``/``<eos>``) and its score (see the module doc)."""

    tokens: list[int]
    score: float


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's length normaliser ``((5 + length) / 6) ** alpha`` (1 when alpha is 0)."""
    return ((5 + length) / 6) ** alpha


@torch.inference_mode()
def generate(model: Captioner, images: torch.Tensor, cfg: DecodeConfig, first_index: int = 0) -> list[list[Generated]]:
    """Captions for images (B, 3, S, S): per image a list of ``cfg.n_best`` captions, best first.

    ``first_index`` is the position of the first image in the whole input; sampling seeds each image
    by its position, so its captions do not depend on how the input was split into batches.
    """
    features = model.encode(images)
    if cfg.sample:
        return sample(model, features, cfg, first_index)
    if cfg.beam_size == 1:
        return [[g] for g in greedy(model, features, cfg)]
    return beam_search(model, features, cfg)


# --- constraints (logits processors) -----------------------------------------------------------


def constrain(log_probs: torch.Tensor, history: torch.Tensor, cfg: DecodeConfig, end: int = EOS_ID) -> torch.Tensor:
    """Forbid what ``cfg`` forbids at this step: log_probs (R, V), history (R, t) of words so far;
    ``end`` is the model's end-of-caption id."""
    words = history.size(1)
    if words < cfg.min_length:
        log_probs[:, end] = NEG_INF
    if cfg.no_repeat_ngram and words >= cfg.no_repeat_ngram:
        log_probs = log_probs.masked_fill(repeated_ngram_mask(history, cfg.no_repeat_ngram, log_probs.size(-1)), NEG_INF)
    return log_probs


def repeated_ngram_mask(history: torch.Tensor, n: int, vocab_size: int) -> torch.Tensor:
    """(R, V) True where the next word would complete an n-gram already in ``history`` (R, t >= n)."""
    grams = history.unfold(1, n, 1)  # (R, t-n+1, n)
    tail = history[:, history.size(1) - n + 1:].unsqueeze(1)  # (R, 1, n-1): the n-gram being started
    seen = (grams[:, :, :-1] == tail).all(-1)  # (R, t-n+1)
    rows = torch.arange(history.size(0), device=history.device).unsqueeze(1).expand_as(seen)  # (R, t-n+1)
    mask = torch.zeros(history.size(0), vocab_size, dtype=torch.bool, device=history.device)
    mask[rows[seen], grams[:, :, -1][seen]] = True
    return mask


# --- rows that decode one token per step: greedy and sampling ----------------------------------


Chooser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (log_probs (R, V), row ids (R,)) -> tokens (R,)


def greedy(model: Captioner, features: ImageFeatures, cfg: DecodeConfig) -> list[Generated]:
    """The most likely next word at every step (after the constraints), for all B images at once."""
    return _one_token_per_row(model, features, cfg, lambda log_probs, rows: log_probs.topk(1, dim=-1).indices.squeeze(1))


def sample(model: Captioner, features: ImageFeatures, cfg: DecodeConfig, first_index: int = 0) -> list[list[Generated]]:
    """``cfg.n_best`` captions drawn per image (temperature, then top-k, then top-p), best first.

    Draw j of image i uses its own generator seeded by (seed, first_index + i, j): reproducible, and
    independent of batch composition."""
    n, batch = cfg.n_best, features.pooled.size(0)
    device = features.pooled.device
    generators = [torch.Generator(device=device).manual_seed(hash((cfg.seed, first_index + i, j)) % 2**62)
                  for i in range(batch) for j in range(n)]

    def choose(log_probs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        logits = filter_logits(log_probs / cfg.temperature, cfg.top_k, cfg.top_p)  # (R, V)
        uniform = torch.stack([torch.rand(logits.size(-1), generator=generators[r], device=device)
                               for r in rows.tolist()])  # (R, V)
        return (logits - torch.log(-torch.log(uniform))).argmax(-1)  # Gumbel-max: a draw from softmax(logits)

    drawn = _one_token_per_row(model, features, cfg, choose, copies=n)
    return [sorted(drawn[i * n:(i + 1) * n], key=lambda g: -g.score) for i in range(batch)]


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Keep the ``top_k`` most likely words (0: all), then the smallest set of most likely words whose
    probability reaches ``top_p``; the rest get -inf. logits (R, V); the best word is always kept."""
    if 0 < top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (R, 1)
        logits = logits.masked_fill(logits < kth, NEG_INF)
    if top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)  # (R, V)
        probs = torch.softmax(ordered, dim=-1)
        drop = probs.cumsum(-1) - probs >= top_p  # mass before this word already reaches p
        logits = logits.masked_fill(drop.scatter(1, order, drop), NEG_INF)
    return logits


def _rows(model: Captioner, features: ImageFeatures, copies: int, cfg: DecodeConfig) -> tuple[ImageFeatures, Any]:
    """The step features and the initial state of ``copies`` rows per image (B*copies rows, image by
    image); the state is computed once per image and then copied."""
    rows = torch.arange(features.pooled.size(0), device=features.pooled.device).repeat_interleave(copies)
    state = model.decoding_state(features, cfg.use_cache)
    if copies == 1:
        return model.step_features(features, state), state
    return model.step_features(features, state).select(rows), model.reorder_state(state, rows)


def _one_token_per_row(model: Captioner, features: ImageFeatures, cfg: DecodeConfig, choose: Chooser,
                       copies: int = 1) -> list[Generated]:
    """Decode ``copies`` rows per image one chosen token per step until ``<eos>`` or
    ``cfg.max_length`` words; finished rows leave the batch. Returns rows image by image."""
    device, (start, end) = features.pooled.device, model.special
    features, state = _rows(model, features, copies, cfg)
    rows = torch.arange(features.pooled.size(0), device=device)  # (A,) original row of each active row
    history = torch.zeros(rows.numel(), 0, dtype=torch.long, device=device)  # (A, t)
    scores = torch.zeros(rows.numel(), device=device)  # (A,)
    last = torch.full_like(rows, start)
    results: dict[int, Generated] = {}
    for step in range(cfg.max_length):
        log_probs, state = model.step(features, last, state)
        log_probs = constrain(log_probs, history, cfg, end)  # (A, V)
        last = choose(log_probs, rows)  # (A,)
        scores = scores + log_probs.gather(1, last.unsqueeze(1)).squeeze(1)
        ended = (last == end) | (step == cfg.max_length - 1)
        history = torch.cat([history, last.unsqueeze(1)], 1)
        for r in ended.nonzero().squeeze(1).tolist():
            tokens = history[r].tolist()
            tokens = tokens[:-1] if tokens[-1] == end else tokens
            results[int(rows[r])] = Generated(tokens, float(scores[r]) / length_penalty(len(history[r]), cfg.length_penalty))
        if bool(ended.all()):
            break
        if bool(ended.any()):
            keep = (~ended).nonzero().squeeze(1)
            rows, history, scores, last = rows[keep], history[keep], scores[keep], last[keep]
            state, features = model.reorder_state(state, keep), features.select(keep)
    return [results[r] for r in range(len(results))]


# --- beam search --------------------------------------------------------------------------------


@dataclass
class _Finished:
    """Finished captions of one (image, group): (rank score, score, tokens), kept sorted by rank."""

    items: list[tuple[float, float, list[int]]] = field(default_factory=list)

    def add(self, rank: float, score: float, tokens: list[int]) -> None:
        self.items.append((rank, score, tokens))
        self.items.sort(key=lambda item: -item[0])

    def nth_rank(self, n: int) -> float:
        """The rank score of the n-th best finished caption (-inf while there are fewer)."""
        return self.items[n - 1][0] if len(self.items) >= n else NEG_INF


@dataclass
class _Beams:
    """The live beams of the A active images: rows (A x K), laid out image by image, then group by group."""

    images: list[int]  # (A,) index of each active image in the batch
    history: torch.Tensor  # (A*K, t)
    rank: torch.Tensor  # (A, K) sum of log-probs minus diversity penalties (-inf: empty slot)
    score: torch.Tensor  # (A, K) sum of log-probs


def beam_search(model: Captioner, features: ImageFeatures, cfg: DecodeConfig) -> list[list[Generated]]:
    """Beam search over all B images at once (rows B x K in one tensor per step).

    Each step ranks, per image and group, every continuation of its live beams; an ``<eos>``
    continuation ranked within the group's top Kg becomes a finished caption (as in Hugging Face
    ``generate``), and the best other continuations refill the Kg live beams. A beam that reaches
    ``max_length`` words finishes there. An image stops when every group has its n-best finished and
    no live beam can beat them, whatever it generates later (the exact bound under the length
    penalty), so a large enough beam finds the exhaustive optimum. With G groups (diverse beam
    search), group g's log-probabilities are lowered by ``diversity`` x the number of times earlier
    groups picked the same word at this step, and the n-best list takes each group's best, then each
    group's second, and so on.
    """
    k, g = cfg.beam_size, cfg.diverse_groups
    batch, device = features.pooled.size(0), features.pooled.device
    state = model.decoding_state(features, cfg.use_cache)  # B rows: the first step reads one row per image
    features = image_features = model.step_features(features, state)
    first = torch.full((batch, k), NEG_INF, device=device)
    first[:, :: k // g] = 0.0  # one live beam per group at the start
    beams = _Beams(list(range(batch)), torch.zeros(batch * k, 0, dtype=torch.long, device=device), first, first.clone())
    finished = [[_Finished() for _ in range(g)] for _ in range(batch)]
    last = torch.full((batch,), model.special.start, dtype=torch.long, device=device)
    for step in range(cfg.max_length):
        log_probs, state = model.step(features, last, state)
        if step == 0:  # every beam of an image starts from its one row
            log_probs = log_probs.repeat_interleave(k, 0)
        log_probs = constrain(log_probs, beams.history, cfg, model.special.end).view(len(beams.images), k, -1)  # (A, K, V)
        parents, last, beams = _advance(beams, log_probs, finished, step, cfg, model.special.end)
        keep = _unsettled(beams, finished, step, cfg)
        if keep.numel() == 0:
            break
        if step == 0:  # from one row per image to K: parents index images, and the image parts are copied
            parents = parents // k
            features = image_features.select(torch.arange(batch, device=device).repeat_interleave(k))
        if keep.numel() == len(beams.images):  # beams move within their images only
            state = model.reorder_state(state, parents, same_images=step > 0)
            continue
        index = parents.view(-1, k)[keep].reshape(-1)  # rows of the images that go on
        state = model.reorder_state(state, index)
        features = features.select(torch.arange(features.pooled.size(0), device=device).view(-1, k)[keep].reshape(-1))
        last = last.view(-1, k)[keep].reshape(-1)
        beams = _Beams([beams.images[a] for a in keep.tolist()], beams.history.view(len(beams.images), k, -1)[keep]
                       .reshape(index.numel(), -1), beams.rank[keep], beams.score[keep])
    return [_n_best(groups, cfg) for groups in finished]


def _advance(beams: _Beams, log_probs: torch.Tensor, finished: list[list[_Finished]], step: int,
             cfg: DecodeConfig, end: int) -> tuple[torch.Tensor, torch.Tensor, _Beams]:
    """One step for every group: returns the parent row of each new beam (A*K,), its last word (A*K,),
    and the new beams (``<eos>`` continuations and beams at ``max_length`` go to ``finished``)."""
    a, k, vocab = log_probs.shape
    kg, device = k // cfg.diverse_groups, log_probs.device
    chosen = torch.zeros(a, vocab, device=device)  # (A, V) words picked by earlier groups at this step
    parents = torch.zeros(a, k, dtype=torch.long, device=device)
    words = torch.zeros(a, k, dtype=torch.long, device=device)
    rank, score = torch.full((a, k), NEG_INF, device=device), torch.full((a, k), NEG_INF, device=device)
    for group in range(cfg.diverse_groups):
        part = slice(group * kg, (group + 1) * kg)
        step_rank = log_probs[:, part] - cfg.diversity * chosen.unsqueeze(1) if group else log_probs[:, part]
        total = (beams.rank[:, part].unsqueeze(-1) + step_rank).view(a, -1)  # (A, Kg*V)
        top = total.topk(min(2 * kg, total.size(-1)), dim=-1)  # (A, C) candidates, best first
        true = (beams.score[:, part].unsqueeze(-1) + log_probs[:, part]).view(a, -1).gather(1, top.indices)
        parent, word = top.indices // vocab + group * kg, top.indices % vocab  # (A, C)
        live, ends = _classify(top.values, word, kg, end)
        order = torch.where(live, 0, 1).argsort(dim=1, stable=True)[:, :kg]  # (A, Kg) the first Kg live ones
        kept = live.gather(1, order)
        parents[:, part], words[:, part] = parent.gather(1, order), word.gather(1, order)
        rank[:, part] = torch.where(kept, top.values.gather(1, order), NEG_INF)
        score[:, part] = torch.where(kept, true.gather(1, order), NEG_INF)
        if step == cfg.max_length - 1:  # the live beams end here too, at max_length words
            ends = ends.scatter(1, order, kept)
        _finish(beams, ends, parent, word, top.values, true, group, step, cfg, finished, end)
        if cfg.diverse_groups > 1:
            chosen.scatter_add_(1, words[:, part], kept.float())
    rows = (parents + torch.arange(a, device=device).unsqueeze(1) * k).view(-1)  # (A*K,)
    history = torch.cat([beams.history[rows], words.view(-1, 1)], 1)
    return rows, words.view(-1), _Beams(beams.images, history, rank, score)


def _classify(values: torch.Tensor, word: torch.Tensor, kg: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates (A, C), best first -> (live: may continue, ends: an ``<eos>`` ranked within the top
    Kg, which finishes a caption; an ``<eos>`` ranked lower is dropped, as in Hugging Face ``generate``)."""
    valid = values > NEG_INF
    is_eos = word == end
    ranked_high = torch.arange(values.size(1), device=values.device) < kg  # (C,)
    return valid & ~is_eos, valid & is_eos & ranked_high


def _finish(beams: _Beams, ends: torch.Tensor, parent: torch.Tensor, word: torch.Tensor, ranks: torch.Tensor,
            scores: torch.Tensor, group: int, step: int, cfg: DecodeConfig, finished: list[list[_Finished]],
            end: int) -> None:
    """Add the candidates marked in ``ends`` (A, C) to their image's finished captions of ``group``."""
    picked = ends.nonzero().tolist()
    if not picked:
        return
    k, norm = beams.rank.size(1), length_penalty(step + 1, cfg.length_penalty)
    parent, word, ranks, scores = parent.tolist(), word.tolist(), ranks.tolist(), scores.tolist()
    for a, c in picked:
        tokens = beams.history[a * k + parent[a][c]].tolist()
        if word[a][c] != end:
            tokens.append(word[a][c])
        finished[beams.images[a]][group].add(ranks[a][c] / norm, scores[a][c] / norm, tokens)


def _unsettled(beams: _Beams, finished: list[list[_Finished]], step: int, cfg: DecodeConfig) -> torch.Tensor:
    """Indices (into the active images) of the images some group of which can still improve: it has
    a live beam whose best possible final score beats its n-th best finished caption."""
    if step == cfg.max_length - 1:
        return torch.zeros(0, dtype=torch.long, device=beams.rank.device)
    groups, need = cfg.diverse_groups, min(cfg.n_best, cfg.beam_size // cfg.diverse_groups)
    best_live = beams.rank.view(len(beams.images), groups, -1).amax(-1)  # (A, G)
    bound = best_live / _largest_penalty(step, cfg)  # the best normalised score a live beam can reach
    nth = torch.tensor([[f.nth_rank(need) for f in finished[image]] for image in beams.images], device=bound.device)
    settled = (best_live == NEG_INF) | (nth >= bound)  # (A, G)
    return (~settled.all(-1)).nonzero().squeeze(1)


def _largest_penalty(step: int, cfg: DecodeConfig) -> float:
    """The largest length penalty among the lengths a beam live after ``step`` can still end at: its
    log-probability only falls, so dividing it by this bounds its final score."""
    shortest = min(max(step + 2, cfg.min_length + 1), cfg.max_length)
    return max(length_penalty(shortest, cfg.length_penalty), length_penalty(cfg.max_length, cfg.length_penalty))


def _n_best(groups: list[_Finished], cfg: DecodeConfig) -> list[Generated]:
    """Each group's best, then each group's second, ... (one group: simply best first), n_best of them."""
    ranked: list[Any] = []
    for position in range(max(len(g.items) for g in groups)):  # (an empty range if none finished)
        ranked.extend(g.items[position] for g in groups if position < len(g.items))
    if not ranked:  # every continuation was forbidden (e.g. --no-repeat-ngram 1 with a tiny vocabulary)
        return [Generated([], NEG_INF)]
    return [Generated(tokens, score) for _, score, tokens in ranked[:cfg.n_best]]

"""Caption generation from a trained captioner: greedy (batched) and beam search.

Both pick tokens with ``topk`` over log-probabilities, so beam search with one beam takes exactly
the greedy path. Generated sequences are token ids without ``<bos>``/``<eos>``.

Shape legend: B images, K beams, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmfuse.config import DecodeConfig
from mmfuse.data.vocab import BOS_ID, EOS_ID
from mmfuse.models.captioner import Captioner
from mmfuse.models.encoders import ImageFeatures


@torch.inference_mode()
def generate(model: Captioner, images: torch.Tensor, cfg: DecodeConfig) -> list[list[int]]:
    """Captions (token ids) for images (B, 3, S, S): greedy if ``cfg.beam_size`` is 1, else beam."""
    features = model.encode(images)
    if cfg.beam_size == 1:
        return greedy(model, features, cfg.max_length)
    return [beam_search(model, features.select(torch.tensor([b], device=images.device)), cfg.beam_size, cfg.max_length)
            for b in range(images.size(0))]


@torch.inference_mode()
def greedy(model: Captioner, features: ImageFeatures, max_length: int) -> list[list[int]]:
    """The most likely next word at every step, for all B images at once."""
    batch = features.pooled.size(0)
    device = features.pooled.device
    last = torch.full((batch,), BOS_ID, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    out: list[torch.Tensor] = []
    state = model.initial_state(features)
    for _ in range(max_length):
        log_probs, state = model.step(features, last, state)  # (B, V)
        last = log_probs.topk(1, dim=-1).indices.squeeze(1)  # (B,)
        out.append(torch.where(done, torch.full_like(last, EOS_ID), last))
        done |= last == EOS_ID
        if bool(done.all()):
            break
    return [_strip(row) for row in torch.stack(out, 1).tolist()] if out else [[] for _ in range(batch)]


@dataclass
class _Hypothesis:
    tokens: list[int]
    score: float


@torch.inference_mode()
def beam_search(model: Captioner, features: ImageFeatures, beam_size: int, max_length: int) -> list[int]:
    """Beam search for ONE image (features with B = 1); returns the best caption's ids.

    The score is the sum of token log-probabilities (``<eos>`` included). Each step ranks the
    continuations of all live beams; an ``<eos>`` continuation ranked within the top K becomes a
    finished hypothesis, and the best non-``<eos>`` continuations refill the K live beams (as
    Hugging Face ``generate`` does). A hypothesis also ends at ``max_length`` tokens. Search stops
    when no live beam can beat the best finished one (scores only fall as captions grow).
    """
    device = features.pooled.device
    beams = [_Hypothesis([], 0.0)]
    finished: list[_Hypothesis] = []
    state, feats = model.initial_state(features), features
    for step in range(max_length):
        last = torch.tensor([h.tokens[-1] if h.tokens else BOS_ID for h in beams], device=device)
        log_probs, state = model.step(feats, last, state)  # (k, V)
        top = log_probs.topk(min(2 * beam_size, log_probs.size(-1)), dim=-1)  # (k, 2K)
        live, parents = _select(beams, top.values.tolist(), top.indices.tolist(), beam_size, finished)
        if step == max_length - 1:
            finished.extend(live)
            break
        beams = live
        if not beams or (finished and max(f.score for f in finished) >= beams[0].score):
            break
        index = torch.tensor(parents, device=device)
        state = model.reorder_state(state, index)
        feats = features.select(torch.zeros(len(parents), dtype=torch.long, device=device))
    best = max(finished, key=lambda h: h.score)
    return _strip(best.tokens)


def _select(beams: list[_Hypothesis], values: list[list[float]], indices: list[list[int]], k: int,
            finished: list[_Hypothesis]) -> tuple[list[_Hypothesis], list[int]]:
    """Rank all continuations; move top-K ``<eos>`` ones to ``finished``; return K live + parents."""
    candidates = sorted(
        ((beam.score + v, b, t) for b, beam in enumerate(beams) for v, t in zip(values[b], indices[b])),
        key=lambda c: -c[0],
    )  # stable: ties keep beam order, then topk order
    live, parents = [], []
    for rank, (score, parent, token) in enumerate(candidates):
        hyp = _Hypothesis(beams[parent].tokens + [token], score)
        if token == EOS_ID:
            if rank < k:
                finished.append(hyp)
        else:
            live.append(hyp)
            parents.append(parent)
        if len(live) == k:
            break
    return live, parents


def _strip(ids: list[int]) -> list[int]:
    """Ids up to (not including) the first ``<eos>``."""
    return ids[: ids.index(EOS_ID)] if EOS_ID in ids else ids

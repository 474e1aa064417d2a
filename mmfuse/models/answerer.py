"""The answerer: a captioner that reads the question (and any earlier turns) as a prompt before it
generates the answer.

Every captioner mmfuse builds can answer this way, whatever its fusion: the decoder reads the
question's words with the image (fused into each word, attended from each step, or read first as
image tokens), then generates the answer; the loss covers the answer's tokens only. This is how
LLaVA, BLIP-2 and nanoVLM answer (the question is part of the language model's input), and with
mmfuse's own decoders the decoder is the question's text encoder.

Sequences, per text codec (:class:`AnswerText`):

- mmfuse's vocabulary: ``<bos> [q1 <bos> a1 <eos>] ... question <bos> answer <eos>``: ``<bos>``
  starts the text and separates each question from its answer (so generation starts, as for
  captions, by feeding ``<bos>``);
- a language model's tokenizer: ``[start] [image tokens] q1 a1 \\n ... question answer <eos>``,
  the answer with a leading space.

:meth:`teacher_forced` turns one into the model's inputs and targets, the prompt's positions
ignored. Generation reads the prompt once per image (:class:`Prompted`), then decodes as for a
caption with the one decoding module; prompts of one batch have equal length (:func:`same_length_groups`),
so no padding enters a recurrent state.

Shape legend: B questions, T positions, P prompt positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import torch

from mmfuse.data.records import AnswerRecord
from mmfuse.data.vocab import BOS_ID, EOS_ID, IGNORE, PAD_ID, Vocab
from mmfuse.models.encoders import ImageFeatures
from mmfuse.models.lm_captioner import LMText


class AnswerText(Protocol):
    """How a model's text codec writes an answering sample as ids."""

    pad: int  # the id that pads a batch of sequences

    def prompt(self, record: AnswerRecord) -> list[int]:
        """The ids the model reads before the answer (earlier turns and the question)."""

    def answer(self, record: AnswerRecord, k: int) -> list[int]:
        """The ids of human answer ``k`` as generated, its end included (and, for mmfuse's
        vocabulary, the ``<bos>`` that separates it from the question first)."""

    def decode(self, ids: list[int]) -> list[str]:
        """Generated ids -> the answer's words."""

    def unknown_words(self, record: AnswerRecord) -> list[str]:
        """Words of the question the codec cannot represent (mmfuse's vocabulary: read as ``<unk>``)."""


@dataclass(frozen=True)
class VocabAnswers:
    """mmfuse's vocabulary (spaCy tokens, as the data set stores them)."""

    vocab: Vocab
    pad: int = PAD_ID

    def prompt(self, record: AnswerRecord) -> list[int]:
        ids = [BOS_ID]
        for question, answer in record.history_tokens:
            ids += self._ids(question) + [BOS_ID] + self._ids(answer) + [EOS_ID]
        return ids + self._ids(record.question_tokens)

    def answer(self, record: AnswerRecord, k: int) -> list[int]:
        return [BOS_ID] + self._ids(record.answer_tokens[k]) + [EOS_ID]

    def decode(self, ids: list[int]) -> list[str]:
        return self.vocab.decode(ids)

    def unknown_words(self, record: AnswerRecord) -> list[str]:
        return list(dict.fromkeys(t for t in record.question_tokens if t not in self.vocab))

    def _ids(self, tokens: Sequence[str]) -> list[int]:
        return [self.vocab.index(t) for t in tokens]


@dataclass(frozen=True)
class LMAnswers:
    """A language model's tokenizer (raw text, as the data set keeps it)."""

    text: LMText
    pad: int = IGNORE  # the language model's embedding clamps it; targets ignore it

    def prompt(self, record: AnswerRecord) -> list[int]:
        turns = "".join(f"{q.strip()} {a.strip()}\n" for q, a in record.history)
        return self.text.tokenizer(turns + record.question.strip(), add_special_tokens=False).input_ids

    def answer(self, record: AnswerRecord, k: int) -> list[int]:
        tokenizer = self.text.tokenizer
        return tokenizer(" " + record.answers[k].strip(), add_special_tokens=False).input_ids + [tokenizer.eos_token_id]

    def decode(self, ids: list[int]) -> list[str]:
        return self.text.decode(ids)

    def unknown_words(self, record: AnswerRecord) -> list[str]:
        return []  # a tokenizer splits any word into pieces it knows


def answer_text(codec: Any) -> AnswerText:
    """The :class:`AnswerText` of a captioner's codec (its vocabulary, or its LM's tokenizer)."""
    return LMAnswers(codec) if isinstance(codec, LMText) else VocabAnswers(codec)


def teacher_forced(model: Any, sequences: torch.Tensor, prompt_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's prompt + answer ids (B, T), padded as the codec pads -> (what the model's forward
    reads, the targets of its logits), every prompt position's target ignored.

    Both captioners' :meth:`teacher_forcing` line target j up so that the first ``P`` targets are
    the prompt's own tokens (mmfuse's decoders: the prompt's next tokens and the separating
    ``<bos>``; a language model: its prompt ids), so masking the first ``P`` is the same rule."""
    inputs, targets = model.teacher_forcing(sequences)
    positions = torch.arange(targets.size(1), device=targets.device)  # (T,)
    return inputs, targets.masked_fill(positions < prompt_lengths.unsqueeze(1).to(targets.device), IGNORE)


class Prompted:
    """A captioner whose generation starts after it has read one prompt per image (B, P): the
    decoding module drives it as it drives the captioner itself."""

    def __init__(self, model: Any, prompts: torch.Tensor):
        self.model, self.prompts = model, prompts

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def decoding_state(self, features: ImageFeatures, cache: bool = True) -> Any:
        return self.model.read_prompt(features, self.prompts, self.model.decoding_state(features, cache))


def same_length_groups(lengths: Sequence[int]) -> list[list[int]]:
    """Positions grouped by equal prompt length (each group in input order; groups by first position)."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(n, []).append(i)
    return list(groups.values())

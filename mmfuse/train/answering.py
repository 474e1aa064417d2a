"""Training an answerer (task ``answer``): teacher-forced cross-entropy over the answer's tokens
(prompt positions ignored); after every epoch the model GENERATES answers to the validation
questions (greedy), scored with VQA accuracy and exact match."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from mmfuse.config import DecodeConfig, RunConfig
from mmfuse.data.dataset import AnswerDataset
from mmfuse.data.records import AnswerRecord, load_answer_split
from mmfuse.data.vocab import IGNORE, Vocab
from mmfuse.generate.answers import answer_files
from mmfuse.metrics.vqa import vqa_scores
from mmfuse.models.answerer import AnswerText, answer_text, teacher_forced
from mmfuse.models.caption_models import build_caption_model


def answer_dataset(records: list[AnswerRecord], text: AnswerText, image_size: int, seed: int = 0,
                   features=None) -> AnswerDataset:
    """The :class:`AnswerDataset` of data set records, encoded with the model's text codec."""
    return AnswerDataset([r.image for r in records], [text.prompt(r) for r in records],
                         [[text.answer(r, k) for k in range(len(r.answers))] for r in records], image_size, seed,
                         features, text.pad)


def score_answers(predicted: list[str], records: list[AnswerRecord]) -> dict:
    """:func:`~mmfuse.metrics.vqa.vqa_scores` of answers to ``records``."""
    return vqa_scores(predicted, [r.answers for r in records], [r.question_type for r in records],
                      [r.answer_type for r in records])


class AnswerObjective:
    """Cross-entropy over the answer tokens; validation scores GENERATED answers (greedy)."""

    labels = None
    eval_mode_training = False

    def __init__(self, cfg: RunConfig, data_dir: Path, vocab: Vocab, device: torch.device, features=None):
        self.cfg, self.device = cfg, device
        model, codec = build_caption_model(cfg.model, vocab, cfg.train.run)
        self.model, self.text = model.to(device), answer_text(codec)
        self.train_set = answer_dataset(load_answer_split(data_dir, "train"), self.text, cfg.model.image_size,
                                        cfg.train.seed, features)
        self.val_records = load_answer_split(data_dir, "val")
        self.val_prompts = [self.text.prompt(r) for r in self.val_records]
        self.val_decode = DecodeConfig(beam_size=1, max_length=cfg.decode.max_length)

    def start_epoch(self, epoch: int) -> None:
        """Each epoch draws its own human answer per question."""
        self.train_set.set_epoch(epoch)

    def loss(self, net: Callable, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed (not averaged) cross-entropy over the batch's answer tokens."""
        inputs, targets = teacher_forced(self.model, batch["tokens"].to(self.device), batch["prompt_lengths"])
        logits = net(batch["images"].to(self.device, non_blocking=True), inputs,
                     batch["image_index"].to(self.device))  # (B, T, V)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                               ignore_index=IGNORE, reduction="sum", label_smoothing=self.cfg.train.label_smoothing)

    def loss_weight(self, batch: dict[str, torch.Tensor]) -> float:
        """What :meth:`loss` sums over: the answer tokens."""
        return float((teacher_forced(self.model, batch["tokens"], batch["prompt_lengths"])[1] != IGNORE).sum())

    def validate(self) -> dict[str, float]:
        """VQA accuracy and exact match of greedy answers to the validation questions."""
        predicted = [" ".join(words) for words in answer_files(
            self.model, self.text, [r.image for r in self.val_records], self.val_prompts, self.cfg.model.image_size,
            self.val_decode)]
        return score_answers(predicted, self.val_records)["overall"]

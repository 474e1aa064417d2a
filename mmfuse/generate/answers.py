"""Generating answers: each image's prompt (question, earlier turns) read once, then the one
decoding module (greedy, beam search, sampling, every constraint) generates the answer, batched
over the questions of equal prompt length.

Shape legend: B questions in a batch, P prompt positions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from mmfuse.config import DecodeConfig
from mmfuse.data.dataset import ImageDataset
from mmfuse.generate.decoding import Generated, generate
from mmfuse.models.answerer import AnswerText, Prompted, same_length_groups


@torch.inference_mode()
def answer_images(model: Any, images: torch.Tensor, prompts: Sequence[list[int]], decode: DecodeConfig,
                  first_index: int = 0) -> list[list[Generated]]:
    """Answers to images (B, 3, S, S), one prompt each: per question ``decode.n_best`` answers, best
    first, in input order. Questions whose prompts have the same length decode together, so no
    padding enters the decoder's state (sampling seeds a question by ``first_index`` plus its
    group's first position plus its place in the group: the same input, the same draws)."""
    device = images.device
    out: list[list[Generated]] = [[] for _ in prompts]
    for group in same_length_groups([len(p) for p in prompts]):
        rows = torch.tensor(group, device=device)
        prompt = torch.tensor([prompts[i] for i in group], dtype=torch.long, device=device)  # (G, P)
        for i, options in zip(group, generate(Prompted(model, prompt), images.index_select(0, rows), decode,
                                              first_index + group[0])):
            out[i] = options
    return out


def answer_files(model: Any, text: AnswerText, paths: list[Path], prompts: list[list[int]], image_size: int,
                 decode: DecodeConfig, batch_size: int = 64, blank_images: bool = False) -> Iterator[list[str]]:
    """Yield each question's best answer (words) in input order; the model is put in eval mode for
    the duration. ``blank_images`` feeds mean-colour images instead (the image ablation)."""
    device = next(model.parameters()).device
    loader = DataLoader(ImageDataset(paths, image_size, blank_images), batch_size=batch_size, shuffle=False)
    was_training = model.training
    model.eval()
    try:
        first = 0
        for images in loader:
            batch = prompts[first:first + images.size(0)]
            for options in answer_images(model, images.to(device), batch, decode, first):
                yield text.decode(options[0].tokens)
            first += images.size(0)
    finally:
        model.train(was_training)

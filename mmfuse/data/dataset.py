"""Reading a workspace data set: manifest, splits, vocabulary, and a torch ``Dataset`` over them.

Shape legend: B images in a batch, M captions in a batch (up to K per image), T tokens.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterable

import torch
from torch.utils.data import Dataset, RandomSampler, Sampler

from mmfuse.data.images import (
    MEAN,
    image_transform,
    load_rgb,
    normalize_transform,
    resize_transform,
)
from mmfuse.data.records import LabelledRecord, Record
from mmfuse.data.vocab import PAD_ID, Vocab
from mmfuse.errors import MmfuseError
from mmfuse.models.encoders import CachedFeatures
from mmfuse.workspace import read_json

CACHE_LIMIT_BYTES = 2 * 2**30  # decoded training images are kept in memory up to this size


def load_vocab(root: Path) -> Vocab:
    return Vocab.from_json(read_json(root / "vocab.json", "data set vocabulary"), str(root / "vocab.json"))


class PixelCache:
    """Images by path, decoded and resized (uint8 (3, S, S)); each is kept in memory after its first
    use when every distinct image of the split fits in :data:`CACHE_LIMIT_BYTES` (and ``keep``), so
    later epochs skip PNG decoding, once per image however many samples share it."""

    def __init__(self, paths: Iterable[Path], image_size: int, keep: bool = True):
        self.resize = resize_transform(image_size)
        fits = keep and len(set(paths)) * 3 * image_size**2 <= CACHE_LIMIT_BYTES
        self.kept: dict[Path, torch.Tensor] | None = {} if fits else None

    def __call__(self, path: Path) -> torch.Tensor:
        if self.kept is None:
            return self.resize(load_rgb(path))
        pixels = self.kept.get(path)
        if pixels is None:
            pixels = self.kept[path] = self.resize(load_rgb(path))
        return pixels


class CaptionDataset(Dataset):
    """Images with all their encoded references; ``collate`` samples K references per image.

    Decoded, resized images (uint8) are kept in memory after their first use when the whole split
    fits in :data:`CACHE_LIMIT_BYTES`, so later epochs skip PNG decoding.

    Args:
        records: the split's records.
        encoded: each record's references as ids (a vocabulary's for its tokens, or a language
            model's tokenizer's for its raw captions: :func:`mmfuse.models.caption_models.reference_ids`).
        image_size: side the images are resized to.
        captions_per_image: K, references per image per batch (sampled when there are more).
        seed: seed of the reference sampling (combined with :meth:`set_epoch`).
        pad_value: the id that pads the references of a batch.
    """

    def __init__(self, records: list[Record], encoded: list[list[list[int]]], image_size: int,
                 captions_per_image: int = 5, seed: int = 0, features: Any = None, pad_value: int = PAD_ID):
        self.records = records
        self.features = features  # a FeatureCache: give cached backbone outputs instead of pixels
        self.encoded = encoded
        self.pad_value = pad_value
        self.pixels = PixelCache((r.image for r in records), image_size, keep=features is None)
        self.normalize = normalize_transform()
        self.k = captions_per_image
        self.seed = seed
        self.epoch = 0

    def sampler(self, generator: torch.Generator) -> Sampler[int]:
        """Training order: images shuffled (each brings its captions)."""
        return RandomSampler(self, generator=generator)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Any, list[list[int]], int]:
        if self.features is not None:
            return CachedFeatures(*self.features.features(self.records[i].image)), self.encoded[i], i
        return self.normalize(self.pixels(self.records[i].image)), self.encoded[i], i

    def collate(self, batch: list[tuple[torch.Tensor, list[list[int]], int]]) -> dict[str, torch.Tensor]:
        """-> images (B, 3, S, S), tokens (M, T) padded, image_index (M,), records (B,) (positions in the split)."""
        images, captions, index = [], [], []
        for row, (image, refs, i) in enumerate(batch):
            images.append(image)
            chosen = refs if len(refs) <= self.k else random.Random(f"{self.seed}/{self.epoch}/{i}").sample(refs, self.k)
            captions.extend(chosen)
            index.extend([row] * len(chosen))
        return {"images": _stack(images), "tokens": pad(captions, self.pad_value), "image_index": torch.tensor(index),
                "records": torch.tensor([i for _, _, i in batch])}


class LabelledDataset(Dataset):
    """(image, text, label) samples; images shared by several samples are decoded once and kept in
    memory (uint8) when the split fits in :data:`CACHE_LIMIT_BYTES`.

    Args:
        paths: image of each sample. token_ids: encoded text of each sample. labels: class index of
        each sample (-1 when unknown, for prediction). image_size: side the images are resized to.
        blank: give every sample a mean-colour image instead of its own (the image ablation).
    """

    def __init__(self, paths: list[Path], token_ids: list[list[int]], labels: list[int], image_size: int,
                 blank: bool = False, features: Any = None):
        self.paths, self.token_ids, self.labels, self.blank = paths, token_ids, labels, blank
        self.features = features  # a FeatureCache: give cached backbone outputs instead of pixels
        self.pixels = PixelCache(paths, image_size, keep=not blank)
        self.normalize = normalize_transform()
        mean = torch.tensor(MEAN).mul(255).round().to(torch.uint8)
        self.blank_pixels = mean.view(3, 1, 1).expand(3, image_size, image_size)

    def __len__(self) -> int:
        return len(self.paths)

    def sampler(self, generator: torch.Generator) -> Sampler[int]:
        """Training order: images shuffled, each image's samples next to each other (see
        :class:`ImageGroupedSampler`)."""
        return ImageGroupedSampler(self.paths, generator)

    def __getitem__(self, i: int) -> tuple[Any, list[int], int]:
        if self.features is not None and not self.blank:
            return CachedFeatures(*self.features.features(self.paths[i])), self.token_ids[i], self.labels[i]
        # the image ablation (blank): a mean-colour image, zeros once normalised
        pixels = self.blank_pixels if self.blank else self.pixels(self.paths[i])
        return self.normalize(pixels), self.token_ids[i], self.labels[i]

    @staticmethod
    def collate(batch: list[tuple[torch.Tensor, list[int], int]]) -> dict[str, torch.Tensor]:
        """-> images (B, 3, S, S), tokens (B, T) padded, labels (B,)."""
        images, tokens, labels = zip(*batch)
        return {"images": _stack(list(images)), "tokens": pad(list(tokens)), "labels": torch.tensor(labels)}


class AnswerDataset(Dataset):
    """Questions about images with their human answers, as ids; ``collate`` draws one answer per
    question each epoch (uniformly among the humans' answers, so one that more people gave is drawn
    more often: the generative form of VQA's soft targets). Images shared by several questions are
    decoded once and kept in memory (uint8) when the split fits in :data:`CACHE_LIMIT_BYTES`.

    Args:
        paths: image of each question. prompts: ids read before the answer (question, earlier turns).
        answers: each question's human answers as generated ids (:class:`~mmfuse.models.answerer.AnswerText`).
        image_size: side the images are resized to. seed: of the answer draws (with :meth:`set_epoch`).
        pad_value: the id that pads a batch's sequences.
    """

    def __init__(self, paths: list[Path], prompts: list[list[int]], answers: list[list[list[int]]], image_size: int,
                 seed: int = 0, features: Any = None, pad_value: int = PAD_ID):
        self.paths, self.prompts, self.answers = paths, prompts, answers
        self.features, self.seed, self.pad_value, self.epoch = features, seed, pad_value, 0
        self.pixels = PixelCache(paths, image_size, keep=features is None)
        self.normalize = normalize_transform()

    def __len__(self) -> int:
        return len(self.paths)

    def sampler(self, generator: torch.Generator) -> Sampler[int]:
        """Training order: images shuffled, each image's questions next to each other."""
        return ImageGroupedSampler(self.paths, generator)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path = self.paths[i]
        if self.features is not None:
            return CachedFeatures(*self.features.features(path)), i
        return self.normalize(self.pixels(path)), i

    def collate(self, batch: list[tuple[Any, int]]) -> dict[str, torch.Tensor]:
        """-> images (B, 3, S, S), tokens (B, T): prompt + one drawn answer, padded; prompt_lengths (B,);
        image_index (B,)."""
        sequences, lengths = [], []
        for _, i in batch:
            answers = self.answers[i]
            drawn = answers[random.Random(f"{self.seed}/{self.epoch}/{i}").randrange(len(answers))]
            sequences.append(self.prompts[i] + drawn)
            lengths.append(len(self.prompts[i]))
        return {"images": _stack([image for image, _ in batch]), "tokens": pad(sequences, self.pad_value),
                "prompt_lengths": torch.tensor(lengths), "image_index": torch.arange(len(batch)),
                "records": torch.tensor([i for _, i in batch])}


class ImageGroupedSampler(Sampler[int]):
    """Sample indices in a random order of images, each image's samples consecutive (so they share
    a batch unless one falls on a batch boundary), in a random order within the image.

    With questions asked in pairs about one image (shapes-qa: one "yes", one "no"), a batch then
    holds both twins and every step sees what tells them apart: the same image, other words. Each
    sample is drawn once per epoch, as with plain shuffling.
    """

    def __init__(self, keys: list[Any], generator: torch.Generator):
        groups: dict[Any, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
        self.groups = list(groups.values())
        self.generator = generator
        self.count = len(keys)

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        for g in torch.randperm(len(self.groups), generator=self.generator).tolist():
            group = self.groups[g]
            for j in torch.randperm(len(group), generator=self.generator).tolist():
                yield group[j]


class ImageDataset(Dataset):
    """Just the images of a split (for generating captions). ``blank=True`` gives all-zero
    (mean-colour) inputs instead, without reading the files: the image ablation."""

    def __init__(self, paths: list[Path], image_size: int, blank: bool = False):
        self.paths, self.image_size, self.blank = paths, image_size, blank
        self.transform = image_transform(image_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.blank:
            return torch.zeros(3, self.image_size, self.image_size)
        return self.transform(load_rgb(self.paths[i]))


def _stack(images: list[Any]) -> Any:
    """A batch of pixels (B, 3, S, S), or of cached backbone outputs."""
    return CachedFeatures.stack(images) if isinstance(images[0], CachedFeatures) else torch.stack(images)


def pad(sequences: list[list[int]], value: int = PAD_ID) -> torch.Tensor:
    """Right-pad id lists with ``value`` (``<pad>``) -> (M, T)."""
    longest = max(len(s) for s in sequences)
    out = torch.full((len(sequences), longest), value, dtype=torch.long)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return out


def labelled_dataset(records: list[LabelledRecord], vocab: Vocab, labels: list[str], image_size: int,
                     features: Any = None) -> LabelledDataset:
    """A :class:`LabelledDataset` of data set records (labels as indices into ``labels``); with a
    feature cache, it gives cached backbone outputs instead of pixels."""
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted({r.label for r in records} - set(index))
    if unknown:
        raise MmfuseError(f"label(s) {', '.join(unknown)} are not among the model's labels ({', '.join(labels)})")
    return LabelledDataset([r.image for r in records], [vocab.encode(r.tokens) for r in records],
                           [index[r.label] for r in records], image_size, features=features)

"""``mmfuse train-lm``: a small causal language model trained on a data set's caption text alone,
saved as an ordinary Hugging Face model directory (config, safetensors weights, tokenizer).

Without hub access there are no pretrained language-model weights; this gives one that knows the
captions' language but has never seen an image (the LLaVA / ClipCap situation in miniature): freeze
it and let a connector teach it to see (``mmfuse train --decoder hf:<dir> --fusion mlp``). It also
serves domain text (reports, product descriptions) where a general model is a poor fit.

The tokenizer is word-level (lower-cased words and punctuation of the training captions, with
``<pad> <s> </s> <unk>``), built with the ``tokenizers`` library; the model is a transformers Llama,
GPT-2 or Qwen2 from a config.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from mmfuse.data.records import load_manifest, load_split
from mmfuse.errors import MmfuseError
from mmfuse.workspace import Workspace

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
ARCHITECTURES = ("llama", "gpt2", "qwen2")


@dataclass(frozen=True)
class LMTrainSettings:
    """What ``train-lm`` builds and how long it trains."""

    architecture: str = "llama"
    width: int = 128
    layers: int = 2
    heads: int = 4
    epochs: int = 3
    batch_size: int = 16
    lr: float = 3e-3
    seed: int = 0
    max_positions: int = 256
    context: float = 0.8  # share of captions read after a noisy paraphrase (see documents)

    def validate(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise MmfuseError(f"--architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}")
        for name in ("width", "layers", "heads", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise MmfuseError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.width % self.heads:
            raise MmfuseError(f"--width {self.width} must be divisible by --heads {self.heads}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise MmfuseError(f"--lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.context <= 1:
            raise MmfuseError(f"--context must be between 0 and 1, got {self.context}")


def word_tokenizer(texts: list[str]) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over ``texts`` (lower-cased; words and punctuation)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    core.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS)))
    pad, bos, eos, unk = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=pad, bos_token=bos, eos_token=eos, unk_token=unk)


def model_config(settings: LMTrainSettings, tokenizer: Any) -> Any:
    """A transformers config of ``settings.architecture`` sized by ``settings`` for ``tokenizer``."""
    import transformers

    ids = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id, "tie_word_embeddings": True}
    s = settings
    if s.architecture == "gpt2":
        return transformers.GPT2Config(n_embd=s.width, n_layer=s.layers, n_head=s.heads, n_positions=s.max_positions,
                                       **ids)
    cls = transformers.LlamaConfig if s.architecture == "llama" else transformers.Qwen2Config
    return cls(hidden_size=s.width, intermediate_size=4 * s.width, num_hidden_layers=s.layers,
               num_attention_heads=s.heads, num_key_value_heads=s.heads, max_position_embeddings=s.max_positions,
               **ids)


Sequence = tuple[list[int], list[int]]  # (token ids, labels: -100 where nothing is predicted)


def _batches(sequences: list[Sequence], size: int, pad: int, generator: torch.Generator | None):
    """(input ids (B, T), labels (B, T) with padding as -100), shuffled when ``generator`` is given."""
    order = torch.randperm(len(sequences), generator=generator).tolist() if generator else range(len(sequences))
    order = list(order)
    for start in range(0, len(order), size):
        rows = [sequences[i] for i in order[start:start + size]]
        longest = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), longest), pad, dtype=torch.long)
        labels = torch.full((len(rows), longest), -100, dtype=torch.long)
        for r, (seq, seq_labels) in enumerate(rows):
            ids[r, : len(seq)] = torch.tensor(seq)
            labels[r, : len(seq)] = torch.tensor(seq_labels)
        yield ids, labels


def _encode(tokenizer: Any, captions: list[str]) -> list[list[int]]:
    """The word ids of each caption (no special tokens)."""
    return [tokenizer(c.strip(), add_special_tokens=False).input_ids for c in captions]


@dataclass(frozen=True)
class Specials:
    """The tokenizer's ids of ``<s>``, ``</s>`` and ``<unk>``."""

    bos: int
    eos: int
    unk: int


def noisy(words: list[int], rng: random.Random, unk: int) -> list[int]:
    """``words`` as a connector might first write them: each kept with one probability drawn from
    [0.5, 1], in order, with ``<unk>`` fillers between them (each slot takes another with
    probability 0.4), the way image tokens of the background sit between those of the objects."""
    keep = rng.uniform(0.5, 1.0)
    out = []
    for word in words:
        while rng.random() < 0.4:
            out.append(unk)
        if rng.random() < keep:
            out.append(word)
    return out


def documents(images: list[list[list[int]]], context: float, rng: random.Random, special: Specials) -> list[Sequence]:
    """One epoch's sequences: images in a random order, each image's captions together (in a random
    order) as ``<s> caption </s>``, like a document of paraphrases. A share ``context`` of the
    captions is preceded by ``<s> noisy paraphrase </s>`` (another caption of the same image through
    :func:`noisy`, or the caption itself when it is the only one) that the model reads but is not
    trained to write (labels -100).

    Why: a frozen model steered by a prefix connector must read what comes before the caption. Trained
    on captions alone it learned to copy a clean paraphrase and little else (the four prefix
    connectors stopped at test BLEU-4 0.62-0.64 on shapes); reading noisy paraphrases, ``mlp`` on it
    reaches 0.84 with the same captioner's CNN (docs/language-models.md). With every caption shuffled
    apart (nothing before a caption says anything about it) the frozen model ignored what came
    before and ``mlp`` reached validation BLEU-4 0.49."""
    order = list(range(len(images)))
    rng.shuffle(order)
    out: list[Sequence] = []
    for i in order:
        captions = rng.sample(images[i], len(images[i]))
        for j, caption in enumerate(captions):
            target = [special.bos, *caption, special.eos]
            if rng.random() < context:
                read = [special.bos, *noisy(rng.choice([c for k, c in enumerate(captions) if k != j] or captions),
                                            rng, special.unk), special.eos]
                out.append((read + target, [-100] * len(read) + target))
            else:
                out.append((target, target))
    return out


def pack(sequences: list[Sequence], block: int) -> list[Sequence]:
    """Consecutive sequences joined into blocks of up to ``block`` tokens, as language models are
    pre-trained: the model then sees every distance up to ``block``, and learns that a caption starts
    after ``<s>`` whatever came before. A captioner puts image tokens (64 for ``mlp`` on an 8 x 8
    grid) between ``<s>`` and the caption; trained on single captions (distances up to 24 here), a
    frozen model meets distances there it has never seen."""
    blocks: list[Sequence] = []
    ids: list[int] = []
    labels: list[int] = []
    for seq, seq_labels in sequences:
        if ids and len(ids) + len(seq) > block:
            blocks.append((ids, labels))
            ids, labels = [], []
        ids, labels = ids + seq[:block], labels + seq_labels[:block]
    return blocks + ([(ids, labels)] if ids else [])


def _perplexity(model: Any, sequences: list[Sequence], pad: int) -> float:
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for ids, labels in _batches(sequences, 128, pad, None):
            logits = model(input_ids=ids, attention_mask=(labels != -100).long()).logits[:, :-1]
            target = labels[:, 1:]
            total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                                             ignore_index=-100, reduction="sum"))
            count += int((target != -100).sum())
    model.train()
    return math.exp(total / max(count, 1))


@dataclass(frozen=True)
class TrainedLM:
    """Where the model went and how well it predicts the validation captions."""

    path: Path
    parameters: int
    vocab_size: int
    val_perplexity: float
    seconds: float


def train_language_model(workspace: Workspace, data: str, out: Path, settings: LMTrainSettings,
                         overwrite: bool = False, on_epoch: Callable[[int, float, float], None] | None = None) -> TrainedLM:
    """Train a causal LM on data set ``data``'s training captions; write it to ``out`` whole or not at all."""
    settings.validate()
    if out.exists() and not overwrite:
        raise MmfuseError(f"{out} already exists; pass --overwrite or choose another --out")
    from mmfuse.models.language_model import quiet_transformers

    quiet_transformers()
    with workspace.reading_dataset(data):
        root = workspace.existing_dataset(data)
        if load_manifest(root).get("task", "caption") != "caption":
            raise MmfuseError(f"train-lm learns caption text; data set {data!r} is not a captioning data set")
        train_images = [list(r.captions) for r in load_split(root, "train")]
        val_captions = [c for r in load_split(root, "val") for c in r.captions]
    start = time.perf_counter()
    torch.manual_seed(settings.seed)
    tokenizer = word_tokenizer([c for captions in train_images for c in captions])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(model_config(settings, tokenizer))
    special = Specials(tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id)
    train_words = [_encode(tokenizer, captions) for captions in train_images]
    rng = random.Random(settings.seed)

    def epoch_blocks() -> list[Sequence]:  # the noise is drawn afresh every epoch
        return pack(documents(train_words, settings.context, rng, special), settings.max_positions // 2)

    val = [([special.bos, *w, special.eos],) * 2 for w in _encode(tokenizer, val_captions)]
    blocks = epoch_blocks()
    steps = settings.epochs * -(-len(blocks) // settings.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1))))
    order = torch.Generator().manual_seed(settings.seed)
    model.train()
    for epoch in range(1, settings.epochs + 1):
        losses = []
        blocks = blocks if epoch == 1 else epoch_blocks()
        for ids, labels in _batches(blocks, settings.batch_size, tokenizer.pad_token_id, order):
            loss = model(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long(), labels=labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        if on_epoch:
            on_epoch(epoch, sum(losses) / len(losses), _perplexity(model, val, tokenizer.pad_token_id))
    perplexity = _perplexity(model, val, tokenizer.pad_token_id)
    _save(model, tokenizer, out)
    return TrainedLM(out, sum(p.numel() for p in model.parameters()), len(tokenizer), perplexity,
                     time.perf_counter() - start)


def _save(model: Any, tokenizer: Any, out: Path) -> None:
    """Write into a temporary directory beside ``out``, then move it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

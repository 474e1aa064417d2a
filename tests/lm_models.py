"""Tiny random Hugging Face causal LMs (GPT-2, Llama, Qwen2) written with ``save_pretrained``, with a
word-level tokenizer, into a directory or a Hugging Face cache layout: the real offline loading path,
no downloaded weights."""

from __future__ import annotations

from pathlib import Path

import torch

from mmfuse.train.language_model import LMTrainSettings, model_config, word_tokenizer

WORDS = ["a red circle above a blue square .", "a green triangle left of a small red square .",
         "two blue circles", "a large yellow triangle right of a green circle ."]
ARCHITECTURES = ("gpt2", "llama", "qwen2")


def save_tiny_lm(folder: Path, architecture: str = "llama", pad_token: bool = True, seed: int = 0) -> Path:
    """A random 2-layer, 32-wide causal LM of ``architecture`` and its tokenizer in ``folder``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    tokenizer = word_tokenizer(WORDS)
    config = model_config(LMTrainSettings(architecture=architecture, width=32, layers=2, heads=4, max_positions=128),
                          tokenizer)
    model = AutoModelForCausalLM.from_config(config)
    _learn(model, tokenizer)
    if not pad_token:  # as GPT-2's own tokenizer: no pad token at all
        tokenizer.pad_token = None
        config.pad_token_id = None
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _learn(model, tokenizer, steps: int = 40) -> None:
    """A few steps on :data:`WORDS`, so generated captions are sentences of different lengths that end."""
    rows = [[tokenizer.bos_token_id] + tokenizer(w).input_ids + [tokenizer.eos_token_id] for w in WORDS]
    ids = torch.full((len(rows), max(map(len, rows))), tokenizer.eos_token_id)
    labels = torch.full_like(ids, -100)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = labels[r, : len(row)] = torch.tensor(row)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def save_in_hub_cache(cache: Path, repo_id: str, architecture: str = "llama", commit: str = "0" * 40) -> Path:
    """The layout ``huggingface_hub`` keeps: ``models--owner--name/{refs/main, snapshots/<commit>/...}``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    save_tiny_lm(repo / "snapshots" / commit, architecture)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


def save_tiny_vision_tower(folder: Path, kind: str = "clip") -> Path:
    """A random 2-layer ViT tower (CLIP or SigLIP vision config, 32 px images, 8 px patches) and its
    image processor's statistics, as ``save_pretrained`` writes them."""
    import transformers

    torch.manual_seed(0)
    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                 patch_size=8)
    if kind == "clip":
        model, processor = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**sizes)), \
            transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32)
    else:
        model, processor = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**sizes)), \
            transformers.SiglipImageProcessor(size={"height": 32, "width": 32})
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder

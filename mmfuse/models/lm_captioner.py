"""The language-model captioner: image encoder -> connector -> a Hugging Face causal LM.

The LM reads ``[start] [image tokens] [prompt] caption [eos]`` as embeddings (LLaVA's layout;
``start`` is the tokenizer's BOS, or its EOS for GPT-2-style models, which have none): the connector
makes the image tokens (prefix connectors) or the media the LM's gated cross-attention blocks read
(``xattn``, which adds no image tokens). Only the caption's tokens and its ``<eos>`` are predicted;
image and prompt positions carry no loss.

Decoding runs through the LM's key/value cache, with the same contract as
:class:`~mmfuse.models.captioner.Captioner` so that the one decoding module
(:mod:`mmfuse.generate.decoding`) drives both: :meth:`LMCaptioner.decoding_state` reads the image and
prompt once per image and keeps the logits of the first caption token; each :meth:`step` then
reads one token per row.

Shape legend: B images, M captions (or rows), C context positions (start, image, prompt), T caption
tokens, K media tokens, D the LM's width, V its vocabulary.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from mmfuse.config import ModelConfig
from mmfuse.models.captioner import SpecialIds, rebuilt_names
from mmfuse.models.connectors import connector_options
from mmfuse.models.encoders import ImageFeatures, build_image_encoder
from mmfuse.models.fusion import CROSS, FUSIONS
from mmfuse.models.hub import BaseModel
from mmfuse.models.language_model import (
    LanguageModel,
    LMSettings,
    LMTraining,
    load_causal_lm,
    load_tokenizer,
)


class LMText:
    """A language model's tokenizer as mmfuse's text codec: captions to ids and back."""

    def __init__(self, tokenizer: Any, prompted: bool):
        self.tokenizer, self.prompted = tokenizer, prompted

    def __len__(self) -> int:
        return len(self.tokenizer)

    def encode_caption(self, caption: str) -> list[int]:
        """A caption's target ids, ``<eos>`` included (after a prompt, with a leading space)."""
        text = (" " if self.prompted else "") + caption.strip()
        return self.tokenizer(text, add_special_tokens=False).input_ids + [self.tokenizer.eos_token_id]

    def decode(self, ids: list[int]) -> list[str]:
        """Generated ids (no ``<eos>``) -> the caption's words."""
        return self.tokenizer.decode(ids, skip_special_tokens=True).split()


class LMState(NamedTuple):
    """Decoding state: the LM's key/value cache, the next-token log-probabilities after the
    context (returned by the first step, then None) and the media rows (``xattn``)."""

    past: Any
    pending: torch.Tensor | None  # (M, V)
    media: torch.Tensor | None  # (M, K, Dm)
    image_in_state: bool = True


class LMCaptioner(nn.Module):
    """Encoder, connector and language model (:func:`build_lm_captioner` makes one from config).

    ``text_ablation = True`` gives the LM zero vectors instead of the caption's words (an ablation).
    """

    def __init__(self, encoder: nn.Module, connector: nn.Module, lm: LanguageModel, text: LMText,
                 start_ids: list[int], prompt_ids: list[int]):
        super().__init__()
        self.encoder, self.fusion, self.lm, self.text = encoder, connector, lm, text
        self.register_buffer("start_ids", torch.tensor(start_ids, dtype=torch.long), persistent=False)
        self.register_buffer("prompt_ids", torch.tensor(prompt_ids, dtype=torch.long), persistent=False)
        eos = text.tokenizer.eos_token_id
        self.special = SpecialIds(eos, eos)
        self.text_ablation = False
        if connector.kind == CROSS:
            connector.install(lm.decoder_layers())

    def encode(self, images: torch.Tensor) -> ImageFeatures:
        """images (B, 3, S, S) -> ImageFeatures(grid (B, N, Di), pooled (B, Di))."""
        return self.encoder(images)

    def context(self, features: ImageFeatures) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the LM reads before the caption -> (embeddings (M, C, D): start, image tokens, prompt;
        ``xattn``'s media (M, K, Di) or None). ``xattn`` adds no image tokens: its media are handed to
        its blocks here."""
        rows = features.pooled.size(0)
        start = self.lm.embed(self.start_ids).expand(rows, -1, -1).float()  # (M, 1, D)
        prompt = self.lm.embed(self.prompt_ids).expand(rows, -1, -1).float()  # (M, P, D)
        if self.fusion.kind == CROSS:
            media = self.fusion.media(features)
            self.fusion.attending(media)
            return torch.cat([start, prompt], 1), media
        return torch.cat([start, self.fusion.prefix(features).float(), prompt], 1), None  # image tokens (M, I, D)

    def words(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (M, T) (padding: IGNORE) -> the LM's input embeddings (M, T, D)."""
        words = self.lm.embed(tokens.clamp_min(0)).float()
        return torch.zeros_like(words) if self.text_ablation else words

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits: tokens (M, T) the caption ids with ``<eos>`` (padded with IGNORE),
        image_index (M,) -> logits (M, T, V), row t predicting tokens[:, t]. Padding sits at the
        right of a causal model, so no real position ever attends to it (no mask needed)."""
        context, _ = self.context(self.encode(images).select(image_index))  # (M, C, D)
        logits, _ = self.lm(torch.cat([context, self.words(tokens[:, :-1])], 1))  # (M, C + T - 1, V)
        return logits[:, context.size(1) - 1:]

    @staticmethod
    def teacher_forcing(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch's caption ids -> (what :meth:`forward` reads, the targets of its logits)."""
        return tokens, tokens

    # --- decoding (see the module doc) ----------------------------------------------------------

    def decoding_state(self, features: ImageFeatures, cache: bool = True) -> LMState:
        """The context read once per image -> the cache and the first caption token's log-probs."""
        context, media = self.context(features)
        logits, past = self.lm(context, use_cache=True)
        return LMState(past, torch.log_softmax(logits[:, -1], -1), media)

    def read_prompt(self, features: ImageFeatures, prompts: torch.Tensor, state: LMState) -> LMState:
        """The state after reading ``prompts`` (M, P) (an answerer's question, all of one length)
        after the context: the cache extended and the first answer token's log-probs pending."""
        if prompts.size(1) == 0:
            return state
        if state.media is not None:
            self.fusion.attending(state.media)
        logits, past = self.lm(self.lm.embed(prompts).float(), past=state.past, use_cache=True)  # (M, P, V)
        return state._replace(past=past, pending=torch.log_softmax(logits[:, -1], -1))

    @staticmethod
    def step_features(features: ImageFeatures, state: LMState) -> ImageFeatures:
        """Steps read nothing of the features (the image is in the cache): zero-width rows."""
        return ImageFeatures(features.grid[:, :0], features.pooled[:, :0])

    def step(self, features: ImageFeatures, last: torch.Tensor, state: LMState) -> tuple[torch.Tensor, LMState]:
        """One step: last tokens (M,) -> next-token log-probabilities (M, V), new state."""
        if state.pending is not None:  # the first step: the context's prediction
            return state.pending, state._replace(pending=None)
        if state.media is not None:
            self.fusion.attending(state.media)
        logits, past = self.lm(self.words(last.unsqueeze(1)), past=state.past, use_cache=True)  # (M, 1, V)
        return torch.log_softmax(logits[:, -1], -1), state._replace(past=past)

    @staticmethod
    def reorder_state(state: LMState | None, index: torch.Tensor, same_images: bool = False) -> LMState | None:
        """Keep rows ``index`` (beam search, finished images dropped); the cache is reordered in place."""
        if state is None:
            return None
        state.past.reorder_cache(index)
        pending = None if state.pending is None else state.pending.index_select(0, index)
        media = state.media if state.media is None or same_images else state.media.index_select(0, index)
        return LMState(state.past, pending, media)

    # --- what a checkpoint holds -----------------------------------------------------------------

    def saved_state(self) -> dict[str, torch.Tensor]:
        """The tensors that trained (encoder, connector, and per :class:`LMTraining` nothing, the LoRA
        adapters or the whole LM); the rest is rebuilt from the base model. Tied tensors appear once
        per name, each its own copy (safetensors stores no shared memory)."""
        keep, rebuilt = self.lm.saved_prefixes(), rebuilt_names(self.encoder)
        seen: set[int] = set()
        out = {}
        for name, tensor in self.state_dict().items():
            if name.startswith("lm.") and keep is not None and not any(k in name for k in keep) \
                    or name.startswith(rebuilt):
                continue
            tensor = tensor.detach()
            if tensor.data_ptr() in seen:
                tensor = tensor.clone()
            seen.add(tensor.data_ptr())
            out[name] = tensor
        return out


def lm_settings(cfg: ModelConfig) -> LMSettings:
    training = LMTraining.FULL if cfg.finetune_lm else LMTraining.LORA if cfg.lora else LMTraining.FROZEN
    return LMSettings(training, cfg.lora, cfg.lora_alpha, cfg.lora_targets, cfg.frozen_dtype,
                      cfg.gradient_checkpointing)


def build_lm_captioner(cfg: ModelConfig, base: BaseModel) -> LMCaptioner:
    """An :class:`LMCaptioner` with the parts of ``cfg`` on the language model found at ``base``."""
    tokenizer = load_tokenizer(base)
    lm = LanguageModel(load_causal_lm(base), lm_settings(cfg))
    encoder = build_image_encoder(cfg)
    connector = FUSIONS.create(cfg.fusion, image_dim=encoder.out_dim, text_dim=lm.width, dropout=cfg.dropout,
                               **connector_options(cfg.fusion, cfg))
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    prompt = tokenizer(cfg.prompt, add_special_tokens=False).input_ids if cfg.prompt else []
    return LMCaptioner(encoder, connector, lm, LMText(tokenizer, bool(cfg.prompt)), [start], prompt)

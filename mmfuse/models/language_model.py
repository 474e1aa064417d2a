"""A pretrained Hugging Face causal language model as a caption decoder (``--decoder hf:<id|dir>``).

:class:`LanguageModel` holds any ``AutoModelForCausalLM`` with its own tokenizer and says how it
trains (:class:`LMTraining`): frozen (the default: LLaVA stage 1, ClipCap, BLIP-2), LoRA adapters
(peft) on the attention and MLP projections, or fully fine-tuned. A frozen model may be held in
bf16. Its inputs are embeddings (image tokens from a connector, then words), its outputs next-token
logits and the key/value cache.

Shape legend: B rows, T positions, D the model's width, V its vocabulary.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import nn

from mmfuse.errors import MmfuseError
from mmfuse.models.hub import BaseModel


def _stores_fan_in_first(model: nn.Module) -> bool:
    """GPT-2's projections are ``Conv1D`` (weight ``(in, out)``): peft's ``fan_in_fan_out`` must say so."""
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) for m in model.modules())


class LMTraining(Enum):
    """What of the language model trains."""

    FROZEN = "frozen"
    LORA = "lora"
    FULL = "full"


@dataclass(frozen=True)
class LMSettings:
    """How the language model is held and trained (from :class:`~mmfuse.config.ModelConfig`)."""

    training: LMTraining = LMTraining.FROZEN
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: str = "all-linear"
    frozen_dtype: str = "fp32"  # or bf16: a frozen model's weights held in bfloat16
    gradient_checkpointing: bool = False


def quiet_transformers() -> None:
    """transformers' informational warnings go nowhere: mmfuse's stderr is one clear line per problem."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def load_tokenizer(base: BaseModel) -> Any:
    """The model's own tokenizer, from its directory only; one without a pad token pads with its
    end-of-sequence token (GPT-2), as Hugging Face ``generate`` does."""
    from transformers import AutoTokenizer

    quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(base.path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise MmfuseError(f"{base.id}: no usable tokenizer in {base.path} ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if tokenizer.eos_token_id is None:
        raise MmfuseError(f"{base.id}: its tokenizer has no end-of-sequence token, so a caption could never end")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(base: BaseModel, dtype: torch.dtype = torch.float32) -> nn.Module:
    """``AutoModelForCausalLM`` from the model's directory; a directory holding another kind of
    model (e.g. an encoder-only BERT) is one line saying what it holds."""
    from transformers import AutoConfig, AutoModelForCausalLM

    quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(base.path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise MmfuseError(f"{base.id}: unreadable config.json in {base.path} ({str(exc).splitlines()[0]})") from None
    architectures = list(getattr(config, "architectures", None) or [])
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures) if architectures \
        else type(config) in AutoModelForCausalLM._model_mapping
    if not causal or type(config) not in AutoModelForCausalLM._model_mapping:
        found = ", ".join(architectures) or config.model_type
        raise MmfuseError(f"{base.id} is not a causal language model: {base.path} holds a {config.model_type!r} "
                          f"model ({found}); --decoder hf: needs one AutoModelForCausalLM loads (GPT-2, Llama, "
                          f"Qwen2, SmolLM, ...)")
    try:
        return AutoModelForCausalLM.from_pretrained(base.path, local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise MmfuseError(f"{base.id}: its weights in {base.path} do not load ({str(exc).splitlines()[0]})") from None


class LanguageModel(nn.Module):
    """A causal LM read through embeddings, with :class:`LMSettings` applied.

    Args:
        model: the ``PreTrainedModel`` (random or pretrained weights).
        settings: frozen / LoRA / full, dtype of frozen weights, gradient checkpointing.
    """

    def __init__(self, model: nn.Module, settings: LMSettings):
        super().__init__()
        self.settings = settings
        self.width = int(model.get_input_embeddings().embedding_dim)
        self.vocab_size = int(model.get_output_embeddings().out_features)
        self.hf = self._prepared(model, settings)
        # transformers 5.25 renamed the cache argument and output ``past_key_values`` to ``cache``
        self.cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @staticmethod
    def _prepared(model: nn.Module, s: LMSettings) -> nn.Module:
        if s.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        if s.training == LMTraining.FULL:
            return model
        model.requires_grad_(False)
        if s.frozen_dtype == "bf16":
            model.to(torch.bfloat16)
        if s.training == LMTraining.FROZEN:
            if s.gradient_checkpointing:
                model.enable_input_require_grads()
            return model
        from peft import LoraConfig, get_peft_model

        targets: Any = s.lora_targets if s.lora_targets == "all-linear" else [t.strip() for t in s.lora_targets.split(",")]
        try:
            with warnings.catch_warnings():  # peft reads transformers' deprecated alias; not the user's to act on
                warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
                return get_peft_model(model, LoraConfig(r=s.lora_rank, lora_alpha=s.lora_alpha, target_modules=targets,
                                                        lora_dropout=0.0, fan_in_fan_out=_stores_fan_in_first(model)))
        except ValueError as exc:
            raise MmfuseError(f"--lora-targets {s.lora_targets!r}: {str(exc).splitlines()[0]}") from None

    @property
    def dtype(self) -> torch.dtype:
        return self.hf.get_input_embeddings().weight.dtype

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) -> the model's input embeddings (B, T, D)."""
        return self.hf.get_input_embeddings()(ids)

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor | None = None, past: Any = None,
                use_cache: bool = False) -> tuple[torch.Tensor, Any]:
        """embeds (B, T, D) after ``past`` positions -> logits (B, T, V) in float32, and the new cache.

        ``mask`` (B, S): 1 for real positions (all S = past + T of them), 0 for padding."""
        out = self.hf(inputs_embeds=embeds.to(self.dtype), attention_mask=mask, use_cache=use_cache,
                      **{self.cache_name: past})
        return out.logits.float(), out.get(self.cache_name)

    def decoder_layers(self) -> nn.ModuleList:
        """The model's stack of decoder blocks (where Flamingo's gated cross-attention goes)."""
        inner = self.hf.get_base_model() if self.settings.training == LMTraining.LORA else self.hf
        count = inner.config.num_hidden_layers
        for module in inner.modules():
            if isinstance(module, nn.ModuleList) and len(module) == count:
                return module
        raise MmfuseError(f"cannot find the {count} decoder blocks of {type(inner).__name__} to insert "
                          "cross-attention into; use another connector")

    def saved_prefixes(self) -> tuple[str, ...] | None:
        """Which of this module's tensors a checkpoint holds: all (fine-tuned: None), the LoRA
        adapters only, or nothing (frozen)."""
        return {LMTraining.FULL: None, LMTraining.LORA: ("lora_",), LMTraining.FROZEN: ()}[self.settings.training]

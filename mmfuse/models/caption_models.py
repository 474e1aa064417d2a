"""Which captioner a config builds: mmfuse's own (:class:`~mmfuse.models.captioner.Captioner`,
a spaCy vocabulary) or one on a pretrained language model
(:class:`~mmfuse.models.lm_captioner.LMCaptioner`, the model's own tokenizer), with the text codec
each reads and writes captions with. Training, loading a run and evaluation all come through here.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mmfuse.config import ModelConfig
from mmfuse.data.records import Record
from mmfuse.data.vocab import IGNORE, PAD_ID, Vocab
from mmfuse.models.captioner import build_captioner
from mmfuse.models.hub import BaseModel, check_unchanged, hf_id, is_hf, locate
from mmfuse.models.lm_captioner import LMText, build_lm_captioner


def language_model_base(cfg: ModelConfig, run: str = "", download: bool = False) -> BaseModel:
    """The ``hf:`` decoder's local copy; for a trained run (its config records a version), the
    same version it was trained on or one line naming both."""
    base = locate(hf_id(cfg.decoder), download)
    if cfg.decoder_config_sha256:
        recorded = {"id": hf_id(cfg.decoder), "revision": cfg.decoder_revision,
                    "config_sha256": cfg.decoder_config_sha256}
        check_unchanged(base, recorded, run or "this run")
    return base


def build_caption_model(cfg: ModelConfig, vocab: Vocab, run: str = "", download: bool = False) -> tuple[nn.Module, Any]:
    """The captioner ``cfg`` describes and its text codec (``decode(ids) -> words``): the vocabulary,
    or the language model's tokenizer (:class:`~mmfuse.models.lm_captioner.LMText`)."""
    if is_hf(cfg.decoder):
        model = build_lm_captioner(cfg, language_model_base(cfg, run, download))
        return model, model.text
    return build_captioner(cfg, len(vocab)), vocab


def reference_ids(records: list[Record], codec: Any) -> tuple[list[list[list[int]]], int]:
    """Every record's references as the model's ids, and the id that pads them: a vocabulary
    encodes the data set's tokens (``<bos> .. <eos>``), a tokenizer the raw captions (``.. <eos>``)."""
    if isinstance(codec, LMText):
        return [[codec.encode_caption(c) for c in r.captions] for r in records], IGNORE
    return [[codec.encode(t) for t in r.tokens] for r in records], PAD_ID

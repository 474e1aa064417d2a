"""Word vocabulary with the four special tokens every sequence model here relies on."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from mmfuse.errors import MmfuseError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
IGNORE = -100  # a target the loss skips (padding; image and prompt positions of a language model)


@dataclass(frozen=True)
class Vocab:
    """Index <-> token maps. Ids 0..3 are ``<pad> <bos> <eos> <unk>``."""

    itos: tuple[str, ...]
    min_count: int = 1

    def __post_init__(self) -> None:
        if tuple(self.itos[: len(SPECIALS)]) != SPECIALS:
            raise MmfuseError("vocabulary must start with <pad> <bos> <eos> <unk>")
        if len(set(self.itos)) != len(self.itos):
            raise MmfuseError("vocabulary has duplicate tokens")
        object.__setattr__(self, "_stoi", {tok: i for i, tok in enumerate(self.itos)})

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], min_count: int = 1) -> "Vocab":
        """Tokens seen at least ``min_count`` times, most frequent first (ties alphabetical)."""
        return cls.build_from_counts(Counter(tok for sent in sentences for tok in sent), min_count)

    @classmethod
    def build_from_counts(cls, counts: Counter, min_count: int = 1) -> "Vocab":
        """Like :meth:`build`, from token counts gathered while streaming."""
        if min_count < 1:
            raise MmfuseError(f"min_count must be >= 1, got {min_count}")
        kept = sorted((t for t, c in counts.items() if c >= min_count and t not in SPECIALS),
                      key=lambda t: (-counts[t], t))
        return cls(SPECIALS + tuple(kept), min_count)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self._stoi  # type: ignore[attr-defined]

    def index(self, token: str) -> int:
        return self._stoi.get(token, UNK_ID)  # type: ignore[attr-defined]

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """``<bos> tokens... <eos>`` as ids (unknown words -> ``<unk>``)."""
        return [BOS_ID] + [self.index(t) for t in tokens] + [EOS_ID]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens up to the first ``<eos>``, without ``<pad>``/``<bos>``."""
        words = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i in (PAD_ID, BOS_ID):
                continue
            words.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
        return words

    def to_json(self) -> dict[str, Any]:
        return {"min_count": self.min_count, "tokens": list(self.itos)}

    @classmethod
    def from_json(cls, data: Any, where: str = "vocabulary file") -> "Vocab":
        if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
            raise MmfuseError(f"{where} must be an object with a 'tokens' list")
        if not all(isinstance(t, str) for t in data["tokens"]):
            raise MmfuseError(f"{where}: vocabulary tokens must be strings")
        if len(set(data["tokens"])) != len(data["tokens"]):
            raise MmfuseError(f"{where}: vocabulary tokens must be distinct")
        min_count = data.get("min_count", 1)
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise MmfuseError(f"{where}: 'min_count' must be a whole number >= 1, got {min_count!r}")
        return cls(tuple(data["tokens"]), min_count)

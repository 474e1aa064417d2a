"""What the sources of real data sets share: reading their option dicts, assigning splits by
ratio, naming samples, and reading caption files with errors that name the file and line."""

from __future__ import annotations

import dataclasses
import io
import json
import random
import re
from pathlib import Path
from typing import Any, Iterator, TypeVar

from mmfuse.data.sources import RawSample
from mmfuse.errors import MmfuseError
from mmfuse.workspace import open_regular

C = TypeVar("C")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def source_options(cls: type[C], options: dict[str, Any], source: str) -> C:
    """``cls`` (a dataclass of one source's options) from the options the user gave; an option the
    source does not take, or a required one that is missing, is a clear error."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - set(fields))
    if unknown:
        flags = ", ".join(f"--{u.replace('_', '-')}" for u in unknown)
        raise MmfuseError(f"source {source!r} does not take {flags} (it takes: "
                          f"{', '.join('--' + f.replace('_', '-') for f in fields)})")
    missing = [n for n, f in fields.items() if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and n not in options]  # type: ignore[misc]
    if missing:
        raise MmfuseError(f"source {source!r} needs --{missing[0].replace('_', '-')}")
    opts = cls(**options)
    if isinstance(opts, SplitRatios):
        opts.validate()
    return opts


@dataclasses.dataclass
class SplitRatios:
    """How images without an official split are divided: fractions for val and test, the rest train."""

    val_ratio: float = 0.05
    test_ratio: float = 0.05
    seed: int = 0

    def validate(self) -> None:
        for name in ("val_ratio", "test_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise MmfuseError(f"--{name.replace('_', '-')} must be in [0, 1), got {value}")
        if self.val_ratio + self.test_ratio >= 1.0:
            raise MmfuseError(f"--val-ratio + --test-ratio must leave images for training, got "
                              f"{self.val_ratio} + {self.test_ratio}")

    def assign(self, keys: list[str]) -> dict[str, str]:
        """Split of each key: a seeded shuffle of the sorted keys, at least one image per split when
        there are three or more (so a tiny data set still has val and test)."""
        order = sorted(keys)
        random.Random(self.seed).shuffle(order)
        n = len(order)
        n_val = max(1, round(n * self.val_ratio)) if n >= 3 and self.val_ratio > 0 else 0
        n_test = max(1, round(n * self.test_ratio)) if n >= 3 and self.test_ratio > 0 else 0
        splits = {key: "val" for key in order[:n_val]}
        splits.update({key: "test" for key in order[n_val:n_val + n_test]})
        splits.update({key: "train" for key in order[n_val + n_test:]})
        return splits


class ListedSource:
    """What the real-data sources share: every sample is read when the source is made (into
    ``samples_``, with the options in ``opts``); counts and the sample stream come from that list.
    A source that divides images by ratio overrides :meth:`divide`."""

    task = "caption"
    opts: Any
    samples_: list[RawSample]

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self.opts)

    def image_files(self) -> Iterator[Path]:
        yield from dict.fromkeys(s.image for s in self.samples_ if isinstance(s.image, Path))

    def settle_splits(self, unusable: set[Path]) -> None:
        usable = [s for s in self.samples_ if isinstance(s.image, Path) and absolute(s.image) not in unusable
                  and has_text(s)]
        self.divide(usable)

    def divide(self, usable: list[RawSample]) -> None:
        """Set the split of each usable sample (default: the official splits stay)."""

    def count(self, split: str) -> int:
        return sum(s.split == split for s in self.samples_)

    def samples(self) -> Iterator[RawSample]:
        yield from self.samples_


def has_text(sample: RawSample) -> bool:
    """Whether a sample has what its task needs: a non-empty caption, or a question with a non-empty answer."""
    if sample.question:
        return bool(sample.question.strip()) and any(a.strip() for a in sample.answers)
    return any(c.strip() for c in sample.captions)


MAX_TEXT_CHARS = 10_000  # a caption, question or label longer than this is a mistake in the file, in any format


def text_value(value: Any, where: str, key: str) -> str:
    """A text field of a caption or annotation file: a string of at most :data:`MAX_TEXT_CHARS`
    characters, the same rule for every format (never ``null`` or a number turned into "None", "5")."""
    if not isinstance(value, str):
        kind = "null" if value is None else type(value).__name__.replace("dict", "object").replace("list", "array")
        raise MmfuseError(f"{where}: {key!r} must be a string, got {kind} {json.dumps(value)[:40]}")
    if len(value) > MAX_TEXT_CHARS:
        raise MmfuseError(f"{where}: {key!r} is {len(value):,} characters long; at most {MAX_TEXT_CHARS:,} are "
                          f"allowed (is a column or quote missing?)")
    return value


def absolute(path: Path) -> Path:
    """The form in which prepare-data names image files (user home expanded, absolute)."""
    return path.expanduser().absolute()


def safe_id(text: str) -> str:
    """A sample id usable as a name: unsafe characters (``/``, spaces, ...) become ``_``."""
    cleaned = _UNSAFE.sub("_", text).strip("._-") or "image"
    return cleaned[:120] if cleaned[0].isalnum() else f"i{cleaned[:119]}"


def read_json_file(path: Path, what: str) -> Any:
    """A JSON file, or a clear error naming it."""
    try:
        with open_regular(path, what) as handle:
            return json.loads(handle.read().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise MmfuseError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise MmfuseError(f"{what} {path}:{exc.lineno}: invalid JSON ({exc.msg})") from None


def read_lines(path: Path, what: str) -> Iterator[tuple[int, str]]:
    """(line number, line without its newline) of a UTF-8 text file, or a clear error naming it."""
    try:
        with open_regular(path, what) as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as handle:
            for number, line in enumerate(handle, 1):
                yield number, line.rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise MmfuseError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def existing_dir(path: Path | str, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise MmfuseError(f"{what} is not a directory: {path}")
    return path.resolve()

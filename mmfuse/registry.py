"""Name -> constructor registries for every swappable part (fusions, encoders, decoders, sources).

A decorator fills the dict; ``create(name, **opts)`` builds one; an unknown name raises an
:class:`~mmfuse.errors.MmfuseError` that lists the valid names.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

from mmfuse.errors import MmfuseError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of constructors of one kind of part."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: register ``obj`` under ``name`` (the name users type on the command line)."""

        def decorate(obj: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorate

    def register_each(self, names: Iterable[str], build: Callable[[str], Callable[..., T]]) -> None:
        """Register ``build(name)`` under each of ``names`` (a family of parts, e.g. torchvision's
        backbones, whose names are the keys of a dict literal: :func:`declared_names` reads them)."""
        for name in names:
            self.register(name)(build(name))

    def get(self, name: str) -> Callable[..., T]:
        """The constructor registered as ``name``; an unknown name lists the valid ones."""
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(sorted(self._entries)) or "(none)"
            raise MmfuseError(f"unknown {self.kind} {name!r}; valid {self.kind}s: {valid}") from None

    def create(self, name: str, **opts: Any) -> T:
        """Build the part registered as ``name`` with ``opts``."""
        return self.get(name)(**opts)

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


# Where each registry is filled: its variable and the modules that register into it (relative to the
# package). The CLI's help reads the names from these files without importing them (they import
# torch, which takes seconds); tests/test_cli.py checks the two agree.
CATALOG: dict[str, tuple[str, tuple[str, ...]]] = {
    "fusion": ("FUSIONS", ("models/fusion.py", "models/connectors.py")),
    "encoder": ("IMAGE_ENCODERS", ("models/encoders.py", "models/backbones.py")),
    "decoder": ("DECODERS", ("models/decoders.py",)),
    "text_encoder": ("TEXT_ENCODERS", ("models/text_encoders.py",)),
    "source": ("SOURCES", ("data/sources/*.py",)),
}


@lru_cache(maxsize=None)
def declared_names(kind: str) -> list[str]:
    """The names registered into the ``kind`` registry of :data:`CATALOG`, read from the source of its
    modules: ``@REG.register("name")`` and ``REG.register_each(DICT, ...)`` with ``DICT`` a dict
    literal of the same module (its string keys)."""
    variable, patterns = CATALOG[kind]
    root = Path(__file__).parent
    names: set[str] = set()
    for pattern in patterns:
        for path in sorted(root.glob(pattern)):
            names.update(_registered_in(ast.parse(path.read_text(encoding="utf-8")), variable))
    return sorted(names)


def _registered_in(tree: ast.Module, variable: str) -> set[str]:
    dicts = {t.id: node.value for node in tree.body if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
             for t in node.targets if isinstance(t, ast.Name)}
    names = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == variable and node.args):
            continue
        first = node.args[0]
        if node.func.attr == "register" and isinstance(first, ast.Constant) and isinstance(first.value, str):
            names.add(first.value)
        elif node.func.attr == "register_each" and isinstance(first, ast.Name) and first.id in dicts:
            names.update(k.value for k in dicts[first.id].keys if isinstance(k, ast.Constant))
    return names

"""Name -> constructor registries for every swappable part (fusions, encoders, decoders, sources).

A decorator fills the dict; ``create(name, **opts)`` builds one; an unknown name raises an
:class:`~mmfuse.errors.MmfuseError` that lists the valid names.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Iterator, TypeVar

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

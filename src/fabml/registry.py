"""Name -> object tables (models, backbones, losses) so that configs can name them."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from fabml.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A table from lower-case names to classes or factory functions.

    >>> MODELS = Registry("model")
    >>> @MODELS.register("mlp")
    ... class MLP: ...
    >>> MODELS.get("MLP") is MLP
    True
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._table: dict[str, T] = {}

    def register(self, key: str) -> Callable[[T], T]:
        """Decorator adding the decorated object under ``key``; a duplicate key is an error."""
        norm = key.lower()

        def deco(obj: T) -> T:
            if norm in self._table and self._table[norm] is not obj:
                raise ValueError(f"{self.name} '{key}' is registered twice")
            self._table[norm] = obj
            return obj

        return deco

    def get(self, key: str) -> T:
        """The object registered as ``key`` (case-insensitive); unknown -> ConfigError listing choices."""
        try:
            return self._table[key.lower()]
        except (KeyError, AttributeError):
            raise ConfigError(
                f"unknown {self.name} '{key}'; choose one of: {', '.join(self.names()) or '(none registered)'}"
            ) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._table)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._table

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return f"Registry({self.name!r}, {self.names()})"

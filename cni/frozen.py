"""The plugin side's value class: frozen, without ``dataclasses``.

``dataclasses`` imports ``inspect`` (about 15 ms at every CNI plugin start, more than
the rest of a plugin's imports together), so every value type of the plugin-side
packages (``cni``, ``flannelcni``) derives from ``Frozen`` and writes its ``__init__``
out; the runtime side (``libcni``, ``cri_shim``) uses frozen dataclasses. ``Frozen``
gives them what ``@dataclass(frozen=True)`` gives: assignment and deletion raise
``FrozenInstanceError`` (an ``AttributeError``), and ``==``, ``hash()`` and ``repr()``
are over the fields named in ``_fields``, in that order, with the same texts.
Instances keep a ``__dict__``, so ``vars()``, ``copy`` and ``pickle`` work as before.
"""

from __future__ import annotations

__all__ = ["Frozen", "FrozenInstanceError"]


class FrozenInstanceError(AttributeError):
    """A field of a frozen value was assigned or deleted."""


class Frozen:
    """Base of a frozen value class. A subclass sets ``_fields`` (compared, hashed and
    shown by ``repr``, in order; also ``__match_args__`` unless it sets that) and
    assigns its attributes in ``__init__`` with ``_set``."""

    _fields: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "__match_args__" not in cls.__dict__:
            cls.__match_args__ = cls._fields

    def _set(self, **values: object) -> None:
        self.__dict__.update(values)

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def _key(self) -> tuple[object, ...]:
        return tuple([self.__dict__[name] for name in self._fields])

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return self._key() == other._key()  # type: ignore[attr-defined]
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={self.__dict__[name]!r}" for name in self._fields)
        return f"{type(self).__qualname__}({fields})"

"""Records: what ``@dataclass`` makes of a class of plain fields, without dataclasses.

dataclasses imports inspect (and with it dis, ast, tokenize...): ~12 ms, paid by every
activation (each boot and switch) and by the incremental renc, whose modules are
otherwise kept lean.  The classes on those paths use :func:`record` (frozen, as
``@dataclass(frozen=True)``) or :func:`mutable_record` (as ``@dataclass``) instead.

From the class's annotations, in order: an ``__init__`` taking each field (its default
as written; ``field(default_factory=f)`` calls ``f`` for each instance), ``__repr__``,
``__eq__`` (same class, equal fields) and ``__match_args__``; frozen, also ``__hash__``
and no assignment to an attribute (``cached_property`` still works: it writes the
instance's ``__dict__``); mutable, no ``__hash__``.  Type checkers see dataclasses
(PEP 681).  Inheritance, ``__post_init__``, ordering and slots are not supported: no
record here needs them, and :func:`_make` refuses a class that would.
"""

from __future__ import annotations

TYPE_CHECKING = False           # typing itself costs ~4 ms to import
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform

    T = TypeVar("T")
    C = TypeVar("C", bound=type)
else:
    def dataclass_transform(**_kwargs):
        return lambda decorator: decorator


class FrozenInstanceError(AttributeError):
    """An assignment to a frozen record's attribute (as dataclasses' own)."""


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def field(*, default_factory: Callable[[], T]) -> T:
    """A field whose default is made for each instance (a list, a dict)."""
    return _Factory(default_factory)  # type: ignore[return-value]


_MISSING = object()


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: C) -> C:
    """``@dataclass(frozen=True)``, for a class of plain fields."""
    return _make(cls, frozen=True)


@dataclass_transform(field_specifiers=(field,))
def mutable_record(cls: C) -> C:
    """``@dataclass``, for a class of plain fields."""
    return _make(cls, frozen=False)


def _make(cls: C, *, frozen: bool) -> C:
    if cls.__bases__ != (object,) or "__post_init__" in cls.__dict__:
        raise TypeError(f"{cls.__name__}: a record has no base class and no __post_init__")
    names = tuple(cls.__dict__.get("__annotations__", {}))  # noqa: RUF063 (no inspect)
    scope: dict[str, Any] = {"_MISSING": _MISSING, "_set": object.__setattr__}
    params, body = [], []
    seen_default = False
    for name in names:
        if name in cls.__dict__:
            seen_default = True
            default = cls.__dict__[name]
            if isinstance(default, _Factory):
                scope[f"_make_{name}"] = default.make
                params.append(f"{name}=_MISSING")
                body.append(f"    if {name} is _MISSING: {name} = _make_{name}()")
                delattr(cls, name)      # an instance has its own; the class none
            else:
                scope[f"_default_{name}"] = default
                params.append(f"{name}=_default_{name}")
        elif seen_default:
            raise TypeError(f"{cls.__name__}: field {name!r} without a default follows "
                            "one with a default")
        else:
            params.append(name)
        body.append(f"    _set(self, {name!r}, {name})" if frozen
                    else f"    self.{name} = {name}")
    source = f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body or ["    pass"])
    exec(source, scope)
    init = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"

    def values(self: Any) -> tuple[Any, ...]:
        return tuple(getattr(self, n) for n in names)

    def __repr__(self: Any) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
        return f"{type(self).__qualname__}({fields})"

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return values(self) == values(other)

    methods: dict[str, Any] = {"__init__": init, "__repr__": __repr__, "__eq__": __eq__,
                               "__match_args__": names}
    if frozen:
        def __hash__(self: Any) -> int:
            return hash(values(self))

        def __setattr__(self: Any, name: str, value: object) -> None:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")

        def __delattr__(self: Any, name: str) -> None:
            raise FrozenInstanceError(f"cannot delete field {name!r}")

        methods.update(__hash__=__hash__, __setattr__=__setattr__, __delattr__=__delattr__)
    else:
        methods["__hash__"] = None
    for key, value in methods.items():
        if key not in cls.__dict__ or key == "__hash__":
            if callable(value):
                value.__qualname__ = f"{cls.__qualname__}.{key}"
            setattr(cls, key, value)
    return cls

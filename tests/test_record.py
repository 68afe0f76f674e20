"""vaultpy/_internal/record.py: what @dataclass makes of the records on the lean paths
(activation, the incremental renc), without importing dataclasses."""

from __future__ import annotations

import pickle
import subprocess
import sys
from dataclasses import FrozenInstanceError as DataclassFrozen
from dataclasses import dataclass
from dataclasses import field as dc_field
from functools import cached_property

import pytest

from vaultpy._internal.record import FrozenInstanceError, field, mutable_record, record


@record
class Point:
    x: int
    y: int = 2
    tags: tuple[str, ...] = ()

    @cached_property
    def total(self) -> int:
        return self.x + self.y


@dataclass(frozen=True)
class DPoint:
    x: int
    y: int = 2
    tags: tuple[str, ...] = ()


@mutable_record
class Bag:
    name: str
    items: list[int] = field(default_factory=list)


@dataclass
class DBag:
    name: str
    items: list[int] = dc_field(default_factory=list)


def test_a_frozen_record_behaves_as_a_frozen_dataclass() -> None:
    p, d = Point(1), DPoint(1)
    assert (p.x, p.y, p.tags) == (d.x, d.y, d.tags) == (1, 2, ())
    assert Point(1, y=3, tags=("a",)) == Point(x=1, y=3, tags=("a",))
    assert Point(1) != Point(2) and Point(1) != DPoint(1)
    assert hash(Point(1, 3)) == hash(Point(1, 3)) and len({Point(1), Point(1)}) == 1
    assert repr(Point(1, 3)) == "Point(x=1, y=3, tags=())"
    assert repr(d) == "DPoint(x=1, y=2, tags=())"
    with pytest.raises(FrozenInstanceError):
        p.x = 5                                             # type: ignore[misc]
    with pytest.raises(DataclassFrozen):
        d.x = 5                                             # type: ignore[misc]
    assert isinstance(FrozenInstanceError("x"), AttributeError)
    with pytest.raises(TypeError):
        Point()                                             # type: ignore[call-arg]
    assert p.total == 3 and p.total == 3                    # cached_property still works
    assert pickle.loads(pickle.dumps(Point(4, 5, ("t",)))) == Point(4, 5, ("t",))
    match Point(7, 8):
        case Point(a, b):
            assert (a, b) == (7, 8)


def test_a_mutable_record_behaves_as_a_dataclass() -> None:
    a, b = Bag("a"), Bag("b")
    a.items.append(1)
    assert b.items == [] and a.items == [1]                 # one list each
    a.name = "renamed"
    assert a == Bag("renamed", [1]) and repr(a) == "Bag(name='renamed', items=[1])"
    assert Bag.__hash__ is None and DBag.__hash__ is None   # unhashable, as dataclasses
    assert not hasattr(Bag, "items")


def test_what_a_record_cannot_be_is_refused() -> None:
    with pytest.raises(TypeError, match="follows one with a default"):
        @record
        class Bad:
            a: int = 1
            b: int                                          # type: ignore[misc]

    with pytest.raises(TypeError, match="no base class"):
        @record
        class Child(Point):                                 # type: ignore[misc]
            z: int = 0


def test_the_lean_paths_do_not_import_dataclasses() -> None:
    """Activation and the incremental renc's crypto imports: no dataclasses, no inspect
    (~12 ms of each run)."""
    code = ("import sys, vaultpy.activate.main, vaultpy._internal.delta as d; "
            "d._import_crypto(); "
            "print(sorted(m for m in ('dataclasses', 'inspect', 'typing') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout.strip()
    assert out == "[]", out

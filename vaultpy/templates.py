"""Template placeholders: ``{{ secrets.<id> }}``.

Syntax (DESIGN §2): spaces (or tabs) inside the braces are optional; ``{{{{``
writes a literal ``{{``; any other ``{{`` is ordinary text (so templates of other
tools keep working), except that ``{{`` followed by optional spaces and
``secrets.`` must form a complete placeholder.  Parsing happens at compile time
(unknown ids and broken placeholders are errors in hosts.toml, all of them named
at once; what looks like a mistyped placeholder, ``{{ secret.x }}``, a warning);
rendering happens on the host.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from vaultpy._internal.record import record

ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_START = re.compile(r"\{\{[ \t]*secrets\.")
_FULL = re.compile(r"\{\{[ \t]*secrets\.(" + ID_PATTERN + r")[ \t]*\}\}")
# Kept as text, but most likely meant as a placeholder: {{ secret.x }}, {{ Secrets.x }},
# {{ secrets: x }}, {{ secrets . x }} (see near_misses).
_NEAR = re.compile(r"\{\{[ \t]*(?i:secrets?)[ \t]*[.:][ \t]*(" + ID_PATTERN
                   + r")[ \t]*\}\}")


@record
class Ref:
    """A placeholder for the secret ``id``."""

    id: str


Segment = str | Ref


class TemplateError(ValueError):
    def __init__(self, message: str, line: int, column: int) -> None:
        self.line, self.column = line, column
        super().__init__(f"line {line} column {column}: {message}")


def _position(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def parse(text: str) -> list[Segment]:
    """Split ``text`` into literal strings and :class:`Ref` placeholders."""
    return [seg for seg, _at in _scan(text)]


def check(text: str) -> tuple[list[str], list[TemplateError]]:
    """The secret ids ``text``'s placeholders use (:func:`references`), and every broken
    placeholder in it: all of them at once, for hosts.toml's messages."""
    found: list[TemplateError] = []
    seen: dict[str, None] = {}
    for seg, _at in _scan(text, found):
        if isinstance(seg, Ref):
            seen.setdefault(seg.id)
    return list(seen), found


def near_misses(text: str) -> list[tuple[int, int, str, str]]:
    """What is kept as text but reads like a placeholder mistyped: (line, column, the
    text, the placeholder it most likely meant)."""
    out = []
    for m in _NEAR.finditer(text):
        if _START.match(m.group(0)) or text.endswith("{{", 0, m.start()):
            continue            # a placeholder, or a literal written as {{{{ …
        line, col = _position(text, m.start())
        out.append((line, col, m.group(0), "{{ secrets." + m.group(1) + " }}"))
    return out


def position_of(text: str, secret_id: str) -> tuple[int, int]:
    """Line and column of the first placeholder naming ``secret_id`` (for messages)."""
    for seg, at in _scan(text, []):         # (broken ones are named on their own)
        if isinstance(seg, Ref) and seg.id == secret_id:
            return _position(text, at)
    raise LookupError(secret_id)


def mid_line(text: str, secret_id: str) -> bool:
    """Whether some placeholder for ``secret_id`` has more of its line after it: a value
    ending in a newline (what most editors save) would break that line in two."""
    segments = parse(text)
    for i, seg in enumerate(segments):
        if isinstance(seg, Ref) and seg.id == secret_id:
            after = segments[i + 1] if i + 1 < len(segments) else "\n"
            if isinstance(after, Ref) or not after.startswith(("\n", "\r\n")):
                return True
    return False


def _scan(text: str, errors: list[TemplateError] | None = None
          ) -> list[tuple[Segment, int]]:
    """The segments of ``text``, each with the index where it starts.  A broken
    placeholder raises, or (``errors`` given) is added there and read as text."""
    out: list[tuple[Segment, int]] = []
    buf: list[str] = []
    i = start = 0
    while True:
        j = text.find("{{", i)
        if j < 0:
            buf.append(text[i:])
            break
        buf.append(text[i:j])
        if text.startswith("{{{{", j):
            buf.append("{{")
            i = j + 4
            continue
        if _START.match(text, j):
            m = _FULL.match(text, j)
            if m is None:
                line, col = _position(text, j)
                error = TemplateError("broken placeholder; write {{ secrets.<id> }} "
                                      "(or {{{{ for a literal {{)", line, col)
                if errors is None:
                    raise error
                errors.append(error)
                buf.append("{{")
                i = j + 2
                continue
            literal = "".join(buf)
            if literal:
                out.append((literal, start))
            buf = []
            out.append((Ref(m.group(1)), j))
            i = start = m.end()
            continue
        # An ordinary "{": the next brace may start a placeholder ("{{{ secrets.a }}").
        buf.append("{")
        i = j + 1
    literal = "".join(buf)
    if literal:
        out.append((literal, start))
    return out


def references(text: str) -> list[str]:
    """The secret ids a template uses, in order of first use (TemplateError: its first
    broken placeholder)."""
    ids, broken = check(text)
    if broken:
        raise broken[0]
    return ids


def render(text: str, values: Mapping[str, bytes], trim: bool = False) -> bytes:
    """Substitute every placeholder; a missing value is a KeyError naming the id."""
    parts: list[bytes] = []
    for seg in parse(text):
        if isinstance(seg, Ref):
            value = values[seg.id]
            parts.append(value.strip() if trim else value)
        else:
            parts.append(seg.encode("utf-8"))
    return b"".join(parts)

"""Text that came from someone else (a relay, a remote caller, an agent), made safe to print.

One rule for every place the CLI shows such text: a terminal must never receive an escape
sequence, a line break or an invisible (format, bidi) character it did not choose."""

from __future__ import annotations


def escaped(value: object, limit: int | None = None) -> str:
    """`value` as text with every non-printable character (controls, ESC, newlines, bidi and
    other format characters) written as its Python escape (`\\x1b`, `\\n`, `\\u202e`) and the
    rest unchanged; the first `limit` characters only, when given."""
    text = str(value)
    if limit is not None:
        text = text[:limit]
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)

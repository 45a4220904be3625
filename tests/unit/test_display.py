"""cmdop.core.display.escaped: the one rule for showing someone else's text on a terminal."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from cmdop.core.display import escaped


@pytest.mark.parametrize("text, shown", [
    ("web01", "web01"),
    ("héllo wörld", "héllo wörld"),                 # printable Unicode is kept
    ("a\x1b[2Jb", "a\\x1b[2Jb"),                     # ESC: an escape sequence never starts
    ("line\nnext", "line\\nnext"),                   # no forged second line
    ("tab\there", "tab\\there"),
    ("evil\u202etxt.exe", "evil\\u202etxt.exe"),     # bidi override (a format character)
    ("zero\u200bwidth", "zero\\u200bwidth"),
    ("bell\x07", "bell\\x07"),
    (42, "42"),
])
def test_escaped_shows_what_a_terminal_would_act_on(text: object, shown: str) -> None:
    assert escaped(text) == shown


def test_escaped_cuts_before_escaping() -> None:
    assert escaped("x" * 10 + "\x1b", 10) == "x" * 10


@given(st.text())
def test_nothing_escaped_is_unprintable(text: str) -> None:
    assert escaped(text).isprintable()

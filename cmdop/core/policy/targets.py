"""What the rules of one call are matched against: one or more "parts", each with the text allow
and ask rules must match and the texts deny rules are tried on.

- A path or host call is one part.
- A shell command is one part per simple command (CONTRACT §4: a compound command is allowed
  only if every part is allowed). A part whose text holds something unknowable (a variable, a
  substitution, a glob in program position, a syntax error) has `allow_text = None`: no allow or
  ask rule with an argument can match it. Deny rules are still tried on a best-effort spelling
  with the program reduced to its basename, so copying `curl` to /tmp does not dodge `curl *`.
- Behind a privileged wrapper (sudo, doas, chroot, xargs, env -C) the allow text is the whole
  wrapper command; inner commands then only carry deny texts (`deny_only`).
"""

from __future__ import annotations

import posixpath
from functools import lru_cache
from typing import NamedTuple

from cmdop.core.policy.commands import Layer, match_text, unwrap
from cmdop.core.policy.shell import LIT, RAW, VAR, SimpleCommand, Word, analyse, interpretations


class Part(NamedTuple):
    """One thing every rule decision is taken on. (A NamedTuple: built per call, so cheap.)"""

    allow_text: str | None
    deny_texts: tuple[str, ...]
    display: str
    why_unknown: str = ""        # why allow_text is None
    deny_only: bool = False      # constrained only by deny rules (its wrapper carries the allow)
    unparseable: bool = False    # a syntax error: not even bypass mode allows it


def _loose(word: Word) -> str:
    """A spelling of `word` for deny matching: expansions kept as written."""
    out = []
    for kind, text in word.segments:
        out.append(text if kind in (LIT, RAW) else ("$" + text if kind == VAR and text else text or "$?"))
    return "".join(out)


def _deny_spellings(layer: Layer, redirects: list[tuple[str, Word | None]]) -> list[str]:
    texts = []
    exact = match_text(layer, redirects)
    if exact is not None:
        texts.append(exact)
    words = [_loose(w) for w in layer.words]
    if words:
        words[0] = posixpath.basename(words[0].rstrip("/")) or words[0]
        texts.append(" ".join(words))
        assigns = [f"{k}={_loose(v)}" for k, v in layer.assigns]
        if assigns:
            texts.append(" ".join(assigns + words))
    return texts


def _display(layer: Layer) -> str:
    return " ".join([f"{k}={_loose(v)}" for k, v in layer.assigns] + [_loose(w) for w in layer.words])


def _command_parts(cmd: SimpleCommand, depth: int) -> list[Part]:
    un = unwrap(cmd)
    layers = un.layers
    redirects = list(cmd.redirects)
    first_priv = next((i for i, layer in enumerate(layers) if layer.privileged), None)
    allow_layer = layers[first_priv - 1] if first_priv else layers[-1]
    deny_texts: list[str] = []
    for layer in layers:
        deny_texts.extend(_deny_spellings(layer, redirects))
    parts: list[Part] = []
    nested_parts: list[Part] = []
    for script in un.nested:
        nested_parts.extend(parts_for_command(script, depth + 1))
    shell_transparent = (un.nested or un.dynamic_nested) and first_priv is None
    if un.dynamic_nested:
        nested_parts.append(Part(None, tuple(deny_texts), _display(layers[-1]),
                                 "a shell or eval runs a string that is not static"))
    if shell_transparent:
        # `bash -c 'a; b'` is allowed iff a and b are; the bash layer itself adds deny texts only.
        parts.append(Part(None, tuple(deny_texts), _display(layers[0]), deny_only=True))
        return parts + nested_parts
    text = match_text(allow_layer, redirects)
    why = "" if text is not None else "it contains an expansion, substitution or glob whose value is unknown"
    if un.nested and first_priv is None:
        text, why = None, "a nested script"
    parts.append(Part(text, tuple(dict.fromkeys(deny_texts)), _display(allow_layer), why))
    parts.extend(Part(None, p.deny_texts, p.display, deny_only=True) for p in nested_parts)
    return parts


@lru_cache(maxsize=8192)
def parts_for_command(command: str, depth: int = 0) -> tuple[Part, ...]:
    """The parts of `command` (bash), cached by text. Never raises."""
    if depth > 8:
        return (Part(None, (command,), command, "commands nested too deeply", unparseable=True),)
    parts: list[Part] = []
    # Every reading of the line continuations: a rule must allow the parts of all of them.
    for source in interpretations(command):
        analysis = analyse(source)
        for cmd in analysis.commands:
            if not cmd.words and not cmd.assigns and not cmd.redirects:
                continue
            parts.extend(_command_parts(cmd, depth))
        for name, value in analysis.assignments:
            text = value.static
            parts.append(Part(f"{name}={text}" if text is not None else None, (f"{name}={_loose(value)}",),
                              f"{name}={_loose(value)}", "" if text is not None else "a dynamic assignment"))
        if analysis.opaque:
            syntax = "syntax error" in analysis.opaque or "NUL" in analysis.opaque
            parts.append(Part(None, (analysis.source.strip(),), analysis.source.strip(), analysis.opaque,
                              unparseable=syntax))
    if not parts:
        parts.append(Part(None, (), command, "empty command", unparseable=True))
    return tuple(dict.fromkeys(parts))

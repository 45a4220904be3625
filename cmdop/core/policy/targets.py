"""What the rules of one call are matched against: one or more "parts", each with the text allow
and ask rules must match and the texts deny rules are tried on.

- A path or host call is one part.
- A shell command is one part per simple command (a compound command is allowed only if
  every part is allowed). A part whose text holds something unknowable (a variable, a
  substitution, a glob in program position, a syntax error) has `allow_text = None`: no allow or
  ask rule with an argument can match it. Deny rules are still tried on a best-effort spelling
  with the program reduced to its basename, so copying `curl` to /tmp does not dodge `curl *`.
- Behind a privileged wrapper (sudo, doas, chroot, xargs, env -C) the allow text is the whole
  wrapper command; inner commands then only carry deny texts (`deny_only`). The wrapped
  program is marked in the allow text, so the rule must spell it (`sudo systemctl *`, not
  `sudo *`).
- Where a program runs code from its arguments (programs.sites: `find -exec`, `git -c
  core.pager=…`, `awk 'system(…)'`…) the allow text is marked there too: an allow rule covers it
  only by spelling the token (`find * -exec *`). A command it runs (`rm {}`, the pager) is a part
  of its own that must be allowed — deny-only behind a privileged wrapper, whose rule speaks for
  everything it runs.
- Deny rules are also tried on each layer with the program's global options removed
  (`git -C x -c k=v push` → `git push`).
"""

from __future__ import annotations

import posixpath
from functools import lru_cache

from cmdop.core.policy import programs
from cmdop.core.policy.commands import MARK, Layer, harmless_redirect, match_text, unwrap, wrapped_starts
from cmdop.core.policy.shell import LIT, RAW, VAR, SimpleCommand, Word, analyse, interpretations
from cmdop.core.value import NamedTuple


class Part(NamedTuple):
    """One thing every rule decision is taken on. (A NamedTuple: built per call, so cheap.)"""

    allow_text: str | None
    deny_texts: tuple[str, ...]
    display: str
    why_unknown: str = ""        # why allow_text is None
    deny_only: bool = False      # constrained only by deny rules (its wrapper carries the allow)
    unparseable: bool = False    # a syntax error: not even bypass mode allows it
    # Where the command runs code: (position of the newline marking it in allow_text, what it is
    # as written — `-c core.pager=…`, why it matters — "runs a command"). For explain.
    code: tuple[tuple[int, str, str], ...] = ()
    runs_for: str = ""           # set on a part that another command runs: `find -exec`, `git -c core.pager`


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
        spellings = [words]
        # `git -C x -c k=v push` is `git push` to a deny rule (programs: global options)
        bare = programs.without_globals(_argv(layer))
        if bare is not None:
            kept = [words[0]] + words[len(words) - (len(bare) - 1):] if len(bare) > 1 else [words[0]]
            spellings.append(kept)
        assigns = [f"{k}={_loose(v)}" for k, v in layer.assigns]
        for spelled in spellings:
            texts.append(" ".join(spelled))
            if assigns:
                texts.append(" ".join(assigns + spelled))
    return texts


def _argv(layer: Layer) -> list[str | None]:
    """The layer's words as programs.sites reads them: static values, unquoted globs as written
    (bash may expand them, but not across an option's name), None for expansions."""
    out: list[str | None] = []
    for w in layer.words:
        v = w.static
        if v is None and not w.has_expansion:
            v = "".join(t for _, t in w.segments)
        out.append(v)
    return out


def _display(layer: Layer, redirects: list[tuple[str, Word | None]] | None = None) -> str:
    """The command as a reason names it, with its redirections when they are part of what a
    rule must match (`echo hi > f` is not `echo hi`)."""
    redirected = [op + (_loose(target) if target is not None else "") for op, target in redirects or ()
                  if target is None or not harmless_redirect(op, target.static or "?")]
    return " ".join([f"{k}={_loose(v)}" for k, v in layer.assigns] + [_loose(w) for w in layer.words]
                    + redirected)


def _command_parts(cmd: SimpleCommand, depth: int) -> list[Part]:
    un = unwrap(cmd)
    layers = un.layers
    redirects = list(cmd.redirects)
    allow_at, wrapped = wrapped_starts(layers)
    first_priv = None if allow_at is None else allow_at + 1
    allow_layer = layers[allow_at] if allow_at is not None else layers[-1]
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
    marks, code, inner = _code_marks(layers, allow_layer, wrapped, depth)
    text = match_text(allow_layer, redirects, marks, keep_marks=True)
    code_at = _marker_positions(text, code)
    text = text.replace(MARK, "\n") if text is not None else None
    why = "" if text is not None else "it contains an expansion, substitution or glob whose value is unknown"
    if un.nested and first_priv is None:
        text, why, code_at = None, "a nested script", ()
    for at in (0, *wrapped):          # the program, and any program a wrapper runs
        program = allow_layer.words[at].static if at < len(allow_layer.words) else None
        if text is not None and program is not None and any(c.isspace() for c in program):
            # `git\ status` is ONE word: bash looks for a program named "git status", which
            # the text "git status" would let `git *` allow. No rule names such a program.
            text, why, code_at = None, f"the program name {program!r} contains a space", ()
    parts.append(Part(text, tuple(dict.fromkeys(deny_texts)), _display(allow_layer, redirects), why,
                      code=code_at))
    parts.extend(Part(None, p.deny_texts, p.display, deny_only=True) for p in nested_parts)
    for p in inner:
        # A command the program runs must be allowed on its own — except behind a privileged
        # wrapper, whose whole-line rule (which must spell the code) speaks for everything it runs.
        parts.append(p._replace(allow_text=None, deny_only=True, code=()) if first_priv is not None else p)
    return parts


def _code_marks(layers: tuple[Layer, ...], allow_layer: Layer, wrapped: list[int], depth: int
                ) -> tuple[dict[int, set[int]], list[tuple[int, int, str, str]], list[Part]]:
    """Where the allow text must be marked (word index in `allow_layer` → offsets), what each
    mark is (word, offset, shown, why), and the parts of the code those places run."""
    marks: dict[int, set[int]] = {}
    code: list[tuple[int, int, str, str]] = []
    inner: list[Part] = []
    for start in wrapped:
        marks.setdefault(start, set()).add(0)
        shown = _loose(allow_layer.words[start])
        code.append((start, 0, shown, f"is the program {_loose(allow_layer.words[0])} runs"))
    n = len(allow_layer.words)
    for layer in layers:
        m = len(layer.words)
        if not m or m > n or allow_layer.words[n - m:] != layer.words:
            continue
        base = n - m
        argv = _argv(layer)
        for site in programs.sites(argv):
            marks.setdefault(base + site.word, set()).add(site.offset)
            code.append((base + site.word, site.offset, site.shown, site.what))
            origin = f"{posixpath.basename(argv[0] or '?')} {site.shown}"
            if site.runs == "shell":
                if site.text is None:
                    inner.append(Part(None, (), site.shown, "it runs a command that is not known statically",
                                      runs_for=origin))
                else:
                    inner.extend(p._replace(runs_for=p.runs_for or origin)
                                 for p in parts_for_command(site.text, depth + 1))
            elif site.runs == "argv" and site.span[1] > site.span[0]:
                sub = SimpleCommand(words=list(layer.words[site.span[0]:site.span[1]]))
                inner.extend(p._replace(runs_for=p.runs_for or origin) for p in _command_parts(sub, depth + 1))
    return marks, code, inner


def _marker_positions(text: str | None, code: list[tuple[int, int, str, str]]) -> tuple[tuple[int, str, str], ...]:
    """The (position in `text`, shown, why) of each code mark (MARK in `text`), in text order."""
    if text is None or not code:
        return ()
    info: dict[tuple[int, int], tuple[str, str]] = {}
    for w, off, shown, why in code:
        info.setdefault((w, off), (shown, why))
    positions = [i for i, ch in enumerate(text) if ch == MARK]
    return tuple((pos, *info[key]) for pos, key in zip(positions, sorted(info)))


@lru_cache(maxsize=1024)
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

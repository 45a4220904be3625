"""`cmdop permissions pending|approve|deny|watch`: answering asks held by the running agent.

`watch` attaches as an approver (while one is attached, ask decisions wait for an answer instead
of being denied with `no approver attached`). Every string coming from a caller is shown with
control, ANSI, bidi and zero-width characters made visible (`visible()`), so a crafted command
cannot hide what it does or rewrite the terminal.

On a terminal, `watch` shows each ask and reads one answer line for it:
`y` allow once · `s` allow for this session · `a` allow always · `n` deny once ·
`ns` deny for the session · `na` deny always · empty line: leave it to another approver.
When stdin is not a terminal (or with --json), `watch` never prompts: it prints each ask (one
JSON object per line with --json, else the sanitized text block) and reads commands
`approve ID [once|session|always]` or `deny ID [...]` from stdin; it exits 0 when stdin reaches
EOF (so `watch < /dev/null` returns at once rather than hanging) or when the agent stops.
`approve`/`deny` answer one pending ask by id; the answer is bound to that exact call (its input
digest), so it never approves a changed call.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cmdop.cli.common import CliContext, add_command
from cmdop.core.errors import DaemonError

SCOPES = ("once", "session", "always")
TTY_ANSWERS = {"y": ("allow", "once"), "s": ("allow", "session"), "a": ("allow", "always"),
               "n": ("deny", "once"), "ns": ("deny", "session"), "na": ("deny", "always")}
# Invisible or reordering characters that are not control characters (category Cc).
_INVISIBLE = {0x061C, 0x115F, 0x1160, 0x180E, 0x3164, 0xFFA0, 0x00AD, 0x034F}


def visible(text: Any) -> str:
    """`text` with every control, ANSI, bidi and zero-width character made visible.

    C0/C1 controls and DEL become `\\xNN`, other invisible or format characters `<U+XXXX>`, and a
    backslash `\\\\`, so the output is unambiguous and never moves the cursor."""
    import unicodedata

    out = []
    for ch in str(text):
        cp = ord(ch)
        cat = unicodedata.category(ch)
        if ch == "\\":
            out.append("\\\\")
        elif cat == "Cc":
            out.append(f"\\x{cp:02x}" if cp <= 0xFF else f"<U+{cp:04X}>")
        elif cat in ("Cf", "Cs", "Co", "Cn", "Zl", "Zp") or cp in _INVISIBLE or (
                cat == "Zs" and ch != " "):
            out.append(f"<U+{cp:04X}>")
        else:
            out.append(ch)
    return "".join(out)


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]", only: str | None = None) -> None:
    """Add pending/approve/deny/watch under `cmdop permissions` (all four whatever `only`, the
    one cmdop.cli.main runs: they are cheap to build)."""
    add_command(sub, "pending", "list asks waiting for an answer", _pending)
    for name, helptext, handler in (("approve", "allow one pending ask", _approve),
                                    ("deny", "deny one pending ask", _deny)):
        p = add_command(sub, name, helptext, handler)
        p.add_argument("ask_id", metavar="ID")
        p.add_argument("--scope", choices=SCOPES, default="once",
                       help="once (default), session (session rule), always (global rule)")
        p.add_argument("--digest", default=None, metavar="SHA256",
                       help="refuse unless the ask's input_digest is exactly this")
    add_command(sub, "watch", "attach as an approver and answer asks as they come", _watch)


def _digest(text: str | None) -> str | None:
    """--digest as the agent records it (`sha256:` + 64 lower-case hex): the bare hex, or an
    upper-case copy, is the same digest. UsageError for anything else."""
    import re

    from cmdop.core.errors import UsageError

    if text is None:
        return None
    value = text.strip().lower()
    value = value[len("sha256:"):] if value.startswith("sha256:") else value
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise UsageError(f"--digest {text!r} is not a SHA-256 (64 hex digits, `sha256:` optional)",
                         hint="copy the input_digest `cmdop permissions pending` shows")
    return "sha256:" + value


def _client(ctx: CliContext) -> Any:
    from cmdop.daemon.client import DaemonClient

    return DaemonClient.connect(ctx.settings.socket_path)


def describe(ask: dict[str, Any]) -> str:
    """A person's view of one ask; every caller-supplied string passes through visible()."""
    c = ask.get("caller") or {}
    rule = ask.get("rule_id") or "(no rule: mode default)"
    op = f" ({visible(ask['operation'])})" if ask.get("operation") else ""
    return "\n".join([
        f"ask {visible(ask.get('ask_id'))}: {visible(ask.get('tool'))}{op}",
        f"  target: {visible(ask.get('target'))}",
        f"  caller: {visible(c.get('kind'))} {visible(c.get('user'))}@{visible(c.get('hostname'))}"
        + (f"  share {visible(c.get('share_id'))}" if c.get("share_id") else "")
        + (f" ({visible(c.get('note'))})" if c.get("note") else ""),
        f"  rule:   {visible(rule)} — {visible(ask.get('reason'))}",
        f"  cwd:    {visible(ask.get('cwd') or '(agent cwd)')}",
        f"  input:  {visible(ask.get('input_digest'))}  (expires in {ask.get('expires_in_s', '?')}s)",
    ])


def _pending(args: argparse.Namespace, ctx: CliContext) -> int:
    with _client(ctx) as client:
        asks = client.pending()
    ctx.emit({"asks": asks}, lambda o: "\n".join(describe(a) for a in o["asks"]) or "no pending asks")
    return 0


# What to do when the agent refuses an answer (its code -> hint).
_ANSWER_HINTS = {
    "not_pending": "list the asks waiting now: `cmdop permissions pending`",
    "digest_mismatch": "the ask is for another input than the digest you gave: look again with "
                       "`cmdop permissions pending`",
    "bad_request": "answer with an id from `cmdop permissions pending` (--scope once|session|always)",
}


def _answer(args: argparse.Namespace, ctx: CliContext, verdict: str) -> int:
    from cmdop.core.errors import DaemonError

    with _client(ctx) as client:
        try:
            result = client.answer(args.ask_id, verdict, args.scope, _digest(args.digest))
        except DaemonError as exc:
            if exc.hint is None:
                exc.hint = _ANSWER_HINTS.get(getattr(exc, "code", ""))
            raise
    ctx.emit(result, lambda r: f"{visible(r['ask_id'])}: {r['outcome']}"
             + "".join(f"\n  kept rule {visible(rule)}" for rule in r.get("rules") or [])
             + (f"\n  {'but' if r.get('rules') else 'rule not kept'}: {visible(r['rule_error'])}"
                if r.get("rule_error") else ""))
    return 0


def _approve(args: argparse.Namespace, ctx: CliContext) -> int:
    return _answer(args, ctx, "allow")


def _deny(args: argparse.Namespace, ctx: CliContext) -> int:
    return _answer(args, ctx, "deny")


def _watch(args: argparse.Namespace, ctx: CliContext) -> int:
    import queue
    import threading

    events: "queue.Queue[tuple[str, Any]]" = queue.Queue()
    client = _client(ctx)

    def from_daemon() -> None:
        for ev in client.watch(timeout=None):
            events.put(("daemon", ev))
        events.put(("gone", None))

    def from_stdin() -> None:
        for line in sys.stdin:
            events.put(("line", line.strip()))
        events.put(("eof", None))

    tty = sys.stdin.isatty() and not ctx.json
    if tty:  # before any event: a person sees it is attached, and to which agent
        pid = _peer_pid(client)
        ctx.note(f"waiting for asks from the agent on {ctx.settings.socket_path}"
                 f"{f' (pid {pid})' if pid else ''}; Ctrl-C to stop")
    threading.Thread(target=from_daemon, daemon=True, name="watch-daemon").start()
    threading.Thread(target=from_stdin, daemon=True, name="watch-stdin").start()
    order: list[str] = []
    asks: dict[str, dict[str, Any]] = {}
    announced: set[str] = set()      # asks printed as JSON events, each to end with `resolved`
    shown = ""
    try:
        while True:
            kind, payload = events.get()
            if kind in ("gone", "eof"):
                ctx.note("agent stopped" if kind == "gone" else "end of input")
                return 0
            if kind == "daemon":
                ev = payload
                name = ev.get("event")
                new = ev.get("pending", []) if name == "hello" else [ev["ask"]] if name == "ask" else []
                for ask in new:
                    asks[ask["ask_id"]] = ask
                    order.append(ask["ask_id"])
                    if not tty:
                        ctx.emit({"event": "ask", **ask}, describe(ask))
                        ctx.stdout.flush()
                        announced.add(ask["ask_id"])
                if name == "resolved":
                    ask_id = ev.get("ask_id")
                    if asks.pop(ask_id, None) is not None:
                        order.remove(ask_id)
                        if tty and ask_id == shown:
                            ctx.note(f"\n(ask {visible(ask_id)} ended: {ev.get('outcome')}, "
                                     "answered elsewhere or expired)")
                            shown = ""
                    if ask_id in announced:      # whoever answered it, this watcher included
                        announced.discard(ask_id)
                        if ctx.json:
                            ctx.emit({"event": "resolved", "ask_id": ask_id,
                                      "outcome": ev.get("outcome")})
                            ctx.stdout.flush()
            elif kind == "line":
                shown, answered = _handle_line(payload, tty, shown, asks, ctx)
                if answered in asks:   # forget it now, not when its `resolved` event arrives
                    del asks[answered]
                    order.remove(answered)
            if tty and order and shown not in asks:
                shown = order[0]
                print(describe(asks[shown]), file=ctx.stdout)
                print("answer [y]es once, [s]ession, [a]lways, [n]o, [ns] deny session, "
                      "[na] deny always, empty: skip > ", end="", file=ctx.stdout, flush=True)
    finally:
        client.close()


def _peer_pid(client: Any) -> int | None:
    """The agent's pid from the connected socket (SO_PEERCRED); None when it cannot be read."""
    import socket
    import struct

    try:
        creds = client._sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid = struct.unpack("3i", creds)[0]
    except (AttributeError, OSError, struct.error):
        return None
    return pid if isinstance(pid, int) and pid > 0 else None


def _handle_line(line: str, tty: bool, shown: str, asks: dict[str, dict[str, Any]],
                 ctx: CliContext) -> tuple[str, str]:
    """Apply one input line. Returns (ask id still on screen or "", ask id answered or "")."""
    if tty:
        if not shown:
            return "", ""
        if not line:                 # skip: leave it to another approver, show the next one
            skipped = shown
            return "", skipped
        if line not in TTY_ANSWERS:
            ctx.note("answer y, s, a, n, ns, na or an empty line")
            return shown, ""
        verdict, scope = TTY_ANSWERS[line]
        ask_id, digest = shown, asks[shown].get("input_digest")
    else:
        parts = line.split()
        if not parts:
            return shown, ""
        if parts[0] not in ("approve", "deny") or len(parts) not in (2, 3) or (
                len(parts) == 3 and parts[2] not in SCOPES):
            ctx.note("expected: approve|deny ID [once|session|always]")
            return shown, ""
        verdict = "allow" if parts[0] == "approve" else "deny"
        ask_id, scope = parts[1], parts[2] if len(parts) == 3 else "once"
        digest = asks.get(ask_id, {}).get("input_digest")
    try:
        with _client(ctx) as client:
            result = client.answer(ask_id, verdict, scope, digest)
        ctx.note(f"{visible(ask_id)}: {result.get('outcome')}")
    except DaemonError as exc:
        ctx.note(f"{visible(ask_id)}: {exc.message}")
    return ("" if ask_id == shown else shown), ask_id


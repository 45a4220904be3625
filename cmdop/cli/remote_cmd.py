"""Caller commands: `cmdop hosts`, `cmdop exec HOST -- CMD ARGS…`, `cmdop call HOST TOOL --input`.

They reach the machines of the caller's workspace through the relay (credential from the flags,
CMDOP_API_KEY, a stored workspace, or the `cmdop login` token: `cmdop.cli.credential_flags`). A
login the relay refuses (expired, revoked, account disabled) exits 4 with a hint to log in again.

Exit status: `exec` exits with the remote command's own status when it ran; 3 when
a gate denied it (the structured reason on stderr, or the denial object on stdout with --json);
4 for a refused credential; 5 when the relay or the host cannot be reached (unknown, ambiguous
or offline host included); 130 after Ctrl-C (the remote command is cancelled first).
`exec` streams stdout and stderr as they come, with no size cap (the 1 MB cap is for buffered
results); `call` prints the tool's result object as one JSON document.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
from typing import Any, Iterator

from cmdop.cli.common import CliContext, add_command
from cmdop.cli.credential_flags import (add_credential_flags, add_share_flags, check_ca,
                                        resolve_from_args, share_token)
from cmdop.core.display import escaped
from cmdop.core.errors import AuthError, DaemonError, PermissionDeniedError, UsageError


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add `hosts`, `exec` and `call`."""
    p = add_command(sub, "hosts", "list the machines of your workspace (online or not)", _hosts)
    add_credential_flags(p)
    add_share_flags(p)
    p = add_command(sub, "exec", "run a shell command on a machine and stream its output", _exec)
    add_credential_flags(p)
    add_share_flags(p)
    p.add_argument("--timeout", type=float, default=600.0, metavar="S",
                   help="the command's time limit in seconds (600 at most)")
    p.add_argument("--cwd", default="", metavar="DIR",
                   help="directory on the remote machine (default: the agent user's home)")
    p.add_argument("host", metavar="HOST", help="machine name (exact, or a unique prefix)")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS",
                   help="the command and its arguments, after --")
    p = add_command(sub, "call", "run one tool on a machine; prints its result as JSON", _call)
    add_credential_flags(p)
    add_share_flags(p)
    p.add_argument("host", metavar="HOST")
    p.add_argument("tool", metavar="TOOL",
                   help="execute_command, read_file, write_file, list_dir, grep or glob")
    p.add_argument("--input", default="{}", metavar="JSON", help="the tool input, a JSON object")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S",
                   help="seconds: an execute_command without its own timeout_ms is killed then; "
                        "the call waits at most 30 s more for its result")


def _channel(args: argparse.Namespace, ctx: CliContext) -> Any:
    from cmdop.adapters.relay_grpc import RelayChannel, RelayEndpoint

    guest = _guest_channel(args, ctx)
    if guest is not None:
        return guest
    cred = resolve_from_args(args, ctx.settings)
    if cred.source == "none" or not cred.secret:
        raise AuthError("no credential to reach the relay with",
                        "sign in with `cmdop login --issuer URL`, or store a workspace key: "
                        "`cmdop connect key set --relay HOST:PORT --relay-fingerprint HEX` "
                        "(key on stdin), or set CMDOP_API_KEY")
    if not cred.relay:
        raise UsageError("no relay address",
                         "pass --relay HOST:PORT, set CMDOP_RELAY, or store it with the key")
    fingerprint, ca = _tls_flags(args)
    if not (fingerprint or ca):     # a flag replaces the stored trust; it is never ignored
        fingerprint, ca = cred.relay_fingerprint, cred.relay_ca
    channel = RelayChannel(RelayEndpoint(address=cred.relay, fingerprint=fingerprint, ca_file=ca),
                           cred.secret)
    return _login_refused_hint(channel) if cred.source == "oauth" else channel


def _tls_flags(args: argparse.Namespace) -> tuple[str, str]:
    """(--relay-fingerprint normalised, --relay-ca) as given; empty when not."""
    from cmdop.core.credentials import normalize_fingerprint

    pin = getattr(args, "relay_fingerprint", None)
    ca = getattr(args, "relay_ca", None)
    return (normalize_fingerprint(pin) if pin else "", check_ca(ca) if ca else "")


def _guest_channel(args: argparse.Namespace, ctx: CliContext) -> Any:
    """A guest's channel (`--share` or CMDOP_SHARE_TOKEN): the share token, the relay from
    --relay / CMDOP_RELAY and its pin from the flags; no stored workspace or login is read.
    None when no share token is given."""
    from cmdop.adapters.relay_grpc import RelayChannel, RelayEndpoint
    from cmdop.core.credentials import split_host_port

    token = share_token(args, ctx.settings)
    if token is None:
        return None
    from cmdop.relay.sealing import share_scope

    args.pin_scope = share_scope(token)   # a guest's host pins are its share's (see _pin_scope)
    if getattr(args, "api_key", None) or getattr(args, "workspace", None):
        raise UsageError("a share token is a credential of its own",
                         "drop --api-key / --workspace when calling with --share")
    relay = getattr(args, "relay", None) or ctx.settings.relay
    if not relay:
        raise UsageError("no relay address for the share",
                         "pass --relay HOST:PORT (the command the owner sent you has it)")
    split_host_port(relay)
    fingerprint, ca = _tls_flags(args)
    return _share_refused_hint(RelayChannel(RelayEndpoint(address=relay, fingerprint=fingerprint,
                                                          ca_file=ca), token))


@contextlib.contextmanager
def _share_refused_hint(channel: Any) -> Iterator[Any]:
    """`with channel` for a guest: a token the relay does not know is a share problem, not a
    key to fix."""
    with channel:
        try:
            yield channel
        except AuthError as exc:
            if exc.message.startswith("the relay refused the credential"):
                raise AuthError("the relay refused the share token (unknown, or mistyped)",
                                "ask the machine's owner for the command again "
                                "(`cmdop connect share HOST` prints it)") from None
            if exc.hint in (None, AuthError.default_hint):   # "cmdop login" means nothing to a guest
                raise AuthError(exc.message, "ask the machine's owner for a new share") from None
            raise


@contextlib.contextmanager
def _login_refused_hint(channel: Any) -> Iterator[Any]:
    """`with channel` for a login's access token: the relay refusing it (the account disabled,
    the token revoked or expired) says to sign in again, not to fix a key."""
    with channel:
        try:
            yield channel
        except AuthError as exc:
            # The token refused at the start (UNAUTHENTICATED) or cut mid-call (`revoked`); any
            # other refusal (a certificate pin mismatch, ...) keeps its own hint.
            if not (exc.message.startswith("the relay refused the credential")
                    or "key was revoked" in (exc.hint or "")):
                raise
            raise AuthError(exc.message.replace("the credential", "the login", 1),
                            "run `cmdop login` to sign in again (the login expired, was revoked, "
                            "or its account was disabled)") from None


_NOT_THROUGH_AGENT = object()


def _uses_own_credential(args: argparse.Namespace, ctx: CliContext | None = None) -> bool:
    """Credential flags (or a guest's CMDOP_SHARE_TOKEN) name a credential of their own: then
    the call goes direct, never through this machine's agent and its identity."""
    if ctx is not None and ctx.settings.share_token is not None:   # even empty: refused later
        return True
    return bool(getattr(args, "api_key", None) or getattr(args, "workspace", None)
                or getattr(args, "relay", None)) or getattr(args, "share", None) is not None


def _pin_scope(args: argparse.Namespace, ctx: CliContext) -> str:
    """Where this caller's host names are unique, for its end-to-end pins: a guest's share
    (set when its channel was opened), else the credential's workspace."""
    scope = getattr(args, "pin_scope", None)
    if isinstance(scope, str):
        return scope
    return resolve_from_args(args, ctx.settings).workspace or ""


def agent_cannot_ask(exc: DaemonError) -> bool:
    """The local agent could not take the request (no relay link, another credential than its
    own, an agent too old for the op): the caller goes to the relay directly instead. Any
    other refusal is the answer."""
    return (getattr(exc, "code", "") in ("no_link", "other_credential", "bad_request")
            or "unknown op" in exc.message)


def _through_agent(args: argparse.Namespace, ctx: CliContext, host: str, tool: str,
                   tool_input: dict[str, Any], on_chunk: Any, deadline_s: float,
                   session: str = "") -> Any:
    """The call made through the local agent's open relay link (like ssh's ControlMaster: no
    TLS handshake, no grpc import here, and the relay knows which machine it comes from);
    `_NOT_THROUGH_AGENT` when no agent runs here or it has no link up."""
    import base64

    from cmdop.daemon.client import DaemonClient

    from cmdop.cli.credential_flags import credential_claim

    claim = credential_claim(resolve_from_args(args, ctx.settings))
    try:
        client = DaemonClient.connect(ctx.settings.socket_path)
    except DaemonError:
        return _NOT_THROUGH_AGENT
    from cmdop.core.errors import E2EError
    from cmdop.relay.caller import failure_error
    from cmdop.relay.sealing import Pins, seal_from_answer, seal_pinned

    def asked() -> Any:
        """Sealed to the key the relay offers for `host`, checked against the pin."""
        try:
            answer = client.relay_host_key(host, credential=claim)
        except DaemonError as exc:
            if agent_cannot_ask(exc):
                return None
            raise failure_error(getattr(exc, "code", ""), exc.message, exc.hint or "") from None
        return seal_from_answer(ctx.settings.cmdop_home, answer, tool, tool_input,
                                session=session, scope=_pin_scope(args, ctx),
                                stream=on_chunk is not None, requested=host)

    with client:
        # End to end: this process seals the call and opens its output; the local agent (and
        # the relay) forward opaque bytes. A host pinned under this exact name is sealed to
        # without asking (the relay is the link's, when the claim names it).
        pinned = None
        if claim is not None and claim.get("relay"):
            pinned = seal_pinned(Pins(ctx.settings.cmdop_home, claim["relay"],
                                      _pin_scope(args, ctx)), host, tool, tool_input,
                                 session=session, stream=on_chunk is not None)
        found = (pinned, host) if pinned is not None else asked()
        if found is None:
            return _NOT_THROUGH_AGENT
        sealed, name = found
        try:
            events = client.relay_call(name, sealed.sealed, sealed.call_id,
                                       stream=on_chunk is not None,
                                       deadline_ms=int(deadline_s * 1000), credential=claim)
            first = next(events)
        except DaemonError as exc:
            if agent_cannot_ask(exc):
                return _NOT_THROUGH_AGENT
            raise
        except StopIteration:
            return _NOT_THROUGH_AGENT

        try:
            event = first
            while True:
                kind = event.get("event")
                if kind == "chunk":
                    fd, data = sealed.chunk(base64.b64decode(event.get("data") or ""))
                    if on_chunk is not None:
                        on_chunk(fd, data)
                elif kind == "result":
                    return sealed.result(base64.b64decode(str(event.get("sealed") or "")))
                elif kind == "failure":
                    raise failure_error(str(event.get("code") or ""), str(event.get("message") or ""),
                                        str(event.get("hint") or ""))
                event = next(events)
        except E2EError:
            if sealed.from_pin:
                events.close()
                asked()                 # HostKeyChangedError when the host's key changed
            raise
        finally:
            events.close()


def _hosts(args: argparse.Namespace, ctx: CliContext) -> int:
    with _channel(args, ctx) as channel:
        reply = channel.list_hosts()
    rows = [{"name": h.name, "hostname": h.hostname, "online": h.online,
             "agent_version": h.agent_version, "last_seen": h.last_seen} for h in reply.hosts]
    if reply.total > len(rows):
        ctx.note(f"cmdop: showing {len(rows)} of {reply.total} machines (online ones first)")

    def human(rows: list[dict[str, Any]]) -> str:
        if not rows:
            return "no machines yet: run `cmdop agent run` with this workspace's key on one"
        rows = [{k: (_shown(v) if isinstance(v, str) else v) for k, v in r.items()} for r in rows]
        width = max(len(r["name"]) for r in rows)
        # The relay records last_seen every few minutes, not per ping: shown for offline
        # machines only (`--json` has it for all), where it says when the link ended.
        return "\n".join(f"{r['name']:<{width}}  {'online ' if r['online'] else 'offline'}  "
                         f"{r['agent_version'] or '-':<8}"
                         + ("" if r["online"] else f"  last seen {r['last_seen'] or '-'}")
                         for r in rows)

    ctx.emit(rows, human)
    return 0


# A relay-supplied value made safe for a terminal (cmdop.core.display).
_shown = escaped


def _deadline(timeout: float) -> float:
    if not 0 < timeout <= 600:
        raise UsageError("--timeout must be more than 0 and at most 600 seconds", "e.g. --timeout 30")
    return timeout


def _session(args: argparse.Namespace, ctx: CliContext) -> str:
    """The machine-password session cached for this host (`cmdop password unlock HOST`); none
    for a guest's call (the cache holds the caller's own workspace's sessions: never sent to a
    machine shared from another one)."""
    if getattr(args, "share", None) is not None or ctx.settings.share_token:
        return ""
    if not os.path.exists(ctx.settings.sessions_file):
        return ""       # most callers never unlocked a machine: no import of the password store
    from cmdop.adapters.password_store import cached_session

    return cached_session(ctx.settings, args.host, getattr(args, "workspace", None))


def _locked(args: argparse.Namespace, ctx: CliContext, result: Any, session: str) -> None:
    """The host wants its password first (admission:password_required): drop a session it no
    longer takes, and raise PermissionDeniedError (exit 3) saying how to unlock it."""
    from cmdop.core.password_policy import needs_unlock

    if not needs_unlock(result):
        return
    if session:
        from cmdop.adapters.password_store import forget_session

        forget_session(ctx.settings, args.host, getattr(args, "workspace", None))
    if ctx.json:
        print(json.dumps(result, ensure_ascii=False), file=ctx.stdout)
    why = "your password session has expired or was ended" if session else \
        "this machine requires its password from remote callers"
    raise PermissionDeniedError(f"denied: {args.host}: {why} [source floor, rule "
                                f"{result.get('rule_id')}]", _unlock_hint(args, ctx))


def _unlock_hint(args: argparse.Namespace, ctx: CliContext) -> str:
    """How to get past a machine's password gate: unlock it — unless this is a guest, who
    cannot (a share never carries the machine password)."""
    from cmdop.core.password_policy import unlock_hint

    if ctx.settings.share_token is not None or getattr(args, "share", None) is not None:
        return ("a guest cannot unlock a machine password: this machine refuses every guest "
                "while it requires its password from remote callers (remote_requires_password); "
                "ask its owner")
    return unlock_hint(args.host)


def _denied(result: Any, ctx: CliContext) -> None:
    """Raise PermissionDeniedError (exit 3) with the gate's structured reason."""
    from cmdop.relay.caller import denial_error

    if ctx.json:
        print(json.dumps(result, ensure_ascii=False), file=ctx.stdout)
    raise denial_error(result)


def _exec(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.relay.caller import remote_call

    argv = list(args.argv)
    if not args.host.strip():     # `cmdop exec "$HOST"` with HOST unset: not a machine to look up
        raise UsageError("HOST is empty", "cmdop exec HOST -- CMD ARGS… (`cmdop hosts` lists them)")
    if argv and argv[0] != "--" and argv[0].startswith("-"):
        # an option after HOST (`web01 --share TOKEN`) would run as the command, with the
        # caller's own credential; not echoed: it may hold a token
        raise UsageError("options go before HOST", "cmdop exec [OPTIONS] HOST -- CMD ARGS… "
                         "(a command starting with '-' goes after --)")
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError("no command given", "cmdop exec HOST -- CMD ARGS…")
    timeout = _deadline(args.timeout)
    command = argv[0] if len(argv) == 1 else shlex.join(argv)
    if not command.strip():       # nothing to run: refused here, not sent for the floor to deny
        raise UsageError("the command is empty", "cmdop exec HOST -- CMD ARGS…")
    tool_input: dict[str, Any] = {"command": command, "timeout_ms": int(timeout * 1000)}
    if args.cwd:
        tool_input["cwd"] = args.cwd
    out, err = sys.stdout.buffer, sys.stderr.buffer

    def on_chunk(fd: int, data: bytes) -> None:
        stream = err if fd == 2 else out
        stream.write(data)
        stream.flush()

    try:
        result = _NOT_THROUGH_AGENT
        session = _session(args, ctx)
        if not _uses_own_credential(args, ctx):
            result = _through_agent(args, ctx, args.host, "execute_command", tool_input,
                                    on_chunk, timeout + 30, session)
        if result is _NOT_THROUGH_AGENT:
            with _channel(args, ctx) as channel:
                result = remote_call(channel, args.host, "execute_command", tool_input,
                                     on_chunk=on_chunk, deadline_s=timeout + 30, session=session,
                                     cmdop_home=ctx.settings.cmdop_home,
                                     pin_scope=_pin_scope(args, ctx))
    except KeyboardInterrupt:
        ctx.note("cmdop: interrupted; the remote command was cancelled")
        return 130
    if isinstance(result, dict) and result.get("error") == "permission_denied":
        _locked(args, ctx, result, session)
        _denied(result, ctx)
    if isinstance(result, dict) and "exit_code" in result:
        if result.get("timed_out"):
            ctx.note(f"cmdop: the command timed out after {timeout:.0f} s and was killed")
        return int(result["exit_code"])
    from cmdop.core.errors import CmdopError

    message = result.get("message") if isinstance(result, dict) else None
    kind = result.get("error") if isinstance(result, dict) else None
    raise CmdopError(f"the call failed: {escaped(str(message or json.dumps(result)[:500]), 500)}",
                     _EXEC_HINTS.get(str(kind), "see `cmdop permissions audit` on that machine"))


# What to do when `exec` ends with a tool error instead of an exit status, by its kind.
_EXEC_HINTS = {
    "bad_input": "check --cwd: a directory that exists on that machine (absolute, or under its "
                 "home)",
    "sandbox_unavailable": "the machine cannot confine commands now: `cmdop agent status` and "
                           "`cmdop doctor` on it say why",
}


def _call(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.relay.caller import remote_call

    if not args.host.strip():
        raise UsageError("HOST is empty", "cmdop call HOST TOOL --input JSON (see `cmdop hosts`)")
    try:
        tool_input = json.loads(args.input)
    except ValueError as exc:
        raise UsageError(f"--input is not valid JSON: {exc}",
                         'pass an object, e.g. --input \'{"path": "/var/log/syslog"}\'') from None
    if not isinstance(tool_input, dict):
        raise UsageError("--input must be a JSON object")
    if args.tool == "unlock":      # a password on the command line is readable by every user
        raise UsageError("`cmdop call HOST unlock` would put the password on the command line",
                         f"run `cmdop password unlock {args.host}` (it prompts, or reads stdin)")
    timeout = _deadline(args.timeout)
    if args.tool == "execute_command" and "timeout_ms" not in tool_input:
        # The command's own limit, as `exec --timeout` sets it (it was only the wait for the
        # result: `call --timeout 3 … sleep 20` waited 20 s).
        tool_input = {**tool_input, "timeout_ms": int(timeout * 1000)}
    try:
        result = _NOT_THROUGH_AGENT
        session = _session(args, ctx)
        if not _uses_own_credential(args, ctx):
            result = _through_agent(args, ctx, args.host, args.tool, tool_input, None,
                                    timeout + 30, session)
        if result is _NOT_THROUGH_AGENT:
            with _channel(args, ctx) as channel:
                result = remote_call(channel, args.host, args.tool, tool_input,
                                     deadline_s=timeout + 30, session=session,
                                     cmdop_home=ctx.settings.cmdop_home,
                                     pin_scope=_pin_scope(args, ctx))
    except KeyboardInterrupt:
        ctx.note("cmdop: interrupted; the remote call was cancelled")
        return 130
    if isinstance(result, dict) and result.get("error") == "permission_denied":
        print(json.dumps(result, ensure_ascii=False), file=ctx.stdout)
        from cmdop.core.password_policy import needs_unlock

        if needs_unlock(result):
            if session:
                from cmdop.adapters.password_store import forget_session

                forget_session(ctx.settings, args.host, getattr(args, "workspace", None))
            ctx.note(f"hint: {_unlock_hint(args, ctx)}")
        return 3
    if isinstance(result, dict) and result.get("error") == "bad_input":
        from cmdop.cli.run_cmd import report_bad_input

        return report_bad_input(result, ctx)           # a mistake in the input: exit 1
    if isinstance(result, dict) and result.get("error") == "unknown_tool":
        print(json.dumps(result, ensure_ascii=False), file=ctx.stdout)
        raise UsageError(escaped(str(result.get("message") or f"unknown tool {args.tool!r}")),
                         f"e.g. cmdop call {args.host} list_dir --input '{{\"path\": \"/tmp\"}}'")
    from cmdop.cli.run_cmd import report_result

    return report_result(result, ctx)

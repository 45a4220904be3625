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
import shlex
import sys
from typing import Any, Iterator

from cmdop.cli.common import CliContext, add_command
from cmdop.cli.credential_flags import add_credential_flags, resolve_from_args
from cmdop.core.errors import AuthError, PermissionDeniedError, UsageError


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add `hosts`, `exec` and `call`."""
    p = add_command(sub, "hosts", "list the machines of your workspace (online or not)", _hosts)
    add_credential_flags(p)
    p = add_command(sub, "exec", "run a shell command on a machine and stream its output", _exec)
    add_credential_flags(p)
    p.add_argument("--timeout", type=float, default=600.0, metavar="S",
                   help="the command's time limit in seconds (600 at most)")
    p.add_argument("--cwd", default="", metavar="DIR",
                   help="directory on the remote machine (default: the agent user's home)")
    p.add_argument("host", metavar="HOST", help="machine name (exact, or a unique prefix)")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS",
                   help="the command and its arguments, after --")
    p = add_command(sub, "call", "run one tool on a machine; prints its result as JSON", _call)
    add_credential_flags(p)
    p.add_argument("host", metavar="HOST")
    p.add_argument("tool", metavar="TOOL",
                   help="execute_command, read_file, write_file, list_dir, grep or glob")
    p.add_argument("--input", default="{}", metavar="JSON", help="the tool input, a JSON object")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S")


def _channel(args: argparse.Namespace, ctx: CliContext) -> Any:
    from cmdop.adapters.relay_grpc import RelayChannel, RelayEndpoint

    cred = resolve_from_args(args, ctx.settings)
    if cred.source == "none" or not cred.secret:
        raise AuthError("no credential to reach the relay with",
                        "sign in with `cmdop login --issuer URL`, or store a workspace key: "
                        "`cmdop connect key set --relay HOST:PORT --relay-fingerprint HEX` "
                        "(key on stdin), or set CMDOP_API_KEY")
    if not cred.relay:
        raise UsageError("no relay address",
                         "pass --relay HOST:PORT, set CMDOP_RELAY, or store it with the key")
    channel = RelayChannel(RelayEndpoint(address=cred.relay, fingerprint=cred.relay_fingerprint,
                                         ca_file=cred.relay_ca), cred.secret)
    return _login_refused_hint(channel) if cred.source == "oauth" else channel


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


def _uses_own_credential(args: argparse.Namespace) -> bool:
    """Credential flags name a credential of their own: then the call goes direct."""
    return bool(getattr(args, "api_key", None) or getattr(args, "workspace", None)
                or getattr(args, "relay", None))


def _through_agent(args: argparse.Namespace, ctx: CliContext, host: str, tool: str,
                   tool_input: dict[str, Any], on_chunk: Any, deadline_s: float,
                   session: str = "") -> Any:
    """The call made through the local agent's open relay link (like ssh's ControlMaster: no
    TLS handshake, no grpc import here, and the relay knows which machine it comes from);
    `_NOT_THROUGH_AGENT` when no agent runs here or it has no link up."""
    import base64

    from cmdop.core.errors import DaemonError
    from cmdop.daemon.client import DaemonClient

    from cmdop.cli.credential_flags import credential_claim

    claim = credential_claim(resolve_from_args(args, ctx.settings))
    try:
        client = DaemonClient.connect(ctx.settings.socket_path)
    except DaemonError:
        return _NOT_THROUGH_AGENT
    with client:
        try:
            events = client.relay_call(host, tool, tool_input, stream=on_chunk is not None,
                                       deadline_ms=int(deadline_s * 1000), credential=claim,
                                       session=session)
            first = next(events)
        except DaemonError as exc:
            if (getattr(exc, "code", "") in ("no_link", "other_credential", "bad_request")
                    or "unknown op" in exc.message):
                return _NOT_THROUGH_AGENT
            raise
        except StopIteration:
            return _NOT_THROUGH_AGENT
        from cmdop.relay.caller import failure_error

        try:
            event = first
            while True:
                kind = event.get("event")
                if kind == "chunk" and on_chunk is not None:
                    on_chunk(int(event.get("fd") or 1), base64.b64decode(event.get("data") or ""))
                elif kind == "result":
                    return event.get("result")
                elif kind == "failure":
                    raise failure_error(str(event.get("code") or ""), str(event.get("message") or ""),
                                        str(event.get("hint") or ""))
                event = next(events)
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
        return "\n".join(f"{r['name']:<{width}}  {'online ' if r['online'] else 'offline'}  "
                         f"{r['agent_version'] or '-':<8}  last seen {r['last_seen'] or '-'}"
                         for r in rows)

    ctx.emit(rows, human)
    return 0


def _shown(text: str) -> str:
    """A relay-supplied value made safe for a terminal (no escape sequences)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _deadline(timeout: float) -> float:
    if not 0 < timeout <= 600:
        raise UsageError("--timeout must be between 0 and 600 seconds")
    return timeout


def _session(args: argparse.Namespace, ctx: CliContext) -> str:
    """The machine-password session cached for this host (`cmdop password unlock HOST`)."""
    from cmdop.adapters.password_store import cached_session

    return cached_session(ctx.settings, args.host, getattr(args, "workspace", None))


def _locked(args: argparse.Namespace, ctx: CliContext, result: Any, session: str) -> None:
    """The host wants its password first (admission:password_required): drop a session it no
    longer takes, and raise PermissionDeniedError (exit 3) saying how to unlock it."""
    from cmdop.core.password_policy import needs_unlock, unlock_hint

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
                                f"{result.get('rule_id')}]", unlock_hint(args.host))


def _denied(result: Any, ctx: CliContext) -> None:
    """Raise PermissionDeniedError (exit 3) with the gate's structured reason."""
    from cmdop.relay.caller import denial_error

    if ctx.json:
        print(json.dumps(result, ensure_ascii=False), file=ctx.stdout)
    raise denial_error(result)


def _exec(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.relay.caller import remote_call

    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError("no command given", "cmdop exec HOST -- CMD ARGS…")
    timeout = _deadline(args.timeout)
    command = argv[0] if len(argv) == 1 else shlex.join(argv)
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
        if not _uses_own_credential(args):
            result = _through_agent(args, ctx, args.host, "execute_command", tool_input,
                                    on_chunk, timeout + 30, session)
        if result is _NOT_THROUGH_AGENT:
            with _channel(args, ctx) as channel:
                result = remote_call(channel, args.host, "execute_command", tool_input,
                                     on_chunk=on_chunk, deadline_s=timeout + 30, session=session)
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
    raise CmdopError(f"the call failed: {message or json.dumps(result)[:500]}", None)


def _call(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.relay.caller import remote_call

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
    try:
        result = _NOT_THROUGH_AGENT
        session = _session(args, ctx)
        if not _uses_own_credential(args):
            result = _through_agent(args, ctx, args.host, args.tool, tool_input, None,
                                    timeout + 30, session)
        if result is _NOT_THROUGH_AGENT:
            with _channel(args, ctx) as channel:
                result = remote_call(channel, args.host, args.tool, tool_input,
                                     deadline_s=timeout + 30, session=session)
    except KeyboardInterrupt:
        ctx.note("cmdop: interrupted; the remote call was cancelled")
        return 130
    if isinstance(result, dict) and result.get("error") == "permission_denied":
        print(json.dumps(result, ensure_ascii=False), file=ctx.stdout)
        from cmdop.core.password_policy import needs_unlock, unlock_hint

        if needs_unlock(result):
            if session:
                from cmdop.adapters.password_store import forget_session

                forget_session(ctx.settings, args.host, getattr(args, "workspace", None))
            ctx.note(f"hint: {unlock_hint(args.host)}")
        return 3
    print(json.dumps(result, ensure_ascii=False), file=ctx.stdout)
    return 1 if isinstance(result, dict) and result.get("error") else 0

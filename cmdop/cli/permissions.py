"""`cmdop permissions list|add|rm|mode|check|explain|test|init|path`.

- `init` writes the starter permissions.yaml (mode strict, no rules, example rules in comments;
  atomic, 0600) and prints its path; the agent writes the same file on its first run. On an
  existing file it refuses (exit 1) and says to edit it.
- `path` says where cmdop's files are (policy, config.yaml, state dir, audit log, socket and why
  there, credentials dir); `--json` for scripts.

- `check`/`explain` are dry runs: no daemon, no side effect, no audit line; exit 0 whatever the
  decision, exit 1 when the policy file is invalid. The policy comes from `--policy FILE` or the
  config dir (a missing default file is an empty policy); the mode from `--mode`, else
  CMDOP_PERMISSIONS_MODE, else the file, else strict. `--caller` defaults to remote.
- `check --batch FILE|-` judges every line in one process under one loaded policy (lines as in
  `cmdop.core.replay`, BATCH LINES): always JSON lines out, one per line in, same order, each
  the `check --json` object plus "line"; `--caller`/`--cwd`/`--op` are the lines' defaults. A
  bad line gets {"line", "error", "message"} and the run goes on; exit 0 when every line was
  judged, else 1 with "N of M lines could not be judged (…)" on stderr.
- `replay [--policy NEW] [--since WHEN] [--mode M]` re-judges the audit log's recorded calls
  (every file, oldest first) under NEW (default: permissions.yaml) and prints the ones whose
  gate decision changes, grouped by transition, then a summary (REPLAY in `cmdop.core.replay`:
  floor denials kept, records that cannot be re-judged exactly skipped with why). `--json`:
  {"changed", "skipped", "summary"}. Exit 0 whether or not anything changed; 1 when the policy
  does not load (its line), 2 for a bad --since.
- `add`/`rm`/`mode` edit permissions.yaml with an atomic 0600 write after validating the result
  (rules compile, `tests:` pass); a running agent hot-reloads it. `add --scope session` asks the
  running agent (session rules live only in its memory).
- `test [FILE]` runs the file's `tests:` and the built-in adversarial suite against the policy;
  exit 1 when any fails.
- While the machine has a password (`cmdop password set`), `add`, `rm` and `mode MODE` ask for it
  first (a terminal, or stdin's first line with `--password-stdin`) and refuse without it, exit 4
  (`cmdop.cli.password_cmd.require_password`).
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial

from cmdop.cli.common import CliContext, add_command
from cmdop.cli.password_cmd import add_password_flag, require_password
from cmdop.core.display import escaped
from cmdop.core.errors import CmdopError, PolicyError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Iterator

MODES = ("default", "strict", "bypass")
# In the state dir: what the last policy text read here parsed to (policy_store.load's memo).
MEMO_FILE = "permissions.memo"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], only: str | None = None) -> None:
    """Add this module's commands to `sub` (the `cmdop permissions` group), in `--help` order;
    with `only`, that one alone (cmdop.cli.main builds only the command it runs)."""
    for name, build in _BUILDERS:
        if only is None or name == only:
            build(sub)


def _register_list(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_command(sub, "list", "list the rules of permissions.yaml", _list)


def _register_add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "add", "add a rule", _add)
    p.add_argument("rule", metavar="RULE", help="tool, tool(GLOB) or tool(OP:GLOB)")
    p.add_argument("--action", required=True, choices=["allow", "ask", "deny"])
    p.add_argument("--reason", default="")
    p.add_argument("--scope", choices=["global", "session"], default="global")
    add_password_flag(p)


def _register_rm(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "rm", "remove a rule by its id", _rm)
    p.add_argument("rule_id", metavar="RULE_ID")
    add_password_flag(p)


def _register_mode(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "mode", "show or set the permission mode", _mode)
    p.add_argument("mode", nargs="?", choices=MODES)
    add_password_flag(p)


def _register_dry_run(name: str, handler: Any, text: str,
                      sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`check` and `explain`: the same call arguments."""
    p = add_command(sub, name, text, handler)
    tool = p.add_argument("tool", metavar="TOOL")
    arg = p.add_argument("arg", metavar="ARG", nargs="+", help="the command, path or hostname")
    if name == "check":
        # `check --batch FILE` takes no TOOL/ARG, so they may be absent (`_check` says when
        # they must be there). Not nargs "?"/"*": argparse would then match ARG empty at
        # once and refuse `check connect --op exec HOST`.
        tool.required = arg.required = False
    p.add_argument("--op", default="", help="the operation (e.g. connect --op exec)")
    p.add_argument("--caller", choices=["remote", "self", "local"], default="remote")
    p.add_argument("--mode", choices=MODES, default=None)
    p.add_argument("--policy", metavar="FILE", default=None)
    p.add_argument("--cwd", metavar="DIR", default=None)
    if name == "check":
        p.add_argument("--batch", metavar="FILE", default=None,
                       help="judge every JSON line of FILE (- for stdin): a call {tool, input, caller?, "
                            "cwd?, op?} or an audit record; prints one JSON line per input line")


def _register_replay(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "replay", "re-judge the audit log's calls under a policy; show what would change",
                    _replay)
    p.add_argument("--policy", metavar="FILE", default=None, help="the proposed policy (default: permissions.yaml)")
    p.add_argument("--since", metavar="WHEN", default=None,
                   help="only records since an age (30s, 15m, 1h, 2d) or a time (2026-04-27T10:00Z)")
    p.add_argument("--mode", choices=MODES, default=None, help="judge in this mode (default: as `check`)")


def _register_test(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "test", "run the policy's tests and the adversarial suite", _test)
    p.add_argument("file", metavar="FILE", nargs="?", default=None)


def _register_init(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_command(sub, "init", "write a starter permissions.yaml (strict, no rules) if there is none", _init)


def _register_path(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_command(sub, "path", "show where the policy, config, state, audit log, socket and credentials are",
                _path)


# ---- helpers -------------------------------------------------------------------------------
def _load(ctx: CliContext, path: str | None, run_tests: bool = True) -> tuple[Any, Any]:
    """(doc, policy) from `path` or the config dir. A missing default file is an empty policy."""
    from cmdop.adapters import policy_store
    from cmdop.core.policy.gate import Policy

    explicit = path is not None
    path = path or ctx.settings.permissions_file
    loaded = policy_store.load(path, ctx.settings.home, run_tests=run_tests,
                               memo=os.path.join(ctx.settings.state_dir, MEMO_FILE))
    if loaded is None:
        if explicit:
            raise PolicyError(f"no policy file at {path}", hint="check the path")
        return policy_store.PolicyDoc(), Policy()
    return loaded


def _effective_mode(ctx: CliContext, flag: str | None, file_mode: str,
                    file_exists: bool = True) -> tuple[str, str]:
    """(mode, where it came from)."""
    if flag:
        return flag, "--mode"
    env = ctx.settings.mode_override
    if env:
        return (env, "CMDOP_PERMISSIONS_MODE") if env in MODES else ("strict", "CMDOP_PERMISSIONS_MODE (invalid → strict)")
    if not file_exists:
        return "strict", "default (no permissions.yaml)"
    return file_mode, "permissions.yaml"


def _call(args: argparse.Namespace) -> Any:
    from cmdop.core.calls import TOOL_TARGET_FIELD, ToolCall

    # An unknown tool is not a usage error: the gate denies it, and the dry run shows that.
    cwd = os.path.abspath(args.cwd) if args.cwd else os.getcwd()
    field = TOOL_TARGET_FIELD.get(args.tool, "target")
    return ToolCall(args.tool, {field: " ".join(args.arg)}, args.op, cwd)


def _resolved(ctx: CliContext, call: Any) -> tuple[str | None, str | None]:
    from cmdop.adapters.gatekeeper import resolve_for_gate

    return resolve_for_gate(call, ctx.settings.home)


def _tell_agent(ctx: CliContext) -> None:
    """Ask a running agent to reload now (it also watches the file); silent when none runs."""
    try:
        from cmdop.daemon.client import connect_if_running

        client = connect_if_running(ctx.settings)
        if client is not None:
            with client:
                client.reload()
    except Exception:  # noqa: BLE001, S110 - the file is written; the agent's watcher catches up
        pass


# ---- commands ------------------------------------------------------------------------------
def _check(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.adapters.gatekeeper import protected_dirs
    from cmdop.core.calls import Caller, CallerKind
    from cmdop.core.policy.gate import decide

    if args.batch is not None:
        if args.tool is not None:
            raise UsageError("--batch takes its calls from FILE; give no TOOL or ARG with it",
                             hint="e.g. cmdop permissions check --batch calls.jsonl")
        return _check_batch(args, ctx)
    if args.tool is None or not args.arg:
        raise UsageError("check needs TOOL and ARG (or --batch FILE)",
                         hint='e.g. cmdop permissions check execute_command "git status"')
    _, policy = _load(ctx, args.policy)
    mode, _ = _effective_mode(ctx, args.mode, policy.mode)
    call = _call(args)
    resolved, resolved_cwd = _resolved(ctx, call)
    d = decide(call, Caller(CallerKind(args.caller)), policy, ctx.settings.home, mode, resolved, resolved_cwd,
               protected_dirs(ctx.settings))
    # (the reason holds the call's target and rule texts and reasons: a file's, or another's)
    ctx.emit(d.to_json(), lambda o: f"{d.decision} (source {d.source}"
             + (f", rule {d.rule_id}" if d.rule_id else "") + f"): {escaped(d.reason)}")
    return 0


_LINE_BREAKS = ("\x85", "\u2028", "\u2029")  # breaks for str.splitlines; json.dumps keeps them raw


def _json_line(obj: dict[str, Any]) -> str:
    """One output line: UTF-8 text kept, but escaped where a reader could see two lines (U+0085,
    U+2028, U+2029 — only ever inside JSON strings here) or could not decode it (a lone
    surrogate from the input, which JSON allows as "\\ud800", makes the line ASCII-escaped)."""
    import json  # here: `check` without --json prints no JSON

    text = json.dumps(obj, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj)
    for ch in _LINE_BREAKS:
        if ch in text:
            text = text.replace(ch, f"\\u{ord(ch):04x}")
    return text


def _input_lines(path: str) -> Iterator[bytes]:
    """The lines of FILE (or stdin for `-`) as bytes without their newline; decoding is the
    line parser's business, so a bad byte costs one line, not the run."""
    if path == "-":
        for raw in sys.stdin.buffer:
            yield raw.rstrip(b"\n")
        return
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise CmdopError(f"cannot read {path}: {exc.strerror}", hint="check the --batch path") from None
    with f:
        for raw in f:
            yield raw.rstrip(b"\n")


def _check_batch(args: argparse.Namespace, ctx: CliContext) -> int:
    """`check --batch FILE|-`: one JSON line out per line in, same order (cmdop.core.replay,
    BATCH LINES); exit 1 with a count on stderr when any line could not be judged."""
    from cmdop.adapters.batch_check import Judge
    from cmdop.core.calls import CallerKind
    from cmdop.core.replay import judge_lines

    _, policy = _load(ctx, args.policy)
    mode, _ = _effective_mode(ctx, args.mode, policy.mode)
    judge = Judge(ctx.settings, policy, mode)
    workdir = os.getcwd()
    cwd = os.path.abspath(args.cwd) if args.cwd else workdir
    # From a pipe, answer each line at once (a script may wait for it before writing the next).
    eager = args.batch == "-"
    total, bad, skipped = 0, 0, 0
    out = ctx.stdout
    for obj in judge_lines(_input_lines(args.batch), judge, caller=CallerKind(args.caller), cwd=cwd,
                           workdir=workdir, op=args.op):
        total += 1
        error = obj.get("error")
        if error == "bad_input":
            bad += 1
        elif error is not None:
            skipped += 1
        print(_json_line(obj), file=out, flush=eager)
    out.flush()
    if bad or skipped:
        parts = [f"{bad} bad input"] if bad else []
        parts += [f"{skipped} not judgeable from the audit record"] if skipped else []
        ctx.note(f"{bad + skipped} of {total} lines could not be judged ({', '.join(parts)})")
        return 1
    return 0


# A caller chose the target: its fields are shown escaped (cmdop.core.display).
_printable = escaped


def _replay(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.adapters import audit_reader
    from cmdop.adapters.batch_check import Judge
    from cmdop.cli.audit_cmd import since_arg
    from cmdop.core.replay import SKIPS, TRANSITIONS, replay

    since = since_arg(args.since)
    _, policy = _load(ctx, args.policy)
    mode, mode_from = _effective_mode(ctx, args.mode, policy.mode)
    if args.policy and mode_from == "permissions.yaml":
        mode_from = args.policy
    judge = Judge(ctx.settings, policy, mode)
    result = replay(audit_reader.records(ctx.settings.state_dir, audit_reader.Filter(since=since)), judge)
    summary = result.summary()
    summary.update({"policy": args.policy or ctx.settings.permissions_file, "mode": mode,
                    "since": since.strftime("%Y-%m-%dT%H:%M:%SZ") if since else None})
    out = {"changed": [c.to_json() for c in result.changed], "skipped": [s.to_json() for s in result.skipped],
           "summary": summary}

    def why(d: dict[str, Any]) -> str:
        rule = f", rule {d['rule_id']}" if d["rule_id"] else ""
        return f"(source {d['source']}{rule}): {_printable(d['reason'])}"

    def human(o: dict[str, Any]) -> str:
        lines: list[str] = []
        for move in TRANSITIONS:
            group = [c for c in o["changed"] if c["transition"] == move]
            if not group:
                continue
            lines.append(f"{move} ({len(group)})")
            for c in group:
                op = f" {c['operation']}" if c["operation"] else ""
                lines.append(f"  seq {c['seq']}  {c['ts']}  {c['caller']}  {c['tool']}{op}  "
                             f"{_printable(c['target'])}")
                old, new = c["old"], c["new"]
                ended = f", recorded {old['recorded']}" if old["recorded"] != old["decision"] else ""
                lines.append(f"    was {old['decision']} {why(old)}{ended}")
                lines.append(f"    now {new['decision']} {why(new)}")
        s = o["summary"]
        text = (f"replayed {s['records']} audit records under {s['policy']} (mode {mode} from {mode_from})"
                + (f" since {s['since']}" if s["since"] else "")
                + f": {s['rejudged']} re-judged, {s['changed']} changed")
        if s["floor_kept"]:
            text += f"; {s['floor_kept']} floor denials kept (the floor does not depend on the policy)"
        if s["skipped"]:
            text += f"; {s['skipped']} skipped: " + ", ".join(f"{n} {SKIPS[w]}" for w, n in s["skipped_by"].items())
        lines.append(text)
        return "\n".join(lines)

    ctx.emit(out, human)
    return 0


def _explain(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.adapters.gatekeeper import protected_dirs
    from cmdop.core.calls import Caller, CallerKind
    from cmdop.core.policy.explain import explain

    _, policy = _load(ctx, args.policy)
    mode, source = _effective_mode(ctx, args.mode, policy.mode)
    call = _call(args)
    caller = Caller(CallerKind(args.caller))
    resolved, resolved_cwd = _resolved(ctx, call)
    d, lines = explain(call, caller, policy, ctx.settings.home, mode, resolved, resolved_cwd,
                       protected_dirs(ctx.settings), admission=_admission(ctx, call, caller))
    lines.insert(1, f"policy: {args.policy or ctx.settings.permissions_file}; mode {mode} from {source}")
    ctx.emit({"decision": d.to_json(), "steps": lines}, "\n".join(lines))
    return 0


def _admission(ctx: CliContext, call: Any, caller: Any) -> Any:
    """The admission checks for `explain`, on facts a dry run can learn without side effects:
    the agent's tools, whether the state dir's audit.log is writable, config.yaml's
    `sandbox_required` (its default when the file is invalid, as the agent does) and, where a
    command needs it, whether the seccomp filter can be built here."""
    from cmdop.adapters.audit_log import LOG_NAME
    from cmdop.adapters.config_file import load as load_config
    from cmdop.core.admission import AdmissionFacts, admit, needs_sandbox
    from cmdop.core.errors import ConfigFileError
    from cmdop.pipeline import writable_path
    from cmdop.tools.registry import TOOLS

    try:
        required = load_config(ctx.settings.config_file).sandbox_required
    except ConfigFileError:
        required = True
    available: bool | None = None
    why = ""
    if needs_sandbox(call, caller, required):
        from cmdop.adapters.sandbox import build_filter

        built = build_filter()
        available, why = built.available, built.reason
    from cmdop.adapters.password_store import remote_password_required

    # A caller that is not local and has no password session, while this machine asks for one.
    password = remote_password_required(ctx.settings)
    facts = AdmissionFacts(frozenset(TOOLS), writable_path(os.path.join(ctx.settings.state_dir, LOG_NAME)),
                           available, required, why, password_set=password,
                           remote_requires_password=password)
    return admit(call, caller, facts)


def _session_rules(ctx: CliContext) -> list[dict[str, str]] | None:
    """The running agent's session rules, or None when no agent answers (never raises)."""
    from cmdop.core.errors import DaemonError
    from cmdop.daemon.client import connect_if_running

    client = connect_if_running(ctx.settings)
    if client is None:
        return None
    try:
        with client:
            rules = client.list_rules().get("rules") or []
    except DaemonError:   # an older agent without list_rules, or one that went away
        return None
    return [{"rule_id": str(r.get("rule_id", "")), "rule": str(r.get("rule", "")),
             "action": str(r.get("action", "")), "reason": str(r.get("reason", "")),
             "scope": "session"}
            for r in rules if isinstance(r, dict) and r.get("scope") == "session"]


def _list(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.core.policy.rules import rule_id

    doc, _ = _load(ctx, None)
    rows = [{"rule_id": rule_id(r, a), "rule": r, "action": a, "reason": why, "scope": "global"}
            for r, a, why in doc.rules]
    session = _session_rules(ctx)
    rows += session or []

    def human(rows: list[dict[str, str]]) -> str:
        mode, source = _effective_mode(ctx, None, doc.mode, os.path.lexists(ctx.settings.permissions_file))
        n_global = len(rows) - len(session or [])
        head = f"mode: {mode} ({source}); {n_global} rule(s) in {ctx.settings.permissions_file}"
        head += (f"; {len(session)} session rule(s) in the running agent" if session is not None
                 else "; no agent running (no session rules)")
        body = [f"{r['rule_id']}  {r['scope']:7}  {r['action']:5}  {escaped(r['rule'])}"
                + (f"  # {escaped(r['reason'])}" if r["reason"] else "") for r in rows]
        return "\n".join([head, *body])

    ctx.emit(rows, human)
    return 0


def _add(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.adapters.gatekeeper import add_rule_to_file
    from cmdop.core.policy.rules import RuleError, parse_rule

    try:
        parse_rule(args.rule, args.action, args.reason, home=ctx.settings.home)
    except RuleError as exc:
        raise PolicyError(str(exc), hint="rule syntax: tool, tool(GLOB) or tool(OP:GLOB)") from None
    require_password(args, ctx, "permissions add")
    added = True
    if args.scope == "session":
        from cmdop.core.errors import DaemonError, DaemonNotRunningError
        from cmdop.daemon.client import connect_if_running

        client = connect_if_running(ctx.settings)
        if client is None:
            raise DaemonNotRunningError(
                f"no agent is running on {ctx.settings.socket_path}",
                hint="session rules live in the running agent; start it with `cmdop agent run` "
                     "(or add a global rule with --scope global)")
        with client:
            try:
                rid = str(client.add_session_rule(args.rule, args.action, args.reason)["rule_id"])
            except DaemonError as exc:
                if getattr(exc, "code", "") == "bad_rule":
                    raise PolicyError(exc.message, hint=exc.hint) from None
                raise
    else:
        rid, added = add_rule_to_file(ctx.settings, args.rule, args.action, args.reason)
        if added:
            _tell_agent(ctx)
    out = {"rule_id": rid, "rule": args.rule, "action": args.action, "scope": args.scope}
    if args.reason:
        out["reason"] = args.reason
    if not added:
        out["already_present"] = True
        ctx.emit(out, f"global rule {rid} is already in {ctx.settings.permissions_file}: "
                      f"{args.action} {escaped(args.rule)} (nothing changed)")
        return 0
    ctx.emit(out, f"added {args.scope} rule {rid}: {args.action} {escaped(args.rule)}")
    return 0


def _rm(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.adapters import policy_store, secure_file
    from cmdop.core.policy.rules import rule_id

    def without(doc: "policy_store.PolicyDoc") -> tuple["policy_store.PolicyDoc", tuple[str, str, str]]:
        keep = tuple(r for r in doc.rules if rule_id(r[0], r[1]) != args.rule_id)
        if len(keep) == len(doc.rules):
            raise CmdopError(f"no rule with id {args.rule_id} in {ctx.settings.permissions_file}",
                             hint="see the ids with `cmdop permissions list`")
        gone = next(r for r in doc.rules if rule_id(r[0], r[1]) == args.rule_id)
        return doc.replace(rules=keep), gone

    without(_load(ctx, None)[0])            # an unknown id is told before the password is asked
    require_password(args, ctx, "permissions rm")
    with secure_file.writer_lock(ctx.settings.permissions_file):
        new, gone = without(_load(ctx, None)[0])     # again, under the lock
        policy_store.save(ctx.settings.permissions_file, new, ctx.settings.home)
    _tell_agent(ctx)
    ctx.emit({"removed": args.rule_id, "rule": gone[0], "action": gone[1]},
             f"removed {args.rule_id}: {gone[1]} {gone[0]}")
    return 0


def _mode(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.adapters import policy_store, secure_file

    doc, _ = _load(ctx, None)
    if args.mode is None:
        exists = os.path.lexists(ctx.settings.permissions_file)
        mode, source = _effective_mode(ctx, None, doc.mode, exists)
        text = f"{mode} (from {source})" if exists or ctx.settings.mode_override else \
            f"{mode} (the default: no {ctx.settings.permissions_file}; `cmdop permissions init` writes one)"
        ctx.emit({"mode": mode, "source": source}, text)
        return 0
    require_password(args, ctx, "permissions mode")
    with secure_file.writer_lock(ctx.settings.permissions_file):
        doc, _ = _load(ctx, None)         # again, under the lock: what others wrote meanwhile
        new = doc.replace(mode=args.mode, mode_set=True)
        policy_store.save(ctx.settings.permissions_file, new, ctx.settings.home)
    _tell_agent(ctx)
    if args.mode == "bypass":
        ctx.note("WARNING: mode bypass allows every remote call the floor does not deny; "
                 "use it only on isolated machines")
    if ctx.settings.mode_override and ctx.settings.mode_override != args.mode:
        ctx.note(f"note: CMDOP_PERMISSIONS_MODE={ctx.settings.mode_override} overrides the file")
    ctx.emit({"mode": args.mode, "file": ctx.settings.permissions_file}, f"mode set to {args.mode}")
    return 0


def _test(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.adapters import policy_store
    from cmdop.core.calls import TOOL_TARGET_FIELD, Caller, CallerKind, ToolCall
    from cmdop.core.policy.adversarial import ADVERSARIAL
    from cmdop.core.policy.gate import MODES as GATE_MODES
    from cmdop.core.policy.gate import decide

    doc, policy = _load(ctx, args.file, run_tests=False)
    home = ctx.settings.home
    results: list[dict[str, Any]] = []
    for test in doc.tests:
        ok, got = policy_store.run_one(policy, test, home)
        results.append({"call": test["call"], "expect": test["expect"], "ok": ok, "got": got})
    adv_failed: list[dict[str, str]] = []
    for tool, arg, cwd, what in ADVERSARIAL:
        cwd_abs = home.rstrip("/") + cwd[1:] if cwd.startswith("~") else cwd
        call = ToolCall(tool, {TOOL_TARGET_FIELD[tool]: arg}, "", cwd_abs)
        for mode in GATE_MODES:
            for kind in CallerKind:
                d = decide(call, Caller(kind), policy, home, mode)
                if d.decision != "deny" or d.source != "floor":
                    adv_failed.append({"tool": tool, "target": arg, "trick": what, "mode": mode,
                                       "caller": kind.value, "got": d.decision})
    ok = all(r["ok"] for r in results) and not adv_failed
    out = {"ok": ok, "tests": results,
           "adversarial": {"cases": len(ADVERSARIAL), "checks": len(ADVERSARIAL) * len(GATE_MODES) * 3,
                           "failed": adv_failed}}

    def human(o: dict[str, Any]) -> str:
        lines = [f"{'ok  ' if r['ok'] else 'FAIL'} expect {r['expect']:5} {r['got']}" for r in o["tests"]]
        lines.append(f"policy tests: {sum(r['ok'] for r in o['tests'])}/{len(o['tests'])} passed")
        lines += [f"FAIL adversarial {f['trick']}: {f['tool']} {f['target']!r} → {f['got']} "
                  f"({f['caller']}, {f['mode']})" for f in adv_failed]
        a = o["adversarial"]
        lines.append(f"adversarial suite: {a['checks'] - len(a['failed'])}/{a['checks']} checks denied by the floor")
        return "\n".join(lines)

    ctx.emit(out, human)
    return 0 if ok else 1


def _init(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.adapters import policy_store

    path = ctx.settings.permissions_file
    if not policy_store.write_starter(path):
        raise CmdopError(f"a policy already exists at {path}; not overwriting it",
                         hint=f"edit {path} (or use `cmdop permissions add|rm|mode`); "
                              "a running agent reloads it")
    _tell_agent(ctx)
    ctx.emit({"created": path, "mode": "strict", "rules": 0},
             f"wrote a starter policy to {path}\n"
             "mode strict, no rules: every remote call the rules do not allow is denied.\n"
             "add rules with e.g. `cmdop permissions add 'execute_command(uptime)' --action allow`, "
             "or edit the file (examples are in its comments)")
    return 0


def _path(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.cli.common import current_settings

    s = ctx.settings
    plain = current_settings(discover=False)
    system = (s.socket_path, s.state_dir) != (plain.socket_path, plain.state_dir)
    env = os.environ
    fallback = False
    if system:
        socket_from = "the system service (found from this root shell)"
    elif env.get("CMDOP_SOCKET_PATH"):
        socket_from = "CMDOP_SOCKET_PATH"
    elif env.get("XDG_RUNTIME_DIR"):
        socket_from = "XDG_RUNTIME_DIR"
    else:
        fallback = True
        socket_from = "fallback: XDG_RUNTIME_DIR is not set, so the socket is under the cmdop home"
    out = {"policy": s.permissions_file, "policy_exists": os.path.lexists(s.permissions_file),
           "config": s.config_file, "config_dir": s.config_dir, "state_dir": s.state_dir,
           "audit_log": s.audit_file, "socket": s.socket_path, "socket_source": socket_from,
           "socket_fallback": fallback, "credentials_dir": s.cmdop_home, "system_service": system}

    def human(o: dict[str, Any]) -> str:
        policy = o["policy"] + ("" if o["policy_exists"] else
                                "  (missing: `cmdop permissions init` writes a starter)")
        rows = [("policy", policy), ("config", o["config"]), ("state dir", o["state_dir"]),
                ("audit log", o["audit_log"]), ("socket", f"{o['socket']}  ({o['socket_source']})"),
                ("credentials", o["credentials_dir"])]
        lines = [f"{name + ':':13}{value}" for name, value in rows]
        if o["system_service"]:
            lines.append("(socket and state dir are the system service's: no CMDOP_* path is set and "
                         "only its agent is found)")
        return "\n".join(lines)

    ctx.emit(out, human)
    return 0


# (command, builder) in `--help` order; cmdop.cli.main.GROUP_COMMANDS lists the same names.
_BUILDERS: tuple[tuple[str, Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]], ...] = (
    ("list", _register_list), ("add", _register_add), ("rm", _register_rm), ("mode", _register_mode),
    ("check", partial(_register_dry_run, "check", _check, "dry-run the gate for one call (or many: --batch)")),
    ("explain", partial(_register_dry_run, "explain", _explain, "explain the gate's steps for one call")),
    ("replay", _register_replay), ("test", _register_test), ("init", _register_init), ("path", _register_path),
)

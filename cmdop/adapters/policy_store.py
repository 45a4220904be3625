"""permissions.yaml: load, validate (with line numbers), run its `tests:`, write atomically 0600.

The file:
    version: 1
    mode: strict            # default | strict | bypass
    ask_timeout_s: 60
    self_bypass: true
    rules: [{rule, action, reason?}]
    tests: [{call, expect, caller?, mode?, cwd?}]   # checked on every load; a failure rejects the file

Rules of this module:
- YAML is composed into nodes so every error names its line; unknown keys, bad actions, bad globs,
  duplicate rules and failing tests are errors (PolicyError), never warnings.
- A missing file is "no file" (`load` returns None); what that means is the caller's choice.
  `write_starter` creates the first-run file (STARTER: strict, no rules, examples in comments).
- An empty file (nothing, or only comments) is an error, not "strict with no rules": a truncated
  write must not silently replace the rules.
- A file writable by group/others or owned by another user is refused: whoever can write it
  can open the gate.
- Writes go through `secure_file.atomic_write` (temp file, fsync, rename, 0600).
- A test runs as a remote caller under the test's `mode:` (else the file's). When no rule decides
  the call, `expect: ask` also passes: in a test, "ask" means "no rule lets this through by
  itself" — so the README's example (strict file, `rm -rf ./build` expecting ask) loads.
"""

from __future__ import annotations

import os
import stat

# yaml is imported by the functions that read or write YAML: with no permissions.yaml (an empty
# policy) `cmdop permissions check` never needs it, and it costs ~7 ms of a start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    import yaml

from cmdop.adapters.secure_file import atomic_create, atomic_write, read_private_in, write_private_in
from cmdop.core.calls import TOOL_TARGET_FIELD, Caller, CallerKind, ToolCall
from cmdop.core.errors import PolicyError
from cmdop.core.policy.gate import MODE_ACTION, MODES, Policy, decide
from cmdop.core.policy.index import RuleSet
from cmdop.core.policy.rules import ACTIONS, RuleError, parse_rule, rule_id
from cmdop.core.tool_input import is_text
from cmdop.core.value import Frozen

MAX_POLICY_BYTES = 32 << 20   # a file this large is not a policy (and would fill memory)
TOP_KEYS = ("version", "mode", "ask_timeout_s", "self_bypass", "rules", "tests")
RULE_KEYS = ("rule", "action", "reason")
TEST_KEYS = ("call", "expect", "caller", "mode", "cwd")


class PolicyDoc(Frozen):
    """The validated file as plain data (what `save` writes back)."""

    FIELDS = ("version", "mode", "ask_timeout_s", "self_bypass", "rules", "tests", "mode_set")
    version: int
    mode: str
    ask_timeout_s: float
    self_bypass: bool
    rules: tuple[tuple[str, str, str], ...]           # (rule, action, reason)
    tests: tuple[dict[str, Any], ...]
    mode_set: bool

    def __init__(self, version: int = 1, mode: str = "strict", ask_timeout_s: float = 60.0,
                 self_bypass: bool = True, rules: tuple[tuple[str, str, str], ...] = (),
                 tests: tuple[dict[str, Any], ...] = (), mode_set: bool = False) -> None:
        self._set(version=version, mode=mode, ask_timeout_s=ask_timeout_s,
                  self_bypass=self_bypass, rules=rules, tests=tests, mode_set=mode_set)


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _scalar(node: yaml.Node, what: str) -> Any:
    import yaml

    if not isinstance(node, yaml.ScalarNode):
        raise PolicyError(f"{what} must be a single value", line=_line(node))
    try:
        return yaml.safe_load(yaml.serialize(node))
    except yaml.YAMLError as exc:  # a tag safe YAML does not know (`!!python/name:…`)
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(f"{what}: {problem}", line=_line(node)) from None


def _mapping(node: yaml.Node, keys: tuple[str, ...], what: str) -> dict[str, tuple[yaml.Node, Any]]:
    import yaml

    if not isinstance(node, yaml.MappingNode):
        raise PolicyError(f"{what} must be a mapping", line=_line(node))
    out: dict[str, tuple[yaml.Node, Any]] = {}
    for knode, vnode in node.value:
        key = _scalar(knode, "a key")
        if key not in keys:
            raise PolicyError(f"unknown key {key!r} in {what} (allowed: {', '.join(keys)})", line=_line(knode))
        if key in out:
            raise PolicyError(f"duplicate key {key!r} in {what}", line=_line(knode))
        out[key] = (vnode, knode)
    return out


def parse_text(text: str, home: str, run_tests_: bool = True) -> tuple[PolicyDoc, Policy]:
    """Validate the file's text into (doc, policy). Raises PolicyError naming the line.
    `run_tests_=False` skips the `tests:` (for `permissions test`, which reports each one)."""
    return _build(_document(text), home, run_tests_)


def _document(text: str) -> dict[str, Any]:
    """The YAML stage: the file as plain data (settings, rules and tests with their lines), every
    YAML-level error raised as a PolicyError naming its line. What it returns depends on `text`
    alone, so it may be remembered (`load`'s memo)."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(f"not valid YAML: {problem}", line=mark.line + 1 if mark else None) from None
    except RecursionError:
        raise PolicyError("not valid YAML: nested too deeply") from None
    if root is None:
        raise PolicyError("permissions.yaml is empty (no settings, at most comments); refusing it",
                          hint="write at least `version: 1` and `mode: strict`; "
                               "a running agent keeps its last good policy")
    top = _mapping(root, TOP_KEYS, "permissions.yaml")
    values: dict[str, Any] = {}
    for key in ("version", "mode", "ask_timeout_s", "self_bypass"):
        if key in top:
            values[key] = _scalar(top[key][0], key)
    version = values.get("version", 1)
    if type(version) is not int or version != 1:  # (true and 1.0 are == 1 in Python)
        raise PolicyError(f"version must be 1, not {version!r}", line=_line(top["version"][0]))
    mode = values.get("mode", "strict")
    if mode not in MODES:
        raise PolicyError(f"mode {mode!r} is not one of {', '.join(MODES)}", line=_line(top["mode"][0]))
    timeout = values.get("ask_timeout_s", 60)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 86400:
        raise PolicyError("ask_timeout_s must be a number of seconds between 0 and 86400",
                          line=_line(top["ask_timeout_s"][0]))
    self_bypass = values.get("self_bypass", True)
    if not isinstance(self_bypass, bool):
        raise PolicyError("self_bypass must be true or false", line=_line(top["self_bypass"][0]))
    rules: list[tuple[str, str, str, int, int]] = []
    tests: list[tuple[dict[str, Any], int]] = []
    error = None
    try:
        _rules(top.get("rules"), rules)
        tests = _tests(top.get("tests"))
    except PolicyError as exc:
        # Raised by `_build` after compiling the rules before it: a file with several mistakes
        # is reported at the first, as one pass through it would find them.
        error = exc
    return {"mode": mode, "ask_timeout_s": float(timeout), "self_bypass": self_bypass,
            "mode_set": "mode" in top, "rules": rules, "tests": tests, "error": error}


def _build(document: dict[str, Any], home: str, run_tests_: bool) -> tuple[PolicyDoc, Policy]:
    """(doc, policy) from `_document`'s data: the rules compiled for `home`, the tests run."""
    rules = []
    for order, (text, action, reason, line, rule_line) in enumerate(document["rules"]):
        try:
            rules.append(parse_rule(text, action, reason, home=home, scope="global", order=order,
                                    line=line))
        except RuleError as exc:
            raise PolicyError(str(exc), line=rule_line) from None
    if document.get("error") is not None:
        raise document["error"]
    mode, timeout, self_bypass = document["mode"], document["ask_timeout_s"], document["self_bypass"]
    tests = [(dict(test), line) for test, line in document["tests"]]
    doc = PolicyDoc(1, mode, timeout, self_bypass,
                    tuple((text, action, reason) for text, action, reason, _, _ in document["rules"]),
                    tuple(t for t, _ in tests), document["mode_set"])
    policy = Policy(mode, timeout, self_bypass, RuleSet(rules))
    if run_tests_:
        run_tests(policy, tests, home)
    return doc, policy


def _rules(entry: tuple[yaml.Node, Any] | None, entries: list[tuple[str, str, str, int, int]]) -> None:
    """Append the rules to `entries` as (rule, action, reason, its line, the line of its
    `rule:`), checked as YAML (the rule grammar is `_build`'s); PolicyError at the first that
    is not, with the ones before it appended."""
    import yaml

    if entry is None or isinstance(entry[0], yaml.ScalarNode) and entry[0].value in ("", "null", "~"):
        return
    node = entry[0]
    if not isinstance(node, yaml.SequenceNode):
        raise PolicyError("rules must be a list", line=_line(node))
    seen = set()
    for item in node.value:
        fields = _mapping(item, RULE_KEYS, "a rule")
        for need in ("rule", "action"):
            if need not in fields:
                raise PolicyError(f"a rule needs '{need}'", line=_line(item))
        text = _scalar(fields["rule"][0], "rule")
        action = _scalar(fields["action"][0], "action")
        reason = _scalar(fields["reason"][0], "reason") if "reason" in fields else ""
        if not isinstance(text, str) or not isinstance(reason, (str, type(None))):
            raise PolicyError("rule and reason must be strings", line=_line(item))
        if not is_text(text + (reason or "")):
            raise PolicyError("rule and reason must be Unicode text (a `\\ud800` escape is half "
                              "of a character)", line=_line(item))
        if action not in ACTIONS:
            raise PolicyError(f"action {action!r} is not one of allow, ask, deny", line=_line(fields["action"][0]))
        rid = rule_id(text, action)
        if rid in seen:
            raise PolicyError(f"duplicate rule {text!r} with action {action}", line=_line(item))
        seen.add(rid)
        entries.append((text, action, reason or "", _line(item), _line(fields["rule"][0])))


def _tests(entry: tuple[yaml.Node, Any] | None) -> list[tuple[dict[str, Any], int]]:
    import yaml

    if entry is None or isinstance(entry[0], yaml.ScalarNode) and entry[0].value in ("", "null", "~"):
        return []
    node = entry[0]
    if not isinstance(node, yaml.SequenceNode):
        raise PolicyError("tests must be a list", line=_line(node))
    out = []
    for item in node.value:
        fields = _mapping(item, TEST_KEYS, "a test")
        test = {k: _scalar(v[0], k) for k, v in fields.items()}
        if "call" not in test or "expect" not in test:
            raise PolicyError("a test needs 'call' and 'expect'", line=_line(item))
        if test["expect"] not in ACTIONS:
            raise PolicyError(f"expect {test['expect']!r} is not one of allow, ask, deny", line=_line(item))
        out.append((test, _line(item)))
    return out


def parse_call(text: str) -> ToolCall:
    """`tool(ARG)` or `tool(OP:ARG)` as a call (the `tests:` and `permissions test` syntax)."""
    text = str(text).strip()
    name, _, rest = text.partition("(")
    name = name.strip()
    if name not in TOOL_TARGET_FIELD or not rest.endswith(")"):
        raise ValueError(f"call {text!r} is not TOOL(ARG) with a known tool")
    arg = rest[:-1]
    op = ""
    head, sep, tail = arg.partition(":")
    if sep and head.isidentifier() and head.islower() and not tail.startswith("//") and " " not in head:
        op, arg = head, tail
    return ToolCall(tool=name, input={TOOL_TARGET_FIELD[name]: arg}, operation=op)


def run_one(policy: Policy, test: dict[str, Any], home: str) -> tuple[bool, str]:
    """Run one test; (passed, what happened)."""
    try:
        call = parse_call(test["call"])
    except ValueError as exc:
        return False, str(exc)
    call = ToolCall(call.tool, call.input, call.operation, str(test.get("cwd") or home))
    caller = Caller(CallerKind(str(test.get("caller") or "remote")))
    mode = str(test.get("mode") or policy.mode)
    d = decide(call, caller, policy, home, mode=mode)
    ok = d.decision == test["expect"] or (
        d.source == "mode" and test["expect"] == "ask" and MODE_ACTION.get(mode) == d.decision)
    return ok, f"{test['call']} → {d.decision} ({d.reason})"


def run_tests(policy: Policy, tests: list[tuple[dict[str, Any], int]], home: str) -> None:
    for test, line in tests:
        try:
            ok, got = run_one(policy, test, home)
        except ValueError as exc:      # e.g. an unknown caller kind
            raise PolicyError(f"test is invalid: {exc}", line=line) from None
        if not ok:
            raise PolicyError(f"test failed: expected {test['expect']}, got {got}", line=line,
                              hint="fix the rules or the test: a file whose test fails is neither used nor written")


def load(path: str, home: str, run_tests: bool = True,
         memo: str | None = None) -> tuple[PolicyDoc, Policy] | None:
    """Load and validate `path`; None when it does not exist. Raises PolicyError.

    `memo`: a file (in a private directory) remembering what the YAML stage made of the last
    text read from `path`, so the next read of the same text skips the YAML parser — and its
    import, a fifth of a `permissions check`. Only for the command line: an agent parses each
    change once anyway."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO must not hang us
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PolicyError(f"cannot read {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PolicyError(f"{path} is not a regular file; refusing it",
                              hint=f"move {path} away: the policy is a YAML file there")
        uid = os.geteuid()
        if st.st_uid != uid and st.st_uid != 0:
            raise PolicyError(f"{path} is owned by uid {st.st_uid}, not you; refusing it",
                              hint=f"run: chown {uid} {path}")
        if stat.S_IMODE(st.st_mode) & 0o022:
            raise PolicyError(f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
                              "refusing it",
                              hint=f"run: chmod 600 {path}")
        if st.st_size > MAX_POLICY_BYTES:
            raise PolicyError(f"{path} is {st.st_size:,} bytes, more than a policy may be "
                              f"({MAX_POLICY_BYTES:,}); refusing it",
                              hint="a policy of 10,000 rules is about 1 MB: is this the right file?")
        with os.fdopen(fd, "rb") as f:
            fd = -1
            data = f.read(MAX_POLICY_BYTES + 1)
        if len(data) > MAX_POLICY_BYTES:   # (grown since fstat)
            raise PolicyError(f"{path} is more than {MAX_POLICY_BYTES:,} bytes; refusing it")
    finally:
        if fd >= 0:
            os.close(fd)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(f"{path} is not UTF-8 text") from None
    try:
        document = _recalled(memo, text) if memo else None
        if document is not None:
            try:
                return _build(document, home, run_tests)
            except PolicyError:
                pass   # said again below from the text itself: a memo never blames the file
        document = _document(text)
        if memo and document.get("error") is None:
            _remember(memo, text, document)
        return _build(document, home, run_tests)
    except PolicyError as exc:
        raise exc.at(path) from None


# What a memo holds is keyed by everything the YAML stage's answer depends on: the exact text
# (compared whole, so no hash can collide) and the code that read it — this module and the
# YAML package, each as the file it was loaded from with its size and time (another pyz
# unpacks elsewhere; an edit or an upgrade changes them). marshal: no import, and it builds only
# plain data.
_MEMO_FORMAT = 1


def _memo_key(text: str) -> tuple[tuple[str | int | None, ...], str]:
    from importlib.machinery import PathFinder

    from cmdop import __version__

    code: list[str | int | None] = [_MEMO_FORMAT, __version__]
    yaml_spec = PathFinder.find_spec("yaml")
    for source in (__file__, yaml_spec.origin if yaml_spec else None):
        try:
            st = os.stat(source or "")
        except OSError:
            code += [source, None, None]
        else:
            code += [source, st.st_size, st.st_mtime_ns]
    return (tuple(code), text)


def _recalled(memo: str, text: str) -> dict[str, Any] | None:
    """The remembered YAML stage of `text`, or None: no memo, another text, a memo of another
    shape, or one that is not a private file of ours in a directory only we (or root) can
    write, checked on the opened directory and file (anyone else who could write it could
    change what the rules say)."""
    import marshal

    # (the memo holds the text: a larger file is not one this code wrote for it)
    data = read_private_in(os.path.dirname(memo), os.path.basename(memo),
                           limit=8 * len(text) + 65536)
    try:
        key, document = marshal.loads(data) if data is not None else (None, None)
    except (EOFError, ValueError, TypeError):
        return None
    return document if key == _memo_key(text) and _well_formed(document) else None


def _well_formed(document: object) -> bool:
    """Is `document` of the shape `_document` returns for a file without mistakes?"""
    if not isinstance(document, dict) or document.get("error") is not None:
        return False
    rules, tests = document.get("rules"), document.get("tests")
    return (document.get("mode") in MODES and type(document.get("ask_timeout_s")) is float
            and type(document.get("self_bypass")) is bool and type(document.get("mode_set")) is bool
            and isinstance(rules, list) and isinstance(tests, list)
            and all(isinstance(r, tuple) and len(r) == 5 and [type(v) for v in r] == [str, str, str, int, int]
                    for r in rules)
            and all(isinstance(t, tuple) and len(t) == 2 and isinstance(t[0], dict)
                    and type(t[1]) is int for t in tests))


def _remember(memo: str, text: str, document: dict[str, Any]) -> None:
    """Keep `document` for the next read of `text`, in the memo's directory when it exists and
    only we (or root) can write it (a read-only command makes no state dir: its absence tells
    `agent status`, and a root shell's commands, that no agent has run as this user). A memo
    that cannot be written is skipped."""
    import marshal

    try:
        data = marshal.dumps((_memo_key(text), document))
    except ValueError:  # a value YAML made that marshal cannot keep (a date in a test): no memo
        return
    write_private_in(os.path.dirname(memo), os.path.basename(memo), data)


def render(doc: PolicyDoc) -> str:
    """The YAML text for `doc` (rules and tests in order)."""
    import yaml

    out: dict[str, Any] = {"version": 1, "mode": doc.mode, "ask_timeout_s": _num(doc.ask_timeout_s),
                           "self_bypass": doc.self_bypass,
                           "rules": [dict({"rule": r, "action": a}, **({"reason": why} if why else {}))
                                     for r, a, why in doc.rules]}
    if doc.tests:
        out["tests"] = [dict(t) for t in doc.tests]
    header = "# cmdop permission policy. Edited by `cmdop permissions`; hot-reloaded.\n"
    return header + str(yaml.safe_dump(out, sort_keys=False, allow_unicode=True, width=1000))


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


STARTER = """\
# cmdop permission policy (permissions.yaml). Hot-reloaded by a running agent.
#
# mode: strict means every call from a remote caller that no rule below allows is DENIED.
# (`default` asks an attached approver instead; `bypass` allows it.) A built-in floor denies the
# dangerous calls whatever this file says. Local callers on this machine are not gated here.
#
# Add rules with the CLI (it validates them and writes this file), e.g.
#   cmdop permissions add 'execute_command(uptime)' --action allow
#   cmdop permissions add 'read_file(/var/log/**)' --action allow
#   cmdop permissions add 'execute_command(systemctl restart *)' --action ask
# or edit the list here; examples:
#
# rules:
# - rule: execute_command(uptime)
#   action: allow
# - rule: read_file(/var/log/**)
#   action: allow
#   reason: logs are not secret here
# - rule: execute_command(systemctl restart *)
#   action: ask
#
# Check a call without running it: cmdop permissions check execute_command uptime
version: 1
mode: strict
ask_timeout_s: 60
self_bypass: true
rules: []
"""


def write_starter(path: str) -> bool:
    """First run: write STARTER to `path` (atomic, 0600) unless something is there already.
    Returns True when it wrote the file."""
    return atomic_create(path, STARTER, 0o600)   # never over a file made meanwhile


def save(path: str, doc: PolicyDoc, home: str) -> Policy:
    """Validate `doc` (rules compile, tests pass), then write it atomically with mode 0600."""
    text = render(doc)
    try:
        _, policy = parse_text(text, home)
    except PolicyError as exc:
        raise exc.at(path) from None
    atomic_write(path, text, 0o600)
    return policy

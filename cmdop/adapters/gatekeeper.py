"""The gate as the daemon and the CLI use it: the policy file, session rules, canonical paths.

- `evaluate` is safe from many threads while `reload` runs: the compiled `Policy` is immutable and
  swapped by one reference assignment; writers serialise on a lock.
- The agent's first run (`first_run=True`, no permissions.yaml yet) writes the starter file
  (policy_store.STARTER: strict, no rules, 0600) and loads it; `created_starter` says so.
- At start, a missing or invalid permissions.yaml means "no good policy": every remote or self
  call that the floor did not already deny is denied, with the reason; local callers still bypass
  (after the floor). A later failed reload keeps the last good policy.
- The mode is CMDOP_PERMISSIONS_MODE (settings.mode_override) if valid, else the file's, else
  strict. An override that is not a mode is treated as strict: a typo must not open the gate.
"""

from __future__ import annotations

import _thread  # not threading: its import is a start-up cost the CLI need not pay for one lock
import os

from cmdop.adapters import policy_store, secure_file
from cmdop.adapters.canonical import canonical_path
from cmdop.adapters.own_code import own_code
from cmdop.core.calls import TOOL_TARGET_FIELD, Caller, ToolCall, command_dir
from cmdop.core.errors import PolicyError
from cmdop.core.policy.decision import Decision
from cmdop.core.policy.gate import MODES, Policy, decide
from cmdop.core.policy.index import RuleSet
from cmdop.core.policy.paths import lexical_path
from cmdop.core.policy.rules import TOOL_KIND, Rule, RuleError, parse_rule, rule_id
from cmdop.core.settings import Settings

_SESSION_ORDER_BASE = 1_000_000   # session rules come after every file rule in "file order"


def protected_dirs(settings: Settings) -> tuple[str, ...]:
    """cmdop's own config, credentials and state dirs (and the relay's default data dir),
    lexical and resolved: floor wherever the environment puts them (the contract's floor names only their default places). Whoever can
    write permissions.yaml opens the gate; whoever can write audit.log hides their tracks."""
    out: list[str] = []
    dirs = [settings.config_dir, settings.cmdop_home, settings.state_dir, *own_code()]
    if settings.relay_data_dir:   # a relay run by the same user: its TLS key and database
        dirs.append(settings.relay_data_dir)
    for d in dirs:
        for form in (lexical_path(d, "/", settings.home), canonical_path(d, "/", settings.home)):
            if form != "/" and form not in out:
                out.append(form)
    return tuple(out)


def resolve_for_gate(call: ToolCall, home: str) -> tuple[str | None, str | None]:
    """(canonical target path for a path tool, canonical directory an execute_command runs in):
    what the pure gate needs from the file system. Every entry point (the gate, `check`,
    `explain`) uses this one function, so a command is judged where it will run."""
    kind = TOOL_KIND.get(call.tool)
    raw = call.input.get(TOOL_TARGET_FIELD.get(call.tool, ""), "") if kind else ""
    if kind == "path" and call.tool != "glob" and isinstance(raw, str) and raw and "\x00" not in raw:
        return canonical_path(raw, call.cwd, home), None
    if kind == "command":
        where = command_dir(call.input, call.cwd)
        if where and "\x00" not in where:
            return None, canonical_path(where, call.cwd or "/", home)
    return None, None


class Gatekeeper:
    """Loads the policy, keeps session rules, and answers `evaluate` for every tool call."""

    def __init__(self, settings: Settings, *, unsafe_test_only_static_floor_off: bool = False,
                 first_run: bool = False) -> None:
        # The loud flag exists for one purpose: the kernel-floor effect tests show that the
        # kernel alone holds. Nothing in the product sets it; no file, flag or variable reaches it.
        self._static_floor = not unsafe_test_only_static_floor_off
        self._settings = settings
        self._protected = protected_dirs(settings)
        self._lock = _thread.allocate_lock()
        self._session: list[Rule] = []
        self._file: Policy | None = None
        self._problem = ""
        self._policy = Policy(ok=False, problem="not loaded yet")
        self.created_starter = False
        self.starter_error = ""
        if first_run:
            try:
                self.created_starter = policy_store.write_starter(settings.permissions_file)
            except OSError as exc:   # e.g. a read-only config dir: start without a policy
                self.starter_error = f"cannot write {settings.permissions_file}: {exc.strerror or exc}"
        self.reload()

    # ---- reading ---------------------------------------------------------------------------
    @property
    def policy(self) -> Policy:
        """The current compiled policy (an immutable snapshot)."""
        return self._policy

    @property
    def mode(self) -> str:
        override = self._settings.mode_override
        if override:
            return override if override in MODES else "strict"
        return self._policy.mode if self._policy.ok else "strict"

    @property
    def ask_timeout_s(self) -> float:
        return self._policy.ask_timeout_s

    @property
    def self_bypass(self) -> bool:
        return self._policy.ok and self._policy.self_bypass

    @property
    def policy_ok(self) -> bool:
        return self._policy.ok

    def evaluate(self, call: ToolCall, caller: Caller) -> Decision:
        """The decision for one call. Never raises."""
        policy = self._policy          # one read: a concurrent reload cannot mix two policies
        home = self._settings.home
        try:
            resolved, resolved_cwd = resolve_for_gate(call, home)
            return decide(call, caller, policy, home, self.mode, resolved, resolved_cwd, self._protected,
                          self._static_floor)
        except Exception as exc:  # noqa: BLE001 - never raise to the caller; deny instead
            return Decision("deny", "floor", f"internal gate error: {type(exc).__name__}: {exc}",
                            self.mode, call.tool, call.operation, "")

    # ---- changing ---------------------------------------------------------------------------
    def reload(self) -> PolicyError | None:
        """Re-read permissions.yaml. On error keep the last good policy and return the error."""
        path = self._settings.permissions_file
        try:
            loaded = policy_store.load(path, self._settings.home)
        except PolicyError as exc:
            return self._failed(exc)
        except Exception as exc:  # noqa: BLE001 - a broken file must not kill the agent
            return self._failed(PolicyError(f"cannot load {path}: {type(exc).__name__}: {exc}"))
        if loaded is None:
            return self._failed(PolicyError(
                f"no permissions file at {path}",
                hint="create it with `cmdop permissions init` (or `cmdop permissions add`)"))
        with self._lock:
            self._file = loaded[1]
            self._problem = ""
            self._swap()
        return None

    def _failed(self, err: PolicyError) -> PolicyError:
        """Record a failed load: with no good policy yet, say why in every denial."""
        with self._lock:
            if self._file is None:
                self._problem = err.message
                self._swap()
        return err

    def add_session_rule(self, rule: str, action: str, reason: str = "") -> str:
        """Add an in-memory rule for this agent's lifetime; returns its rule_id."""
        with self._lock:
            try:
                parsed = parse_rule(rule, action, reason, home=self._settings.home, scope="session",
                                    order=_SESSION_ORDER_BASE + len(self._session))
            except RuleError as exc:
                raise PolicyError(str(exc), hint="rule syntax: tool, tool(GLOB) or tool(OP:GLOB)") from None
            if all(r.id != parsed.id for r in self._session):
                self._session.append(parsed)
            self._swap()
        return rule_id(rule, action)

    def add_global_rule(self, rule: str, action: str, reason: str = "") -> str:
        """Append a rule to permissions.yaml (atomic 0600 write), then reload; returns its id."""
        with self._lock:
            add_rule_to_file(self._settings, rule, action, reason)
        err = self.reload()
        if err is not None:
            raise err
        return rule_id(rule, action)

    def _swap(self) -> None:
        """Build and publish a new snapshot (caller holds the lock)."""
        session = RuleSet(list(self._session))
        if self._file is None:
            self._policy = Policy(ok=False, problem=self._problem or "no permissions policy loaded",
                                  session_rules=session)
        else:
            f = self._file
            self._policy = Policy(f.mode, f.ask_timeout_s, f.self_bypass, f.global_rules, session)


def add_rule_to_file(settings: Settings, rule: str, action: str, reason: str = "") -> tuple[str, bool]:
    """Append (rule, action, reason) to permissions.yaml, creating it if missing. Returns the
    id, and False when the file had that rule already (and was left as it was)."""
    path = settings.permissions_file
    rid = rule_id(rule, action)
    try:
        parse_rule(rule, action, reason, home=settings.home)
    except RuleError as exc:
        raise PolicyError(str(exc), hint="rule syntax: tool, tool(GLOB) or tool(OP:GLOB)") from None
    with secure_file.writer_lock(path):
        loaded = policy_store.load(path, settings.home)
        doc = loaded[0] if loaded else policy_store.PolicyDoc()
        if any(rule_id(r, a) == rid for r, a, _ in doc.rules):
            return rid, False
        new = doc.replace(rules=doc.rules + ((rule, action, reason),))
        policy_store.save(path, new, settings.home)
    return rid, True

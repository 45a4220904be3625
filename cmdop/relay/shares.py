"""Guest access (`cmdop connect share`) as pure decisions: the token's shape, the expiry parser,
the tool subset, and the check every guest call meets at the relay.

No I/O and no clock of their own (time comes in as `now`, epoch seconds), so each is tested with
tables and properties. The store (cmdop.relay.share_store) keeps the records, the router
(cmdop.relay.router) asks `check_call` at each guest call's start, and the agent's admission
(core/admission.py, guest_tools) refuses a tool outside the share's subset.

A share token is `cmdop_share_` + 43 urlsafe characters (256 bits from `secrets`); only its
SHA-256 is stored. A share's public id is `sh_` + 12 hex digits: what list, revoke and the
agent's audit line name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TOKEN_PREFIX = "cmdop_share_"
ID_PREFIX = "sh_"
_TOKEN_RE = re.compile(r"^cmdop_share_[A-Za-z0-9_-]{43}$")
_ID_RE = re.compile(r"^sh_[0-9a-f]{12}$")
MAX_TTL_S = 365 * 86400            # a year: anything longer is a mistake (or --no-expiry)
MAX_USES = 1_000_000
MAX_NOTE = 200
# The tools an agent has (cmdop.tools.registry.TOOLS; a test keeps the two equal). A share with
# no --tools gets all of them: the receiver's own gate still decides every call.
SHAREABLE_TOOLS = ("execute_command", "read_file", "write_file", "list_dir", "grep", "glob")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_TTL_RE = re.compile(r"^([0-9]{1,9})([smhd])$")

STATES = ("active", "expired", "revoked", "used_up")


class ShareInputError(ValueError):
    """A share request the relay refuses (bad expiry, tool, note or use count): `str()` says why
    in one line, `hint` what to give instead."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def looks_like_token(text: str) -> bool:
    """Whether `text` has a share token's shape (prefix, length, alphabet), all of it."""
    # fullmatch: `$` would also match before a trailing newline
    return bool(_TOKEN_RE.fullmatch(text))


def valid_id(text: str) -> bool:
    """Whether `text` has a share id's shape (`sh_` + 12 hex digits), all of it."""
    return bool(_ID_RE.fullmatch(text))


def parse_ttl(text: str) -> int:
    """`90m`, `24h`, `7d` (and `30s`) as seconds, between 1 s and a year. ShareInputError for
    zero, a negative or fractional number, a missing or unknown unit, or anything longer."""
    m = _TTL_RE.fullmatch(text.strip().lower())
    if not m:
        raise ShareInputError(f"invalid duration {text!r}",
                              "give a whole number and a unit: 90m, 24h, 7d (s, m, h, d)")
    seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if seconds <= 0:
        raise ShareInputError(f"duration {text!r} is zero", "give a positive duration, e.g. 24h")
    if seconds > MAX_TTL_S:
        raise ShareInputError(f"duration {text!r} is longer than a year",
                              "give a shorter --ttl (or --no-expiry, on purpose)")
    return seconds


def check_ttl(ttl_s: int, no_expiry: bool) -> int | None:
    """The share's lifetime in seconds, or None for no expiry (only with `no_expiry` and no
    ttl). ShareInputError for both, neither, or a ttl outside 1 s .. a year."""
    if no_expiry and ttl_s:
        raise ShareInputError("both a ttl and no expiry were given", "give one of --ttl, --no-expiry")
    if no_expiry:
        return None
    if ttl_s <= 0:
        raise ShareInputError("a share needs an expiry",
                              "give --ttl 24h (90m, 7d, ...), or --no-expiry on purpose")
    if ttl_s > MAX_TTL_S:
        raise ShareInputError("the ttl is longer than a year", "give a shorter --ttl")
    return ttl_s


def parse_tools(items: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The share's tool subset: comma-separated names (as given on the command line or in the
    request), deduplicated in SHAREABLE_TOOLS order; all tools when none are given.
    ShareInputError for an unknown name, or for items that name no tool at all (`--tools ""`
    from an empty variable must not widen the share to every tool)."""
    names = {n.strip().lower() for item in items for n in item.split(",") if n.strip()}
    if items and not names:
        raise ShareInputError("--tools names no tool",
                              f"give one or more of {', '.join(SHAREABLE_TOOLS)}, or leave "
                              "--tools out for all of them")
    unknown = sorted(names - set(SHAREABLE_TOOLS))
    if unknown:
        raise ShareInputError(f"unknown tool {unknown[0]!r}",
                              f"tools are: {', '.join(SHAREABLE_TOOLS)}")
    return tuple(t for t in SHAREABLE_TOOLS if t in names) if names else SHAREABLE_TOOLS


def check_note(note: str) -> str:
    """The note stripped; ShareInputError when it is longer than 200 characters or holds
    control characters (it is shown in lists and written to audit lines)."""
    note = note.strip()
    if len(note) > MAX_NOTE:
        raise ShareInputError(f"the note is longer than {MAX_NOTE} characters", "shorten --note")
    if any(not c.isprintable() for c in note):
        raise ShareInputError("the note holds control characters", "give plain text in --note")
    return note


def check_max_uses(n: int) -> int:
    """`n` (0: no limit); ShareInputError when negative or above a million."""
    if not 0 <= n <= MAX_USES:
        raise ShareInputError(f"--max-uses {n} is out of range", f"give 1 to {MAX_USES}")
    return n


@dataclass(frozen=True)
class Share:
    """One share as the relay stores it (never the token: its hash stays in the store)."""

    id: str                       # sh_...
    workspace: str                # the owner's workspace (name)
    machine: str                  # the bound machine's relay row id
    host: str                     # its name, for messages and lists
    note: str
    created_by: str               # the owner principal's id
    created_at: float             # epoch seconds
    expires_at: float | None      # None: no expiry
    max_uses: int                 # 0: no limit
    uses: int
    tools: tuple[str, ...]
    revoked_at: float | None = None
    # The credential that minted it was revoked (its API key, or its account disabled or out of
    # the workspace): the share is revoked with it, as rotating a leaked key promises.
    creator_revoked: bool = False


@dataclass(frozen=True)
class Refusal:
    """Why a guest call is refused: a Failure code of its own, a one-line message, a hint."""

    code: str
    message: str
    hint: str = ""


# Refusal codes (the CLI maps each to an exit status: cmdop.relay.caller._FAILURES).
REVOKED, EXPIRED, WRONG_HOST, USED_UP = "share_revoked", "share_expired", "share_wrong_host", \
    "share_used_up"


def state(share: Share, now: float) -> str:
    """active · revoked · expired · used_up (the first that applies, in that order of blame:
    revoked by its owner, expired, used up, then revoked with the credential that made it — so
    a share that had run out keeps saying so after that credential is revoked)."""
    if share.revoked_at is not None:
        return "revoked"
    if share.expires_at is not None and now >= share.expires_at:
        return "expired"
    if share.max_uses and share.uses >= share.max_uses:
        return "used_up"
    return "revoked" if share.creator_revoked else "active"


def check_call(share: Share, now: float, target_machine: str | None) -> Refusal | None:
    """Whether a guest call to `target_machine` (the relay row id its host resolved to; None
    when it resolved to nothing) may start now: None, or the Refusal. Checked in this order:
    revoked, expired, another machine, no uses left. The use is counted by the store when the
    call is admitted (atomically, so two racing calls cannot both take the last use)."""
    current = state(share, now)
    if current == "revoked":
        why = " (with the credential that created it)" if share.revoked_at is None else ""
        return Refusal(REVOKED, f"share {share.id} was revoked{why}",
                       "ask the machine's owner for a new share")
    if current == "expired":
        return Refusal(EXPIRED, f"share {share.id} has expired",
                       "ask the machine's owner for a new share")
    if target_machine != share.machine:
        return Refusal(WRONG_HOST, f"share {share.id} is for {share.host} only",
                       f"run the command on {share.host}")
    if current == "used_up":
        return Refusal(USED_UP, f"share {share.id} has no uses left ({share.uses} of "
                       f"{share.max_uses} used)", "ask the machine's owner for a new share")
    return None

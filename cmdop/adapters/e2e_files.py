"""The files of end-to-end encryption: the agent's key pair, the caller's known hosts and the
caller's signing key. Every one is 0600 and written atomically (cmdop.adapters.secure_file).

- `e2e_key` (agent state dir): the agent's long-term private key, created once. A file that is
  there but unreadable, open to others or corrupt is an error — never silently replaced, since
  a new key would make every caller that pinned the old one refuse this host.
- `known_hosts.json` (caller's CMDOP_HOME): host keys pinned on first use, one per relay
  address, scope (the caller's workspace, or a guest's share) and machine id (the id the host's
  agent chose, bound into every sealed call). Host names are unique within a scope, so a name
  there that the relay says is now another machine is refused like a changed key. A different key for a pinned machine raises HostKeyChangedError
  until `cmdop connect trust HOST` accepts it.
- `caller_key` (caller's CMDOP_HOME): an Ed25519 key whose signature agents with
  `authorized_callers` require; created on first use.

A long-lived caller seals many calls: the pins and the caller key it reads for each are kept in
memory while the file's identity and metadata are unchanged (`_cached`), so any edit, any
replacement, a chmod or a chown makes the next call read — and check — the file again.
"""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any, Callable, NamedTuple, TypeVar

from cmdop.adapters import e2e
from cmdop.core.errors import E2EError, HostKeyChangedError, SecretFileError

AGENT_KEY_FILE = "e2e_key"
KNOWN_HOSTS_FILE = "known_hosts.json"
CALLER_KEY_FILE = "caller_key"

_T = TypeVar("_T")
# (what, path) -> (the file's signature when read, what was read from it)
_READ_CACHE: dict[tuple[str, str], tuple[tuple[int, ...], Any]] = {}
# A file modified this recently is read again every time, as git treats a "racily clean" file:
# two writes within one tick of the file system's clock could leave the same mtime, and a
# freed inode number can be reused, so a signature from that moment could match a newer file.
_SETTLED_NS = 2_000_000_000


def _signature(path: str) -> tuple[int, ...] | None:
    """What changes whenever the file at `path` does: device and inode (atomic_write renames a
    new inode in), size, mtime and ctime, mode and owner (a chmod or chown is seen at once)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode,
            st.st_uid)


def _cached(what: str, path: str, read: Callable[[], _T]) -> _T:
    """`read()`'s value for the file at `path`, read again only when the file changed since.
    Its signature is taken before the read: a change during the read makes the next signature
    differ, so it is read again then. Errors (a missing, non-private or corrupt file) are never
    cached: `read` raises them each time. The value must not be mutated by callers."""
    sig = _signature(path)
    hit = _READ_CACHE.get((what, path))
    if sig is not None and hit is not None and hit[0] == sig:
        return hit[1]              # type: ignore[no-any-return]
    value = read()
    if sig is not None and time.time_ns() - max(sig[3], sig[4]) > _SETTLED_NS:
        _READ_CACHE[(what, path)] = (sig, value)
    else:
        _READ_CACHE.pop((what, path), None)
    return value


def agent_key_path(state_dir: str) -> str:
    return os.path.join(state_dir, AGENT_KEY_FILE)


def load_or_create_agent_key(state_dir: str) -> e2e.AgentKey:
    """This agent's key pair, created (0600, atomically, once) on first use. E2EError when the
    file exists but cannot be used: it is never regenerated behind the operator's back."""
    from cmdop.adapters.secure_file import atomic_create, ensure_private_dir, read_private

    path = agent_key_path(state_dir)
    if not os.path.exists(path):
        try:
            ensure_private_dir(state_dir)
            atomic_create(path, e2e.generate_private())   # a racing agent's key wins; read it
        except OSError as exc:
            raise E2EError(f"cannot create the end-to-end key {path}: {exc.strerror or exc}",
                           "check the state dir's permissions and free space "
                           "(CMDOP_STATE_DIR)") from None
    try:
        blob = read_private(path)
    except SecretFileError as exc:
        raise E2EError(f"the end-to-end key {path} is not private: {exc.message}",
                       exc.hint) from None
    except OSError as exc:
        raise E2EError(f"cannot read the end-to-end key {path}: {exc.strerror}",
                       "check the state dir's permissions (CMDOP_STATE_DIR)") from None
    try:
        return e2e.load_private(blob)
    except E2EError:
        raise E2EError(f"the end-to-end key {path} is corrupt",
                       "restore it from a backup, or move it away to create a new one (callers "
                       "must then accept the new key: `cmdop connect trust HOST`)") from None


# -- known hosts -----------------------------------------------------------------------------


def _known_path(cmdop_home: str) -> str:
    return os.path.join(cmdop_home, KNOWN_HOSTS_FILE)


def _realm(relay: str, scope: str) -> str:
    """Where names are unique: one relay, one workspace (or one share)."""
    return f"{relay}|{scope.replace('|', '%7C')}"


def _pin_id(relay: str, machine_id: str, scope: str = "") -> str:
    return f"{_realm(relay, scope)}|{machine_id.replace('|', '%7C')}"


def _load_known(cmdop_home: str) -> dict[str, Any]:
    from cmdop.adapters.secure_file import read_private

    path = _known_path(cmdop_home)
    try:
        data = json.loads(read_private(path).decode("utf-8"))
    except FileNotFoundError:
        return {}
    except (UnicodeDecodeError, ValueError):
        raise E2EError(f"{path} is not valid JSON",
                       "fix it, or move it away (every host is then pinned anew)") from None
    hosts = data.get("hosts") if isinstance(data, dict) else None
    if not isinstance(hosts, dict):
        raise E2EError(f"{path} has no hosts table", "move it away to start over")
    return hosts


def _known_locked(cmdop_home: str) -> Any:
    """The lock two callers pinning at once take, so neither's new pin is lost (each reads
    the file again under it)."""
    from cmdop.adapters.secure_file import exclusive_lock

    return exclusive_lock(_known_path(cmdop_home) + ".lock")


def _save_known(cmdop_home: str, hosts: dict[str, Any]) -> None:
    from cmdop.adapters.secure_file import atomic_write, ensure_private_dir

    ensure_private_dir(cmdop_home)
    atomic_write(_known_path(cmdop_home),
                 json.dumps({"version": 1, "hosts": hosts}, indent=1, sort_keys=True) + "\n")


def _entry_key(entry: Any) -> bytes | None:
    if not isinstance(entry, dict):
        return None
    try:
        return base64.b64decode(str(entry.get("key", "")), validate=True) or None
    except ValueError:
        return None


def pinned_key(cmdop_home: str, relay: str, machine_id: str, scope: str = "") -> bytes | None:
    """The key pinned for a machine, or None when it was never seen."""
    return _entry_key(_load_known(cmdop_home).get(_pin_id(relay, machine_id, scope)))


def _by_name(hosts: dict[str, Any], relay: str, scope: str,
             name: str) -> list[tuple[str, bytes]]:
    """(machine id, key) of every pin under the host name `name` in the realm."""
    realm, out = _realm(relay, scope), []
    for pid, entry in hosts.items():
        where, _, machine_id = pid.rpartition("|")
        key = _entry_key(entry)
        if where == realm and key and entry.get("name") == name:
            out.append((machine_id.replace("%7C", "|"), key))
    return out


def _known_snapshot(cmdop_home: str) -> dict[str, Any]:
    """`_load_known` for readers only (never mutate it): re-read only when the file changed."""
    return _cached("known", _known_path(cmdop_home), lambda: _load_known(cmdop_home))


def pinned_names(cmdop_home: str, relay: str,
                 scope: str = "") -> dict[str, list[str]]:
    """The host names pinned at `relay` in `scope`, each with the prefixes (lower case) the
    user reached it by (its `aliases`)."""
    realm, out = _realm(relay, scope), {}
    for pid, entry in _known_snapshot(cmdop_home).items():
        if (pid.rpartition("|")[0] == realm and isinstance(entry, dict) and _entry_key(entry)
                and isinstance(entry.get("name"), str)):
            aliases = entry.get("aliases")
            out[entry["name"]] = ([a for a in aliases if isinstance(a, str)]
                                  if isinstance(aliases, list) else [])
    return out


def add_alias(cmdop_home: str, relay: str, machine_id: str, alias: str,
              scope: str = "") -> None:
    """Remember that the prefix `alias` reached this pinned machine (checked on later calls:
    the relay may not turn that prefix into another machine)."""
    with _known_locked(cmdop_home):
        hosts = _load_known(cmdop_home)
        entry = hosts.get(_pin_id(relay, machine_id, scope))
        if not isinstance(entry, dict):
            return
        old = entry.get("aliases")
        aliases = [a for a in old if isinstance(a, str)] if isinstance(old, list) else []
        if alias.lower() in aliases:
            return
        entry["aliases"] = sorted({*aliases, alias.lower()})
        _save_known(cmdop_home, hosts)


def pinned_by_name(cmdop_home: str, relay: str, name: str,
                   scope: str = "") -> tuple[str, bytes] | None:
    """(machine id, key) pinned under the host name `name` at `relay` in `scope`; None unless
    exactly one machine is pinned under that name."""
    hits = _by_name(_known_snapshot(cmdop_home), relay, scope, name)
    return hits[0] if len(hits) == 1 else None


def check_pin(cmdop_home: str, relay: str, machine_id: str, name: str, offered: bytes,
              scope: str = "") -> bytes:
    """The key to seal to for this machine: `offered` when it matches the pin, or when the
    machine is new (then it is pinned). HostKeyChangedError, naming both fingerprints, when the
    relay offers another key than the pinned one — or says a pinned name is now another machine
    (a relay must not dodge a pin by naming a new machine id)."""
    hosts = _load_known(cmdop_home)               # one snapshot for every check below
    pinned = _entry_key(hosts.get(_pin_id(relay, machine_id, scope)))
    if pinned is None:
        others = [(mid, key) for mid, key in _by_name(hosts, relay, scope, name)
                  if mid != machine_id]
        if others:
            raise HostKeyChangedError(
                f"WARNING: {name} is now another machine for the relay (pinned "
                f"{e2e.fingerprint(others[0][1])}, the relay now offers "
                f"{e2e.fingerprint(offered)} for a new machine id); refusing the call: a relay "
                "could be impersonating the host",
                f"if {name} was reinstalled (check `cmdop agent status` on it), accept it with "
                f"`cmdop connect trust {name}`")
        pin(cmdop_home, relay, machine_id, name, offered, scope)
        return offered
    if pinned != offered:
        raise HostKeyChangedError(
            f"WARNING: the end-to-end key of {name} has changed (pinned "
            f"{e2e.fingerprint(pinned)}, the relay now offers {e2e.fingerprint(offered)}); "
            "refusing the call: a relay could be impersonating the host",
            f"if {name}'s owner rotated its key (check `cmdop agent status` on it), accept "
            f"it with `cmdop connect trust {name}`")
    return offered


def pin(cmdop_home: str, relay: str, machine_id: str, name: str, key: bytes,
        scope: str = "", alias: str = "") -> None:
    """Pin `key` for the machine, replacing any earlier pin of it and of its name (in the
    realm: relay and scope). `alias`: the prefix the user typed for it (`connect trust web`),
    which from now on means this machine and no other."""
    realm, alias = _realm(relay, scope), alias.strip().lower()
    with _known_locked(cmdop_home):
        hosts = {pid: entry for pid, entry in _load_known(cmdop_home).items()
                 if not (pid.rpartition("|")[0] == realm and isinstance(entry, dict)
                         and entry.get("name") == name)}
        for pid, entry in hosts.items():
            if pid.rpartition("|")[0] == realm and isinstance(entry, dict) \
                    and isinstance(entry.get("aliases"), list) and alias in entry["aliases"]:
                entry["aliases"] = [a for a in entry["aliases"] if a != alias]
        hosts[_pin_id(relay, machine_id, scope)] = {
            "name": name, "fingerprint": e2e.fingerprint(key),
            "key": base64.b64encode(key).decode("ascii"), "pinned_at": int(time.time()),
            **({"aliases": [alias]} if alias and alias != name.lower() else {})}
        _save_known(cmdop_home, hosts)


# -- the caller's signing key ------------------------------------------------------------------


class CallerSigner(NamedTuple):
    """The caller's signing key, its raw public key and that key's fingerprint."""

    key: Any                       # ed25519.Ed25519PrivateKey
    public: bytes
    fingerprint: str


def load_or_create_caller_key(cmdop_home: str) -> Any:
    """The caller's Ed25519 signing key (created 0600 on first use)."""
    return load_caller_signer(cmdop_home).key


def load_caller_signer(cmdop_home: str) -> CallerSigner:
    """The caller's signing key with its public half (created 0600 on first use); read again
    only when the file changed. SecretFileError when it is not private, E2EError when it is
    unreadable or corrupt."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from cmdop.adapters.secure_file import atomic_create, ensure_private_dir

    path = os.path.join(cmdop_home, CALLER_KEY_FILE)
    if not os.path.exists(path):
        ensure_private_dir(cmdop_home)
        atomic_create(path, ed25519.Ed25519PrivateKey.generate().private_bytes_raw())
    return _cached("caller_key", path, lambda: _read_caller_key(path))


def _read_caller_key(path: str) -> CallerSigner:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from cmdop.adapters.secure_file import read_private

    try:
        key = ed25519.Ed25519PrivateKey.from_private_bytes(read_private(path))
        public = key.public_key().public_bytes_raw()
        return CallerSigner(key, public, e2e.fingerprint(public))
    except SecretFileError:
        raise
    except (OSError, ValueError):
        raise E2EError(f"the caller key {path} is unreadable or corrupt",
                       "move it away to create a new one (update authorized_callers)") from None


def caller_public_text(cmdop_home: str) -> str:
    """The caller's public key as `authorized_callers` takes it: `ed25519:BASE64`."""
    pub = load_or_create_caller_key(cmdop_home).public_key().public_bytes_raw()
    return "ed25519:" + base64.b64encode(pub).decode("ascii")


def parse_caller_public(text: str) -> bytes:
    """The raw key of an `ed25519:BASE64` entry; E2EError for anything else."""
    kind, _, b64 = text.strip().partition(":")
    try:
        raw = base64.b64decode(b64, validate=True)
    except ValueError:
        raw = b""
    if kind != "ed25519" or len(raw) != 32:
        raise E2EError(f"{text!r} is not a caller public key",
                       "use the output of `cmdop connect key show-public`: ed25519:BASE64")
    return raw

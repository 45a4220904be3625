"""The relay's part in end-to-end encryption: handing out the public key a machine's agent
registered, so a caller can check it against its pin and seal its call to it.

What it promises:
- The key is the one the machine's live link sent in its Hello (kept with the link, in memory:
  an offline machine cannot run a call anyway). The relay never holds an agent's private key.
- A host resolves exactly as a call's host does (exact name, or a unique prefix) in the
  caller's workspace; a guest gets its share's bound machine only, and nothing else is named.
- The relay is not trusted with this answer: callers pin the key on first use and refuse a
  different one (cmdop.adapters.e2e_files.check_pin), so a relay that swaps keys is caught.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from cmdop.relay import routing
from cmdop.relay.proto import relay_pb2 as pb

if TYPE_CHECKING:
    from cmdop.relay.router import Router

MAX_KEY_BYTES = 4096          # a Hello's key larger than this is dropped (ours is 1216 bytes)


def _refused(query_id: str, code: str, message: str, hint: str = "") -> pb.HostKeyReply:
    return pb.HostKeyReply(query_id=query_id, failure=pb.Failure(code=code, message=message,
                                                                 hint=hint))


async def lookup(router: "Router", key: Any, host: str, query_id: str = "") -> pb.HostKeyReply:
    """The key of `host` as the principal `key` may see it; a reply with `failure` set when the
    host is unknown, ambiguous, offline, not the guest's, or has no key. The store is read off
    the event loop (RelayRefusal "unavailable" when it cannot be reached)."""
    machine, matches = await router.resolve(key.workspace, host)
    share_id = getattr(key, "share_id", None)
    if share_id:
        # Before any answer that names the workspace's machines (a guest sees only its own).
        from cmdop.relay import shares

        share = await router._lookup(router.store.get_share, share_id)
        refusal = (shares.Refusal(shares.REVOKED, "unknown share") if share is None else
                   shares.check_call(share, time.time(), machine.id if machine else None))
        if refusal is not None and refusal.code != shares.USED_UP:
            return _refused(query_id, refusal.code, refusal.message, refusal.hint)
    if machine is None:
        return _refused(query_id, *routing.unresolved(host, key.workspace, matches))
    link = router.link_of(machine)    # this node's link, or (several nodes) the holder's
    if link is None or link.ended.is_set():
        return _refused(query_id, *routing.offline(machine.name))
    return pb.HostKeyReply(query_id=query_id, name=machine.name, machine_id=machine.machine_id,
                           e2e_key=link.e2e_key)

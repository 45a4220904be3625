"""The relay's side of guest access: the owner's share RPCs and the admission of guest calls.

Runs inside the router (cmdop.relay.router), on asyncio. What it promises:
- CreateShare / ListShares / RevokeShare are for workspace members only (API key, login,
  external token): a share token calling them is refused (permission_denied). A share is bound
  to the one machine its HOST resolves to in the caller's workspace, resolved the way calls are.
  The token is returned once, in CreateShare's reply; it is never logged.
- A guest call (`GuestAdmission`) is checked at its start against the share as stored now:
  revoked, expired, another machine, no uses left — each refused with a Failure code of its own
  (cmdop.relay.shares) before any name of the workspace's machines is revealed; an admitted call
  counts one use (atomically in the store). The call is stamped kind "guest", credential
  "share", with the share's id, tools and note — never "self".
- RevokeShare cuts the share's live calls at once (the router's revocation path); another
  process's revocation is noticed through the store's data version like a revoked key.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from cmdop.adapters.relay_grpc import RelayRefusal
from cmdop.core.errors import CmdopError
from cmdop.relay import routing, shares
from cmdop.relay.auth import SHARE_PREFIX
from cmdop.relay.proto import relay_pb2 as pb

if TYPE_CHECKING:
    from cmdop.relay.router import Router
    from cmdop.relay.store_api import RelayStoreApi

log = logging.getLogger("cmdop.relay")


def is_guest(principal: Any) -> bool:
    """Whether `principal` authenticated with a share token."""
    return bool(getattr(principal, "share_id", None))


def refuse_guest(principal: Any, what: str) -> None:
    """RelayRefusal (permission_denied) when `principal` is a guest: it may not do `what`."""
    if is_guest(principal):
        raise RelayRefusal("permission_denied", f"a share token cannot {what}")


def info_of(share: shares.Share, now: float) -> pb.ShareInfo:
    """The share as list/revoke/create show it (never its token)."""
    def stamp(t: float | None) -> str:
        return "" if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

    return pb.ShareInfo(id=share.id, host=share.host, note=share.note,
                        created=stamp(share.created_at), expires=stamp(share.expires_at),
                        uses=share.uses, max_uses=share.max_uses, tools=list(share.tools),
                        state=shares.state(share, now))


def guest_principal(share: shares.Share) -> pb.Principal:
    """What the agent is told about a guest: always kind "guest", the share's tools and note."""
    return pb.Principal(kind="guest", workspace=share.workspace, name=share.id,
                        credential="share", share_id=share.id, tools=list(share.tools),
                        note=share.note)


def _input(request: pb.CreateShareRequest) -> tuple[int | None, tuple[str, ...], int, str]:
    try:
        return (shares.check_ttl(int(request.ttl_s), request.no_expiry),
                shares.parse_tools(list(request.tools)), shares.check_max_uses(request.max_uses),
                shares.check_note(request.note))
    except shares.ShareInputError as exc:
        raise RelayRefusal("invalid_argument", f"{exc}: {exc.hint}") from None


async def create(router: "Router", stream: Any, request: pb.CreateShareRequest) -> pb.ShareInfo:
    """CreateShare: mint a share of one machine of the caller's workspace."""
    key = await router._authenticate(stream)
    refuse_guest(key, "create shares")
    ttl_s, tools, max_uses, note = _input(request)
    machine, matches = await router.resolve(key.workspace, request.host)
    if machine is None:
        _, message, hint = routing.unresolved(request.host, key.workspace, matches)
        raise RelayRefusal("not_found", f"{message} ({hint})")
    try:
        share, token = await router._lookup(functools.partial(
            router.store.create_share, key.workspace, machine.id, created_by=key.id,
            ttl_s=ttl_s, tools=tools, max_uses=max_uses, note=note), write=True)
    except CmdopError as exc:
        raise RelayRefusal("failed_precondition", exc.message) from None
    log.info("share %s of %s created by %s (workspace %s)", share.id, share.host, key.id,
             key.workspace)
    info = info_of(share, time.time())
    info.token = token
    return info


async def list_(router: "Router", stream: Any, request: pb.ListSharesRequest) -> pb.ListSharesReply:
    """ListShares: every share of the caller's workspace, in any state."""
    key = await router._authenticate(stream)
    refuse_guest(key, "list shares")
    now = time.time()
    found = await router._lookup(router.store.list_shares, key.workspace)
    return pb.ListSharesReply(shares=[info_of(s, now) for s in found])


async def revoke(router: "Router", stream: Any, request: pb.RevokeShareRequest) -> pb.ShareInfo:
    """RevokeShare: the share is refused from now on and its live calls are cut."""
    key = await router._authenticate(stream)
    refuse_guest(key, "revoke shares")
    try:
        share = await router._lookup(router.store.revoke_share, key.workspace, request.id,
                                     write=True)
    except CmdopError as exc:
        raise RelayRefusal("not_found", exc.message) from None
    router.revoke(frozenset({SHARE_PREFIX + share.id}))
    log.info("share %s revoked by %s", share.id, key.id)
    return info_of(share, time.time())


class GuestAdmission:
    """The check a guest call meets at its start (the router calls it once the target host is
    resolved): `(machine row id or None, online) -> shares.Refusal | None`. A use is counted only
    for a call that will be forwarded (its host online)."""

    def __init__(self, store: "RelayStoreApi", share_id: str, clock: Callable[[], float] = time.time) -> None:
        self.store, self.share_id, self.clock = store, share_id, clock
        self.counted = False        # this call's use was taken (and not given back)

    def __call__(self, machine: str | None, online: bool) -> shares.Refusal | None:
        now = self.clock()
        share = self.store.get_share(self.share_id)
        if share is None:
            return shares.Refusal(shares.REVOKED, f"share {self.share_id} no longer exists",
                                  "ask the machine's owner for a new share")
        refusal = shares.check_call(share, now, machine)
        if refusal is not None or not online:
            return refusal
        if self.store.take_use(self.share_id, now):
            self.counted = True
            return None
        # Lost a race (the last use, a revocation, the expiry): say which, as stored now.
        share = self.store.get_share(self.share_id) or share
        return shares.check_call(share, now, machine) or shares.Refusal(
            shares.USED_UP, f"share {share.id} has no uses left",
            "ask the machine's owner for a new share")

    def give_back(self) -> None:
        """The use counted for a call that was not forwarded after all (its host went offline,
        its link ended, it was too large) is returned — only one this call took: a call to an
        offline host is let through uncounted, and must not erase a use another call spent."""
        if self.counted:
            self.counted = False
            self.store.give_back_use(self.share_id)


async def list_hosts(router: "Router", key: Any) -> pb.ListHostsReply:
    """ListHosts for a guest: the share's one machine while the share is active, nothing else
    of the workspace."""
    share = await router._lookup(router.store.get_share, key.share_id)
    now = time.time()
    if share is None or shares.state(share, now) != "active":
        state = shares.state(share, now) if share is not None else "revoked"
        raise RelayRefusal("permission_denied", f"share {key.share_id} is {state.replace('_', ' ')}")
    machine = next((m for m in await router._lookup(router.store.list_machines, key.workspace)
                    if m.id == share.machine), None)
    reply = pb.ListHostsReply(total=1 if machine else 0)
    if machine is not None:
        reply.hosts.append(pb.HostInfo(name=machine.name, hostname=machine.hostname[:253],
                                       online=router.online(machine.id),
                                       agent_version=machine.agent_version[:64],
                                       last_seen=machine.last_seen))
    return reply

"""The relay nodes' bus on Redis (`relay serve --bus redis://…`): `cmdop.relay.bus.Bus` over
Redis pub/sub and keys, with the redis-py asyncio client.

Redis does the distribution; nothing here is a protocol of its own:
- each node subscribes to `cmdop:relay:node:<id>` and to `cmdop:relay:all`;
- a machine's presence is the key `cmdop:relay:presence:<machine id>` (PX = its TTL), removed
  on unlink by a compare-and-delete script (only if it still holds this link's entry);
- a node is alive while `cmdop:relay:alive:<id>` exists (PX, refreshed by its heartbeat), its
  value the node's status record; the set `cmdop:relay:nodes` lists the ids to look up.
- a message for one node larger than BLOB_BYTES (a call's input, a result: up to 4 MiB) is
  not published itself: it is stored under `cmdop:relay:blob:<random>` (expiring after
  BLOB_TTL_S) and a reference to it is published; the receiver takes it (GET and DEL). Redis
  drops a subscriber whose unsent messages pass its pubsub output limit (32 MB by default)
  and sends a subscriber at most 64 KB per turn of its loop, so a burst of large messages —
  one caller's sixteen 3.5 MB calls — cut the receiving node off the bus, failing every call
  crossing to it; a normal connection's replies have no such limit.
Every command has a socket timeout, so a hung Redis is an error, never a hang. Errors become
`BusUnavailableError` naming the server without its password.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any
from urllib.parse import urlsplit

from cmdop.core.errors import BusUnavailableError, UsageError
from cmdop.relay.bus import ALL, NODE

PREFIX = "cmdop:relay:"
TIMEOUT_S = 3.0                       # one command's socket timeout
SCHEMES = ("redis", "rediss", "unix")
BLOB_BYTES = 256 * 1024               # larger messages for one node travel as a key (docstring)
BLOB_TTL_S = 120.0                    # a blob its receiver never takes (it died) goes away
# A reference starts with a zero byte, which no serialized protobuf message starts with
# (field number 0 does not exist), so it cannot be mistaken for a message.
_BLOB_REF = b"\x00"
_DROP_IF_SAME = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def shown(url: str) -> str:
    """`url` without its user and password (for logs and messages)."""
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def check_url(url: str) -> str:
    """`url` stripped, or UsageError when it is not a redis://, rediss:// or unix:// URL the
    Redis client can use (the message never repeats the URL: it may hold a password)."""
    url = url.strip()
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:                    # e.g. an unclosed [ in the host
        scheme = ""
    if scheme not in SCHEMES:
        raise UsageError(f"--bus must be a redis://, rediss:// or unix:// URL, not "
                         f"{url.split('://', 1)[0][:16]!r}",
                         hint="e.g. --bus redis://redis.internal:6379/0")
    try:
        from redis.connection import parse_url

        urlsplit(url).port                # raises on a port that is not a number
        parse_url(url)                    # type: ignore[no-untyped-call]  # untyped in redis 8.1
    except ValueError:
        raise UsageError("--bus is not a usable Redis URL (its host, port or database number)",
                         hint="e.g. --bus redis://:PASSWORD@redis.internal:6379/0") from None
    return url


class RedisBus:
    """`Bus` on one Redis server (module docstring)."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis

        self.url = check_url(url)
        self.where = shown(self.url)
        self.client: Any = aioredis.Redis.from_url(
            self.url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S,
            health_check_interval=15)
        self.pubsub: Any = None
        self._drop: Any = self.client.register_script(_DROP_IF_SAME)

    def _error(self, exc: BaseException) -> BusUnavailableError:
        return BusUnavailableError(f"the bus {self.where} is unreachable: "
                                   f"{type(exc).__name__}: {str(exc)[:200]}")

    async def _do(self, coro: Any) -> Any:
        from redis.exceptions import RedisError

        try:
            return await coro
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise self._error(exc) from None

    async def open(self, node: str) -> None:
        if self.pubsub is not None:
            await self._close_pubsub()
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        await self._do(self.pubsub.subscribe(PREFIX + "node:" + node, PREFIX + "all"))

    async def receive(self) -> tuple[str, bytes]:
        from redis.exceptions import RedisError

        while True:
            try:
                # Blocks until a message (no timer per message: this is the hot path). A server
                # that goes away ends the read; one that hangs is noticed by the heartbeat's
                # commands, which have timeouts, and the node reopens the bus.
                msg = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            except (RedisError, OSError) as exc:
                raise self._error(exc) from None
            if msg is None or msg.get("type") != "message":
                continue
            channel = msg["channel"].decode() if isinstance(msg["channel"], bytes) else msg["channel"]
            data = bytes(msg["data"])
            if data.startswith(_BLOB_REF):
                found = await self._take_blob(data[len(_BLOB_REF):].decode("ascii", "replace"))
                if found is None:
                    continue              # expired (this node was away longer): a lost message
                data = found
            return (ALL if channel == PREFIX + "all" else NODE), data

    async def _take_blob(self, key: str) -> bytes | None:
        if not key.startswith(PREFIX + "blob:"):
            return None                   # only this bus's own blob keys are ever read
        pipe = self.client.pipeline(transaction=True)
        pipe.get(key)
        pipe.delete(key)
        value, _ = await self._do(pipe.execute())
        return None if value is None else bytes(value)

    async def publish(self, items: list[tuple[str, bytes]]) -> None:
        if len(items) == 1 and len(items[0][1]) <= BLOB_BYTES:   # the common case: no pipeline
            node, data = items[0]
            await self._do(self.client.publish(PREFIX + ("node:" + node if node else "all"), data))
            return
        pipe = self.client.pipeline(transaction=False)
        for node, data in items:
            if node and len(data) > BLOB_BYTES:
                # (the SET runs before the PUBLISH: one connection, in order)
                key = PREFIX + "blob:" + uuid.uuid4().hex
                pipe.set(key, data, px=int(BLOB_TTL_S * 1000))
                data = _BLOB_REF + key.encode()
            pipe.publish(PREFIX + ("node:" + node if node else "all"), data)
        await self._do(pipe.execute())

    async def put_presence(self, entries: list[tuple[str, bytes]], ttl_s: float) -> None:
        pipe = self.client.pipeline(transaction=False)
        for machine_id, data in entries:
            pipe.set(PREFIX + "presence:" + machine_id, data, px=int(ttl_s * 1000))
        await self._do(pipe.execute())

    async def drop_presence(self, machine_id: str, expected: bytes) -> None:
        await self._do(self._drop(keys=[PREFIX + "presence:" + machine_id], args=[expected]))

    async def presence(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        keys = await self._do(self._scan(PREFIX + "presence:*"))
        for i in range(0, len(keys), 1000):
            batch = keys[i:i + 1000]
            values = await self._do(self.client.mget(batch))
            for k, v in zip(batch, values):
                if v is not None:
                    name = k.decode() if isinstance(k, bytes) else k
                    out[name[len(PREFIX + "presence:"):]] = bytes(v)
        return out

    async def _scan(self, pattern: str) -> list[Any]:
        return [k async for k in self.client.scan_iter(match=pattern, count=1000)]

    async def beat(self, node: str, record: bytes, ttl_s: float) -> bool:
        pipe = self.client.pipeline(transaction=False)
        pipe.set(PREFIX + "alive:" + node, record, px=int(ttl_s * 1000), get=True)
        pipe.sadd(PREFIX + "nodes", node)
        previous, _ = await self._do(pipe.execute())
        return previous is not None

    async def claim(self, node: str, record: bytes, ttl_s: float) -> bool:
        # SET NX: Redis runs one command at a time, so of two nodes claiming one id one wins
        claimed = await self._do(self.client.set(PREFIX + "alive:" + node, record,
                                                 px=int(ttl_s * 1000), nx=True))
        if claimed:
            await self._do(self.client.sadd(PREFIX + "nodes", node))
        return bool(claimed)

    async def nodes(self) -> dict[str, bytes]:
        names = sorted(n.decode() if isinstance(n, bytes) else n
                       for n in await self._do(self.client.smembers(PREFIX + "nodes")))
        if not names:
            return {}
        values = await self._do(self.client.mget([PREFIX + "alive:" + n for n in names]))
        gone = [n for n, v in zip(names, values) if v is None]
        if gone:
            await self._do(self.client.srem(PREFIX + "nodes", *gone))
        return {n: bytes(v) for n, v in zip(names, values) if v is not None}

    async def leave(self, node: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(PREFIX + "alive:" + node)
        pipe.srem(PREFIX + "nodes", node)
        await self._do(pipe.execute())

    async def _close_pubsub(self) -> None:
        try:
            await self.pubsub.aclose()
        except Exception:  # noqa: BLE001 - closing a broken connection may fail; it is gone anyway
            pass
        self.pubsub = None

    async def close(self) -> None:
        if self.pubsub is not None:
            await self._close_pubsub()
        try:
            await self.client.aclose()
        except Exception:  # noqa: BLE001 - as above
            pass

"""``RedisBroker``: the broker over Redis (``SMSGW_REDIS_URL``), for several hub nodes.

Keys (all under ``SMSGW_REDIS_PREFIX``, default ``smsgw:``):

- ``epoch:{device}``: a counter, INCR per claim; never expires, so epochs only grow.
- ``owner:{device}``: ``"{node}|{epoch}"`` with a TTL, refreshed by the owner's sweep.
- ``state:{device}``: the phone's ``PhoneState`` as JSON, same TTL.
- ``online``: a set of device ids; a member whose ``owner`` key has expired is dead (its
  node died) and is pruned by whoever reads the set. TTLs are Redis's own clock, so node
  clocks never matter.

Channels: ``phone:{device}`` (commands to whoever holds the phone; PUBLISH's receiver count
says whether anyone does), ``node:{node}`` (answers to one node), ``presence`` (up/down).

Claim, refresh and release are Lua scripts, so check-and-set of ownership is atomic and
the fence is published in the same step as the claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from smsgw.broker.base import Broker, Envelope, Handler, PhoneState

log = logging.getLogger("smsgw.broker")

# KEYS: epoch, owner, state, online. ARGV: node, ttl_ms, state_json, device, phone_channel,
# presence_channel.
_CLAIM = """
local epoch = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], ARGV[1] .. '|' .. epoch, 'PX', ARGV[2])
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[2])
redis.call('SADD', KEYS[4], ARGV[4])
redis.call('PUBLISH', ARGV[5],
  cjson.encode({k='fence', dev=ARGV[4], node=ARGV[1], epoch=epoch}))
redis.call('PUBLISH', ARGV[6],
  cjson.encode({k='up', dev=ARGV[4], node=ARGV[1], epoch=epoch}))
return epoch
"""

# KEYS: owner, state, online. ARGV: expected owner value, ttl_ms, state_json, device.
_REFRESH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[4])
return 1
"""

# KEYS: owner, state, online. ARGV: expected owner value, device, presence_channel, node,
# epoch.
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[3], ARGV[2])
redis.call('PUBLISH', ARGV[3],
  cjson.encode({k='down', dev=ARGV[2], node=ARGV[4], epoch=tonumber(ARGV[5])}))
return 1
"""

_REFRESH_BATCH = 500
SOCKET_TIMEOUT = 5.0  # seconds a command may wait for Redis (pub/sub listening is exempt)


class RedisBroker(Broker):
    def __init__(self, url: str, *, prefix: str = "smsgw:", node_id: str | None = None) -> None:
        self.url = url
        self.prefix = prefix
        self.node_id = node_id or secrets.token_hex(6)
        # Timeouts: a Redis that stops answering must fail calls (the dispatcher then fails
        # over, a hello is refused and retried), not hold them forever.
        self.redis: aioredis.Redis = aioredis.from_url(
            url,
            decode_responses=True,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
        )
        self._claim = self.redis.register_script(_CLAIM)
        self._refresh = self.redis.register_script(_REFRESH)
        self._release = self.redis.register_script(_RELEASE)
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._outbox: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._handler: Handler | None = None

    def _key(self, kind: str, name: str = "") -> str:
        return f"{self.prefix}{kind}:{name}" if name else f"{self.prefix}{kind}"

    # -- lifecycle ------------------------------------------------------------------

    async def start(self, handler: Handler) -> None:
        self._handler = handler
        self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self._key("node", self.node_id), self._key("presence"))
        self._reader = asyncio.create_task(self._read(), name="smsgw-broker-reader")
        self._writer = asyncio.create_task(self._write(), name="smsgw-broker-writer")

    async def close(self) -> None:
        for task in (self._reader, self._writer):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._pubsub is not None:
            # Typed in redis 8, untyped before: through Any, mypy is content with either.
            pubsub: Any = self._pubsub
            with contextlib.suppress(Exception):
                await pubsub.aclose()
        await self.redis.aclose()

    async def _read(self) -> None:
        assert self._pubsub is not None
        while True:
            try:
                async for item in self._pubsub.listen():
                    if item.get("type") != "message":
                        continue
                    try:
                        envelope = json.loads(item["data"])
                    except (TypeError, ValueError):
                        log.warning("ignoring a malformed envelope on %s", item.get("channel"))
                        continue
                    if self._handler is not None:
                        try:
                            self._handler(envelope)
                        except Exception:
                            log.exception("envelope handler failed")
            except asyncio.CancelledError:
                raise
            except Exception:
                # Redis went away: redis-py reconnects and subscribes again on the next read.
                log.warning("broker connection lost; retrying", exc_info=True)
                await asyncio.sleep(0.5)

    async def _write(self) -> None:
        """One writer, so envelopes from this node reach each receiver in queue order;
        everything queued meanwhile goes out in one pipeline."""
        while True:
            batch = [await self._outbox.get()]
            while not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for channel, data in batch:
                        pipe.publish(channel, data)
                    await pipe.execute()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("lost %d envelope(s) to a broker error", len(batch), exc_info=True)

    # -- ownership --------------------------------------------------------------------

    async def claim(self, state: PhoneState, ttl: float) -> int:
        dev = state.device_id
        state.node = self.node_id
        epoch = int(
            await self._claim(
                keys=[
                    self._key("epoch", dev),
                    self._key("owner", dev),
                    self._key("state", dev),
                    self._key("online"),
                ],
                args=[
                    self.node_id,
                    _ms(ttl),
                    json.dumps(state.to_dict()),
                    dev,
                    self._key("phone", dev),
                    self._key("presence"),
                ],
            )
        )
        state.epoch = epoch
        assert self._pubsub is not None
        await self._pubsub.subscribe(self._key("phone", dev))
        return epoch

    async def refresh(self, states: list[PhoneState], ttl: float) -> list[bool]:
        results: list[bool] = []
        for start in range(0, len(states), _REFRESH_BATCH):
            chunk = states[start : start + _REFRESH_BATCH]
            async with self.redis.pipeline(transaction=False) as pipe:
                for s in chunk:
                    await self._refresh(
                        keys=[
                            self._key("owner", s.device_id),
                            self._key("state", s.device_id),
                            self._key("online"),
                        ],
                        args=[
                            f"{self.node_id}|{s.epoch}",
                            _ms(ttl),
                            json.dumps(s.to_dict()),
                            s.device_id,
                        ],
                        client=pipe,
                    )
                results.extend(bool(r) for r in await pipe.execute())
        return results

    async def release(self, device_id: str, epoch: int) -> bool:
        if self._pubsub is not None:
            await self._pubsub.unsubscribe(self._key("phone", device_id))
        released = await self._release(
            keys=[
                self._key("owner", device_id),
                self._key("state", device_id),
                self._key("online"),
            ],
            args=[
                f"{self.node_id}|{epoch}",
                device_id,
                self._key("presence"),
                self.node_id,
                epoch,
            ],
        )
        return bool(released)

    # -- messages -----------------------------------------------------------------------

    async def to_phone(self, device_id: str, envelope: Envelope) -> int:
        return int(await self.redis.publish(self._key("phone", device_id), json.dumps(envelope)))

    def to_node(self, node_id: str, envelope: Envelope) -> None:
        self._outbox.put_nowait((self._key("node", node_id), json.dumps(envelope)))

    # -- presence -----------------------------------------------------------------------

    async def broadcast(self, envelope: Envelope) -> None:
        await self.redis.publish(self._key("presence"), json.dumps(envelope))

    async def online(self) -> list[PhoneState]:
        members = sorted(str(m) for m in await self.redis.smembers(self._key("online")))
        if not members:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.mget([self._key("owner", d) for d in members])
            pipe.mget([self._key("state", d) for d in members])
            owners: list[str | None]
            states: list[str | None]
            owners, states = await pipe.execute()
        result: list[PhoneState] = []
        dead: list[str] = []
        for dev, owner, raw in zip(members, owners, states, strict=True):
            if owner is None or raw is None:
                dead.append(dev)  # its node stopped refreshing: the TTL ran out
                continue
            state = _parse_state(raw, owner)
            if state is not None:
                result.append(state)
        if dead:
            # A claim between our read and this SREM re-adds the member on its next refresh.
            await self.redis.srem(self._key("online"), *dead)
        return result

    async def phone(self, device_id: str) -> PhoneState | None:
        values = await self.redis.mget(
            [self._key("owner", device_id), self._key("state", device_id)]
        )
        owner, raw = (None if v is None else str(v) for v in values)
        if owner is None or raw is None:
            return None
        return _parse_state(raw, owner)


def _parse_state(raw: str, owner: str) -> PhoneState | None:
    try:
        data: dict[str, Any] = json.loads(raw)
        node, _, epoch = owner.rpartition("|")
        state = PhoneState.from_dict(data)
        # The owner key is the truth about who holds the phone; the state may lag.
        state.node, state.epoch = node, int(epoch)
        return state
    except (TypeError, ValueError):
        log.warning("ignoring malformed phone state %r", raw[:200])
        return None


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))

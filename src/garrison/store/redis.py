"""Redis store (``redis://host:port/db``): shared state for many workers and hosts.

A round trip is one ``EVALSHA`` of the script below: pending bans, standing bans, the session
binding and GCRA for every identity, atomically. Numbers cross as strings (Redis truncates Lua
numbers to integers).

Most requests need no round trip: they are answered from *leases*. When Redis allows a request
it also reserves up to ``lease_max`` more requests for each identity (advancing its GCRA TAT as
if they had been made, a quarter of what the identity has left, none when under 2, so a client
near its limit is checked exactly in Redis every time) and grants them to the asking worker for
``lease_ttl`` seconds. A round trip with a session also confirms the session's binding (its
group and agent) to the worker for ``lease_ttl`` seconds; Redis hears of every session admitted
on such a confirmation at least every eighth of its travel window, sessions batched into one
call of ``TELL_SCRIPT`` per second (:meth:`RedisStore.tell`, off the requests' wait), whose
answer takes the confirmation back where the session was banned or bound elsewhere meanwhile. While
every identity of a request holds enough leased tokens and the session's binding is confirmed
for the same group and agent, the worker answers alone. Times are the requests' own
(``CheckRequest.now``); workers sharing a namespace should share a clock and the same
``lease_ttl``.

Safety: leased tokens are counted in Redis when granted, and unused ones simply expire, never
given back, so the limit across workers can only be stricter, never looser: a client spread
over W workers may be refused up to about ``W * lease_max`` requests early. Each round trip
also reports what the worker still holds of each identity's lease, and Redis counts the tokens
workers may still spend as in the bucket until they expire, so a lease spent late cannot add to
a bucket that refilled meanwhile (no burst above ``burst``), while spent tokens drain as usual
(a busy client keeps its burst). A worker asks for a lease only when it has no round trip in
flight for the request's identities, so a burst of concurrent requests is checked exactly
instead of being leased tokens that only later requests could spend.

The price is staleness: a ban or escalation decided in another worker reaches this worker after
at most ``lease_max`` of the identity's requests or one lease TTL, whichever comes first (a
busy client spends its lease in moments and is checked in Redis again, a slow one makes few
requests in a TTL); for a session, within an eighth of its travel window and a second of its
next request here. Redis's view of an active session's last request is at most a quarter of the
window and a second old, so impossible travel is still seen across workers. Until 2026-12-07
the binding was instead confirmed for a quarter of the window and every request after that
asked Redis: with 120,000 clients at 10 requests a minute each, 17.8 % of requests took a round
trip over one 40 s stretch, 6.2 % over the same stretch with confirmations a lease long and
these tells (the binding's rule was most of them; the share moves in waves as leases granted
together run out together, about 10 % over a whole lease TTL: docs/benchmarks.md). A ban this
worker writes or is told about drops the identity's lease at once; bans are not answered
locally (the web engine keeps its own), so with Redis down every request passes.

Failure is expected: every call is bounded by ``timeout`` seconds; on an error or timeout the
request passes (fail open; leases held are still spent), a :class:`CircuitBreaker` stops waiting
on a dead server for ``cooldown`` seconds, the failure is logged at most once per
``log_interval`` seconds, and the store recovers by itself when a trial call succeeds. Bans
decided while Redis is away wait in a bounded queue and go out with the next successful check.
Local state is bounded: leases and confirmed bindings are kept in the records of their
identities (:mod:`garrison.store.records`), at most ``max_local`` of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final

from garrison.store.base import (
    OPEN,
    THROTTLE,
    Binding,
    CheckRequest,
    CheckResult,
    LimitPolicy,
    LimitStore,
    StoreError,
    StoreURLError,
)
from garrison.store.records import RecordTable

log = logging.getLogger("garrison.store.redis")

CHECK_SCRIPT: Final = """
-- Garrison web check: pending bans, standing bans, session binding and GCRA, in one atomic call.
-- Mirrors garrison/store/memory.py; see garrison/store/base.py for the rules. An allowed
-- request also leases up to lease_max more requests per identity to the calling worker.
-- KEYS: nb ban-identity keys, ni request-identity keys, then (if binding) the binding key
--       and the session's identity key.
-- ARGV: now, rate, burst, initial_trust, trust_gain, trust_loss, strikes, strike_window,
--       backoff, offences_to_ban, ban, max_ban, offence_memory, idle_ttl, cost,
--       lease_max, lease_ttl, worker, nb, ni, has_binding,
--       [group, agent, bind_ttl, bind_ban, bind_window], then nb x (duration, reason),
--       then ni x (tokens, until, seq): the lease this worker still holds per identity
local now = tonumber(ARGV[1])
local rate, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local init_trust, gain, loss = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local max_strikes, strike_window = tonumber(ARGV[7]), tonumber(ARGV[8])
local backoff, to_ban, ban_base = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local max_ban, offence_memory, idle_ttl = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
local cost = tonumber(ARGV[15])
local lease_max, lease_ttl, worker = tonumber(ARGV[16]), tonumber(ARGV[17]), ARGV[18]
local nb, ni, has_binding = tonumber(ARGV[19]), tonumber(ARGV[20]), tonumber(ARGV[21])
local argi = 22
local group, agent, bind_ttl, bind_ban, bind_window
if has_binding == 1 then
  group, agent = ARGV[22], ARGV[23]
  bind_ttl, bind_ban, bind_window = tonumber(ARGV[24]), tonumber(ARGV[25]), tonumber(ARGV[26])
  argi = 27
end
local repi = argi + 2 * nb

local function f(x) return string.format('%.17g', x) end

-- An identity's state is one string "tat trust strikes wstart offences ban_until
-- L<seq><leases> reason" with a TTL: one GET to load, one SET ... PX to save. <leases> is
-- ",worker:tokens:until:seq" per worker that may hold leased tokens of this identity (tokens
-- in request-cost units, until in seconds); seq counts grants, so a worker's report of what it
-- holds that left before its latest grant landed is recognised as stale.
local function load(key)
  local v = redis.call('GET', key)
  local st = {key = key, t = 0, tr = init_trust, s = 0, w = 0, o = 0, b = 0, r = '',
              q = 0, ls = {}}
  if v then
    local t, tr, s, w, o, b, l, r = string.match(v,
      '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) L(%d%S*) ?(.*)$')
    if not t then  -- written before leases existed
      t, tr, s, w, o, b, r = string.match(v, '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) ?(.*)$')
    end
    if t then
      st.t, st.tr, st.s, st.w = tonumber(t), tonumber(tr), tonumber(s), tonumber(w)
      st.o, st.b, st.r = tonumber(o), tonumber(b), r
      if l then
        st.q = tonumber(string.match(l, '^(%d+)')) or 0
        for lw, lt, lu, lq in string.gmatch(l, ',([^:,]+):([^:,]+):([^:,]+):([^:,]+)') do
          local u = tonumber(lu) or 0
          if u > now then st.ls[lw] = {tonumber(lt) or 0, u, tonumber(lq) or 0} end
        end
      end
    end
  end
  return st
end

local function save(st)
  local keep = idle_ttl
  if st.o > 0 and offence_memory > keep then keep = offence_memory end
  local until_ = now + keep
  if st.b > until_ then until_ = st.b end
  local ls = {}
  for lw, e in pairs(st.ls) do
    if e[1] > 0 and e[2] > now then
      ls[#ls + 1] = ',' .. lw .. ':' .. f(e[1]) .. ':' .. f(e[2]) .. ':' .. e[3]
    end
  end
  redis.call('SET', st.key, f(st.t) .. ' ' .. f(st.tr) .. ' ' .. st.s .. ' ' .. f(st.w) .. ' '
             .. st.o .. ' ' .. f(st.b) .. ' L' .. st.q .. table.concat(ls) .. ' ' .. st.r,
             'PX', math.ceil((until_ - now) * 1000))
end

-- Leased tokens of this identity some worker may still spend. Until they expire GCRA counts
-- them as still in the bucket, so a lease spent late cannot add to a bucket that refilled.
-- First this worker's own report (tokens left, until, seq of its latest grant landed).
local function leased(st, i)
  local lt, lu, lq = tonumber(ARGV[repi + 3 * (i - 1)]), tonumber(ARGV[repi + 3 * (i - 1) + 1]),
                     tonumber(ARGV[repi + 3 * (i - 1) + 2])
  local mine = st.ls[worker]
  if mine == nil or lq >= mine[3] then
    if lt > 0 and lu > now then st.ls[worker] = {lt, lu, lq} else st.ls[worker] = nil end
  end
  local n, total = 0, 0
  for _, e in pairs(st.ls) do
    if e[2] > now then
      total = total + e[1]
      n = n + 1
    end
  end
  -- bounded: past 64 workers, the leases expiring first fold into one (sum, latest expiry)
  while n > 64 do
    local k1, k2
    for lw, e in pairs(st.ls) do
      if k1 == nil or e[2] < st.ls[k1][2] then k2 = k1; k1 = lw
      elseif k2 == nil or e[2] < st.ls[k2][2] then k2 = lw end
    end
    local a, b = st.ls[k1], st.ls[k2]
    st.ls['*' .. k2] = {a[1] + b[1], math.max(a[2], b[2]), 0}
    st.ls[k1] = nil
    st.ls[k2] = nil
    n = n - 1
  end
  return total
end

local function ban_length(base, offences)
  local n = offences - 1
  if n < 0 then n = 0 end
  local len = base * (2 ^ n)
  if len > max_ban then len = max_ban end
  return len
end

-- 0. bans queued by the caller since its last call
local ban_until = {}
for i = 1, nb do
  local st = load(KEYS[i])
  local duration = tonumber(ARGV[argi + 2 * (i - 1)])
  local reason = ARGV[argi + 2 * (i - 1) + 1]
  st.o = st.o + 1
  local u = now + ban_length(duration, st.o)
  if u > st.b then st.b = u; st.r = reason end
  save(st)
  ban_until[i] = f(st.b)
end

local no_leases = {}
local function answer(allowed, reason, retry, trust, event, culprit, bound, grants, trusts,
                      seqs)
  return {allowed, reason or '', f(retry), f(trust), event or '', culprit or '', bound or '',
          ban_until, grants or no_leases, trusts or no_leases, seqs or no_leases}
end

-- 1. standing bans
local states = {}
for i = 1, ni do
  local st = load(KEYS[nb + i])
  states[i] = st
  if st.b > now then
    local r = st.r
    if r == '' then r = 'ban' end
    return answer(0, r, st.b - now, st.tr, nil, st.key, nil)
  end
end

-- 2. session binding: "group|agent|last seen"
if has_binding == 1 then
  local bkey = KEYS[nb + ni + 1]
  local here = group .. '|' .. agent
  local bound = redis.call('GET', bkey)
  local bgroup, bagent, blast = nil, nil, 0
  if bound then
    bgroup, bagent, blast = string.match(bound, '^(.-)|(.-)|(.*)$')
    blast = tonumber(blast) or 0
  end
  local moved = bound and (bgroup .. '|' .. bagent) ~= here
  if moved and now - blast <= bind_window then
    local st = load(KEYS[nb + ni + 2])
    st.o = st.o + 1
    if now + bind_ban > st.b then st.b = now + bind_ban end
    st.r = 'impossible-travel'
    save(st)
    return answer(0, 'impossible-travel', bind_ban, st.tr, 'impossible-travel', st.key, bgroup)
  end
  -- refresh "last seen" at most every window/8 seconds (RedisStore.seen_every): saves a
  -- write on most requests
  if moved or not bound or now - blast > bind_window / 8 then
    redis.call('SET', bkey, here .. '|' .. f(now), 'PX', math.ceil(bind_ttl * 1000))
  end
end

-- 3. GCRA on every identity; all or nothing
local tau = burst / rate
local refused, wait = nil, 0
local tats = {}
for i = 1, ni do
  local st = states[i]
  local r = rate * (0.5 + st.tr)
  local base = now + leased(st, i) / r
  if st.t > base then base = st.t end
  local tat = base + cost / r
  if tat - now > tau and refused == nil then
    refused = st
    wait = tat - now - tau
  end
  tats[i] = tat
end
if refused == nil then
  local low = 1.0
  if ni == 0 then low = init_trust end
  local grants, trusts, seqs = {}, {}, {}
  for i = 1, ni do
    local st = states[i]
    st.t = tats[i]
    st.tr = math.min(1.0, st.tr + gain)
    -- lease: a quarter of what is left, at most lease_max requests, none if under 2
    local k = 0
    if lease_max > 0 then
      local r = rate * (0.5 + st.tr)
      k = math.floor((tau - (st.t - now)) * r / cost / 4 + 1e-9)
      if k > lease_max then k = lease_max end
      if k >= 2 then
        st.t = st.t + k * cost / r
        st.tr = math.min(1.0, st.tr + gain * k)
        st.q = st.q + 1
        local mine = st.ls[worker]
        if mine ~= nil and mine[2] > now then
          st.ls[worker] = {mine[1] + k * cost, math.max(mine[2], now + lease_ttl), st.q}
        else
          st.ls[worker] = {k * cost, now + lease_ttl, st.q}
        end
      else
        k = 0
      end
    end
    grants[i] = f(k * cost)
    trusts[i] = f(st.tr)
    seqs[i] = st.q
    save(st)
    if st.tr < low then low = st.tr end
  end
  return answer(1, nil, 0, low, nil, nil, nil, grants, trusts, seqs)
end
local st = refused
st.tr = math.max(0.0, st.tr - loss)
if now - st.w > strike_window then st.s = 0; st.w = now end
st.s = st.s + 1
local event = nil
if st.s == 1 then event = 'throttle-start' end
local reason = 'throttle'
if st.s >= max_strikes then
  st.s = 0
  st.o = st.o + 1
  if st.o < to_ban then
    reason, event, wait = 'backoff', 'backoff', backoff
  else
    reason, event = 'ban', 'ban'
    wait = ban_length(ban_base, st.o - to_ban + 1)
  end
  st.b = now + wait
  st.r = reason
end
save(st)
return answer(0, reason, wait, st.tr, event, st.key, nil)
"""

TELL_SCRIPT: Final = """
-- Garrison: sessions a worker admitted on bindings it holds as confirmed, told in one call.
-- KEYS: per session its binding key, then its identity key.
-- ARGV: now, then per session: group|agent, last seen, binding ttl (seconds).
-- Each binding still where the worker holds it gets its last-seen time (as a check would);
-- one that expired is bound again there. Returns the numbers (1-based) of the sessions whose
-- confirmation no longer stands: bound elsewhere now, or banned.
local now = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS / 2 do
  local bkey, ikey = KEYS[2 * i - 1], KEYS[2 * i]
  local here, last = ARGV[3 * i - 1], tonumber(ARGV[3 * i])
  local ttl = tonumber(ARGV[3 * i + 1])
  local ok = true
  local bound = redis.call('GET', bkey)
  local blast = nil
  if bound then
    local bgroup, bagent, b = string.match(bound, '^(.-)|(.-)|(.*)$')
    if bgroup == nil or (bgroup .. '|' .. bagent) ~= here then ok = false end
    blast = tonumber(b) or 0
  end
  if ok and (blast == nil or blast < last) then
    redis.call('SET', bkey, here .. '|' .. string.format('%.17g', last), 'PX',
               math.ceil(ttl * 1000))
  end
  if ok then
    local v = redis.call('GET', ikey)
    if v then
      local b = tonumber(string.match(v, '^%S+ %S+ %S+ %S+ %S+ (%S+)'))
      if b and b > now then ok = false end
    end
  end
  if not ok then out[#out + 1] = i end
end
return out
"""

_MAX_PENDING_BANS: Final = 10_000
TELL_EVERY: Final = 1.0
"""Seconds between two calls of :data:`TELL_SCRIPT` (sooner when :data:`TELL_BATCH` sessions
wait)."""
TELL_BATCH: Final = 256
"""The most sessions one call of :data:`TELL_SCRIPT` carries (each is a few Redis commands
inside one atomic script: a bounded stall for everyone else)."""


class CircuitBreaker:
    """Stops calls to a failing dependency for ``cooldown`` seconds after ``failures`` in a row.

    Closed: calls go through. Open: calls are refused until ``cooldown`` has passed, then one
    trial call is let through (half-open); success closes it, failure opens it again. Failures
    are logged at most once per ``log_interval`` seconds, with the count of the ones not logged.
    ``clock`` returns seconds (monotonic); injectable for tests.
    """

    def __init__(self, failures: int = 3, cooldown: float = 2.0, log_interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, name: str = "redis") -> None:
        self.failures = failures
        self.cooldown = cooldown
        self.log_interval = log_interval
        self.clock = clock
        self.name = name
        self._lock = threading.Lock()
        self._consecutive = 0
        self._open_until = 0.0
        self._trial = False
        self._last_log = -1e18
        self._unlogged = 0
        self.total_failures = 0
        self.opened = 0

    @property
    def is_open(self) -> bool:
        return self._open_until > self.clock()

    def allow(self) -> bool:
        """True when a call may be tried now."""
        with self._lock:
            if self._consecutive < self.failures:
                return True
            if self.clock() < self._open_until or self._trial:
                return False
            self._trial = True  # half-open: exactly one trial call
            return True

    def success(self) -> None:
        with self._lock:
            if self._consecutive >= self.failures:
                log.warning("%s is answering again; protection state is shared again", self.name)
            self._consecutive = 0
            self._trial = False
            self._open_until = 0.0

    def failure(self, exc: BaseException) -> None:
        with self._lock:
            self.total_failures += 1
            self._consecutive += 1
            self._trial = False
            now = self.clock()
            if self._consecutive >= self.failures:
                if self._open_until <= now:
                    self.opened += 1
                self._open_until = now + self.cooldown
            if now - self._last_log >= self.log_interval:
                log.warning(
                    "%s unavailable (%s: %s); requests pass unchecked (fail open); "
                    "%d failures not logged since the last message",
                    self.name, type(exc).__name__, exc, self._unlogged,
                )
                self._last_log = now
                self._unlogged = 0
            else:
                self._unlogged += 1


def _resp(args: list[bytes]) -> bytes:
    """One command in the Redis protocol (RESP)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


_LENGTHS: Final = tuple(f"${n}" for n in range(256))
"""RESP's bulk-string length prefixes, made once."""


def _resp_text(args: list[str]) -> bytes:
    """:func:`_resp` of text arguments, built as one string and encoded once: pieces (the
    length prefixes from a table) joined by CRLF, about a third of what building each bulk
    string with its own f-string cost, and a few microseconds less per round trip than encoding
    each argument on its own. Character counts are byte counts only in ASCII, so anything else
    (a namespace, a password) takes :func:`_resp`."""
    out = [f"*{len(args)}"]
    for a in args:
        n = len(a)
        out.append(_LENGTHS[n] if n < 256 else f"${n}")
        out.append(a)
    out.append("")  # the final CRLF
    text = "\r\n".join(out)
    if text.isascii():
        return text.encode()
    return _resp([a.encode() for a in args])


class _Replies(asyncio.Protocol):
    """The connection's reading side: every chunk goes straight to the parser and the waiting
    futures (no reader task, no ``StreamReader`` between the socket and the replies)."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe
        self.parser: Any = pipe._hiredis.Reader()
        # Any, not asyncio.Transport: uvloop's transports (uvicorn[standard] runs on uvloop)
        # write and close like one but are not its subclasses, and a checked type here made
        # every connection fail there, so the store only ever failed open.
        self.transport: Any = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        fifo = self.pipe._fifo
        try:
            parser.feed(data)
            while (item := parser.gets()) is not False:
                fut = fifo.popleft()
                if fut.done():  # one that timed out is answered all the same: skip it
                    continue
                if isinstance(item, Exception):
                    fut.set_exception(StoreError(f"Redis replied with an error: {item}"))
                else:
                    fut.set_result(item)
        except Exception as exc:  # a reply we cannot parse, or one nobody asked for
            self.pipe._lost(self, StoreError(f"bad reply from Redis: {exc!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe._lost(self, StoreError(f"Redis closed the connection ({exc!r})"))


class Pipeline:
    """One asyncio connection that writes every command queued in the same event-loop tick as
    one pipeline and hands replies back in order (parsed by hiredis, in C).

    Under load many requests are waiting on Redis at once; sending their checks together costs
    one write and one read instead of one each, and skips redis-py's per-command overhead. Each
    request still makes exactly one round trip. Replies are matched to callers in the protocol's
    ``data_received`` and timeouts share one timer (calls expire in the order they were made),
    so a round trip costs one future and one wake-up, not a task and a timer per call. Any
    connection error fails every waiting call (the store then fails open) and the next call
    reconnects; a call that times out leaves its reply to be read and discarded, so replies
    never go to the wrong caller.
    """

    MAX_IN_FLIGHT: Final = 10_000

    def __init__(self, host: str, port: int, db: int, password: str | None,
                 username: str | None, timeout: float) -> None:
        import hiredis

        self._hiredis: Any = hiredis
        self.host, self.port, self.db = host, port, db
        self.password, self.username = password, username
        self.timeout = timeout
        self.sha = hashlib.sha1(CHECK_SCRIPT.encode()).hexdigest()
        self.tell_sha = hashlib.sha1(TELL_SCRIPT.encode()).hexdigest()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proto: _Replies | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._fifo: deque[asyncio.Future[Any]] = deque()
        # (deadline, future) per call in the order made; one timer expires them in that order.
        self._deadlines: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._buf: list[bytes] = []
        self._flush_scheduled = False

    def send(self, command: bytes) -> Awaitable[Any]:
        """Queue one command (in RESP); the awaitable gives its reply (a Redis error reply
        raises :class:`StoreError`, so does a timeout or a lost connection). Connected, it is
        the reply's future itself: no coroutine per call."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._proto is None:
            return self._send_connecting(loop, command)
        return self._queue(loop, command)

    async def _send_connecting(self, loop: asyncio.AbstractEventLoop, command: bytes) -> Any:
        if self._loop is not loop:  # first use, or the old loop is gone: start over
            self._reset(StoreError("event loop changed"))
            self._loop = loop
        if self._proto is None:
            await self._connect(loop)
        return await self._queue(loop, command)

    def _queue(self, loop: asyncio.AbstractEventLoop, command: bytes) -> asyncio.Future[Any]:
        if len(self._fifo) >= self.MAX_IN_FLIGHT:
            raise StoreError(f"{len(self._fifo)} Redis calls in flight; not queueing more")
        fut: asyncio.Future[Any] = loop.create_future()
        self._fifo.append(fut)
        deadline = loop.time() + self.timeout
        self._deadlines.append((deadline, fut))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire)
        self._buf.append(command)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _expire(self) -> None:
        """Fail the calls whose time is up (oldest first) and wait for the next one."""
        self._timer = None
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        dl = self._deadlines
        while dl:
            deadline, fut = dl[0]
            if fut.done():
                dl.popleft()
            elif deadline <= now:
                dl.popleft()
                fut.set_exception(StoreError(f"Redis did not answer within {self.timeout}s"))
            else:
                self._timer = loop.call_at(deadline, self._expire)
                break

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._buf:
            return
        data, self._buf = b"".join(self._buf), []
        proto = self._proto
        if proto is None or proto.transport is None:
            self._reset(StoreError("not connected"))
            return
        proto.transport.write(data)

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._connecting is not None:  # someone else is connecting: wait for them
            await asyncio.wait_for(asyncio.shield(self._connecting), self.timeout * 4)
            if self._proto is None:
                raise StoreError("Redis connection failed")
            return
        self._connecting = loop.create_future()
        try:
            proto = _Replies(self)
            await asyncio.wait_for(
                loop.create_connection(lambda: proto, self.host, self.port), self.timeout * 4)
            self._proto = proto
            hello: list[list[bytes]] = []
            if self.password:
                auth = [b"AUTH"] + ([self.username.encode()] if self.username else [])
                hello.append([*auth, self.password.encode()])
            if self.db:
                hello.append([b"SELECT", str(self.db).encode()])
            hello.append([b"SCRIPT", b"LOAD", CHECK_SCRIPT.encode()])
            hello.append([b"SCRIPT", b"LOAD", TELL_SCRIPT.encode()])
            replies = [self._queue(loop, _resp(h)) for h in hello]
            got = await asyncio.wait_for(asyncio.gather(*replies, return_exceptions=True),
                                         self.timeout * 4)
            errors = [g for g in got if isinstance(g, BaseException)]
            if errors:
                raise StoreError(f"Redis setup failed: {errors[0]}")
        except BaseException:
            if self._proto is not None:
                self._reset(StoreError("Redis setup failed"))
            raise
        finally:
            self._connecting.set_result(None)
            self._connecting = None

    def _lost(self, proto: _Replies, exc: StoreError) -> None:
        """The connection of ``proto`` broke (or sent garbage): fail what waits on it."""
        if proto.lost:
            return
        proto.lost = True
        if proto is self._proto:
            self._reset(exc)
        elif proto.transport is not None:
            proto.transport.close()

    def _reset(self, exc: StoreError) -> None:
        proto, self._proto = self._proto, None
        if proto is not None:
            proto.lost = True
            try:
                if proto.transport is not None:
                    proto.transport.close()
            except RuntimeError:  # the loop it belonged to is closed: nothing left to release
                pass
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._buf.clear()
        self._deadlines.clear()
        while self._fifo:
            fut = self._fifo.popleft()
            if not fut.done():
                fut.set_exception(exc)

    async def aclose(self) -> None:
        self._reset(StoreError("closed"))


_EPS: Final = 1e-9  # float slack when comparing token counts (requests)


class RedisStore(LimitStore):
    """Rate limits, bans and bindings in Redis, with local leases; see the module docstring.

    ``lease_ttl`` (seconds) is the longest a lease lives (a session's binding is confirmed for a
    quarter of its travel window when that is shorter); ``lease_max`` (requests) the most one
    round trip leases per identity (the default, 12, is what the quarter rule grants a client
    with a full bucket under the default burst of 50), 0 to
    ask Redis on every request; ``max_local`` (records) caps the local state (see
    :class:`~garrison.store.records.RecordTable`). ``local_answers`` and ``round_trips``
    count requests answered each way.
    """

    def __init__(self, url: str, policy: LimitPolicy | None = None, *, timeout: float = 0.05,
                 namespace: str = "garrison", breaker: CircuitBreaker | None = None,
                 lease_ttl: float = 60.0, lease_max: int = 12, max_local: int = 100_000) -> None:
        try:
            import redis
            import redis.asyncio
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise StoreURLError(
                f"store URL {url!r} needs the redis package: pip install 'garrison[redis]'"
            ) from exc
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if not (lease_ttl > 0 and math.isfinite(lease_ttl)):
            raise ValueError(f"lease_ttl must be > 0 seconds, got {lease_ttl!r}")
        if not (isinstance(lease_max, int) and lease_max >= 0):
            raise ValueError(f"lease_max must be an int >= 0, got {lease_max!r}")
        if max_local < 16:
            raise ValueError(f"max_local must be >= 16, got {max_local!r}")
        self.policy = policy or LimitPolicy()
        self.url = url
        self.timeout = timeout
        self.ns = namespace
        self.breaker = breaker or CircuitBreaker()
        self.lease_ttl = float(lease_ttl)
        self.lease_max = lease_max
        self.max_local = max_local
        opts: dict[str, Any] = {
            "socket_timeout": timeout, "socket_connect_timeout": timeout,
            "retry_on_timeout": False, "health_check_interval": 0,
        }
        try:
            self._sync = redis.Redis.from_url(url, **opts)
            self._async = redis.asyncio.Redis.from_url(url, **opts)
        except ValueError as exc:
            raise StoreURLError(f"bad redis URL {url!r}: {exc}") from None
        self._sync_script = self._sync.register_script(CHECK_SCRIPT)
        self._async_script = self._async.register_script(CHECK_SCRIPT)
        self._sync_tell = self._sync.register_script(TELL_SCRIPT)
        self._async_tell = self._async.register_script(TELL_SCRIPT)
        self._pipe = self._make_pipeline(url, timeout)
        p = self.policy
        self._policy_args = [repr(float(x)) for x in (
            p.rate, p.burst, p.initial_trust, p.trust_gain, p.trust_loss, p.strikes,
            p.strike_window, p.backoff, p.offences_to_ban, p.ban, p.max_ban, p.offence_memory,
            p.idle_ttl)]
        self._wid = secrets.token_hex(6)  # this worker, in Redis's account of leases
        # Arguments turned into text once, not per round trip: the lease TTL and each binding
        # window seen (ttl, ban, window; a handful per app, bounded all the same).
        self._ttl_text = repr(self.lease_ttl)
        self._windows: dict[tuple[float, float, float], list[str]] = {}
        self._pending: deque[Any] = deque(maxlen=_MAX_PENDING_BANS)
        self._pending_lock = threading.Lock()
        self.dropped_bans = 0
        self.failed_checks = 0
        # Leases and confirmed bindings live in the records of their identities (ltok, luntil,
        # lseq; bgroup, bagent, bexp), shared with the web engine; guarded by lock.
        self.lock = self._lock = threading.Lock()
        self.records: RecordTable = RecordTable(max_local, self.policy.initial_trust)
        # Round trips in flight per identity: a request asks for a lease only when none of its
        # identities has one in flight here, or a burst of concurrent requests would each be
        # leased tokens that only later requests could spend.
        self._flying: dict[str, int] = {}
        self._ok = CheckResult(True, trust=p.initial_trust)
        self.local_answers = 0
        self.round_trips = 0
        # Sessions admitted here on a confirmed binding that Redis has not heard of lately:
        # session -> (binding, time of its latest such request), at most max_local; sent by
        # tell() at most every TELL_EVERY seconds, one call at a time.
        self._due: dict[str, tuple[Binding, float]] = {}
        self._tell_at = 0.0
        self._telling = False
        self._retell = False  # a follow-up tell is scheduled on the event loop
        self._tasks: set[asyncio.Task[None]] = set()
        self.tells = 0  # calls of TELL_SCRIPT that landed
        self.told = 0  # sessions they carried
        self.revoked = 0  # confirmations they took back (moved, banned, or the call failed)

    @staticmethod
    def _make_pipeline(url: str, timeout: float) -> Pipeline | None:
        """The fast async path for plain ``redis://`` TCP URLs when hiredis is installed."""
        if not url.lower().startswith("redis://"):
            return None
        try:
            from redis.asyncio.connection import parse_url

            params = parse_url(url)
            return Pipeline(str(params.get("host", "localhost")), int(params.get("port", 6379)),
                            int(params.get("db", 0) or 0), params.get("password"),
                            params.get("username"), timeout)
        except (ImportError, ValueError, TypeError):
            return None

    # -- encoding ---------------------------------------------------------------------------
    def _key(self, identity: str) -> str:
        return f"{self.ns}:id:{identity}"

    def _bind_key(self, session: str) -> str:
        return f"{self.ns}:bind:{session}"

    def _take_bans(self, req: CheckRequest) -> tuple[Any, ...]:
        with self._pending_lock:
            bans = (*self._pending, *req.bans)
            self._pending.clear()
        return bans

    def _requeue(self, bans: tuple[Any, ...]) -> None:
        with self._pending_lock:
            for ban in bans:
                if len(self._pending) == self._pending.maxlen:
                    self.dropped_bans += 1
                self._pending.append(ban)

    def _bind_ttl(self, b: Binding) -> float:
        """Seconds a round trip confirms session binding ``b`` to this worker: a lease TTL.
        Redis still hears of an active session every eighth of its travel window (see
        :meth:`seen`), and that call takes the confirmation back if the session moved or was
        banned meanwhile."""
        return self.lease_ttl

    # -- telling Redis of sessions answered here ----------------------------------------------
    def seen(self, binding: Binding, rec: Any, now: float) -> bool:
        """A request of ``binding``'s session admitted on this worker's confirmation at
        ``now``; ``rec`` its record (``rec.bseen``: when Redis last heard of it from here).
        Queued for :meth:`tell` once an eighth of the travel window has passed since; False
        (the confirmation must go) when the queue is full. Caller holds :attr:`lock`."""
        if now - rec.bseen < binding.window * self.seen_every:
            return True
        due = self._due
        if binding.session not in due and len(due) >= self.max_local:
            return False
        due[binding.session] = (binding, now)
        rec.bseen = now
        return True

    def _tell_batch(self, now: float) -> list[tuple[Binding, float]] | None:
        """The sessions to tell Redis of now, taken off the queue, or None: nothing queued, a
        call in flight, or neither :data:`TELL_EVERY` seconds since the last nor a full batch
        waiting (caller holds :attr:`lock`)."""
        due = self._due
        if not due or self._telling or (now < self._tell_at and len(due) < TELL_BATCH):
            return None
        # the oldest first, and only as many as go out: the queue may hold up to max_local
        batch = [due[s] for s in itertools.islice(due, TELL_BATCH)]
        for b, _ in batch:
            del due[b.session]
        self._telling = True
        self._tell_at = now + TELL_EVERY
        return batch

    def _tell_args(self, now: float,
                   batch: list[tuple[Binding, float]]) -> tuple[list[str], list[str]]:
        keys: list[str] = []
        argv = [repr(float(now))]
        for b, last in batch:
            keys += [self._bind_key(b.session), self._key(b.session)]
            argv += [f"{b.group}|{b.agent}", repr(float(last)), repr(float(b.ttl))]
        return keys, argv

    def _told(self, batch: list[tuple[Binding, float]], raw: Any) -> None:
        """Take back the confirmations Redis's answer ``raw`` names (all of the batch when
        ``raw`` is None: the call failed), so those sessions ask Redis with their next
        request; and let the next call go."""
        with self._lock:
            self._telling = False
            data = self.records.data
            if raw is None:
                gone = list(range(len(batch)))
            else:
                self.tells += 1
                self.told += len(batch)
                gone = [int(i) - 1 for i in raw if 0 < int(i) <= len(batch)]
            for i in gone:
                rec = data.get(batch[i][0].session)
                if rec is not None and rec.bexp > 0.0:
                    rec.bexp = 0.0
                    self.revoked += 1

    def tell(self, now: float) -> None:
        """Send the sessions :meth:`seen` queued, if it is time: under asyncio as a task (one
        at a time), otherwise at once. Never raises: a failed call takes the batch's
        confirmations back (their next requests ask Redis, and pass if it is down)."""
        if not self._due:  # nothing queued (read without the lock: the next batch sees it)
            return
        with self._lock:
            batch = self._tell_batch(now)
        if batch is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._tell_now(now, batch)
            return
        task = loop.create_task(self._atell(now, batch))
        self._tasks.add(task)  # held until done (the loop keeps only a weak reference)

        def finished(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if t.cancelled():  # its loop closing, before or during the call: later calls
                self._told(batch, None)  # must not wait on it, nor the batch stay confirmed
            elif self._due and not self._retell:
                # sessions queued while the call was in flight: their tell was skipped, and
                # no later request may come to send it (the worker gone idle), so the next
                # call goes out by itself once the pacing allows it
                self._retell = True
                t.get_loop().call_later(TELL_EVERY, self._tell_again)

        task.add_done_callback(finished)

    def _tell_again(self) -> None:
        """The follow-up :meth:`tell` scheduled when a call landed with sessions waiting, at
        the earliest time the pacing allows (no request brought a later one)."""
        self._retell = False
        self.tell(self._tell_at)

    def _tell_now(self, now: float, batch: list[tuple[Binding, float]]) -> None:
        raw: Any = None
        try:
            if self.breaker.allow():
                keys, argv = self._tell_args(now, batch)
                raw = self._sync_tell(keys=keys, args=argv)
                self.breaker.success()
        except Exception as exc:  # fail open: the sessions ask Redis next time
            self.breaker.failure(exc)
            raw = None
        self._told(batch, raw)

    async def _atell(self, now: float, batch: list[tuple[Binding, float]]) -> None:
        raw: Any = None
        try:
            if self.breaker.allow():
                keys, argv = self._tell_args(now, batch)
                if self._pipe is not None:
                    raw = await self._pipe.send(_resp_text(
                        ["EVALSHA", self._pipe.tell_sha, str(len(keys)), *keys, *argv]))
                else:
                    raw = await asyncio.wait_for(self._async_tell(keys=keys, args=argv),
                                                 timeout=self.timeout * 2)
                self.breaker.success()
        except Exception as exc:  # fail open: the sessions ask Redis next time
            self.breaker.failure(exc)
            raw = None
        self._told(batch, raw)

    def _args(self, req: CheckRequest, bans: tuple[Any, ...], lease: bool = False,
              held: list[str] | None = None) -> tuple[list[str], list[str]]:
        """KEYS and ARGV of the script; ``held``: (tokens, until, seq) per identity, what this
        worker still holds of each one's lease (zeros when none)."""
        ids = req.identities
        keys = [self._key(b.identity) for b in bans] + [self._key(i) for i in ids]
        cost = req.cost
        argv = [repr(float(req.now)), *self._policy_args,
                "1.0" if cost == 1.0 else repr(float(cost)),
                str(self.lease_max) if lease else "0", self._ttl_text, self._wid,
                str(len(bans)), str(len(ids))]
        b = req.binding
        if b is None:
            argv.append("0")
        else:
            keys += [self._bind_key(b.session), self._key(b.session)]
            window = self._windows.get((b.ttl, b.ban, b.window))
            if window is None:
                if len(self._windows) >= 64:
                    self._windows.clear()
                window = self._windows[(b.ttl, b.ban, b.window)] = [
                    repr(float(x)) for x in (b.ttl, b.ban, b.window)]
            argv += ["1", b.group, b.agent, *window]
        for ban in bans:
            argv += [repr(float(ban.duration)), ban.reason]
        argv += held if held is not None else ["0", "0", "0"] * len(req.identities)
        return keys, argv

    def _decode(self, raw: Any) -> tuple[CheckResult, list[float], list[float], list[int]]:
        """The result, and per request identity the tokens leased (requests x cost), trust and
        grant number (all empty on a refusal)."""
        allowed, reason, retry, trust, event, culprit, bound, until, grants, trusts, seqs = raw
        if not (reason or event or culprit or bound or until):  # the common answer: plain yes
            return (CheckResult(int(allowed) == 1, None, float(retry), float(trust)),
                    [float(g) for g in grants], [float(t) for t in trusts],
                    [int(q) for q in seqs])
        prefix = f"{self.ns}:id:"
        text = [x.decode() if isinstance(x, bytes) else str(x)
                for x in (reason, event, culprit, bound)]
        result = CheckResult(
            allowed=int(allowed) == 1,
            reason=text[0] or None,
            retry_after=float(retry),
            trust=float(trust),
            event=text[1] or None,
            culprit=text[2].removeprefix(prefix) or None,
            bound_group=text[3] or None,
            ban_until=tuple(float(u) for u in until),
        )
        return (result, [float(g) for g in grants], [float(t) for t in trusts],
                [int(q) for q in seqs])

    def _failed(self, exc: BaseException, bans: tuple[Any, ...]) -> CheckResult:
        self.failed_checks += 1
        self.breaker.failure(exc)
        self._requeue(bans)
        return OPEN

    # -- local leases -----------------------------------------------------------------------
    def _answer_locally(self, req: CheckRequest) -> CheckResult | None:
        """Allowed from local leases, or None when Redis must be asked (caller holds
        :attr:`lock`). Spends ``req.cost`` from every identity's lease when allowed."""
        if req.bans or self._pending:
            return None  # bans to write: only a round trip carries them
        now = req.now
        need = req.cost - _EPS
        data = self.records.data
        low = 2.0  # stays 2.0 only with no identities: Redis answers those
        recs = []
        for ident in req.identities:
            rec = data.get(ident)
            if rec is None or rec.luntil <= now or rec.ltok < need or rec.ban_until > now:
                return None
            if rec.trust < low:
                low = rec.trust
            recs.append(rec)
        if low > 1.0:
            return None
        b = req.binding
        if b is not None:
            sr = data.get(b.session)
            if (sr is None or sr.bexp <= now or sr.bgroup != b.group or sr.bagent != b.agent
                    or not self.seen(b, sr, now)):
                return None
        cost = req.cost
        for rec in recs:
            rec.ltok -= cost
        self.local_answers += 1
        ok = self._ok
        if ok.trust != low:
            self._ok = ok = CheckResult(True, trust=low)
        return ok

    def _learn(self, req: CheckRequest, bans: tuple[Any, ...], result: CheckResult,
               grants: list[float], trusts: list[float], seqs: list[int]) -> CheckResult:
        """Keep the leases a round trip granted and return its answer (caller holds
        :attr:`lock`). A ban written, or any refusal but a throttle, drops the identity's
        lease, so its next request asks Redis (which refuses it). A plain throttle that finds a
        lease granted meanwhile (to a concurrent request) spends it instead: those tokens are
        already counted in Redis."""
        self.round_trips += 1
        now = req.now
        table = self.records
        data = table.data
        for ban in bans:
            rec = data.get(ban.identity)
            if rec is not None:
                rec.ltok = 0.0
        b = req.binding
        if result.allowed:
            until = now + self.lease_ttl  # Redis counts the tokens at least this long
            for ident, grant, trust, seq in zip(req.identities, grants, trusts, seqs,
                                                strict=False):
                rec = table.get(ident, now)
                if grant > 0:
                    if rec.luntil > now and rec.ltok > _EPS:
                        rec.ltok += grant
                    else:
                        rec.ltok = grant
                    rec.luntil = until
                    if seq > rec.lseq:
                        rec.lseq = seq
                    if rec.expires < until:
                        rec.expires = until
                rec.trust = trust
            if b is not None:
                sr = table.get(b.session, now)
                confirmed = now + self._bind_ttl(b)
                sr.bgroup, sr.bagent, sr.bexp = b.group, b.agent, confirmed
                sr.bseen = now  # Redis heard of it (last seen at most window/8 old there)
                if sr.expires < confirmed:
                    sr.expires = confirmed
            return result
        if result.reason == THROTTLE:
            if result.event is None and not bans:
                return self._answer_locally(req) or result
            return result
        if result.culprit is not None:  # a ban, back-off or travel
            banned = data.get(result.culprit)
            if banned is not None:
                banned.ltok = 0.0
        if b is not None:
            bound = data.get(b.session)
            if bound is not None:
                bound.bexp = 0.0
        return result

    def _depart(self, req: CheckRequest) -> CheckResult | tuple[bool, list[str]]:
        """Before a round trip: the local answer if there is one, else whether to ask for a
        lease (no round trip of these identities in flight here) and what this worker holds of
        each identity's lease (tokens, until, seq); registers the flight."""
        with self._lock:
            answer = self._answer_locally(req)
            if answer is not None:
                return answer
            flying = self._flying
            data = self.records.data
            now = req.now
            lease = True
            held: list[str] = []
            for ident in req.identities:
                n = flying.get(ident, 0)
                if n:
                    lease = False
                flying[ident] = n + 1
                e = data.get(ident)
                if e is None:
                    held += ("0", "0", "0")
                elif e.luntil > now:
                    held += (repr(e.ltok), repr(e.luntil), str(e.lseq))
                else:
                    held += ("0", "0", str(e.lseq))
            return lease, held

    def _land(self, req: CheckRequest) -> None:
        """After a round trip (caller holds :attr:`_lock`): unregister its flight."""
        flying = self._flying
        for ident in req.identities:
            n = flying.pop(ident, 1) - 1
            if n > 0:
                flying[ident] = n

    # -- protocol ---------------------------------------------------------------------------
    def check(self, req: CheckRequest) -> CheckResult:
        leasing = self.lease_max > 0
        lease, held = False, None
        if leasing:
            local = self._depart(req)
            if isinstance(local, CheckResult):
                if self._due:
                    self.tell(req.now)
                return local
            lease, held = local
        try:
            if not self.breaker.allow():
                self._requeue(req.bans)
                return OPEN
            bans = self._take_bans(req)
            try:
                keys, argv = self._args(req, bans, lease, held)
                raw = self._sync_script(keys=keys, args=argv)
                result, grants, trusts, seqs = self._decode(raw)
            except Exception as exc:  # any failure of the store means: fail open
                return self._failed(exc, bans)
            self.breaker.success()
            with self._lock:
                if not leasing:
                    self.round_trips += 1
                    return result
                self._land(req)
                leasing = False  # landed
                return self._learn(req, bans, result, grants, trusts, seqs)
        finally:
            if leasing:
                with self._lock:
                    self._land(req)

    async def acheck(self, req: CheckRequest) -> CheckResult:
        leasing = self.lease_max > 0
        lease, held = False, None
        if leasing:
            local = self._depart(req)  # test and spend with no await between them
            if isinstance(local, CheckResult):
                if self._due:
                    self.tell(req.now)
                return local
            lease, held = local
        try:
            if not self.breaker.allow():
                self._requeue(req.bans)
                return OPEN
            bans = self._take_bans(req)
            try:
                keys, argv = self._args(req, bans, lease, held)
                if self._pipe is not None:
                    raw = await self._pipe.send(_resp_text(
                        ["EVALSHA", self._pipe.sha, str(len(keys)), *keys, *argv]))
                else:
                    raw = await asyncio.wait_for(
                        self._async_script(keys=keys, args=argv), timeout=self.timeout * 2
                    )
                result, grants, trusts, seqs = self._decode(raw)
            except Exception as exc:  # any failure of the store means: fail open
                return self._failed(exc, bans)
            self.breaker.success()
            with self._lock:
                if not leasing:
                    self.round_trips += 1
                    return result
                self._land(req)
                leasing = False  # landed
                return self._learn(req, bans, result, grants, trusts, seqs)
        finally:
            if leasing:
                with self._lock:
                    self._land(req)

    def answers(self) -> dict[str, int]:
        """Checks answered by a round trip to Redis and from this worker's leases."""
        return {"redis": self.round_trips, "lease": self.local_answers}

    def close(self) -> None:
        self._sync.close()

    async def aclose(self) -> None:
        self._sync.close()
        await self._async.aclose()
        if self._pipe is not None:
            await self._pipe.aclose()

"""Per-client state kept out of the cyclic garbage collector (garrison.acyclic).

With 120,000 clients the engine's objects were about 800,000 of the collector's, and with
Redis a full collection stopped the server for about half a second every few seconds. Only
objects that can never be part of a reference cycle may be untracked (a cycle through one
would never be freed), and only types whose deallocator copes with it (or freeing one would
corrupt memory): both are checked here.
"""

from __future__ import annotations

import gc
import types
import weakref
from typing import Any, NamedTuple

import pytest

from garrison import acyclic
from garrison.bus import EventBus
from garrison.store.base import CheckRequest
from garrison.store.records import Record
from garrison.web.engine import Client, Decision, PathInfo, WebEngine
from garrison.web.options import WebOptions
from garrison.web.verdict import Verdict

T0 = 1_800_000_000.0

needs_helper = pytest.mark.skipif(
    not acyclic.AVAILABLE,
    reason="garrison._acyclic was not built (no C compiler at install): nothing is untracked")


class _Pair(NamedTuple):
    a: object
    b: object


class _Plain:
    __slots__ = ("__weakref__", "x")

    def __init__(self, x: object) -> None:
        self.x = x


class _Reputation:
    """A reputation source with an answer for every address (verdicts go through fuse)."""

    def score(self, ip: str) -> float | None:
        return 0.6

    def is_blocklisted(self, ip: str) -> bool:
        return False

    def honeypot_hits(self, ip: str) -> int:
        return 0


@needs_helper
def test_untrack_takes_only_types_whose_deallocator_copes() -> None:
    for cls in (tuple, dict, _Pair, _Plain, Record, Client, PathInfo, Decision, Verdict):
        assert acyclic.untrackable(cls), cls
    # CPython's mappingproxy frees itself with the unchecked untrack: never untracked
    for other in (types.MappingProxyType, list, set):
        assert not acyclic.untrackable(other), other
    proxy = types.MappingProxyType({"a": 1.0})
    assert acyclic.untrack(proxy) is proxy and gc.is_tracked(proxy)
    pair = _Pair([1], [2])
    assert gc.is_tracked(pair) and acyclic.untrack(pair) is pair and not gc.is_tracked(pair)
    # untracked, it is still freed by reference counting, and freeing it is sound
    plain = _Plain([1, 2])
    gone = weakref.ref(plain)
    acyclic.untrack(plain)
    assert not gc.is_tracked(plain)
    del plain
    assert gone() is None
    del pair, proxy
    gc.collect()
    with pytest.raises(TypeError):
        acyclic.allow(1)  # type: ignore[type-var]


def _traffic(eng: WebEngine, clients: int, requests: int, first: int = 0,
             start: float = T0) -> list[Client]:
    """``requests`` answered requests from each of ``clients`` (numbered from ``first``, each
    two per session and /64), a second apart from ``start``, so that scoring judges them
    and arms them with verdicts of their own."""
    out = []
    for i in range(first, first + clients):
        headers = {"x-forwarded-for": f"2001:db8:{i // 2:x}::{i % 2 + 1}",
                   "cookie": f"session=s{i // 2}"}
        out.append(eng.identify("127.0.0.1", headers))
    for n in range(requests):
        now = start + n
        for c in out:
            pre = eng.precheck(c, now)
            if isinstance(pre, CheckRequest):
                pre = eng.decide(c, eng.store.check(pre), now)
            assert pre.allowed
            eng.after(c, f"/page/{n % 5}", 200, 100, now)
        eng.drain()
    return out


def _kept(client: Client) -> list[Any]:
    """What a client keeps: itself, its records and their tuple, its binding, its prepared
    decision with its verdict and the verdict's components."""
    out: list[Any] = [client, client.recs, *client.recs]
    if client.binding is not None:
        out.append(client.binding)
    if client.ready is not None:
        out.append(client.ready)
        if client.ready.verdict is not None:
            out += [client.ready.verdict, client.ready.verdict.components]
    return out


@needs_helper
@pytest.mark.parametrize("reputation", [False, True], ids=["plain", "reputation"])
def test_clients_and_what_they_keep_are_out_of_the_collector(reputation: bool) -> None:
    eng = WebEngine(WebOptions(bus=EventBus(), trusted_proxies=["127.0.0.1"],
                               reputation=_Reputation() if reputation else None))
    clients = _traffic(eng, 40, 12)
    judged = [c for c in clients if c.irec is not None and c.irec.risk is not None]
    assert len(judged) == len(clients)  # scoring judged them all: verdicts of their own
    assert all(c.ready is not None and c.ready.verdict is not None for c in clients)
    for c in clients:
        for obj in _kept(c):
            assert not gc.is_tracked(obj), (type(obj), obj)
    for info in eng._paths.values():
        assert not gc.is_tracked(info)
    # the dicts that hold them all, up to 200,000 entries each, are spared full walks too
    eng.identify_raw(("127.0.0.1", *(None for _ in eng.raw_names)))
    for big in (eng.records.data, eng._client_cache, eng.raw_clients, eng._addr_cache,
                eng._paths):
        assert big and not gc.is_tracked(big)
    # and the collector does not grow with the clients: a thousand more add almost nothing
    gc.collect()
    before = len(gc.get_objects())
    more = _traffic(eng, 1000, 3, first=100, start=T0 + 100)
    gc.collect()
    assert len(gc.get_objects()) - before < 100, "per-client objects are tracked again"
    assert len(more) == 1000


def test_what_clients_keep_is_never_in_a_cycle() -> None:
    """The rule that makes untracking them sound: from any client, following every reference
    (the collector's own traversal, which works on untracked objects too), no object leads
    back to one on the current path. Runs with or without the C helper: a cycle added to
    these classes would leak once they are untracked."""
    eng = WebEngine(WebOptions(bus=EventBus(), trusted_proxies=["127.0.0.1"],
                               reputation=_Reputation()))
    clients = _traffic(eng, 20, 12)
    stop = (str, bytes, int, float, bool, type(None), type, types.ModuleType)

    def walk(obj: Any, path: list[int], seen: set[int]) -> None:
        if isinstance(obj, stop) or (not gc.is_tracked(obj) and not isinstance(
                obj, (Client, Record, Decision, Verdict, tuple, dict))):
            return
        key = id(obj)
        assert key not in path, f"a cycle through {type(obj).__name__}"
        if key in seen:
            return
        seen.add(key)
        path.append(key)
        for ref in gc.get_referents(obj):
            walk(ref, path, seen)
        path.pop()

    seen: set[int] = set()
    for c in clients:
        walk(c, [], seen)
    assert len(seen) > 5 * len(clients)  # it did walk the records, decisions and verdicts

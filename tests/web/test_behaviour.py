"""Scoring, addresses, bounded state and the fused verdict, on plain records (no I/O)."""

from __future__ import annotations

import gc
import ipaddress
import itertools
import json
import math
import random

import pytest

from garrison.bus import EventBus
from garrison.store.base import CheckRequest
from garrison.store.records import Record, RecordTable
from garrison.web import clientaddr
from garrison.web import engine as engine_module
from garrison.web.behaviour import HISTORY, History, path_hash
from garrison.web.clientaddr import AddressPolicy, parse_networks
from garrison.web.engine import WebEngine
from garrison.web.options import WebOptions
from garrison.web.rawkey import encode
from garrison.web.verdict import fuse
from tests.web import scenarios as sc

T0 = 1_800_000_000.0


def _risks(steps: sc.Actor, **options: object) -> tuple[list[float], WebEngine]:
    """Feed an actor straight into an engine (no server); every final risk it reached."""
    now = [T0]
    eng = WebEngine(WebOptions(clock=lambda: now[0], bus=EventBus(),
                               trusted_proxies=["127.0.0.1"], dry_run=True, **options))  # type: ignore[arg-type]
    finals = []
    for step in steps:
        now[0] += step.dt
        client = eng.identify("127.0.0.1", {k.lower(): v for k, v in step.headers.items()})
        status = 404 if step.path.startswith("/old") else 401 if step.path == "/login" else 200
        eng.after(client, step.path, status, 2000, now[0])
        eng.drain()  # score now, not with the next batch, to read the risk of this request
        ip = eng.record(client.key or "")
        ss = eng.record(client.session or "")
        known = [x.risk for x in (ip, ss) if x is not None and x.risk is not None]
        finals.append(sum(known) / len(known) if known else 0.0)
    return finals, eng


def test_first_visit_and_new_session_are_never_judged() -> None:
    h = History()
    h.add(T0, path_hash("/"), 200, 5000)
    assert h.features(T0, 120, 8, 5) is None
    for i in range(1, 6):  # a fresh session loading a page and four assets in 0.2 s
        h.add(T0 + i * 0.05, path_hash(f"/static/{i}"), 200, 5000)
    assert h.features(T0 + 0.3, 120, 8, 5) is None
    finals, _ = _risks(sc.human("192.0.2.1", "fresh", random.Random(1), minutes=0.2))
    assert finals[0] == 0.0
    assert max(finals[:7]) == 0.0  # no judgement before min_requests


def test_benign_one_hertz_poller_scores_below_both_thresholds() -> None:
    # The predecessor scored this 0.70 and blocked it.
    finals, eng = _risks(sc.poller("192.0.2.2", "dash", interval=1.0, minutes=10))
    assert max(finals) < 0.5
    sessions = [s.risk for k, s in eng.records.data.items() if k.startswith("s:")]
    assert all(r is not None and r < 0.6 for r in sessions)


def test_regularity_walking_many_pages_scores_high() -> None:
    finals, _ = _risks(sc.scraper("192.0.2.3", interval=1.0, pages=40))
    assert max(finals) >= 0.5


def test_failing_logins_score_high_even_slowly() -> None:
    finals, _ = _risks(sc.stuffer("192.0.2.4", interval=2.0, count=30))
    assert max(finals) >= 0.5


@pytest.mark.parametrize("seed", range(6))
def test_human_sessions_stay_well_below_threshold(seed: int) -> None:
    finals, eng = _risks(sc.human(f"198.51.100.{seed}", f"h{seed}", random.Random(seed)))
    assert max(finals) < 0.45
    assert all(s.risk is None or s.risk < 0.55
               for k, s in eng.records.data.items() if k.startswith("s:"))


def test_counters_are_windowed() -> None:
    h = History()
    for i in range(40):
        h.add(T0 + i * 0.1, path_hash("/x"), 200, 1000)
    assert h.per_minute(T0 + 4) == 40
    assert h.per_minute(T0 + 200) == 0.0
    assert h.features(T0 + 200, 120, 8, 5) is None  # all history is outside the window
    assert h.count == 40  # ring holds only the last 32; memory does not grow


def test_record_table_caps_keeps_offenders_and_resets_expired_records() -> None:
    table = RecordTable(cap=100, initial_trust=0.5)
    banned = table.get("ip:offender", T0)
    banned.ban_until = banned.expires = T0 + 10_000  # a standing ban keeps a record late
    for i in range(1000):
        table.get(f"ip:k{i}", T0).expires = T0 + 60 + i
    assert len(table) <= 100 and table.evicted >= 900 and table.gen > 0
    assert table.peek("ip:offender") is banned  # the sweep dropped the ones expiring first
    assert table.peek("ip:k999") is not None and table.peek("ip:k0") is None
    rec = table.get("ip:k999", T0)
    rec.trust, rec.count = 0.9, 5
    assert table.get("ip:k999", T0 + 2000) is rec  # expired: same object, reset in place
    assert rec.trust == 0.5 and rec.count == 0


def test_engine_state_is_bounded_under_a_flood_of_sources() -> None:
    eng = WebEngine(WebOptions(bus=EventBus(), max_ips=64, max_sessions=64))
    for i in range(5000):
        c = eng.identify(str(ipaddress.IPv4Address(0xC6336400 + i)), {"cookie": f"session={i}"})
        eng.after(c, "/", 200, 10, T0 + i)
    assert len(eng.records) <= 128  # max_ips + max_sessions records in all
    assert eng.records.evicted >= 5000 * 2 - 128


def test_evicted_records_are_let_go_by_the_cached_clients() -> None:
    """The caps bound memory, not only the table: a client cached by its headers holds its
    records, so a flood of new clients must not keep every evicted record (with its history)
    alive in the client caches, of the raw ASGI path and of the decoded one alike."""
    eng = WebEngine(WebOptions(bus=EventBus(), max_ips=64, max_sessions=64,
                               trusted_proxies=["127.0.0.1"]))
    for i in range(5000):
        ip = str(ipaddress.IPv4Address(0xC6336400 + i))
        if i % 2:
            c = eng.identify(ip, {"cookie": f"session={i}"})
        else:
            raw = {"x-forwarded-for": ip.encode(), "cookie": f"session={i}".encode()}
            c = eng.identify_raw(("127.0.0.1", *(raw.get(n) for n in eng.raw_names)))
        eng.after(c, "/", 200, 10, T0 + i)
    eng.drain()
    gc.collect()
    live = sum(1 for o in gc.get_objects() if isinstance(o, Record))
    assert live <= 4 * 128, live  # the table's 128, and what clients still in use hold
    assert len(eng.raw_clients) + len(eng._client_cache) <= 4 * 128
    assert len(eng._addr_cache) <= 128  # addresses too: no more than records may be kept
    # the clients still cached were bound after the last sweep, or are re-bound when used
    c = eng.identify(str(ipaddress.IPv4Address(0xC6336400 + 4999)), {"cookie": "session=4999"})
    eng.after(c, "/", 200, 10, T0 + 5000)
    eng.drain()
    assert eng.records.peek(c.key or "") is c.irec is not None


def test_client_cache_holds_as_many_clients_as_the_caps() -> None:
    """A site with more clients at once than the old fixed cap of 65,536 entries must still
    answer a returning client from the cache: an emptied cache sends every returning client
    through identification and the full check again (the middleware served a third of the
    bare app's requests per second with 120,000 active clients). Bounded still, by the caps."""
    eng = WebEngine(WebOptions(bus=EventBus(), trusted_proxies=["127.0.0.1"]))
    n = 70_000  # past 65,536, within max_ips + max_sessions (200,000)

    def key(i: int) -> tuple[bytes | str | None, ...]:
        raw = {"x-forwarded-for": str(ipaddress.IPv4Address(0x0A000000 + i)).encode(),
               "cookie": f"session=s{i // 2}".encode()}
        return ("127.0.0.1", *(raw.get(name) for name in eng.raw_names))

    first = [eng.identify_raw(key(i)) for i in range(n)]
    assert len(eng.raw_clients) == n
    assert all(eng.raw_clients.get(encode(key(i))) is first[i] for i in range(0, n, 997))
    small = WebEngine(WebOptions(bus=EventBus(), trusted_proxies=["127.0.0.1"], max_ips=64,
                                 max_sessions=64))
    for i in range(1000):
        raw = {"x-forwarded-for": str(ipaddress.IPv4Address(0x0A000000 + i)).encode()}
        small.identify_raw(("127.0.0.1", *(raw.get(name) for name in small.raw_names)))
    assert 0 < len(small.raw_clients) <= 128


def _held(cache: dict[object, object]) -> int:
    """Characters of outside parties' text a cache's keys hold."""
    total = 0
    for key in cache:
        parts = key if isinstance(key, tuple) else (key,)
        total += sum(len(p) for p in parts if isinstance(p, (str, bytes)))
    return total


def test_identification_caches_hold_a_bounded_amount_of_text() -> None:
    """The caches are bounded in bytes, not only in entries: each key holds what a client sent
    (a Cookie header, a forwarding header, a path), which a server lets be many kilobytes, so
    65,536 entries of 16 KB would pin a gigabyte. A flood of huge headers and paths must stay
    within the byte budget, and a client with an ordinary header must still be recognised."""
    budget = engine_module._CACHE_BYTES
    eng = WebEngine(WebOptions(bus=EventBus(), trusted_proxies=["127.0.0.1"]))
    filler = "x" * 6000
    n = 3 * budget // 10_000  # 6-12 KB of text per key: several times the budget per cache
    for i in range(n):
        ip = str(ipaddress.IPv4Address(0xCB007100 + i % 250))  # 203.0.113.x
        cookie = f"session={i}; junk={filler}"
        fwd = f"{ip}, {'198.51.100.7, ' * 400}{ip}"  # a long forwarding chain
        if i % 2:
            c = eng.identify("127.0.0.1", {"cookie": cookie, "x-forwarded-for": fwd})
        else:
            raw = {"x-forwarded-for": fwd.encode(), "cookie": cookie.encode()}
            c = eng.identify_raw(("127.0.0.1", *(raw.get(name) for name in eng.raw_names)))
        eng.after(c, f"/{i}/{filler}", 200, 10, T0 + i * 0.01)
    eng.drain()
    inserted = {"raw_clients": n // 2, "_client_cache": n // 2, "_addr_cache": n, "_paths": n}
    for name, count in inserted.items():
        cache = getattr(eng, name)
        assert _held(cache) <= budget, (name, _held(cache), len(cache))
        assert 0 < len(cache) < count, (name, len(cache))  # cleared on the way, not capped
    # ordinary clients are cached and recognised as before
    a = eng.identify("127.0.0.1", {"cookie": "session=ok", "x-forwarded-for": "203.0.113.9"})
    assert eng.identify("127.0.0.1", {"cookie": "session=ok",
                                      "x-forwarded-for": "203.0.113.9"}) is a
    assert a.ip == "203.0.113.9" and a.session


def test_forwarded_header_is_ignored_without_a_trusted_proxy() -> None:
    plain = AddressPolicy()
    assert str(plain.client("192.0.2.9", "203.0.113.5")) == "192.0.2.9"
    proxied = AddressPolicy(trusted_proxies=parse_networks(["127.0.0.1", "10.0.0.0/8"]))
    # rightmost untrusted hop wins; what the client wrote on the left is not believed
    assert str(proxied.client("127.0.0.1", "1.1.1.1, 203.0.113.5, 10.0.0.2")) == "203.0.113.5"
    assert str(proxied.client("192.0.2.9", "203.0.113.5")) == "192.0.2.9"  # peer not trusted
    assert str(proxied.client("127.0.0.1", "[2001:db8::7]:443")) == "2001:db8::7"
    assert str(proxied.client("127.0.0.1", "garbage")) == "127.0.0.1"
    assert str(plain.client("::ffff:192.0.2.1", None)) == "192.0.2.1"


def test_socket_peers_are_parsed_once_and_stay_bounded() -> None:
    """The address policy remembers each socket peer it parsed (a proxy's address comes with
    every request); answered from memory, the forwarding header is still believed only from a
    trusted proxy, and a flood of distinct peers keeps the memory bounded."""
    p = AddressPolicy(trusted_proxies=parse_networks(["127.0.0.1"]))
    for _ in range(2):  # the second pass is answered from the remembered peers
        assert str(p.client("127.0.0.1", "203.0.113.5")) == "203.0.113.5"
        assert str(p.client("192.0.2.9", "203.0.113.5")) == "192.0.2.9"
        assert p.client("garbage", "203.0.113.5") is None
    for i in range(10_000):
        p.client(str(ipaddress.IPv4Address(0xC6336400 + i)), None)  # 198.51.100.0 and up
    assert 0 < len(p._peers) <= clientaddr._PEERS
    assert str(p.client("127.0.0.1", "203.0.113.7")) == "203.0.113.7"


def test_rfc7239_forwarded_header() -> None:
    p = AddressPolicy(trusted_proxies=parse_networks(["127.0.0.1"]), forwarded_header="forwarded")
    assert str(p.client("127.0.0.1", 'for="[2001:db8::1]";proto=https')) == "2001:db8::1"


def test_ipv6_is_grouped_by_prefix() -> None:
    p = AddressPolicy()
    a = p.group(ipaddress.ip_address("2001:db8:1:2::1"))
    b = p.group(ipaddress.ip_address("2001:db8:1:2:ffff::9"))
    c = p.group(ipaddress.ip_address("2001:db8:1:3::1"))
    assert a == b == "2001:db8:1:2::/64" and c != a
    assert p.group(ipaddress.ip_address("192.0.2.1")) == "192.0.2.1"
    assert AddressPolicy(ipv6_prefix=48).group(ipaddress.ip_address("2001:db8:1:3::1")) == (
        "2001:db8:1::/48"
    )


def test_fused_verdict_blocklist_is_a_hard_cap() -> None:
    good = fuse(bot_risk=0.0, reputation=0.9, honeypot_hits=0, rate_trust=1.0,
                blocklisted=False, weights={"bot": 1, "reputation": 1, "honeypot": 1, "rate": 1})
    assert good.trust > 0.9
    capped = fuse(bot_risk=0.0, reputation=0.9, honeypot_hits=0, rate_trust=1.0,
                  blocklisted=True, weights={"bot": 1, "reputation": 1})
    assert capped.trust <= 0.05
    honeypot = fuse(bot_risk=0.0, reputation=None, honeypot_hits=3, rate_trust=None,
                    blocklisted=False, weights={"bot": 0.5, "honeypot": 0.5})
    assert honeypot.trust == pytest.approx(0.5)
    unknown = fuse(bot_risk=None, reputation=None, honeypot_hits=0, rate_trust=None,
                   blocklisted=False, weights={"bot": 1})
    assert unknown.trust == 0.5


@pytest.mark.parametrize("weights", [None, {"bot": 0.7, "rate": 0.3}, {"bot": 1.0},
                                     {"rate": 1.0}])
def test_the_engines_plain_verdict_is_fuses(weights: dict[str, float] | None) -> None:
    """Without a reputation source the engine fuses inline (and shares the verdict of clients
    not judged yet): the result must be fuse()'s, component for component."""
    opts = (WebOptions(bus=EventBus(), trust_weights=weights) if weights
            else WebOptions(bus=EventBus()))
    eng = WebEngine(opts)
    for bot, rate in itertools.product((None, 0.0, 0.3, 1.0), (None, 0.0, 0.5, 0.97, 0.5)):
        mine = eng._plain(bot, rate)
        ref = fuse(bot_risk=bot, reputation=None, honeypot_hits=0, rate_trust=rate,
                   blocklisted=False, weights=opts.trust_weights)
        assert mine.trust == pytest.approx(ref.trust), (bot, rate)
        assert (mine.bot_risk, mine.rate_trust, mine.blocklisted) == (
            ref.bot_risk, ref.rate_trust, ref.blocklisted)
        assert dict(mine.components) == dict(ref.components), (bot, rate)
    assert eng._plain(None, 0.5) is eng._plain(None, 0.5)  # shared while the trust is the same
    assert eng._plain(None, 0.6).rate_trust == 0.6


def test_new_clients_share_their_admitted_decision() -> None:
    """A flood from new addresses must not leave two more objects per client for the cyclic
    GC to walk: clients not judged yet, with the same rate trust, share one verdict and one
    decision (immutable: the verdict's components are a read-only mapping)."""
    eng = WebEngine(WebOptions(bus=EventBus(), trusted_proxies=["127.0.0.1"]))
    decisions = []
    for i in range(200):
        c = eng.identify("127.0.0.1", {"x-forwarded-for": f"203.0.113.{i % 250}",
                                       "cookie": f"session=n{i}"})
        pre = eng.precheck(c, T0 + i)
        d = pre if not isinstance(pre, CheckRequest) else None
        assert d is not None and d.allowed
        decisions.append(d)
    assert len({id(d) for d in decisions}) == 1  # all new: the same rate trust
    assert len({id(d.verdict) for d in decisions}) == 1
    verdict = decisions[0].verdict
    assert verdict is not None
    shared = verdict.components
    assert isinstance(shared, dict)  # a dict (json and every Mapping use work), read-only
    for change in (lambda: shared.__setitem__("rate", 1.0), lambda: shared.update(rate=1.0),
                   shared.clear, lambda: shared.pop("rate"),
                   lambda: shared.setdefault("x", 1.0)):
        with pytest.raises(TypeError):
            change()
    assert json.loads(json.dumps(shared)) == dict(shared) == {"rate": shared["rate"]}


def test_options_reject_unknown_and_bad_values() -> None:
    with pytest.raises(TypeError):
        WebOptions(treshold=0.5)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="threshold"):
        WebOptions(threshold=1.5)
    with pytest.raises(ValueError, match="route_thresholds"):
        WebOptions(route_thresholds={"login": 0.3})
    with pytest.raises(ValueError, match="expected an address"):
        WebEngine(WebOptions(trusted_proxies=["not-an-ip"], bus=EventBus()))
    assert WebOptions(route_thresholds={"/login": 0.3, "/": 0.7}).threshold_for("/login/x") == 0.3


def _crowd(adaptive: bool) -> tuple[int, WebEngine]:
    """30 well-behaved clients at ~1.5 req/s against a configured limit of 1 req/s."""
    now = [T0]
    eng = WebEngine(WebOptions(clock=lambda: now[0], bus=EventBus(), rate=1.0, burst=20.0,
                               threshold=1.0, session_threshold=1.0,
                               adaptive_limits=adaptive))
    rng = random.Random(3)
    refused = 0
    for _ in range(120 * 30 * 3 // 2):  # two simulated minutes
        now[0] += 1 / 45  # 45 req/s over 30 clients
        c = rng.randrange(30)
        client = eng.identify(f"198.51.100.{c + 1}", {})
        pre = eng.precheck(client, now[0])
        decision = (eng.decide(client, eng.store.check(pre), now[0])
                    if isinstance(pre, CheckRequest) else pre)
        if decision.allowed:
            eng.after(client, f"/page/{rng.randrange(50)}", 200, 1000, now[0])
        else:
            refused += 1
    return refused, eng


def test_limits_adjust_to_the_observed_baseline_but_only_upwards_and_capped() -> None:
    fixed, _ = _crowd(adaptive=False)
    adaptive, eng = _crowd(adaptive=True)
    assert fixed > 100  # 1.5 req/s against 1 req/s: the fixed limit bites
    assert adaptive < fixed / 10
    assert 1.0 < eng.rate_scale <= 2.0  # raised, within max_rate_scale
    assert eng.baseline_rpm > 60


def test_identify_cache_tells_clients_apart_by_every_header_it_reads() -> None:
    """The per-request client cache must key on every raw value identify() reads: a changed
    cookie, forwarded address or user agent is a different client, never a stale one."""
    eng = WebEngine(WebOptions(bus=EventBus(), trusted_proxies=["127.0.0.1"],
                               bind_user_agent=True))
    base = {"x-forwarded-for": "198.51.100.7", "cookie": "session=a", "user-agent": "ua1"}
    first = eng.identify("127.0.0.1", dict(base))
    assert eng.identify("127.0.0.1", dict(base)) == first
    other_cookie = eng.identify("127.0.0.1", {**base, "cookie": "session=b"})
    assert other_cookie.session != first.session and other_cookie.key == first.key
    other_ip = eng.identify("127.0.0.1", {**base, "x-forwarded-for": "198.51.100.8"})
    assert other_ip.key != first.key and other_ip.session == first.session
    other_agent = eng.identify("127.0.0.1", {**base, "user-agent": "ua2"})
    assert other_agent.agent != first.agent
    untrusted = eng.identify("203.0.113.9", dict(base))  # same headers, untrusted peer
    assert untrusted.ip == "203.0.113.9"
    assert eng.identify("127.0.0.1", {**base, "cookie": ""}).session is None


def test_exempt_paths_match_by_prefix() -> None:
    eng = WebEngine(WebOptions(bus=EventBus(), exempt_paths=["/health", "/static/"]))
    assert eng.is_exempt("/healthz") and eng.is_exempt("/static/app.js")
    assert not eng.is_exempt("/") and not eng.is_exempt("/stat")
    assert not WebEngine(WebOptions(bus=EventBus())).is_exempt("/health")


def _reference(added: list[tuple[float, int, int, int]], now: float,
               window: float) -> tuple[int, int, float, float, float]:
    """Total, errors, volume, entropy bits and gap CV recomputed the plain way (request by
    request) from what was added, to check the ring's sliced fast path against."""
    recs = added[-HISTORY:]
    recs = [r for r in recs if r[0] >= now - window]
    total = len(recs)
    errors = sum(1 for r in recs if r[2] >= 400)
    volume = float(sum(r[3] for r in recs))
    counts: dict[int, int] = {}
    for r in recs:
        counts[r[1]] = counts.get(r[1], 0) + 1
    bits = -sum(c / total * math.log2(c / total) for c in counts.values())
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(recs)]
    if not gaps:  # too few to judge: the caller expects no features
        return total, errors, volume, bits, 0.0
    mean = sum(gaps) / len(gaps)
    var = sum(g * g for g in gaps) / len(gaps) - mean * mean
    return total, errors, volume, bits, math.sqrt(max(var, 0.0)) / mean


@pytest.mark.parametrize("seed", range(16))
def test_sliced_features_match_a_request_by_request_count(seed: int) -> None:
    # Checked as the history grows past the ring many times over, so that the counts kept as
    # requests come and go (errors, and the path table, whose pairs are given up as paths
    # leave) are held to a recount after evictions of every kind.
    rng = random.Random(seed)

    h = History()
    added: list[tuple[float, int, int, int]] = []
    t = T0
    spread = rng.choice((1, 2, 6, 40))  # one endpoint, a few, more than the ring holds
    for k in range(rng.randrange(8, 300)):
        t += rng.expovariate(1.0)
        rec = (t, path_hash(f"/p{rng.randrange(spread)}"), rng.choice((200, 200, 404, 500)),
               rng.randrange(100, 5000))
        added.append((rec[0], rec[1], rec[2], rec[3]))
        h.add(*rec)
        if k % 7 and k > 8:
            continue
        for window in (1e9, 20.0):  # all inside the window (kept counts), some outside (loop)
            f = h.features(t, window, 3, 0.0)
            total, errors, volume, bits, cv = _reference(added, t, window)
            if total < 3:
                assert f is None
                continue
            assert f is not None and f.requests == total
            assert f.errors == pytest.approx(errors / total)
            assert f.entropy_bits == pytest.approx(bits)
            assert f.cv == pytest.approx(cv, rel=1e-6)
            assert f.volume == pytest.approx(min(volume / (50 * 1024 * 1024), 1.0))

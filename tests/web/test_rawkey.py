"""The client cache key of ASGI requests (garrison.web.rawkey): the C helper and the Python
path give the same bytes for the same input, two requests share a key only when the engine
reads the same host and header values from them, and the adapter finds one client for one
sender whatever shape its header list has."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from garrison.bus import EventBus
from garrison.web import rawkey
from garrison.web.asgi import GarrisonMiddleware
from garrison.web.rawkey import encode, pick, python_pick

NAMES = (b"cookie", b"x-forwarded-for")


class Named(bytes):
    """A bytes subclass: the helper leaves it to Python's own comparison."""


def python_key(headers: Any, host: Any, names: tuple[bytes, ...]) -> bytes:
    return encode(python_pick(headers, host, names))


def random_headers(rng: random.Random) -> list[tuple[Any, Any]]:
    pool: list[Any] = [b"cookie", b"x-forwarded-for", b"user-agent", b"accept", b"Cookie",
                       b"", "cookie", None]
    values: list[Any] = [b"", b"a", b"session=s1", b"198.51.100.7", b"\x00\x01\xff" * 3,
                         "text", None, 7, bytearray(b"x")]
    return [(rng.choice(pool), rng.choice(values)) for _ in range(rng.randrange(0, 7))]


@pytest.mark.skipif(not rawkey.AVAILABLE, reason="the C helper was not built (no compiler)")
def test_the_helper_and_python_agree() -> None:
    rng = random.Random(6)
    hosts: list[Any] = [None, "127.0.0.1", "", "::1", "h\u00e9te", 17, b"127.0.0.1"]
    names_sets = [(), NAMES, (b"cookie",), (b"cookie", b"user-agent", b"x-api-key",
                                            b"x-forwarded-for")]
    declined = 0
    for _ in range(3000):
        headers: Any = random_headers(rng)
        shape = rng.randrange(3)  # as servers build them, pairs as lists, a tuple of pairs
        if shape == 1:
            headers = [list(pair) for pair in headers]
        elif shape == 2:
            headers = tuple(headers)
        host = rng.choice(hosts)
        names = rng.choice(names_sets)
        fast = rawkey.fast_key(headers, host, names)
        slow = python_key(headers, host, names)
        if fast is None:
            declined += 1  # a non-ASCII host: Python encodes it
            assert isinstance(host, str) and not host.isascii()
        else:
            assert fast == slow, (headers, host, names)
        assert rawkey.key(headers, host, names) == slow
        assert pick(headers, host, names) == python_pick(headers, host, names)
    assert 0 < declined < 1000


@pytest.mark.skipif(not rawkey.AVAILABLE, reason="the C helper was not built (no compiler)")
def test_the_helper_declines_what_it_does_not_read_itself() -> None:
    # a list or tuple of 2-tuples or 2-item lists is read here, with the same key
    plain = rawkey.fast_key([(b"cookie", b"a")], None, NAMES)
    assert plain == encode((None, b"a", None))
    assert rawkey.fast_key(((b"cookie", b"a"),), None, NAMES) == plain
    assert rawkey.fast_key([[b"cookie", b"a"]], None, NAMES) == plain
    # not a list or tuple, a pair of another size or type, a subclass of bytes: Python's path
    assert rawkey.fast_key(iter([(b"cookie", b"a")]), None, NAMES) is None
    assert rawkey.fast_key([(b"cookie", b"a", b"b")], None, NAMES) is None
    assert rawkey.fast_key([iter((b"cookie", b"a"))], None, NAMES) is None
    assert rawkey.fast_key([(Named(b"cookie"), b"a")], None, NAMES) is None
    assert rawkey.fast_key([(b"cookie", Named(b"a"))], None, NAMES) is None
    assert rawkey.fast_key([], None, tuple([b"a"] * 9)) is None
    assert rawkey.fast_key([], None, ("cookie",)) is None  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        rawkey.fast_key([], None)  # type: ignore[call-arg]
    # ...and each gives the key Python gives for the same values
    assert rawkey.key(iter([[b"cookie", b"a"]]), None, NAMES) == plain
    assert rawkey.key([(Named(b"cookie"), Named(b"a"))], None, NAMES) == rawkey.key(
        [(b"cookie", b"a")], None, NAMES)


def test_keys_are_equal_exactly_when_the_values_are() -> None:
    # Parts that a plain concatenation would run together, empty against absent, repeated
    # headers (the last wins), a value that is not bytes (no value, as the engine reads it).
    values: list[bytes | None] = [None, b"", b"a", b"ab", b"b", b"\x00", b"\x01\x00\x00\x00"]
    seen: dict[bytes, tuple[Any, ...]] = {}
    for host, v0, v1 in itertools.product([None, "", "a", "ab"], values, values):
        parts = (host, v0, v1)
        headers = [(n, v) for n, v in zip(NAMES, (v0, v1), strict=True) if v is not None]
        k = rawkey.key(headers, host, NAMES)
        assert k == encode(parts)
        assert seen.setdefault(k, parts) == parts, (k, parts, seen[k])
    assert rawkey.key([(b"cookie", b"a"), (b"cookie", b"b")], None, NAMES) == encode(
        (None, b"b", None))
    assert rawkey.key([(b"cookie", b"a"), (b"cookie", "b")], None, NAMES) == encode(
        (None, None, None))
    assert rawkey.key([(b"cookie", b"a")], 8080, NAMES) == encode((None, b"a", None))


def _scope(headers: Any, host: str = "127.0.0.1") -> dict[str, Any]:
    return {"type": "http", "path": "/", "headers": headers, "client": (host, 5000)}


def test_the_adapter_finds_one_client_per_sender() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called")

    mw = GarrisonMiddleware(app, bus=EventBus(), trusted_proxies=["127.0.0.1"])
    plain = [(b"host", b"x"), (b"x-forwarded-for", b"203.0.113.5"),
             (b"cookie", b"session=abc")]
    a = mw._client(_scope(plain))
    assert a.ip == "203.0.113.5" and a.session is not None
    assert mw._client(_scope(list(plain))) is a  # a returning client: one lookup
    assert mw._client(_scope([list(p) for p in plain])) is a  # another shape, same key
    assert mw._client(_scope(tuple(plain))) is a
    assert len(mw.engine.raw_clients) == 1
    # run together, these values would be the same text: they are two clients
    b = mw._client(_scope([(b"x-forwarded-for", b"203.0.113.5"), (b"cookie", b"")]))
    c = mw._client(_scope([(b"x-forwarded-for", b"203.0.113.5")]))
    assert b is not a and c is not a and b.session is None and c.session is None
    assert len(mw.engine.raw_clients) == 3
    # a rotating forwarding header from an untrusted peer keys apart but is one address
    untrusted = GarrisonMiddleware(app, bus=EventBus())
    ips = {untrusted._client(_scope([(b"x-forwarded-for", f"203.0.113.{i}".encode())],
                                    host="198.51.100.9")).ip for i in range(20)}
    assert ips == {"198.51.100.9"}


def test_without_the_helper_the_adapter_keys_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """A build without a C compiler: every key from Python, the same bytes, the same client."""
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called")

    headers = [(b"x-forwarded-for", b"203.0.113.8"), (b"cookie", b"session=xyz")]
    with_helper = GarrisonMiddleware(app, bus=EventBus(), trusted_proxies=["127.0.0.1"])
    a = with_helper._client(_scope(headers))
    monkeypatch.setattr(rawkey, "fast_key", rawkey._declined)
    monkeypatch.setattr(rawkey, "_fast_pick", rawkey._declined)
    without = GarrisonMiddleware(app, bus=EventBus(), trusted_proxies=["127.0.0.1"])
    b = without._client(_scope(headers))
    assert without._client(_scope(list(headers))) is b
    assert list(without.engine.raw_clients) == list(with_helper.engine.raw_clients)
    assert (b.ip, b.key, b.session, b.travel) == (a.ip, a.key, a.session, a.travel)

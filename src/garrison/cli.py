"""The ``garrison`` command: ``run`` (the daemon), ``replay`` (a capture, offline), and the
response commands (``investigate``, ``evidence``, ``block``, ``unblock``, ``blocks``)."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from garrison import __version__
from garrison.config import ConfigError, load_config
from garrison.events import Event
from garrison.sensors.pcap import CaptureFormatError


def _cidr(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an address or CIDR: {value!r}") from None


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="garrison", description="Defends a Linux host from the inside."
    )
    ap.add_argument("--version", action="version", version=f"garrison {__version__}")
    ap.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon: capture live, detect, log, respond")
    run.add_argument("--config", metavar="PATH", help="garrison.toml (default: ./garrison.toml)")
    run.add_argument("--log", metavar="PATH", help="NDJSON event log ('-' for stdout)")
    run.add_argument("--interface", "-i", metavar="NAME", action="append",
                     help="capture on this interface (repeatable; default: all)")
    run.add_argument("--home-net", metavar="CIDR", action="append", type=_cidr,
                     help="defended addresses (repeatable; default: this host's own)")
    run.add_argument("--db", metavar="PATH", help="SQLite database ('' disables)")

    rp = sub.add_parser("replay", help="run the detectors over a pcap/pcapng capture")
    rp.add_argument("file", metavar="FILE")
    rp.add_argument("--home-net", metavar="CIDR", action="append", type=_cidr,
                    help="defended addresses (repeatable; default: config, else every address)")
    rp.add_argument("--json", action="store_true", help="NDJSON events (ECS) on stdout")
    rp.add_argument("--updates", action="store_true",
                    help="every update of an episode, not only its final state")
    rp.add_argument("--config", metavar="PATH", help="garrison.toml")

    try:
        from garrison import cli_response  # type: ignore[attr-defined, unused-ignore]
    except ImportError:
        pass
    else:
        cli_response.register(sub)
    return ap


def _table(events: Sequence[Event]) -> str:
    rows = [("time", "event", "severity", "source", "what")]
    for ev in events:
        when = datetime.fromtimestamp(ev.ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
        rows.append((when, ev.name, ev.severity.label, ev.actor or "-", ev.message or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
        for r in rows
    )


def cmd_replay(args: argparse.Namespace) -> int:
    from garrison.daemon import replay

    config = load_config(args.config)
    try:
        result = replay(args.file, config, args.home_net or ())
    except FileNotFoundError:
        print(f"garrison replay: no such file: {args.file}", file=sys.stderr)
        return 2
    except CaptureFormatError as exc:
        print(f"garrison replay: {exc}", file=sys.stderr)
        return 2
    events = result.events if args.updates else result.episodes()
    if args.json:
        out = sys.stdout
        for ev in events:
            out.write(ev.to_json() + "\n")
        out.flush()
    else:
        print(_table(events) if events else "no detections")
        dropped = sum(result.stats.dropped.values())
        print(
            f"\n{result.packets} packets in {result.seconds:.2f} s"
            + (f", {dropped} frames skipped ({_fmt(result.stats.dropped)})" if dropped else ""),
        )
    return 0


def _fmt(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items()))


def cmd_run(args: argparse.Namespace) -> int:
    from garrison.daemon import build_live, run_live

    config = load_config(args.config)
    updates: dict[str, Any] = {}
    if args.home_net:
        updates["home_net"] = args.home_net
    if args.db is not None:
        updates["db"] = args.db
    if updates:
        config = config.model_copy(update=updates)
    engine, parts = build_live(config, args.log, args.interface)
    log = logging.getLogger("garrison")
    log.info(
        "garrison %s: home_net %s, log %s, db %s, plugins %s", __version__,
        ", ".join(str(n) for n in engine.config.home_net) or "-", parts["log"].path,
        config.db or "off", ", ".join(parts["plugins"]) or "none",
    )
    asyncio.run(run_live(engine, parts))
    sensor = parts["sensor"]
    log.info("stopped: %s", json.dumps(sensor.status()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "replay":
            return cmd_replay(args)
        if args.command == "run":
            return cmd_run(args)
        handler = getattr(args, "handler", None)
        if handler is not None:
            return int(handler(args))
    except ConfigError as exc:
        print(f"garrison: configuration error:\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())

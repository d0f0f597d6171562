"""``garrison investigate|evidence|block|unblock|blocks``: the response commands.

:func:`register` adds them to the ``garrison`` command's subparsers; each sets ``handler`` to a
callable taking the parsed arguments and returning the exit status (0 ok, 1 failed, 2 refused
or bad input).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from garrison.config import ConfigError, load_config, parse_duration


def _service(args: argparse.Namespace, *, firewall: bool) -> Any:
    from garrison.respond.service import ResponseService

    svc = ResponseService.from_config(load_config(args.config))
    if firewall:
        svc.start()
    return svc


def _print(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _run(args: argparse.Namespace) -> int:
    from garrison.respond.guard import BlockRefused

    try:
        return int(args.response_action(args))
    except ConfigError as exc:
        print(f"garrison: {exc}", file=sys.stderr)
        return 2
    except BlockRefused as exc:
        print(f"garrison: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"garrison: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"garrison: {exc}", file=sys.stderr)
        return 1


def _investigate(args: argparse.Namespace) -> int:
    svc = _service(args, firewall=False)
    try:
        _print(svc.investigate(args.ip))
    finally:
        svc.close()
    return 0


def _evidence(args: argparse.Namespace) -> int:
    from garrison.forensics import to_stix

    svc = _service(args, firewall=False)
    try:
        bundle = svc.collect_evidence(args.ip)
    finally:
        svc.close()
    doc = to_stix(bundle) if args.format == "stix" else bundle
    text = json.dumps(doc, indent=2, default=str) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.format} evidence for {bundle['metadata']['target_ip']} "
              f"to {args.output}", file=sys.stderr)
    return 0


def _block(args: argparse.Namespace) -> int:
    duration = parse_duration(args.duration) if args.duration is not None else None
    svc = _service(args, firewall=True)
    try:
        rec = svc.block(args.ip, duration, reason=args.reason)
    finally:
        svc.close()
    dry = " (dry run)" if rec.dry_run else ""
    print(f"blocked {rec.ip} for {rec.duration:.0f} s (offence {rec.offences}, "
          f"{rec.backend}){dry}")
    return 0


def _unblock(args: argparse.Namespace) -> int:
    svc = _service(args, firewall=True)
    try:
        was = svc.unblock(args.ip)
    finally:
        svc.close()
    print(f"unblocked {args.ip}" if was else f"{args.ip} was not blocked")
    return 0


def _blocks(args: argparse.Namespace) -> int:
    svc = _service(args, firewall=False)
    try:
        rows = svc.blocks()
    finally:
        svc.close()
    if args.json:
        _print(rows)
        return 0
    if not rows:
        print("no active blocks")
    for r in rows:
        dry = " dry-run" if r["dry_run"] else ""
        print(f"{r['ip']:<40} {r['remaining']:>10.0f} s  offence {r['offences']}  "
              f"{r['reason']}{dry}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the response commands to ``garrison``'s subparsers."""

    def add(name: str, help_: str, action: Any) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, help=help_, description=help_)
        p.add_argument("--config", metavar="PATH", default=None,
                       help="garrison.toml to use (default: $GARRISON_CONFIG or ./garrison.toml)")
        p.set_defaults(handler=_run, response_action=action)
        return p

    p = add("investigate", "everything Garrison knows about an address (JSON)", _investigate)
    p.add_argument("ip")
    p = add("evidence", "write an evidence bundle about an address", _evidence)
    p.add_argument("ip")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="'-' for stdout")
    p.add_argument("--format", choices=("json", "stix"), default="json",
                   help="json: Garrison's bundle; stix: a STIX 2.1 bundle")
    p = add("block", "block an address now", _block)
    p.add_argument("ip")
    p.add_argument("--for", dest="duration", metavar="DURATION", default=None,
                   help="e.g. 30m, 1h, 2d (default: firewall.block_duration, escalating)")
    p.add_argument("--reason", default="manual (garrison block)")
    p = add("unblock", "lift the block on an address now", _unblock)
    p.add_argument("ip")
    p = add("blocks", "list the blocks in force", _blocks)
    p.add_argument("--json", action="store_true")

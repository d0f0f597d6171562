"""OWASP CRS regression cases for rule file 942 (SQL injection), run in-process.

The cases of the CRS rules that run at CRS paranoia level 1 were transcribed from the CRS
regression-test YAML files into ``tests/data/guards/crs/942-pl1.jsonl`` (see the README there
for provenance and licence). Each case is a request; the values a web application would see
(query and form arguments and their names, JSON keys and strings, XML attribute values and text,
path segments, the one header case) are passed to ``sqli.inspect`` one by one, as the web
middleware does, and the case counts as detected when any value is flagged.

CRS "should pass" (``no_expect_ids``) means only that one rule must not fire; several of those
cases are attacks left to other rules (942360 tests 29-31 are an Oracle ``DBMS_LDAP`` call, a
``pg_sleep`` subquery and a sqlmap ``UNION ALL SELECT``). They are reported both ways.
"""

from __future__ import annotations

import json
import urllib.parse
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from garrison.guards import sqli

CASES = Path(__file__).resolve().parents[1] / "data" / "guards" / "crs" / "942-pl1.jsonl"
ATTACKS_AMONG_PASS = {(942360, 29), (942360, 30), (942360, 31)}


def _json_strings(doc: Any) -> Iterator[str]:
    if isinstance(doc, str):
        yield doc
    elif isinstance(doc, dict):
        for k, v in doc.items():
            yield k
            yield from _json_strings(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from _json_strings(v)


def values(case: dict[str, Any]) -> list[str]:
    """The values of one CRS case as an application would receive them."""
    raw: str = case["raw"]
    kind = case["in"]
    if kind == "uri":
        path, _, query = raw.partition("?")
        out = [urllib.parse.unquote(s) for s in path.split("/") if s]
        for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
            out += [name, value]
        return [v for v in out if v]
    if kind == "form":
        out = []
        for name, value in urllib.parse.parse_qsl(raw, keep_blank_values=True):
            out += [name, value]
        return [v for v in out if v] or [raw]
    if kind == "json":
        return list(_json_strings(json.loads(raw)))
    if kind == "xml":
        root = ET.fromstring(raw)
        out = []
        for el in root.iter():
            out += list(el.attrib.values())
            if el.text and el.text.strip():
                out.append(el.text)
        return out
    if kind == "header":
        return [urllib.parse.unquote(raw)]
    return [raw]


def _load() -> list[dict[str, Any]]:
    return [json.loads(line) for line in CASES.read_text(encoding="utf-8").splitlines() if line]


def test_crs_942_paranoia_1_cases(capsys: pytest.CaptureFixture[str]) -> None:
    cases = _load()
    assert len(cases) >= 200
    lines = []
    rates = {}
    for paranoia in (1, 2, 3, 4):
        blocked = passed = nb = np_ = 0
        per_rule: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        missed = []
        for case in cases:
            hit = any(sqli.inspect(v, paranoia) is not None for v in values(case))
            if case["expect"] == "block":
                nb += 1
                blocked += hit
                per_rule[case["rule"]][0] += hit
                per_rule[case["rule"]][1] += 1
                if not hit:
                    missed.append(f"{case['rule']}-{case['test']}")
            else:
                np_ += 1
                passed += not hit
        rates[paranoia] = (blocked / nb, passed / np_)
        lines.append(
            f"CRS 942 (rules of CRS PL1), sqli paranoia {paranoia}: detected {blocked}/{nb} "
            f"should-block ({100 * blocked / nb:.1f}%), passed {passed}/{np_} should-pass "
            f"({100 * passed / np_:.1f}%)"
        )
        if paranoia == 1:
            lines.append("  per rule (detected/cases): " + ", ".join(
                f"{rule}: {d}/{t}" for rule, (d, t) in sorted(per_rule.items())))
            lines.append("  missed at paranoia 1: " + " ".join(missed))
    genuine = [c for c in cases if c["expect"] == "pass"
               and (c["rule"], c["test"]) not in ATTACKS_AMONG_PASS]
    benign_ok = sum(
        1 for c in genuine if not any(sqli.inspect(v) is not None for v in values(c)))
    lines.append(f"  should-pass cases that are not attacks: {benign_ok}/{len(genuine)} pass "
                 f"at paranoia 1")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    # The floor at paranoia 1: at least 98% of the should-block cases detected.
    assert rates[1][0] >= 0.98
    assert rates[2][0] >= rates[1][0]
    assert benign_ok == len(genuine)

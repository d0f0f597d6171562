"""OWASP CRS regression cases for SQL injection (rule file 942), run in-process.

The cases were transcribed from the CRS regression-test YAML files into
``tests/data/guards/crs/942-pl1.jsonl`` (the rules CRS runs at its paranoia level 1) and
``942-pl2-4.jsonl`` (the rules of CRS paranoia levels 2-4); see the README there for
provenance, versions and licence. Each case is a request; the values a web application would
see (query and form arguments and their names, JSON keys and strings, XML attribute values and
text, path segments, cookie names and values, the header value) are passed to ``sqli.inspect``
one by one, as the web middleware does, and the case counts as detected when any value is
flagged.

Figures are printed per Garrison paranoia level 1..4 for three sets: the cases of CRS's
paranoia-1 rules (what the issue's floor is about), the cases of the rules CRS runs at a
paranoia level up to the same number (CRS at PL n runs the rules of PL 1..n), and all cases.

CRS "should pass" (``no_expect_ids`` / ``no_log_contains``) means only that one rule must not
fire on the case; several of them are attacks left to other rules (a sqlmap ``UNION ALL
SELECT``, ``'or'1``...). :data:`ATTACKS_AMONG_PASS` lists those, with the reason; the pass rate
is printed both raw and over the genuinely benign should-pass cases.
"""

from __future__ import annotations

import json
import urllib.parse
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from garrison.guards import sqli

DATA = Path(__file__).resolve().parents[1] / "data" / "guards" / "crs"
FILES = (DATA / "942-pl1.jsonl", DATA / "942-pl2-4.jsonl")

# (rule, test) of should-pass cases that are SQL injection all the same (judged by hand; the
# CRS test only says that its own rule must not fire on them).
ATTACKS_AMONG_PASS: dict[tuple[int, int], str] = {
    (942360, 29): "Oracle DBMS_LDAP.INIT subquery concatenated with ||",
    (942360, 30): "'||(select(pg_sleep(15))...)||' time delay",
    (942360, 31): "sqlmap UNION ALL SELECT NULL,... -- probe",
    (942101, 10): "9'union all: quote break-out then UNION (incomplete)",
    (942101, 11): "24 union all select 1,2,3 from aa",
    (942120, 30): "user'collate foo-- quote break-out truncated by a comment",
    (942210, 26): ";set @ stacked SET of a variable",
    (942521, 15): "\\'lol' or '1 escaped-quote OR bypass",
    (942522, 5): "'or'1 authentication bypass",
}


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
    if kind == "cookie":
        out = []
        for part in raw.split(";"):
            name, _, value = part.strip().partition("=")
            out += [urllib.parse.unquote(name), urllib.parse.unquote(value)]
        return [v for v in out if v]
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
    cases = []
    for path in FILES:
        text = path.read_text(encoding="utf-8")
        cases += [json.loads(line) for line in text.splitlines() if line]
    return cases


Rates = tuple[int, int, int, int, int, int]  # blocked, n_block, passed, n_pass, benign ok, n


def _rates(cases: list[dict[str, Any]], hits: dict[tuple[int, int], bool]) -> Rates:
    blocked = nb = passed = np_ = benign_ok = nbenign = 0
    for case in cases:
        hit = hits[(case["rule"], case["test"])]
        if case["expect"] == "block":
            nb += 1
            blocked += hit
        else:
            np_ += 1
            passed += not hit
            if (case["rule"], case["test"]) not in ATTACKS_AMONG_PASS:
                nbenign += 1
                benign_ok += not hit
    return blocked, nb, passed, np_, benign_ok, nbenign


def _fmt(label: str, r: Rates) -> str:
    blocked, nb, passed, np_, benign_ok, nbenign = r
    return (f"  {label:<22} detected {blocked:>3}/{nb:<3} ({100 * blocked / nb:5.1f}%), "
            f"passed {passed:>3}/{np_:<3} ({100 * passed / np_:5.1f}%), "
            f"benign passed {benign_ok}/{nbenign} ({100 * benign_ok / nbenign:5.1f}%)")


def test_crs_942_by_paranoia_level(capsys: pytest.CaptureFixture[str]) -> None:
    cases = _load()
    keys = [(c["rule"], c["test"]) for c in cases]
    assert len(set(keys)) == len(keys) and len(cases) >= 790
    assert all(k in set(keys) for k in ATTACKS_AMONG_PASS)
    subsets: dict[str, Callable[[dict[str, Any], int], bool]] = {
        "CRS-PL1 rules": lambda c, p: c["paranoia"] == 1,
        "CRS-PL<=n rules": lambda c, p: c["paranoia"] <= p,
        "all 942 cases": lambda c, p: True,
    }
    lines = []
    rates: dict[tuple[str, int], Rates] = {}
    for paranoia in (1, 2, 3, 4):
        hits = {
            (c["rule"], c["test"]): any(sqli.inspect(v, paranoia) is not None for v in values(c))
            for c in cases
        }
        lines.append(f"CRS 942, sqli paranoia {paranoia} (n = {paranoia}):")
        for label, keep in subsets.items():
            r = _rates([c for c in cases if keep(c, paranoia)], hits)
            rates[(label, paranoia)] = r
            lines.append(_fmt(label, r))
        if paranoia == 1:
            per_rule: dict[int, list[int]] = defaultdict(lambda: [0, 0])
            for c in cases:
                if c["expect"] == "block":
                    per_rule[c["rule"]][0] += hits[(c["rule"], c["test"])]
                    per_rule[c["rule"]][1] += 1
            lines.append("  per rule at paranoia 1 (detected/cases): " + ", ".join(
                f"{rule}: {d}/{t}" for rule, (d, t) in sorted(per_rule.items())))
            lines.append("  CRS-PL1 cases missed at paranoia 1: " + " ".join(
                f"{c['rule']}-{c['test']}" for c in cases
                if c["paranoia"] == 1 and c["expect"] == "block"
                and not hits[(c["rule"], c["test"])]))
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    # The floor, on the cases of the rules CRS runs at its paranoia level 1: at least
    # 98% of the should-block cases detected at paranoia 1, and at least 95% of the should-pass
    # cases passing -- asserted over the benign ones, because three of the 28 raw should-pass
    # cases are attacks (ATTACKS_AMONG_PASS) that a detector must flag.
    blocked, nb, _, _, benign_ok, nbenign = rates[("CRS-PL1 rules", 1)]
    assert blocked / nb >= 0.98
    assert benign_ok / nbenign >= 0.95
    # On all cases, benign should-pass cases keep passing at paranoia 1; detection of all cases
    # at paranoia 1 (most of them are for CRS's paranoia 2-4 rules) is held at its measure.
    blocked, nb, _, _, benign_ok, nbenign = rates[("all 942 cases", 1)]
    assert benign_ok / nbenign >= 0.95
    assert blocked / nb >= 0.46
    # Regression floors at the measured figures for the higher levels, on the cases of the rules
    # CRS itself runs at that level (CRS-PL<=n).
    for p, floor in ((2, 0.83), (3, 0.86), (4, 0.87)):
        blocked, nb, *_ = rates[("CRS-PL<=n rules", p)]
        assert blocked / nb >= floor, (p, blocked, nb)
    # Higher paranoia never detects less.
    for label in subsets:
        if label != "CRS-PL<=n rules":
            for p in (2, 3, 4):
                assert rates[(label, p)][0] >= rates[(label, p - 1)][0]

"""SQL-injection detection on inputs: public corpora, a benign corpus, and the lexer."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import pytest

from garrison.guards import sqli
from garrison.guards.sqllex import tokenize

DATA = Path(__file__).resolve().parents[1] / "data" / "guards"
LIBINJECTION = DATA / "libinjection"


def _lines(path: Path) -> list[str]:
    out = []
    with path.open(encoding="utf-8", errors="surrogateescape") as fh:
        for raw in fh:
            line = raw.rstrip("\r\n")
            if line and not line.startswith("#"):
                out.append(urllib.parse.unquote_plus(line, errors="surrogateescape"))
    return out


def _attacks() -> list[str]:
    lines: list[str] = []
    for path in sorted(LIBINJECTION.glob("sqli-*.txt")):
        lines.extend(_lines(path))
    return lines


def test_libinjection_corpus_floors(capsys: pytest.CaptureFixture[str]) -> None:
    attacks = _attacks()
    benign = _lines(LIBINJECTION / "false_positives.txt")
    assert len(attacks) > 17_000 and len(benign) > 400
    figures = []
    for paranoia in (1, 2, 3, 4):
        missed = sum(1 for line in attacks if sqli.inspect(line, paranoia) is None)
        flagged = sum(1 for line in benign if sqli.inspect(line, paranoia) is not None)
        figures.append((paranoia, missed, flagged))
    with capsys.disabled():
        for paranoia, missed, flagged in figures:
            print(
                f"\nlibinjection corpus, paranoia {paranoia}: missed {missed}/{len(attacks)} "
                f"attacks ({100 * missed / len(attacks):.2f}%), flagged {flagged}/{len(benign)} "
                f"false-positive lines ({100 * flagged / len(benign):.2f}%)"
            )
    _, missed1, flagged1 = figures[0]
    assert missed1 / len(attacks) <= 0.01
    assert flagged1 / len(benign) <= 0.05


def test_benign_corpus_under_half_a_percent(capsys: pytest.CaptureFixture[str]) -> None:
    benign = [
        line.rstrip("\n")
        for line in (DATA / "benign_inputs.txt").read_text(encoding="utf-8").splitlines()
    ]
    assert len(benign) >= 1000
    flagged = [(line, f) for line in benign if (f := sqli.inspect(line)) is not None]
    with capsys.disabled():
        print(f"\nbenign corpus, paranoia 1: flagged {len(flagged)}/{len(benign)} "
              f"({100 * len(flagged) / len(benign):.2f}%)")
        for line, finding in flagged:
            print(f"  flagged: {line!r}: {finding.reason}")
    assert len(flagged) / len(benign) < 0.005


@pytest.mark.parametrize(
    ("value", "context"),
    [
        ("1' OR '1'='1", "single-quote"),
        ("admin'--", "single-quote"),
        ("admin'#", "single-quote"),
        ("x\" or \"a\"=\"a\" --", "double-quote"),
        ("1 UNION ALL SELECT username, password FROM users--", "value"),
        ("-1 union/**/select 1,2,@@version", "value"),
        ("1; DROP TABLE users--", "value"),
        ("1 AND SLEEP(5)", "value"),
        ("1' AND (SELECT 1 FROM pg_sleep(5))--", "single-quote"),
        ("'; WAITFOR DELAY '0:0:5'--", "single-quote"),
        ("1 /*!50000UNION*/ SELECT 1", "value"),
        ("x' ORDER BY 3--", "single-quote"),
        ("1 AND 1=1", "value"),
        ("') OR ('a'='a", "single-quote"),
        ("1' INTO OUTFILE '/var/www/shell.php'--", "single-quote"),
    ],
)
def test_attacks_are_flagged_with_fingerprint_and_reason(value: str, context: str) -> None:
    finding = sqli.inspect(value)
    assert finding is not None, value
    assert finding.fingerprint and finding.reason and finding.paranoia == 1
    assert finding.context == context or context == "value"


@pytest.mark.parametrize(
    "value",
    [
        "sleep_hours",
        "sleep_hours(5)",
        "benchmark_results(2024)",
        "my_sleep(3)",
        "O'Brien",
        "Rock 'n' roll -- the best",
        "select your size",
        "Union Street 5, Dublin",
        "drop-down menu",
        "1-1",
        "24-7-TEAM",
        "user_version()",
        '{"query": "shoes", "order": "price"}',
        "",
    ],
)
def test_benign_inputs_pass(value: str) -> None:
    assert sqli.inspect(value) is None


def test_dangerous_functions_match_tokens_not_substrings() -> None:
    # `1 and f(5)=1` is a logic break-out whatever f is; the reason must not be a sleep call.
    finding = sqli.inspect("1 and sleep_hours(5)=1")
    assert finding is not None and "SLEEP" not in finding.reason
    assert sqli.inspect("sleep_hours(5)") is None
    assert sqli.inspect("sleep (8 hours)") is None
    plain = sqli.inspect("1 + sleep(5)")
    assert plain is not None and "SLEEP" in plain.reason


def test_paranoia_levels_widen_reach() -> None:
    assert sqli.inspect("1 or 1") is None
    assert sqli.inspect("1 or 1", paranoia=2) is not None
    encoded = "%27%20or%20%271%27%3D%271"
    assert sqli.inspect(encoded) is None
    assert sqli.inspect(encoded, paranoia=3) is not None
    with pytest.raises(ValueError, match="paranoia"):
        sqli.inspect("x", paranoia=5)


def test_bytes_and_long_inputs() -> None:
    assert sqli.inspect(b"1' or '1'='1") is not None
    padded = "a" * (sqli.MAX_INPUT + 10) + "' or 1=1--"
    assert sqli.inspect(padded) is None  # beyond the inspected length
    assert sqli.inspect(" " * 4000 + "1' or 1=1--") is not None


def test_tokenizer_understands_sql_lexically() -> None:
    types = "".join(t.type for t in tokenize("SELECT a.b, 'it''s', $$x$$ FROM t -- c"))
    assert types == "En,s,sknc"
    assert [t.type for t in tokenize("/*!50000union*/ select")] == ["U", "E"]
    assert [t.type for t in tokenize("1 ORDER BY 2")] == ["1", "B", "1"]
    assert [t.type for t in tokenize("x UNION ALL SELECT")] == ["n", "U", "E"]
    assert [t.type for t in tokenize("sleep (5)")] == ["f", "(", "1", ")"]
    assert [t.type for t in tokenize("sleep_hours (5)")] == ["n", "(", "1", ")"]
    assert [t.type for t in tokenize("@@version || 'a'")] == ["v", "&", "s"]
    assert [t.type for t in tokenize("N'x' X'4142' E'\\n'")] == ["s", "s", "s"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("pg_catalog", "catalog"),
        ("tempdb", "catalog"),
        ("4294967296", "boundary"),
        ("u_id[$ne]", "MongoDB"),
        ("$where", "MongoDB"),
        ("1.e(ascii)", "1.e"),
        ("database(", "information function"),
        (") like (", "LIKE"),
        ("if(2=", "IF("),
        ("div(23,-2)", "DIV("),
        (";truncate[xx", "leading ';'"),
        ("/CREATE TABLE Persons", "CREATE TABLE"),
        ("` REGEXP ", "REGEXP"),
        ("admin@example.org';", "terminated"),
        ("x' sleep(20.to_i) '", "SLEEP"),
        ('" | type config.ini | "', "concatenation"),
        ("'select H", "SELECT"),
        (" case when c1 then r1", "CASE WHEN"),
        ("BENCHMARK(2999/**/999,Md5(NoW()", "BENCHMARK"),
    ],
)
def test_targeted_rules_flag_with_reason(value: str, reason: str) -> None:
    """The narrow rules for what CRS's paranoia-1 rules catch that is not a full SQL shape."""
    finding = sqli.inspect(value)
    assert finding is not None, value
    assert reason in finding.reason, finding.reason


@pytest.mark.parametrize(
    "value",
    [
        "Northwind Traders annual report",
        "my tempdb is full, how do I shrink it?",
        "price in $ne",
        "costs $in cash",
        "4294967297",
        "version 1.2.3",
        "Fig. 1.e shows the result",
        "the database (production) is down",
        "if(x==1) { return; }",
        "if (ready) start()",
        "see div (2 columns)",
        "; update your profile today",
        "We create table layouts in CSS",
        '"select comfort mattress"',
        "in case when it rains then stay home",
        "I'd like (a lot) of that",
        "benchmark results (2024)",
        "sleep_hours",
    ],
)
def test_targeted_rules_leave_prose_alone(value: str) -> None:
    assert sqli.inspect(value) is None, sqli.inspect(value)


@pytest.mark.parametrize(
    "value",
    [
        "HAVING 1>1",
        " HAVING COUNT(CustomerID) > 5",
        "AND 2771=1709)",
        "pay=AND 2771=1709)",
        "xor 2 <",
        "test' or 1=",
        ") AS orders FROM",
        "FROM `information_schema`.tables limit",
        "execute php",
        "concat (",
        "1=1",
        "11!=1",
        "xp_cmdshell",
        "\u2018 or 1=1-- -",
        "\\'or'1",
        "DROP sampletable;--",
    ],
)
def test_paranoia_2_fragments(value: str) -> None:
    """SQL fragments CRS flags at its paranoia level 2: flagged from Garrison's paranoia 2."""
    finding = sqli.inspect(value, paranoia=2)
    assert finding is not None, value
    assert finding.reason


@pytest.mark.parametrize(
    "value",
    ["having fun", "div role=\"button\"", "exec summary template", "123<456", "11=1",
     "order by price", "mother or daughter", "time is money", "pay=weekly"],
)
def test_paranoia_2_fragments_leave_prose_alone(value: str) -> None:
    assert sqli.inspect(value, paranoia=2) is None, sqli.inspect(value, paranoia=2)

"""Path traversal in all encodings, safe_join on a real directory tree, DSN injection."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from garrison.guards import paths


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("../etc/passwd", "'..'"),
        ("a/../../b", "'..'"),
        ("..", "'..'"),
        ("%2e%2e/etc", "'..'"),
        ("%2e%2e%2fetc", "'..'"),
        ("..%2f..%2fetc", "'..'"),
        ("%252e%252e%252fetc", "'..'"),  # double-encoded
        ("%25252e%25252e%25252f", "'..'"),  # triple-encoded
        ("%u002e%u002e/etc", "'..'"),  # IIS %u escapes
        ("..%c0%afetc", "overlong"),  # overlong '/'
        ("%c0%ae%c0%ae/etc", "overlong"),  # overlong '.'
        ("%e0%80%ae%e0%80%ae/", "overlong"),  # 3-byte overlong '.'
        ("..\\windows\\win.ini", "backslash"),
        ("..%5cwindows", "backslash"),
        ("/etc/passwd", "absolute"),
        ("%2fetc%2fpasswd", "absolute"),
        ("C:\\boot.ini", "backslash"),
        ("C:/boot.ini", "drive"),
        ("\\\\server\\share", "backslash"),
        ("~root/.ssh", "home"),
        ("report.pdf\x00.png", "NUL"),
        ("report.pdf%00.png", "NUL"),
        ("\uff0e\uff0e\uff0fetc", "'..'"),  # fullwidth ../
        ("file\nname", "control"),
    ],
)
def test_traversal_in_every_encoding(value: str, reason: str) -> None:
    finding = paths.find_traversal(value)
    assert finding is not None, value
    assert reason in finding.reason


def test_overlong_utf8_in_raw_bytes() -> None:
    finding = paths.find_traversal(b"..\xc0\xafetc")
    assert finding is not None and "overlong" in finding.reason


@pytest.mark.parametrize(
    "value", ["report.pdf", "a/b/c.txt", "my..file.txt", "notes 2024-01.md", "%20space.txt",
              "caf\u00e9.txt", ".hidden", "v1.2.3/readme"],
)
def test_ordinary_names_pass(value: str) -> None:
    assert paths.find_traversal(value) is None


def test_single_file_name_mode() -> None:
    assert paths.find_traversal("a/b", allow_subdirs=False) is not None
    assert paths.find_traversal("a.txt", allow_subdirs=False) is None


def test_safe_join_inside_and_outside(tmp_path: Path) -> None:
    base = tmp_path / "uploads"
    (base / "docs").mkdir(parents=True)
    (base / "docs" / "a.txt").write_text("a")
    (tmp_path / "secret.txt").write_text("s")
    joined = paths.safe_join(base, "docs", "a.txt")
    assert joined.read_text() == "a"
    assert joined == (base / "docs" / "a.txt").resolve()
    for bad in ("../secret.txt", "%2e%2e/secret.txt", "/etc/passwd", "docs/../../secret.txt"):
        with pytest.raises(paths.PathTraversal):
            paths.safe_join(base, bad)


def test_safe_join_refuses_symlink_escape(tmp_path: Path) -> None:
    base = tmp_path / "uploads"
    base.mkdir()
    (tmp_path / "secret.txt").write_text("s")
    os.symlink(tmp_path, base / "link")
    with pytest.raises(paths.PathTraversal, match="escapes"):
        paths.safe_join(base, "link", "secret.txt")


@pytest.mark.parametrize(
    ("value", "style"),
    [
        ("mydb password=x", "libpq"),
        ("mydb\tsslmode=disable", "libpq"),
        ("x' host=evil", "libpq"),
        ("db;Trusted_Connection=yes", "odbc"),
        ("{db}", "odbc"),
        ("user@evil.example", "url"),
        ("db?sslmode=disable", "url"),
        ("pass:word", "url"),
        ("db/../other", "url"),
        ("db%00", "url"),
        ("db\x00", "libpq"),
    ],
)
def test_dsn_injection_refused(value: str, style: paths.DSNStyle) -> None:
    with pytest.raises(paths.DSNInjection):
        paths.check_dsn_value(value, style)


@pytest.mark.parametrize("style", ["libpq", "odbc", "url"])
def test_dsn_plain_values_pass(style: paths.DSNStyle) -> None:
    assert paths.check_dsn_value("app_db-01", style) == "app_db-01"

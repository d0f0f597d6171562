"""The compiled build of the web request path (setup.py, mypyc) and its pure-Python twin.

The same source runs either way; these tests hold the two to the same behaviour (the web suite
runs once more in a pure-Python interpreter when this one is compiled) and check that a stale
build is never used.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from garrison import _native

ROOT = Path(__file__).resolve().parent.parent


def test_the_compiled_modules_are_all_or_none() -> None:
    import garrison.web.asgi
    import garrison.web.engine

    kinds = {m.__file__.endswith(".py") for m in (garrison.web.engine, garrison.web.asgi)
             if m.__file__}
    assert kinds == {not _native.COMPILED}


@pytest.mark.skipif(not _native.COMPILED, reason="this interpreter runs the pure Python already")
def test_the_web_suite_passes_in_pure_python() -> None:
    env = {**os.environ, "GARRISON_PURE": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         "tests/web"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout


def test_a_changed_source_is_not_shadowed_by_an_old_build(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    stamp = tmp_path / "_native.txt"
    current = "".join(
        f"{m} {hashlib.sha256(_native.source_path(m).read_bytes()).hexdigest()}\n"
        for m in _native.NATIVE)
    monkeypatch.setattr(_native, "_STAMP", stamp)
    monkeypatch.setattr(_native, "_built", lambda module: True)  # as if a build were there
    monkeypatch.delenv("GARRISON_PURE", raising=False)
    stamp.write_text(current)
    assert _native._decide() == (True, "")
    stamp.write_text(current.replace(current.split()[1], "0" * 64, 1))
    ok, why = _native._decide()
    assert not ok and "changed since it was compiled" in why
    stamp.unlink()
    assert _native._decide()[0] is False  # a build with no stamp is not trusted either
    stamp.write_text(current)
    monkeypatch.setenv("GARRISON_PURE", "1")
    assert _native._decide() == (False, "GARRISON_PURE=1")

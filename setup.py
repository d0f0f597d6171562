"""Build script: compiles the web middleware's request path with mypyc when it can.

Everything else about the package is declared in pyproject.toml. The modules in ``NATIVE`` are
compiled to C extensions by mypyc: the same source, type-checked, no second implementation
(docs/benchmarks/web.md says what it buys). When mypyc or a C compiler is missing, or
``GARRISON_PURE=1`` is set, the package is pure Python and behaves the same, only slower.
``garrison._acyclic`` and ``garrison._rawkey`` (a few lines of C each, see garrison/acyclic.py
and garrison/web/rawkey.py) are built alongside whenever a C compiler is there.

After a successful build, ``garrison/_native.txt`` records the sha256 of every compiled source;
``garrison/_native.py`` loads compiled modules only while their sources still match, so an
edited source is never shadowed by an old build.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
STAMP = "garrison/_native.txt"


def native_modules() -> tuple[str, ...]:
    """The dotted names to compile, from garrison/_native.py (the list is kept there)."""
    spec = importlib.util.spec_from_file_location("_garrison_native",
                                                  ROOT / "src" / "garrison" / "_native.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return tuple(module.NATIVE)


NATIVE = native_modules()


def source(module: str) -> Path:
    return ROOT / "src" / (module.replace(".", "/") + ".py")


def stamp_text() -> str:
    """One line per compiled module: its dotted name and the sha256 of its source."""
    return "".join(f"{m} {hashlib.sha256(source(m).read_bytes()).hexdigest()}\n"
                   for m in NATIVE)


def native_extensions() -> list[object]:
    if os.environ.get("GARRISON_PURE") == "1":
        print("garrison: GARRISON_PURE=1, building pure Python", file=sys.stderr)
        return []
    # A few lines of C of our own (garrison/acyclic.py, garrison/web/rawkey.py): they need a
    # compiler, not mypyc.
    own = [Extension("garrison._acyclic", ["src/garrison/_acyclic.c"]),
           Extension("garrison._rawkey", ["src/garrison/_rawkey.c"])]
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("garrison: mypyc not available, compiling only garrison's own C helpers",
              file=sys.stderr)
        return own
    try:
        # The project's own mypy settings (strict, the pydantic plugin) need the whole
        # environment installed; code generation needs none of that, so compile with a
        # neutral configuration in which anything not installed here is simply Any.
        compiled = mypycify([*(str(source(m).relative_to(ROOT)) for m in NATIVE),
                             "--config-file", os.devnull, "--ignore-missing-imports",
                             "--follow-imports=silent"],
                            opt_level="3", target_dir=str(ROOT / "build" / "mypyc"))
        return [*compiled, *own]
    except BaseException as exc:  # a type error or a missing tool: the pure package works
        print(f"garrison: mypyc failed ({exc!r}); compiling only garrison's own C helpers",
              file=sys.stderr)
        return own


class OptionalBuildExt(build_ext):
    """Builds the compiled modules, or none of them: a failed compile leaves a working pure
    package. Writes the source stamp next to what it built."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, missing headers, ...
            print(f"garrison: compiling failed ({exc}); the package is pure Python",
                  file=sys.stderr)
            for ext in self.extensions:
                out = Path(self.get_ext_fullpath(ext.name))
                if out.exists():
                    out.unlink()
            return
        if not self.extensions:
            return
        base = ROOT / "src" if self.inplace else Path(self.build_lib)
        (base / STAMP).write_text(stamp_text())


setup(ext_modules=native_extensions(), cmdclass={"build_ext": OptionalBuildExt})

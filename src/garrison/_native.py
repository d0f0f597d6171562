"""Which implementation of the compiled modules to load: mypyc's build, or their source.

``setup.py`` compiles the web middleware's request path (:data:`NATIVE`) with mypyc when it
can and records the sha256 of each compiled source in ``_native.txt``. The build is used only
while every recorded hash still matches the source beside it and ``GARRISON_PURE`` is not
``1``; otherwise every one of them is loaded from source (with a warning when a build is there
but stale). All or none, because compiled modules call each other directly: a mix would hold
two incompatible copies of the same classes.

:data:`COMPILED` says which it is; ``reason`` why not, when not.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

NATIVE: tuple[str, ...] = (
    "garrison.web.behaviour",
    "garrison.store.records",
    "garrison.store.memory",
    "garrison.web.engine",
    "garrison.web.asgi",
    "garrison.store.redis",  # a round trip's own Python: about 10 us less per call compiled
)
"""The modules setup.py compiles (read from here, so the list is kept in one place)."""

_PACKAGE = Path(__file__).resolve().parent
_STAMP = _PACKAGE / "_native.txt"
COMPILED = False
reason = "not decided yet"


def source_path(module: str) -> Path:
    """The ``.py`` file of ``module`` (one of :data:`NATIVE`)."""
    return _PACKAGE.parent.joinpath(*module.split(".")).with_suffix(".py")


def _built(module: str) -> bool:
    path = source_path(module)
    return any(path.with_suffix(suffix).exists()
               for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def _decide() -> tuple[bool, str]:
    """(use the compiled build, why not)."""
    if not any(_built(m) for m in NATIVE):
        return False, "no compiled build (pure Python install)"
    if os.environ.get("GARRISON_PURE") == "1":
        return False, "GARRISON_PURE=1"
    try:
        recorded = dict(line.split() for line in _STAMP.read_text().splitlines() if line)
    except (OSError, ValueError):
        return False, f"{_STAMP.name} is missing or unreadable"
    for module in NATIVE:
        try:
            digest = hashlib.sha256(source_path(module).read_bytes()).hexdigest()
        except OSError:
            continue  # a build shipped without its source: nothing to compare
        if recorded.get(module) != digest or not _built(module):
            return False, f"{module} changed since it was compiled"
    return True, ""


class _FromSource(importlib.abc.MetaPathFinder):
    """Finds the :data:`NATIVE` modules as source files, ahead of their compiled build."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname not in NATIVE:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


def install() -> None:
    """Decide once, before any of :data:`NATIVE` is imported (``garrison/__init__`` calls it)."""
    global COMPILED, reason
    COMPILED, reason = _decide()
    if COMPILED or not any(_built(m) for m in NATIVE):
        return
    if any(m in sys.modules for m in NATIVE):
        return  # too late to choose (imported before the package): leave things as they are
    if reason != "GARRISON_PURE=1":
        warnings.warn(f"garrison: using the source of the compiled modules ({reason}); "
                      "run scripts/setup to rebuild them", RuntimeWarning, stacklevel=3)
    sys.meta_path.insert(0, _FromSource())

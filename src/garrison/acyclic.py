"""Per-client state kept out of the cyclic garbage collector.

CPython's cyclic GC walks every container object it tracks: young ones often, all of them in a
full collection, which runs once the objects that survived into the oldest generation since
the last one reach a quarter of it. The web engine keeps several objects per client (a
:class:`~garrison.web.engine.Client`, the records of its identities, its prepared decision and
verdict, its session binding): with 120,000 clients that was about 800,000 tracked objects, and
with ``redis://``, where renewals build new decisions all the time, a full collection every
several seconds that stopped the server for about half a second (0.49 s in-process), and the
collector was the largest single item a sampled profile of the server added (10.5 us of
43.8 us per request).

None of these objects can be part of a reference cycle: they refer only to text, numbers and to
each other in one direction (client -> records, decision -> verdict -> components), so
reference counting alone frees them, and tracking them buys nothing. :func:`untrack` takes one
out of the collector, as CPython itself does for tuples and dicts that hold only atomic values.
The rule for a caller: only an object that can never be part of a cycle, through anything it
refers to now or later (``tests/web/test_acyclic.py`` walks the engine's objects and fails on
a cycle). An object that is not tracked refers to objects the collector still tracks without
the collector seeing it, which can only keep them alive longer, never free them early.

Only types whose deallocator copes with an object that is not tracked are untracked (freeing one
that is not, CPython's own ``mappingproxy`` for one, would corrupt memory): exact tuples and
dicts, classes made by a class statement (named tuples, and the compiled classes when the
package runs as pure Python), and the types registered with :func:`allow` (the mypyc-compiled
classes: their generated deallocators use the checked call). :func:`untrack` leaves anything
else tracked, so calling it is always safe; :func:`untrackable` says what it would do.

The helper is a small C extension built with the package (``setup.py``); without a C compiler
(or with ``GARRISON_PURE=1`` at build time) these are no-ops and everything stays tracked, as
any Python object is (:data:`AVAILABLE` is then False).
"""

from __future__ import annotations

from typing import TypeVar

_T = TypeVar("_T")
_C = TypeVar("_C", bound=type)

try:
    from garrison._acyclic import allow, untrack, untrackable

    AVAILABLE = True
except ImportError:  # built without a C compiler: the collector keeps tracking them
    AVAILABLE = False

    def untrack(obj: _T, /) -> _T:
        """The identity (the C helper was not built)."""
        return obj

    def allow(cls: _C, /) -> _C:
        """The identity (the C helper was not built)."""
        return cls

    def untrackable(cls: type, /) -> bool:
        """False: nothing is untracked without the C helper."""
        return False


__all__ = ["AVAILABLE", "allow", "untrack", "untrackable"]

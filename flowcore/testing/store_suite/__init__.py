"""The store contract as executable cases: what a store must do to back flowcore.

:mod:`flowcore.store.base` says, role by role, what the engine and the readers
need from a database. This package checks it: every case writes through the
public methods of a real store and asserts what a reader must see back (runs
and task runs, cache entries, spans, shared leases and rates, blobs, run logs, what
servers share: slots, schedules, triggers and one-shot claims, assets' history and
state, two handles on one database at once, closing and reopening; and pruning old runs
and log lines, for a store that plays the optional ``RunRetention`` role). A store that
passes every case can back ``Engine(store=...)``, so a store plugin (PostgreSQL, say)
proves itself with one test::

    @pytest.mark.anyio
    async def test_the_store_contract() -> None:
        await flowcore.testing.check_store(lambda folder: PostgresStore(url_for(folder)))

``factory(folder)`` returns an *unopened* store on a fresh database for that
folder; called twice with one folder it returns two handles on the same
database (as two processes would have). :func:`check_store` opens and closes
the stores itself, runs every case in a folder of its own, and raises one
``AssertionError`` naming every case that failed and why.

:data:`STORE_CASES` names the cases, so a test suite can show each as a test
of its own (``check_store(factory, cases=[name])``). The package imports no test
framework: it ships in the wheel.

The cases live a module per area, each importing only downwards:
:mod:`.contract` (the running order and the runner) on :mod:`.concurrency` and
:mod:`.lifecycle` (which borrow the lease and blob helpers) on the areas
(:mod:`.writes`, :mod:`.queries`, :mod:`.cache`, :mod:`.spans`, :mod:`.leases`,
:mod:`.blobs`, :mod:`.claims`, :mod:`.logs`, :mod:`.serving`, :mod:`.assets`,
:mod:`.retention`) on :mod:`.cases`, :mod:`.records` and :mod:`.assertions`.
"""

from __future__ import annotations

from .cases import OpenStore, StoreCase, StoreFactory
from .contract import STORE_CASES, check_store

__all__ = ["STORE_CASES", "OpenStore", "StoreCase", "StoreFactory", "check_store"]

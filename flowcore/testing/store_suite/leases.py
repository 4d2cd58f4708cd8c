"""Cases on shared limits: slot leases (capacity, waiting, expiry) and rate reservations.

Engines in different processes share a limit only through these calls, so the
store is what keeps a capacity from being exceeded, serves waiters oldest first
and reclaims what a dead engine held. :func:`lease_slots` and :func:`lease_rows`
are shared with the cases that race two handles and reopen a store.
"""

from __future__ import annotations

from ...store.base import Store
from .assertions import all_close, differs
from .cases import Cases, OpenStore

__all__ = ["CASES", "lease_rows", "lease_slots"]

CASES = Cases()


# -- leases of shared limits ------------------------------------------------------------

_FAR = 1e12  # an expiry that never comes


async def lease_slots(
    store: Store,
    name: str,
    capacity: int,
    holder: str,
    want: int,
    *,
    now: float,
    since: float | None = None,
    expires: float = _FAR,
) -> tuple[list[str], int]:
    """``store.lease_slots`` with the waiting row ``<name>/<holder>``, waiting since ``since``."""
    return await store.lease_slots(
        name,
        capacity,
        holder,
        f"{name}/{holder}/waiting",
        want,
        now if since is None else since,
        now,
        expires,
    )


async def lease_rows(store: Store) -> list[tuple[str, str, float, int]]:
    """``(name, holder, expires, waiting)`` of every row of ``list_leases``, sorted."""
    rows = await store.list_leases()
    for row in rows:
        assert len(row) == 6 and isinstance(row[2], str) and isinstance(row[3], int), (
            f"list_leases rows are (name, holder, host: str, pid: int, expires, waiting): {row!r}"
        )
    return sorted(
        (name, holder, float(expires), int(waiting))
        for name, holder, _, _, expires, waiting in rows
    )


@CASES.case("leases: a limit of capacity N grants at most N slots across holders")
async def _lease_capacity(store: Store) -> None:
    a, others = await lease_slots(store, "db", 3, "A", 2, now=100.0)
    assert len(a) == 2 and others == 0, differs(
        "A asks for 2 of 3: (leases, others)", (a, others), "2 leases, 0"
    )
    b, others = await lease_slots(store, "db", 3, "B", 2, now=101.0)
    assert len(b) == 1 and others == 0, differs(
        "B asks for 2 of the 1 left", (b, others), "1 lease, 0"
    )
    c, others = await lease_slots(store, "db", 3, "C", 1, now=102.0)
    assert c == [], differs("C asks for 1 of a full limit", c, [])
    assert others == 1, differs("C: how many slots other holders wait for (B: 1)", others, 1)
    again, _ = await lease_slots(store, "db", 3, "A", 1, now=103.0, since=103.0)
    assert again == [], differs("A asks for one more of a full limit", again, [])
    ids = a + b
    assert all(isinstance(i, str) and i for i in ids), (
        f"lease ids must be non-empty strings: {ids!r}"
    )
    assert len(set(ids)) == 3, f"lease ids must be distinct: {ids!r}"
    other, _ = await lease_slots(store, "other", 1, "C", 1, now=104.0)
    assert len(other) == 1, differs(
        "C asks for 1 of another limit (limits are apart)", other, "1 lease"
    )
    rows = await lease_rows(store)
    want = sorted(
        [
            ("db", "A", _FAR, 0),
            ("db", "A", _FAR, 0),
            ("db", "B", _FAR, 0),
            ("db", "B", _FAR, 1),
            ("db", "C", _FAR, 1),
            ("db", "A", _FAR, 1),
            ("other", "C", _FAR, 0),
        ]
    )
    assert rows == want, differs("list_leases as (name, holder, expires, waiting)", rows, want)


@CASES.case("leases: what cannot be granted is recorded as waiting and granted later")
async def _lease_waiting(store: Store) -> None:
    a, _ = await lease_slots(store, "db", 2, "A", 2, now=10.0)
    assert len(a) == 2, differs("A asks for both slots", a, "2 leases")
    b, others = await lease_slots(store, "db", 2, "B", 2, now=11.0)
    assert b == [] and others == 0, differs("B asks for 2 of a full limit", (b, others), ([], 0))
    rows = await lease_rows(store)
    assert ("db", "B", _FAR, 2) in rows, f"B's waiting row for 2 slots is missing: {rows!r}"
    # A asks again: B's 2 waiting slots are reported to A.
    more, others = await lease_slots(store, "db", 2, "A", 1, now=12.0)
    assert more == [] and others == 2, differs(
        "A asks for 1 more: (leases, slots others wait for)", (more, others), ([], 2)
    )
    await store.release_lease("db/A/waiting")  # A stops waiting: its waiting row goes
    rows = await lease_rows(store)
    assert ("db", "A", _FAR, 1) not in rows, f"release_lease of A's waiting row left it: {rows!r}"

    await store.release_lease(a[0])
    b1, _ = await lease_slots(store, "db", 2, "B", 2, now=13.0, since=11.0)
    assert len(b1) == 1, differs("B asks again after A gave one back", b1, "1 lease")
    rows = await lease_rows(store)
    want = [("db", "A", _FAR, 0), ("db", "B", _FAR, 0), ("db", "B", _FAR, 1)]
    assert rows == want, differs("rows: B's waiting row now asks for 1", rows, want)

    await store.release_lease(a[1])
    b2, _ = await lease_slots(store, "db", 2, "B", 1, now=14.0, since=11.0)
    assert len(b2) == 1, differs("B asks for its last slot", b2, "1 lease")
    rows = await lease_rows(store)
    want = [("db", "B", _FAR, 0), ("db", "B", _FAR, 0)]
    assert rows == want, differs("rows once B has all it asked for (no waiting row)", rows, want)


@CASES.case("leases: a free slot goes to the oldest waiter of any holder")
async def _lease_oldest_first(store: Store) -> None:
    (held,), _ = await lease_slots(store, "db", 1, "A", 1, now=1.0)
    b, _ = await lease_slots(store, "db", 1, "B", 1, now=10.0)  # waits since 10
    c, _ = await lease_slots(store, "db", 1, "C", 1, now=20.0)  # waits since 20
    assert b == [] and c == [], differs("B and C ask for a held slot", (b, c), ([], []))
    await store.release_lease(held)
    # The free slot is B's: C, younger, is refused even though it asks first, and so is
    # A asking anew (since 30), though it just gave the slot back.
    c, _ = await lease_slots(store, "db", 1, "C", 1, now=30.0, since=20.0)
    assert c == [], differs("C (waiting since 20) asks before B (since 10)", c, [])
    a, _ = await lease_slots(store, "db", 1, "A", 1, now=30.0)
    assert a == [], differs("A asks anew (since 30) while B and C wait", a, [])
    await store.release_lease("db/A/waiting")
    b, _ = await lease_slots(store, "db", 1, "B", 1, now=31.0, since=10.0)
    assert len(b) == 1, differs("B, the oldest waiter, asks", b, "1 lease")
    c, _ = await lease_slots(store, "db", 1, "C", 1, now=32.0, since=20.0)
    assert c == [], differs("C asks while B holds the slot", c, [])
    await store.release_lease(b[0])
    c, _ = await lease_slots(store, "db", 1, "C", 1, now=33.0, since=20.0)
    assert len(c) == 1, differs("C asks once B gave the slot back", c, "1 lease")
    rows = await lease_rows(store)
    assert rows == [("db", "C", _FAR, 0)], differs("rows at the end", rows, [("db", "C", _FAR, 0)])


@CASES.case("leases: release_lease frees a slot, and ignores unknown ids")
async def _lease_release(store: Store) -> None:
    (held,), _ = await lease_slots(store, "db", 1, "A", 1, now=1.0)
    b, _ = await lease_slots(store, "db", 1, "B", 1, now=2.0)
    assert b == [], differs("B asks for the held slot", b, [])
    await store.release_lease("no-such-lease")
    b, _ = await lease_slots(store, "db", 1, "B", 1, now=3.0, since=2.0)
    assert b == [], differs("B asks after an unknown id was released", b, [])
    await store.release_lease(held)
    await store.release_lease(held)  # twice: ignored
    b, _ = await lease_slots(store, "db", 1, "B", 1, now=4.0, since=2.0)
    assert len(b) == 1, differs("B asks after A released its lease", b, "1 lease")
    rows = await lease_rows(store)
    assert rows == [("db", "B", _FAR, 0)], differs("rows", rows, [("db", "B", _FAR, 0)])


@CASES.case("leases: expired leases and waiting rows are reclaimed by the next lease_slots")
async def _lease_expiry(store: Store) -> None:
    (_held,), _ = await lease_slots(store, "db", 1, "A", 1, now=100.0, expires=150.0)
    b, _ = await lease_slots(store, "db", 1, "B", 1, now=149.0, since=149.0)
    assert b == [], differs("B asks at 149, before A's lease expires at 150", b, [])
    rows = await lease_rows(store)
    assert ("db", "A", 150.0, 0) in rows, f"A's lease (expires 150) is not listed: {rows!r}"
    b, _ = await lease_slots(store, "db", 1, "B", 1, now=150.0, since=149.0)
    assert len(b) == 1, differs("B asks at 150 (A's lease expires <= now)", b, "1 lease")
    rows = await lease_rows(store)
    assert rows == [("db", "B", _FAR, 0)], differs(
        "rows: A's expired lease is gone", rows, [("db", "B", _FAR, 0)]
    )

    # A waiting row that expired (its engine died) holds nobody back.
    (x,), _ = await lease_slots(store, "w", 1, "X", 1, now=1.0)
    y, _ = await lease_slots(store, "w", 1, "Y", 1, now=10.0, expires=50.0)
    assert y == [], differs("Y asks for a held slot", y, [])
    await store.release_lease(x)
    z, _ = await lease_slots(store, "w", 1, "Z", 1, now=60.0, since=55.0)
    assert len(z) == 1, differs(
        "Z (since 55) asks at 60; Y (since 10) waits, but its row expired at 50", z, "1 lease"
    )
    # list_leases shows rows whatever their expiry: nothing reclaims limit "z" here.
    await lease_slots(store, "z", 1, "Q", 1, now=1.0, expires=5.0)
    rows = await lease_rows(store)
    assert ("z", "Q", 5.0, 0) in rows, f"an expired, unreclaimed lease should be listed: {rows!r}"
    assert not any(r[0] == "w" and r[1] == "Y" for r in rows), f"Y's expired row stayed: {rows!r}"


@CASES.case("leases: renew_leases pushes the expiry of one holder's rows only")
async def _lease_renew(store: Store) -> None:
    a, b = "host:1", "host:12"  # one holder name is a prefix of the other
    for name, holder in (("db", a), ("db", b), ("w", b)):
        got, _ = await lease_slots(
            store, name, 2 if name == "db" else 1, holder, 1, now=100.0, expires=150.0
        )
        assert len(got) == 1, differs(
            f"{holder} asks for a free slot of limit {name}", got, "1 lease"
        )
    waiting, _ = await lease_slots(store, "w", 1, a, 1, now=101.0, expires=150.0)
    assert waiting == [], differs(f"{a} asks for the held slot of limit w", waiting, [])
    await store.renew_leases(a, 500.0)
    rows = await lease_rows(store)
    want = sorted(
        [("db", a, 500.0, 0), ("db", b, 150.0, 0), ("w", b, 150.0, 0), ("w", a, 500.0, 1)]
    )
    assert rows == want, differs(f"rows after renew_leases({a!r}, 500.0)", rows, want)
    got, _ = await lease_slots(store, "db", 2, "C", 2, now=200.0)
    assert len(got) == 1, differs(
        f"C asks for 2 at 200: {b}'s lease expired, {a}'s was renewed", got, "1 lease"
    )
    got, _ = await lease_slots(store, "w", 1, "C", 1, now=200.0)
    assert got == [], differs(
        f"C asks for limit w at 200: {a}'s renewed waiting row is older", got, []
    )
    got, _ = await lease_slots(store, "w", 1, a, 1, now=201.0, since=101.0, expires=500.0)
    assert len(got) == 1, differs(f"{a}, the oldest waiter, asks for limit w", got, "1 lease")


@CASES.case("leases: list_leases shows held leases and waiting rows")
async def _list_leases(store: Store) -> None:
    rows = await store.list_leases()
    assert rows == [], differs("list_leases of an empty store", rows, [])
    await lease_slots(store, "api", 2, "A", 2, now=1.0, expires=31.0)
    await lease_slots(store, "api", 2, "B", 3, now=2.0, expires=32.0)
    await lease_slots(store, "db", 5, "B", 1, now=3.0, expires=33.0)
    got = await lease_rows(store)
    want = [
        ("api", "A", 31.0, 0),
        ("api", "A", 31.0, 0),
        ("api", "B", 32.0, 3),
        ("db", "B", 33.0, 0),
    ]
    assert got == want, differs("list_leases as (name, holder, expires, waiting)", got, want)


# -- shared rates -----------------------------------------------------------------------


async def _reserve(
    store: Store, name: str, interval: float, tolerance: float, *nows: float
) -> list[float]:
    return [await store.reserve_rate(name, interval, tolerance, now) for now in nows]


@CASES.case("rates: with no tolerance, uses are spaced by the interval")
async def _rate_spacing(store: Store) -> None:
    got = await _reserve(store, "api", 0.25, 0.0, 100.0, 100.0, 100.0, 100.6)
    want = [100.0, 100.25, 100.5, 100.75]
    assert all_close(got, want), differs(
        "starts of 4 uses at 4 a second, asked at 100 (and 100.6)", got, want
    )
    got = await _reserve(store, "api", 0.25, 0.0, 200.0, 200.1)
    want = [200.0, 200.25]
    assert all_close(got, want), differs("starts after an idle spell", got, want)
    got = await _reserve(store, "other", 1.0, 0.0, 100.0)
    assert all_close(got, [100.0]), differs("another limit is apart", got, [100.0])


@CASES.case("rates: a burst tolerance lets the first uses start at once")
async def _rate_burst(store: Store) -> None:
    # 10 a second with a burst of 3: tolerance = (3 - 1) * interval.
    got = await _reserve(store, "api", 0.1, 0.2, *[100.0] * 10)
    want = [100.0] * 3 + [100.0 + 0.1 * k for k in range(1, 8)]
    assert all_close(got, want), differs("starts of 10 uses asked at once", got, want)
    # After an idle second the burst is back, but not more than the burst.
    got = await _reserve(store, "api", 0.1, 0.2, *[102.0] * 4)
    want = [102.0, 102.0, 102.0, 102.1]
    assert all_close(got, want), differs("starts of 4 uses after an idle spell", got, want)


@CASES.handles_case("rates: two handles on one database share the reservations")
async def _rate_shared(store: Store, open_store: OpenStore) -> None:
    other = await open_store()
    got = []
    for i in range(10):
        handle = other if i % 2 else store
        got.append(await handle.reserve_rate("api", 0.1, 0.2, 100.0))
    want = [100.0] * 3 + [100.0 + 0.1 * k for k in range(1, 8)]
    assert all_close(got, want), differs(
        "starts of 10 uses, asked in turn by two handles", got, want
    )
    rates = [name for name, _ in await other.list_rates()]
    assert rates == ["api"], differs("list_rates of the other handle", rates, ["api"])


@CASES.case("rates: list_rates shows each limit with the time it is booked up to")
async def _list_rates(store: Store) -> None:
    rates = await store.list_rates()
    assert rates == [], differs("list_rates of an empty store", rates, [])
    await _reserve(store, "b", 0.5, 0.0, 10.0, 10.0)
    await _reserve(store, "a", 2.0, 1.0, 20.0)
    got = sorted(await store.list_rates())
    want = [("a", 22.0), ("b", 11.0)]
    assert [n for n, _ in got] == ["a", "b"] and all_close([t for _, t in got], [22.0, 11.0]), (
        differs("list_rates as (name, tat)", got, want)
    )

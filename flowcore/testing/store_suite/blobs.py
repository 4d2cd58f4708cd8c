"""Cases on the blob store: content-addressed put and get, unreadable refs, and pruning.

Large results live as blobs named by their sha256, so a store must give back
exactly the content of a ref, refuse one that was never stored or was altered,
and prune only what no record still names.
"""

from __future__ import annotations

import hashlib

from ...errors import FlowcoreError, ResultUnreadable
from ...store.base import BlobStore, Store
from .assertions import differs, raises
from .cases import Cases

__all__ = ["CASES", "blob_ref", "blob_store"]

CASES = Cases()


def blob_ref(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def blob_store(store: Store) -> BlobStore | None:
    blobs = store.blobs
    assert blobs is None or isinstance(blobs, BlobStore), (
        f"store.blobs is not a BlobStore: {blobs!r}"
    )
    return blobs


@CASES.case("blobs: put then get gives the content back, and size its length")
async def _blob_round_trip(store: Store) -> None:
    blobs = blob_store(store)
    if blobs is None:
        return  # results stay inline in the records
    big = bytes(range(256)) * 400
    small = "ünïcode ✓".encode()
    await blobs.put({blob_ref(big): big, blob_ref(small): small})
    await blobs.put({blob_ref(small): small})  # again: the content decides the name
    for blob in (big, small):
        got = await blobs.get(blob_ref(blob))
        assert got == blob, f"get of a {len(blob)}-byte blob gave back {len(got)} other bytes"
        size = await blobs.size(blob_ref(blob))
        assert size == len(blob), differs("size", size, len(blob))
    missing = await blobs.size(blob_ref(b"never stored"))
    assert missing is None, differs("size of a blob never stored", missing, None)


@CASES.case("blobs: get of an unknown or altered blob raises ResultUnreadable")
async def _blob_unreadable(store: Store) -> None:
    blobs = blob_store(store)
    if blobs is None:
        return
    await raises(
        ResultUnreadable, blobs.get(blob_ref(b"never stored")), "get of a blob never stored"
    )
    for bad in ("../../etc/passwd", "not-a-ref", ""):
        await raises(ResultUnreadable, blobs.get(bad), f"get({bad!r})")
        size = await blobs.size(bad)
        assert size is None, differs(f"size({bad!r})", size, None)
    # A blob whose content does not match its reference (as if altered where it is kept).
    claimed = blob_ref(b"the original content")
    try:
        await blobs.put({claimed: b"something else"})
    except (FlowcoreError, ValueError):
        return  # refused at once: fine too
    await raises(ResultUnreadable, blobs.get(claimed), "get of a blob that does not match its ref")


@CASES.case("blobs: prune keeps referenced and young blobs, and says how many it deleted")
async def _blob_prune(store: Store) -> None:
    blobs = blob_store(store)
    if blobs is None:
        return
    kept, young, old = b"referenced", b"unreferenced 1", b"unreferenced 2"
    await blobs.put({blob_ref(b): b for b in (kept, young, old)})
    deleted = await blobs.prune(set(), grace=3600.0)
    assert deleted == 0, differs("prune(set(), grace=3600) of blobs just put", deleted, 0)
    for blob in (kept, young, old):
        got = await blobs.get(blob_ref(blob))
        assert got == blob, f"a young blob went missing after prune: {blob!r}"
    deleted = await blobs.prune({blob_ref(kept)}, grace=0.0)
    assert deleted == 2, differs("prune({kept}, grace=0) count", deleted, 2)
    got = await blobs.get(blob_ref(kept))
    assert got == kept, differs("the referenced blob after prune", got, kept)
    for blob in (young, old):
        await raises(ResultUnreadable, blobs.get(blob_ref(blob)), f"get of pruned blob {blob!r}")
        size = await blobs.size(blob_ref(blob))
        assert size is None, differs(f"size of pruned blob {blob!r}", size, None)

"""Many names resolved at once (forget, copy and verify of many ids) answer exactly as each name
resolved alone by a scan of every snapshot: ids, prefixes (ambiguous ones too), tags, `latest`,
filters and damaged manifests, errors with their messages."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

import pytest

from casnap import selection
from casnap.constants import SAFETY_TAG
from casnap.errors import AmbiguousSnapshot, CasnapError, IntegrityError, SnapshotNotFound
from casnap.heads import Damage, named, way_out
from casnap.ids import ObjectId, is_hex_prefix
from casnap.manifest import Snapshot
from casnap.selection import FULL_ID, MIN_PREFIX, Resolved, Resolver, Snaps, SnapshotFilter


def make_snaps(n: int, seed: int) -> list[tuple[ObjectId, Snapshot]]:
    """n snapshots, oldest first: ids drawn so that short prefixes repeat, tagged (`beef`, as
    an older casnap let a tag be, is also the start of ids), committed with a few path sets."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        head = rng.choice(["abcd", "abce", "0123", "beef", "cafe"]) if i % 3 == 0 else ""
        raw = head + "".join(rng.choice("0123456789abcdef") for _ in range(64 - len(head)))
        tags = tuple(
            t for t in ("nightly", "v1", SAFETY_TAG, "cafe1x", "beef") if rng.random() < 0.25
        )
        snap = Snapshot(
            time=f"2025-01-01T{i // 60 % 24:02d}:{i % 60:02d}:00Z",
            host=rng.choice(["a", "b"]),
            user="u",
            source="/data",
            paths=rng.choice([(), ("app.db",), ("faiss",)]),
            excludes=(),
            message="",
            tags=tags,
            parent=None,
            files=(),
        )
        out.append((ObjectId.from_hex(raw), snap))
    return out


def answer(fn: Callable[..., Resolved], *args: object) -> tuple[str, str]:
    """What a resolution gives: the id and how, or the error's class and message."""
    try:
        got = fn(*args)
    except CasnapError as exc:
        return type(exc).__name__, str(exc)
    return got.id.hex(), got.by


def scan_resolve(
    snaps: Snaps,
    ref: str,
    flt: SnapshotFilter | None = None,
    damaged: Mapping[ObjectId, Damage] | None = None,
) -> Resolved:
    """One name resolved by a scan of every snapshot, as casnap resolved each name before
    names were resolved together: the answers to compare with."""
    flt = flt or SnapshotFilter()
    where = f" {flt.describe()}" if flt.active else ""
    bad = named(damaged or {}, ref)
    ids = [
        sid for sid, _ in snaps if is_hex_prefix(ref.lower()) and sid.hex().startswith(ref.lower())
    ]
    if bad and not ids:
        raise selection._damaged(damaged or {}, bad[0])
    if damaged and not (ids and len(ref) >= MIN_PREFIX):  # its time and tags do not read
        exc = next(iter(damaged.values()))[0]
        raise type(exc)(
            f"{exc} (it may be the newest snapshot or carry that tag: name a snapshot by its id "
            f"(`casnap log` lists the others), or {way_out(damaged)})"
        )
    if not snaps:
        raise SnapshotNotFound("the repository holds no snapshots")
    pool = flt.select(snaps)
    if ref == "latest":
        newest = selection.latest(pool, flt)
        if newest is None:
            but = f" but {SAFETY_TAG} ones (name them by the tag {SAFETY_TAG})" if pool else ""
            raise SnapshotNotFound(f"no snapshot{where}{but}")
        return Resolved(newest, "latest")
    ref_l = ref.lower()
    tagged = [sid for sid, s in pool if ref in s.tags]
    if is_hex_prefix(ref_l) and len(ref_l) >= MIN_PREFIX:
        matches = [sid for sid, _ in pool if sid.hex().startswith(ref_l)] + bad
        if tagged and matches and len(ref_l) < FULL_ID and matches != tagged[-1:]:
            raise AmbiguousSnapshot(selection._tag_or_id(ref, tagged[-1], matches, where))
        if len(matches) == 1 and matches[0] in bad:  # whether it matches flt does not read
            raise selection._damaged(damaged or {}, matches[0])
        if len(matches) == 1:
            return Resolved(matches[0], "id")
        if len(matches) > 1:
            listed = ", ".join(m.short for m in matches[:5])
            raise AmbiguousSnapshot(f"{ref!r} matches {len(matches)} snapshots{where} ({listed})")
    if tagged:
        return Resolved(tagged[-1], "tag")
    if is_hex_prefix(ref_l) and len(ref_l) < MIN_PREFIX:
        raise SnapshotNotFound(f"{ref!r}: give at least {MIN_PREFIX} hex digits of a snapshot id")
    if flt.active:
        scan_resolve(snaps, ref)  # a ref that names nothing at all is reported as such
        raise SnapshotNotFound(f"{ref!r} names no snapshot{where}")
    raise SnapshotNotFound(f"no snapshot matches {ref!r}")


def refs_for(snaps: Snaps, damaged: Mapping[ObjectId, Damage]) -> list[str]:
    ids = [sid.hex() for sid, _ in snaps] + [sid.hex() for sid in damaged]
    return [
        *ids[::7],
        *(i[:n] for i in ids[::5] for n in (3, 4, 5, 8, 64)),
        *(i.upper()[:10] for i in ids[::11]),
        "abcd", "abce", "abc", "0123", "beef", "cafe", "cafe1x", "dead", "ffff",
        "latest", "nightly", "v1", SAFETY_TAG, "nothing", "", "a", "LATEST", "Nightly",
    ]  # fmt: skip


FILTERS = [
    None,
    SnapshotFilter(),
    SnapshotFilter(paths=("app.db",)),
    SnapshotFilter(paths=()),
    SnapshotFilter(tags=(("nightly",),)),
    SnapshotFilter(tags=((SAFETY_TAG,), ("v1", "nightly"))),
    SnapshotFilter(hosts=("b",)),
    SnapshotFilter(paths=("faiss",), tags=(("cafe1x",),), hosts=("a",)),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("flt", FILTERS)
def test_many_names_resolve_as_each_alone(seed: int, flt: SnapshotFilter | None) -> None:
    snaps = make_snaps(150, seed)
    resolver = Resolver(snaps, flt)
    for ref in refs_for(snaps, {}):
        assert answer(resolver.resolve, ref) == answer(scan_resolve, snaps, ref, flt), ref
        tag_count = sum(1 for _, s in (flt or SnapshotFilter()).select(snaps) if ref in s.tags)
        assert resolver.carrying(ref) == tag_count == selection.carrying(snaps, ref, flt)


@pytest.mark.parametrize("flt", [None, SnapshotFilter(tags=(("nightly",),))])
def test_damaged_manifests_resolve_as_each_alone(flt: SnapshotFilter | None) -> None:
    everything = make_snaps(120, 3)
    # the manifests of a few snapshots (one sharing a prefix with readable ones) do not read
    gone = [everything[0][0], everything[1][0], everything[3][0]]
    damaged: dict[ObjectId, Damage] = {
        sid: (IntegrityError(f"snapshots/{sid.hex()} is damaged"), f"r/snapshots/{sid.hex()}")
        for sid in gone
    }
    snaps = [(sid, s) for sid, s in everything if sid not in damaged]
    resolver = Resolver(snaps, flt, damaged)
    for ref in refs_for(snaps, damaged):
        want = answer(scan_resolve, snaps, ref, flt, damaged)
        assert answer(resolver.resolve, ref) == want, ref


def test_no_snapshots_and_one() -> None:
    assert answer(Resolver([]).resolve, "latest") == answer(scan_resolve, [], "latest")
    one = make_snaps(1, 4)
    for ref in ("latest", one[0][0].hex()[:6], "zzz", "nightly"):
        assert answer(Resolver(one).resolve, ref) == answer(scan_resolve, one, ref), ref

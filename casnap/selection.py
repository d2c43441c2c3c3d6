"""Which snapshots a reference and a filter name: `latest`, an id or unique prefix, a tag; and the
--path / --tag / --host filters that restrict them (as restic's `latest --path`).

A filter's paths select snapshots committed with every one of them (`()` selects whole-dir
snapshots); its tags select snapshots carrying every tag of any one group (`--tag a,b --tag c`:
both a and b, or c); its hosts, snapshots taken on any of them. Every command that takes a
snapshot reference resolves it here. A checkout of several path groups at once restores a
`Selection`: per file, the newest snapshot whose scope covers it.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from casnap import capture
from casnap.constants import SAFETY_TAG
from casnap.errors import AmbiguousSnapshot, InvalidArgument, SnapshotNotFound
from casnap.heads import Damage, named, way_out
from casnap.ids import ObjectId, is_hex_prefix
from casnap.manifest import FileEntry, Snapshot, chronological
from casnap.paths import folders_above, normalize_paths

Snaps = Sequence[tuple[ObjectId, Snapshot]]

# tags a user may not give, and why: a word a snapshot reference gives a meaning of its own (a
# tag spelt so could never be named), and the tag of the snapshots a checkout saves (which
# `latest` passes over: a snapshot the user tagged so would be passed over too)
RESERVED = {
    "latest": "as a SNAPSHOT, 'latest' names the newest snapshot, so a snapshot tagged so could "
    "never be named by its tag",
    SAFETY_TAG: f"casnap tags the snapshots a checkout saves {SAFETY_TAG!r}, and `latest` "
    "passes over them: a snapshot tagged so would be passed over too",
}
FULL_ID = 64  # hex digits of a full snapshot id: it names its snapshot, whatever tags say
MIN_PREFIX = 4  # hex digits a SNAPSHOT needs to be read as (the start of) an id


def check_tag(tag: str) -> None:
    """InvalidArgument for a tag no filter or reference could name: empty, holding a comma
    (`a,b` selects snapshots carrying both) or a control character, blank at either end (a
    filter's `--tag " x"` selects `x`), a reserved word, or spelt like the start of an id (any
    snapshot's id may start so, now or once stored)."""
    if not tag.strip() or tag != tag.strip() or "," in tag or not tag.isprintable():
        raise InvalidArgument(
            f"tag {tag!r}: a tag is a non-empty name without commas (they join the tags a "
            "filter requires together), control characters or blanks at either end"
        )
    if tag in RESERVED:
        raise InvalidArgument(f"tag {tag!r} is reserved: {RESERVED[tag]}")
    if len(tag) >= MIN_PREFIX and all(c in "0123456789abcdef" for c in tag.lower()):
        raise InvalidArgument(
            f"tag {tag!r} is {MIN_PREFIX} or more hex digits, which a SNAPSHOT reads as the start "
            "of an id: it would be ambiguous once any snapshot's id starts so; give it a "
            f"character past f or a separator (`v{tag}`, `{tag}-1`)"
        )


def parse_tags(values: Iterable[str], option: str = "--tag") -> tuple[tuple[str, ...], ...]:
    """`--tag` values as tag groups: `a,b` is one group (all of them), each value another. A
    value naming no tag (`--tag "$UNSET"`) is refused: dropped, it would widen the selection
    to every snapshot (a forget of all of them)."""
    groups = []
    for v in values:
        group = tuple(dict.fromkeys(t.strip() for t in v.split(",") if t.strip()))
        if not group:
            raise InvalidArgument(
                f"{option} {v!r} names no tag (an unset variable?); give a tag, or leave "
                f"{option} out"
            )
        groups.append(group)
    return tuple(groups)


class SnapshotFilter(NamedTuple):
    """Restricts which snapshots a reference may name; the default matches every snapshot."""

    paths: tuple[str, ...] | None = None  # None: any; (): whole-dir snapshots only
    tags: tuple[tuple[str, ...], ...] = ()
    hosts: tuple[str, ...] = ()  # (): any host

    @property
    def active(self) -> bool:
        return self.paths is not None or bool(self.tags) or bool(self.hosts)

    def matches(self, snap: Snapshot) -> bool:
        return (not self.hosts or snap.host in self.hosts) and self.accepts(snap.paths, snap.tags)

    def accepts(self, paths: Sequence[str], tags: Sequence[str]) -> bool:
        """True for a snapshot committed with paths and carrying tags."""
        if self.paths is not None:
            if not self.paths:
                if paths:
                    return False
            elif not set(self.paths) <= set(paths):
                return False
        return not self.tags or any(all(t in tags for t in g) for g in self.tags)

    def select(self, snaps: Snaps) -> list[tuple[ObjectId, Snapshot]]:
        """The snapshots that match, in the order given."""
        return [(sid, s) for sid, s in snaps if self.matches(s)]

    def describe(self) -> str:
        """The filter in words, e.g. `committed with app.db, tagged nightly`."""
        parts = []
        if self.paths is not None:
            parts.append(
                f"committed with {' '.join(self.paths)}" if self.paths else "of the whole data dir"
            )
        if self.tags:
            parts.append("tagged " + " or ".join(",".join(g) for g in self.tags))
        if self.hosts:
            parts.append("of host " + " or ".join(self.hosts))
        return ", ".join(parts)


class Resolved(NamedTuple):
    """What a reference resolved to, and how: `latest`, `id` (full or prefix) or `tag`."""

    id: ObjectId
    by: str


def resolve(
    snaps: Snaps,
    ref: str,
    flt: SnapshotFilter | None = None,
    damaged: Mapping[ObjectId, Damage] | None = None,
) -> Resolved:
    """A full id, a unique prefix of >= 4 hex digits, `latest`, or a tag (its newest snapshot),
    among snaps (oldest first) that match flt. An id of damaged (manifests that do not read,
    left out of snaps) is its error when ref names it alone, and counts when ref is ambiguous.
    Many names: one Resolver."""
    return Resolver(snaps, flt, damaged).resolve(ref)


class Resolver:
    """Names resolved among snaps (oldest first) that match flt, as resolve() reads each: the
    snapshots' ids sorted once and their tags mapped once, so each name costs a binary search
    and a look-up, not a scan of every snapshot (a forget of thousands of ids)."""

    def __init__(
        self,
        snaps: Snaps,
        flt: SnapshotFilter | None = None,
        damaged: Mapping[ObjectId, Damage] | None = None,
    ) -> None:
        self.snaps = snaps
        self.flt = flt or SnapshotFilter()
        self.damaged = damaged or {}
        self.where = f" {self.flt.describe()}" if self.flt.active else ""
        self.pool = self.flt.select(snaps)
        self.order = {sid: i for i, (sid, _) in enumerate(self.pool)}  # place in pool
        self.all_hex = sorted(sid.hex() for sid, _ in snaps)
        self.pool_hex = sorted((sid.hex(), sid) for sid, _ in self.pool)
        self.tagged: dict[str, list[ObjectId]] = {}  # tag: its snapshots in pool, oldest first
        for sid, snap in self.pool:
            for tag in dict.fromkeys(snap.tags):
                self.tagged.setdefault(tag, []).append(sid)
        self._unfiltered: Resolver | None = None

    def carrying(self, tag: str) -> int:
        """How many snapshots that match the filter carry tag."""
        return len(self.tagged.get(tag, ()))

    def _starting(self, low: str) -> list[ObjectId]:
        """The pool's ids that start with low, in pool order."""
        i = bisect.bisect_left(self.pool_hex, (low,))
        found = []
        while i < len(self.pool_hex) and self.pool_hex[i][0].startswith(low):
            found.append(self.pool_hex[i][1])
            i += 1
        return sorted(found, key=self.order.__getitem__)

    def _any_starts(self, low: str) -> bool:
        """True when any snapshot's id (filter or not) starts with low."""
        i = bisect.bisect_left(self.all_hex, low)
        return i < len(self.all_hex) and self.all_hex[i].startswith(low)

    def resolve(self, ref: str) -> Resolved:
        """One name, as resolve() reads it."""
        damaged, where, ref_l = self.damaged, self.where, ref.lower()
        bad = named(damaged, ref)
        hex_ref = is_hex_prefix(ref_l)
        ids = hex_ref and self._any_starts(ref_l)
        if bad and not ids:
            raise _damaged(damaged, bad[0])
        if damaged and not (ids and len(ref) >= MIN_PREFIX):  # its time and tags do not read
            exc = next(iter(damaged.values()))[0]
            raise type(exc)(
                f"{exc} (it may be the newest snapshot or carry that tag: name a snapshot by its "
                f"id (`casnap log` lists the others), or {way_out(damaged)})"
            )
        if not self.snaps:
            raise SnapshotNotFound("the repository holds no snapshots")
        if ref == "latest":
            newest = latest(self.pool, self.flt)
            if newest is None:
                but = (
                    f" but {SAFETY_TAG} ones (name them by the tag {SAFETY_TAG})"
                    if self.pool
                    else ""
                )
                raise SnapshotNotFound(f"no snapshot{where}{but}")
            return Resolved(newest, "latest")
        tagged = self.tagged.get(ref, [])
        if hex_ref and len(ref_l) >= MIN_PREFIX:
            matches = self._starting(ref_l) + bad
            if tagged and matches and len(ref_l) < FULL_ID and matches != tagged[-1:]:
                raise AmbiguousSnapshot(_tag_or_id(ref, tagged[-1], matches, where))
            if len(matches) == 1 and matches[0] in bad:  # whether it matches flt does not read
                raise _damaged(damaged, matches[0])
            if len(matches) == 1:
                return Resolved(matches[0], "id")
            if len(matches) > 1:
                listed = ", ".join(m.short for m in matches[:5])
                raise AmbiguousSnapshot(
                    f"{ref!r} matches {len(matches)} snapshots{where} ({listed})"
                )
        if tagged:
            return Resolved(tagged[-1], "tag")
        if hex_ref and len(ref_l) < MIN_PREFIX:
            raise SnapshotNotFound(
                f"{ref!r}: give at least {MIN_PREFIX} hex digits of a snapshot id"
            )
        if self.flt.active:
            if self._unfiltered is None:
                self._unfiltered = Resolver(self.snaps)
            self._unfiltered.resolve(ref)  # a ref that names nothing at all is reported as such
            raise SnapshotNotFound(f"{ref!r} names no snapshot{where}")
        raise SnapshotNotFound(f"no snapshot matches {ref!r}")


def _damaged(damaged: Mapping[ObjectId, Damage], sid: ObjectId) -> Exception:
    """The error of a reference that names the damaged snapshot sid alone."""
    exc = damaged[sid][0]
    return type(exc)(f"{exc} (`casnap forget {sid.short}` removes that snapshot)")


def _tag_or_id(ref: str, newest: ObjectId, ids: list[ObjectId], where: str) -> str:
    """Why ref, both a tag and the start of snapshot ids, names neither; how to name each."""
    if len(ids) == 1:
        others = f"the other by its full id {ids[0].hex()}"
    else:
        listed = ", ".join(i.short for i in ids[:5])
        others = f"the {len(ids)} others by more digits of their ids ({listed})"
    return (
        f"{ref!r} is ambiguous{where}: it is a tag and the start of a snapshot id; name the "
        f"tagged snapshot by its full id {newest.hex()} (or as `latest --tag {ref}`), {others}"
    )


def latest(pool: Snaps, flt: SnapshotFilter) -> ObjectId | None:
    """The newest of pool (oldest first): a checkout's pre-checkout snapshot records a target's
    replaced data, not a backup, so it is passed over unless flt asks for that tag."""
    wanted = any(SAFETY_TAG in group for group in flt.tags)
    kept = [sid for sid, snap in pool if wanted or SAFETY_TAG not in snap.tags]
    return kept[-1] if kept else None


def outside(rel: str, snaps: Sequence[Snapshot], others: Sequence[Snapshot] = ()) -> str:
    """What to add when rel is not in snaps: when it lies outside the paths they were committed
    with, which --path names the newest of others (the repository's snapshots) committed with
    rel or a folder holding it, or with the whole data dir; that none was, when none was (a
    mistyped name: `--path` with it would name nothing); else nothing."""
    if any(capture.in_scope(rel, snap.paths) for snap in snaps):
        return ""
    paths = " ".join(sorted({p for snap in snaps for p in snap.paths}))
    covering = sorted({p for snap in others for p in snap.paths if capture.in_scope(rel, (p,))})
    whole = any(not snap.paths for snap in others)
    if not covering:
        said = f", committed with {paths} only; no snapshot was committed with {rel}"
        return said + (": `--path .` names the newest of the whole data dir" if whole else "")
    named = "; ".join(
        f"`--path {p}` names the newest snapshot committed with {'it' if p == rel else p}"
        for p in covering
    )
    return f", committed with {paths} only: {named}" + (
        " (`--path .`: with the whole data dir)" if whole else ""
    )


def carrying(snaps: Snaps, tag: str, flt: SnapshotFilter | None = None) -> int:
    """How many snapshots (matching flt) carry tag."""
    flt = flt or SnapshotFilter()
    return sum(1 for _, s in snaps if tag in s.tags and flt.matches(s))


def newest_per_path_group(
    snaps: Snaps, source: str | None = None
) -> dict[tuple[str, ...], tuple[ObjectId, Snapshot]]:
    """For each set of committed paths (() for whole-dir snapshots), its newest snapshot; only
    snapshots of the data dir `source` (its absolute path, as manifests record it) when given."""
    out: dict[tuple[str, ...], tuple[ObjectId, Snapshot]] = {}
    for sid, snap in snaps:  # oldest first: the last one seen is the newest
        if source is None or snap.source == source:
            out[snap.paths] = (sid, snap)
    return dict(sorted(out.items()))


def make_filter(
    snaps: Snaps,
    data_dir: Path,
    paths: Sequence[str] = (),
    tags: Sequence[str] = (),
    hosts: Sequence[str] = (),
) -> SnapshotFilter:
    """The filter --path, --tag and --host values give. Paths are read as
    paths.normalize_paths reads them; a reading exists when a snapshot was committed with it or
    it exists in data_dir."""
    rels = None
    if paths:
        committed = {p for _, s in snaps for p in s.paths}

        def exists(rel: str) -> bool:
            return rel in committed or os.path.lexists(data_dir / rel)

        rels = normalize_paths(paths, data_dir, exists)
    return SnapshotFilter(rels, parse_tags(tags), tuple(dict.fromkeys(hosts)))


class Selection(NamedTuple):
    """The files a checkout restores, by path, with the snapshot each comes from, and the
    scopes (paths, excludes, skipped) inside which a target file no snapshot lists is removed;
    the recorded modes of folders (dirs), and the folders the snapshots hold (folders)."""

    sources: tuple[tuple[ObjectId, Snapshot], ...]
    entries: dict[str, tuple[FileEntry, ObjectId]]
    dirs: dict[str, tuple[int, int, int]]
    folders: frozenset[str] = frozenset()

    @classmethod
    def of(cls, sources: Sequence[tuple[ObjectId, Snapshot]]) -> Selection:
        """Oldest first: a newer snapshot covering a path decides whether and how it exists."""
        ordered = chronological(sources)
        entries: dict[str, tuple[FileEntry, ObjectId]] = {}
        dirs: dict[str, tuple[int, int, int]] = {}
        folders: set[str] = set()
        for sid, snap in ordered:
            for path in [p for p in entries if covers(snap, p, folder=False)]:
                del entries[path]
            entries.update((f.path, (f, sid)) for f in snap.files)
            dirs.update(snap.dirs)
            kept = {p for p in folders if not covers(snap, p, folder=True)}
            folders = kept | set(snap.dirs) - {"."}
        return cls(tuple(ordered), entries, dirs, frozenset(folders))

    def empty_folders(self, scope: Sequence[str]) -> list[str]:
        """The folders the snapshots hold that no restored file lies in (an app's empty
        `uploads/`), within scope (all when empty), none skipped unread at a commit: outermost
        first, so each comes after the folder holding it."""
        full = self.entries.keys() | folders_above(self.entries)
        skipped = self.skipped()
        return sorted(
            f
            for f in self.folders
            if f not in full
            and (not scope or capture.in_scope(f, scope))
            and not any(f == s or f.startswith(s + "/") for s in skipped)
        )

    def covers(self, path: str) -> bool:
        return any(covers(snap, path) for _, snap in self.sources)

    def excludes(self) -> set[str]:
        return {x for _, snap in self.sources for x in snap.excludes}

    def skipped(self) -> set[str]:
        """The paths a snapshot recorded as left out, unreadable (`commit --skip-unreadable`):
        as for an excluded one, no snapshot says what they should hold."""
        return {x for _, snap in self.sources for x in snap.skipped}


def covers(snap: Snapshot, path: str, folder: bool | None = None) -> bool:
    """True when snap was taken of path's place: inside its paths and not excluded. folder:
    whether path is a folder (None: not known, see capture.is_excluded); a file an older
    snapshot holds is one (Selection.of), so a newer snapshot's `x/` (folders only) does not
    keep it as left out when the newer one was taken of its place and found it gone."""
    return capture.in_scope(path, snap.paths) and not capture.is_excluded(
        path, snap.excludes, folder
    )


def newest_of_groups(snaps: Snaps, source: str, host: str) -> list[tuple[ObjectId, Snapshot]]:
    """The newest snapshot of each path group of the data dir source on host (checkout's safety
    snapshots left out: they record a target, not a schedule), newest first."""
    kept = [(i, s) for i, s in snaps if SAFETY_TAG not in s.tags and s.host == host]
    groups = newest_per_path_group(kept, source)
    return sorted(groups.values(), key=lambda s: s[1].time, reverse=True)


def holds(
    entries: dict[str, tuple[FileEntry, ObjectId]], held: Iterable[str] = ()
) -> Callable[[str], bool]:
    """Whether a relative path is one of the files, a folder above one, or one of held."""
    folders = folders_above(entries) | set(held)
    return lambda rel: rel in entries or rel in folders


class FolderModes:
    """Mode and owner (as root) of each folder a checkout creates: as recorded, else the mode of
    the folder above it (never more open than that) and no owner change."""

    def __init__(self, sel: Selection, target: Path) -> None:
        self.dirs = sel.dirs
        self.target = target
        self.given: dict[str, int] = {}  # mode given to each folder created, by path

    def __call__(self, rel: str) -> tuple[int, tuple[int, int] | None]:
        rec = self.dirs.get(rel)
        if rec is not None:
            mode, owner = rec[0], (rec[1], rec[2]) if os.geteuid() == 0 else None
        else:
            head = os.path.dirname(rel) or "."
            above = self.dirs.get(head)
            given = self.given.get(head)  # a folder above made now (by swap.py: not in place)
            if above is not None:
                mode, owner = above[0], None
            elif given is not None:
                mode, owner = given, None
            else:
                try:
                    mode, owner = os.stat(self.target / head).st_mode & 0o7777, None
                except OSError:
                    mode, owner = 0o700, None
        self.given[rel] = mode
        return mode, owner

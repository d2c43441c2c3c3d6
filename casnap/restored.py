"""What a checkout restored, so the next commit of that data dir need not read it all again.

A checkout renames new files into place: their inode and ctime differ from any fingerprint a
snapshot recorded, so the stat cache would distrust every file. After the swap, checkout records
the fingerprint of each file it restored (or found unchanged) with the snapshot holding it, in
the user's cache dir (`$CASNAP_CACHE_DIR`, else `$XDG_CACHE_HOME/casnap`, else `~/.cache/casnap`),
under `<repository id>/restored/<key>.json`. A commit of that dir reuses such a file's
entry from that snapshot while the fingerprint still matches and the snapshot still exists (so
gc has kept its chunks). Only the manifest's own entry is trusted, never anything in this file
but the fingerprint; losing the file costs one full read, nothing else.

The record also says whether a full checkout went into that dir (`whole`: the folder's device
and inode then, so another folder put at that path is not taken for it, unless it got the inode
number of one removed): a later full checkout
into a folder other than the data dir removes the files its snapshot lacks only from a folder
known to hold this data (removals.py). A checkout of some paths keeps what the record said.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import orjson

from casnap import capture, fsutil
from casnap.constants import STAT_SETTLE_NS
from casnap.fsutil import cache_dir, read_cached, temp_name
from casnap.ids import hash_bytes
from casnap.manifest import FileEntry


def _path(repo_id: str, source: str) -> Path:
    """The record's file: named by a hash of source's bytes (a name that is no UTF-8 too)."""
    name = f"{hash_bytes(os.fsencode(source)).hex()[:32]}.json"
    return cache_dir() / repo_id / "restored" / name


class Restored(NamedTuple):
    """Per relative path: (fingerprint, id of the snapshot whose entry the file holds)."""

    source: str
    files: dict[str, tuple[tuple[int, ...], str]]
    # device, inode of source when a full checkout went in, or a commit was made from it
    whole: tuple[int, int] | None = None
    host: str | None = None  # the host that wrote the record (None: one written before it said)


def save(repo_id: str, record: Restored) -> None:
    """Write the record atomically (temp, fsync, rename); a failure only costs a later read."""
    path = _path(repo_id, record.source)
    fields: dict[str, object] = {
        "source": record.source,
        "files": {p: [fp, sid] for p, (fp, sid) in record.files.items()},
    }
    if record.whole is not None:
        fields["whole"] = list(record.whole)
    if record.host is not None:
        fields["host"] = record.host
    try:  # orjson: the record of 20k files in 12 ms, json.dumps 83 ms (measured together)
        body = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # a name that is no UTF-8 (surrogates): json escapes it
        body = json.dumps(fields, sort_keys=True).encode()
    with contextlib.suppress(OSError):
        path.parent.parent.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        for folder in (path.parent.parent, path.parent):
            folder.mkdir(mode=0o700, exist_ok=True)
        tmp = path.parent / temp_name(".json")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            try:
                if os.write(fd, body) != len(body):
                    raise OSError(errno.ENOSPC, "short write", str(tmp))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError:  # a full disk: no temp file is left behind for good
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def record(
    repo_id: str, target: Path, placed: Sequence[tuple[FileEntry, str]], whole: bool = False
) -> None:
    """Save the fingerprint of every file a checkout put in place in target (its entry, and the
    id of the snapshot holding it), and whether a full checkout went into target (whole), once
    any later write to one of them must change it: the settle time after the newest change
    (the last rename) is waited out, what of it has not passed yet. A file whose fingerprint is
    too fresh is left out, as is one whose size or mtime is not its entry's, or a database
    beside a -wal holding frames (written after the swap: the entry no longer says what it
    holds)."""
    if not placed and not whole:
        return
    base = str(target)
    ident = None
    if whole:
        with contextlib.suppress(OSError):
            st = os.stat(base)
            ident = (st.st_dev, st.st_ino)
    fps = [_fingerprint(os.path.join(base, e.path), e.kind) for e, _ in placed]
    now = time.time_ns()
    ctimes = {i: fp[2] for i, fp in enumerate(fps) if fp is not None}
    fresh = [i for i, ctime in ctimes.items() if ctime >= now - STAT_SETTLE_NS]
    if fresh:  # only those changed within the settle time are waited out and looked at again
        wait = max(ctimes[i] for i in fresh) + STAT_SETTLE_NS - now
        if wait > 0:
            time.sleep(min(wait, STAT_SETTLE_NS) / 1e9)
        for i in fresh:
            entry = placed[i][0]
            fps[i] = _fingerprint(os.path.join(base, entry.path), entry.kind)
        now = time.time_ns()
    files: dict[str, tuple[tuple[int, ...], str]] = {}
    for (entry, sid), fp in zip(placed, fps, strict=True):
        if fp is None or fp[2] >= now - STAT_SETTLE_NS or fp[0] != entry.size:
            continue
        if not _placed_mtime(fp[1], entry.mtime_ns):  # written since the checkout placed it
            continue
        if entry.kind == "sqlite" and len(fp) > 4 and fp[4] > 0:
            continue  # a -wal holding frames, which no checkout leaves: written since the swap
        files[entry.path] = (fp, sid)
    save(repo_id, Restored(str(target), files, ident, fsutil.hostname()))


def _fingerprint(path: str, kind: str) -> tuple[int, ...] | None:
    """A placed file's fingerprint; None (left out of the record: a later commit reads it) when
    it cannot be taken, such as for a path longer than the system's limit."""
    try:
        return capture.fingerprint(path, kind)
    except OSError:
        return None


def _placed_mtime(mtime_ns: int, entry_ns: int) -> bool:
    """Whether a file's mtime is the one a checkout gave it: its entry's, or that cut down to
    the whole second (FAT: two) a filesystem with coarse timestamps keeps."""
    coarse = mtime_ns % 1_000_000_000 == 0 and 0 <= entry_ns - mtime_ns < 2_000_000_000
    return mtime_ns == entry_ns or coarse


def load(repo_id: str, source: str) -> Restored | None:
    """The record for source, or None when there is none or it cannot be parsed."""
    try:
        raw = read_cached(_path(repo_id, source))
    except OSError:
        return None
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError:  # escaped surrogates (a name that is no UTF-8), or damage
        try:
            d = json.loads(raw)
        except (ValueError, RecursionError):
            return None
    if type(d) is not dict or d.get("source") != source or type(d.get("files")) is not dict:
        return None  # a damaged or foreign file: the cache is safe to damage
    files: dict[str, tuple[tuple[int, ...], str]] = {}
    for path, value in d["files"].items():
        if not (type(value) is list and len(value) == 2):
            return None
        fp, sid = value
        if type(fp) is not list or type(sid) is not str or any(type(x) is not int for x in fp):
            return None
        files[path] = (tuple(fp), sid)
    whole = d.get("whole")
    ident = None
    if type(whole) is list and len(whole) == 2 and all(type(x) is int for x in whole):
        ident = (whole[0], whole[1])
    host = d.get("host")
    return Restored(source, files, ident, host if type(host) is str else None)


def whole_checkout(repo_id: str, source: str, ident: tuple[int, int]) -> bool:
    """Whether the record for source says a full checkout went into it, or a commit was made
    from it, on this host while it was the folder ident (device, inode) names."""
    record = load(repo_id, source)
    return record is not None and record.whole == ident and record.host in (None, fsutil.hostname())


def committed(
    repo_id: str, source: str, ident: tuple[int, int], fingerprints: bool = False
) -> None:
    """Record that a commit was made from source, the folder ident names, on this host: a full
    checkout into it may remove what its snapshot lacks (removals.known). The fingerprints a
    checkout recorded there go: the new snapshot's serve. Written only when it says more; with
    fingerprints (the commit used some of the record's: it holds them) without reading it again."""
    record = Restored(source, {}, ident, fsutil.hostname())
    if fingerprints or load(repo_id, source) != record:
        save(repo_id, record)


def drop(repo_id: str, source: str) -> None:
    """Forget the record (a commit of the dir made it redundant)."""
    with contextlib.suppress(OSError):
        _path(repo_id, source).unlink()

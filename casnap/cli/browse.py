"""Commands that look inside snapshots without restoring them: ls (its files), cat (one file on
stdout, verified) and diff (what changed between two, or since one)."""

from __future__ import annotations

import datetime as dt
import stat
import sys
from typing import TYPE_CHECKING, Any

import click

from casnap.cli.main import Context, cli, pass_ctx, warn
from casnap.cli.options import SNAPSHOT, filter_options, resolve_ref
from casnap.cli.output import emit_json, human, printable
from casnap.cli.pipes import stdout_closed
from casnap.errors import InvalidArgument

if TYPE_CHECKING:
    from casnap.manifest import FileEntry, Snapshot


def _read_path(c: Context, given: str | None, snap: Snapshot) -> str:
    """A user-given path read as every command reads paths, against what snap holds (ALL when
    none is given)."""
    from casnap.paths import ALL, normalize_paths, snapshot_holds

    if given is None:
        return ALL
    rels = normalize_paths([given], c.data, snapshot_holds(snap))
    return rels[0] if rels else ALL


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _mtime(entry: FileEntry) -> dt.datetime | None:
    """The file's mtime (UTC, to the microsecond); None outside the years 1 to 9999, which
    datetime cannot show (tmpfs and btrfs keep any 64-bit second; mtime_ns holds it)."""
    try:
        return _EPOCH + dt.timedelta(microseconds=entry.mtime_ns // 1000)
    except OverflowError:
        return None


def _iso_mtime(entry: FileEntry) -> str | None:
    """The mtime as snapshots write times (UTC, microseconds, a four-digit year), for JSON."""
    t = _mtime(entry)
    return None if t is None else t.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _local_mtime(entry: FileEntry) -> str:
    """The mtime in local time for `ls -l`, or which way it lies outside what can be shown."""
    t = _mtime(entry)
    try:
        if t is not None:
            return t.astimezone().replace(tzinfo=None).isoformat(" ", "seconds")
    except OverflowError:  # year 1 or 9999 moved past by the local offset
        pass
    return "after year 9999" if entry.mtime_ns > 0 else "before year 1"


def _entry_json(e: FileEntry) -> dict[str, object]:
    return {
        "path": e.path,
        "kind": e.kind,
        "size": e.size,
        "mode": e.mode,
        "mtime": _iso_mtime(e),
        "mtime_ns": e.mtime_ns,
        "hash": e.hash,
        "chunks": e.chunks,
        "link": e.link,
    }


@cli.command(name="ls")
@click.argument("snapshot", type=SNAPSHOT)
@click.argument("path", required=False)
@click.option("-l", "--long", "long_", is_flag=True, help="Show mode, size in bytes and mtime.")
@filter_options()
@click.option("--json", "as_json", is_flag=True, help="Print the listing as one JSON object.")
@pass_ctx
def ls(
    c: Context,
    snapshot: str,
    path: str | None,
    long_: bool,
    filter_paths: tuple[str, ...],
    filter_tags: tuple[str, ...],
    as_json: bool,
) -> None:
    """List the files of SNAPSHOT, or those at or under PATH, one per line.

    SNAPSHOT is an id, a unique prefix of 4+ hex digits, `latest` or a tag (within --path and
    --tag). PATH is read as every command reads it: relative to the data dir (`faiss`,
    `./app.db`) or a path into it (`data/faiss`). With -l, each line shows the mode, the size
    in bytes and the modification time (local) the file had when it was committed. Names with
    control characters are shown escaped; --json keeps them exact.

    Example: casnap ls latest faiss -l
    """
    from casnap.contents import files_under

    repo = c.open()
    sid = resolve_ref(c, repo, snapshot, filter_paths, filter_tags)
    snap = repo.load_snapshot(sid)
    rel = _read_path(c, path, snap)
    others = [s for _, s in repo.snapshots()]  # for the hint of a path it lacks
    entries = files_under(snap, rel, f"snapshot {sid.short}", others)
    if as_json:
        emit_json(
            {
                "id": sid.hex(),
                "time": snap.time,
                "paths": list(snap.paths),
                "files": [_entry_json(e) for e in entries],
            }
        )
        return
    for e in entries:
        if long_:
            mode = stat.filemode(stat.S_IFREG | (e.mode & 0o7777))
            click.echo(f"{mode} {e.size:>12} {_local_mtime(e):<19}  {printable(e.path)}")
        else:
            click.echo(printable(e.path))


@cli.command(name="cat")
@click.argument("snapshot", type=SNAPSHOT)
@click.argument("path")
@filter_options()
@pass_ctx
def cat(
    c: Context,
    snapshot: str,
    path: str,
    filter_paths: tuple[str, ...],
    filter_tags: tuple[str, ...],
) -> None:
    """Write the file PATH of SNAPSHOT to stdout, every chunk and its whole-file hash verified.

    The file is streamed in order, in bounded memory whatever its size. Each chunk is checked
    against its BLAKE3 before it is written: a damaged chunk stops the output with exit 5, and
    then the bytes before it are already on stdout (a consumer must check the exit code, as
    with restic's dump). The whole-file hash is checked after the last byte: a mismatch (a
    damaged manifest) is exit 5 too. PATH is read as every command reads it; a folder is a
    usage error (`casnap ls` lists it), a file the snapshot does not hold is exit 4.

    Example: casnap cat latest app.db > /tmp/app.db
    """
    from casnap.contents import dump, file_at

    if stdout_closed():  # started with its descriptor closed (`>&-`): before any reading
        raise InvalidArgument(
            "standard output is closed: there is nowhere to write the file (`> FILE` keeps it)"
        )
    repo = c.open()
    sid = resolve_ref(c, repo, snapshot, filter_paths, filter_tags)
    snap = repo.load_snapshot(sid)
    rel = _read_path(c, path, snap)
    others = [s for _, s in repo.snapshots()]  # for the hint of a path it lacks
    file_at(snap, rel, f"snapshot {sid.short}", others)  # a folder, no file: before any output
    out = sys.stdout.buffer
    dump(repo, sid, rel, out)  # a reader that stops early (`| head`): exit 141, as for any command
    out.flush()


@cli.command()
@click.argument("a", type=SNAPSHOT)
@click.argument("b", required=False, type=SNAPSHOT)
@filter_options()
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as one JSON object.")
@pass_ctx
def diff(
    c: Context,
    a: str,
    b: str | None,
    filter_paths: tuple[str, ...],
    filter_tags: tuple[str, ...],
    as_json: bool,
) -> None:
    """Show what changed from snapshot A to snapshot B, or to the data dir as it is now.

    Files added (A), removed (D) and changed (M), with the bytes and chunks the new side shares
    with A and the new ones; for SQLite databases the tables whose rows or schema changed (+rows
    added -rows removed, rows updated); for FAISS indexes the index type and the change of ntotal.
    Without B, the data dir is read the way commit reads it (within A's paths and excludes) and
    chunked with the repository's chunker; nothing is written to the repository.

    Example: casnap diff pre-migration latest
    """
    from casnap.changes import diff as run_diff

    repo = c.open()
    a = resolve_ref(c, repo, a, filter_paths, filter_tags).hex()
    if b is not None:
        b = resolve_ref(c, repo, b, filter_paths, filter_tags).hex()
    result = run_diff(repo, a, b, data_dir=c.data if b is None else None)
    for line in result.warnings:  # paths too long to name, left out
        warn(line)
    if as_json:
        emit_json(result.to_json())
        return
    _print_diff(result.to_json())


def _signed(n: int | None) -> str:
    return "?" if n is None else f"{n:+d}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _count(n: int | None) -> str:
    return "-" if n is None else str(n)


def _print_diff(d: dict[str, Any]) -> None:
    right = d["b"]["id"][:8] if "id" in d["b"] else f"data dir {printable(d['b']['data_dir'])}"
    click.echo(f"diff {d['a']['id'][:8]} -> {right}")
    marks = {"added": "A", "removed": "D", "changed": "M"}
    for f in d["files"]:
        if f["status"] == "unchanged":
            continue
        size = (
            f"{human(f['size_b'])}"
            if f["size_a"] is None
            else f"{human(f['size_a'])}"
            if f["size_b"] is None
            else f"{human(f['size_a'])} -> {human(f['size_b'])}"
        )
        line = f"  {marks[f['status']]} {printable(f['path']):<30} {size}"
        if f["status"] != "removed":
            line += (
                f"  (shared {human(f['bytes_shared'])}, new {human(f['bytes_new'])} "
                f"in {_plural(f['chunks_new'], 'chunk')})"
            )
        click.echo(line)
        for t in f["tables"]:
            if t["status"] == "changed":
                rows = f"{t['rows_a']} -> {t['rows_b']} rows"
                if t["added"] is not None:
                    rows += f" (+{t['added']} -{t['removed']}"
                    rows += f", {t['updated']} updated)" if t["updated"] is not None else ")"
                schema = ", schema changed" if t["schema_changed"] else ""
                click.echo(f"      table {printable(t['name'])}: {rows}{schema}")
            else:
                n = t["rows_b"] if t["status"] == "added" else t["rows_a"]
                click.echo(f"      table {printable(t['name'])}: {t['status']} ({n} rows)")
        if f.get("tables_problem"):
            click.echo(f"      tables not compared: {f['tables_problem']}")
        ix = f["index"]
        if ix is not None:
            kind = ix["type_b"] or ix["type_a"]
            if ix["type_a"] and ix["type_b"] and ix["type_a"] != ix["type_b"]:
                kind = f"{ix['type_a']} -> {ix['type_b']}"
            click.echo(
                f"      index {kind}: ntotal {_count(ix['ntotal_a'])} -> {_count(ix['ntotal_b'])} "
                f"({_signed(ix['ntotal_delta'])})"
            )
            for side, problem in (("old", ix["problem_a"]), ("new", ix["problem_b"])):
                if problem:
                    click.echo(f"      {side} side {problem}")
    s = d["summary"]
    click.echo(
        f"{s['files_changed']} changed, {s['files_added']} added, {s['files_removed']} removed, "
        f"{s['files_unchanged']} unchanged; {human(s['bytes_new'])} new in "
        f"{_plural(s['chunks_new'], 'chunk')}, {human(s['bytes_shared'])} shared"
    )

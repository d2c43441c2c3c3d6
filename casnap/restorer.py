"""Checkout: restore snapshots into a dir: plan, stage, verify, smoke-check, save, swap.

Every file to write is restored into a private staging dir (0700) beside the target, each byte
verified against its BLAKE3, then smoke-checked there; only when everything passed is what the
target holds and no snapshot does saved as a `pre-checkout` snapshot, and each file renamed into
place. The target is reached only through directory descriptors opened without following
symbolic links (fsdir.py), so a folder swapped for a link between check and use cannot redirect
a write or a removal; any casnap repository inside the target is never touched.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from casnap import (
    capture,
    folderlocks,
    inuse,
    placement,
    preflight,
    presave,
    removals,
    selection,
    smoke,
    smoke_report,
    storeparts,
    swap,
    swapmark,
)
from casnap import restored as restored_files
from casnap.errors import (
    AccessDenied,
    HostileManifest,
    InvalidArgument,
    SnapshotNotFound,
    SourceError,
    Terminated,
    landed,
)
from casnap.formats.sqlite import SQLITE_SIDE_SUFFIXES
from casnap.fsdir import IN_THE_WAY_HINT, Dir, Tree, resolve_trusted, split
from casnap.ids import ObjectId
from casnap.manifest import FileEntry
from casnap.paths import normalize_paths
from casnap.phases import CHECKOUT_PHASES, Phases
from casnap.present import Present
from casnap.progress import ProgressFn
from casnap.repository import Repository
from casnap.signals import uninterrupted
from casnap.staging import (
    Stage,
    copy_into,
    make_target,
    refuse_broad_target,
    run_smoke_cmd,
    stage_files,
    undo_target,
)
from casnap.swapmark import stage_parent, untouched


class CheckoutOptions(NamedTuple):
    """How a checkout behaves (see `checkout`)."""

    safety_snapshot: bool = True
    force: bool = False
    smoke: bool = True
    smoke_cmd: str | None = None
    data_dir: Path | None = None


@dataclass
class CheckoutResult:
    """What a checkout did."""

    id: str
    target: str
    files_written: int = 0
    files_unchanged: int = 0
    files_removed: int = 0
    bytes_written: int = 0
    safety_snapshot: str | None = None
    seconds: float = 0.0
    bytes_compared: int = 0  # bytes of target files read to compare them with the snapshot
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    folders_created: list[str] = field(default_factory=list)  # folders made for no file
    smoke: dict[str, Any] | None = None  # the smoke report ({"ok", "checks"}); None when skipped
    sources: list[dict[str, Any]] = field(default_factory=list)  # snapshot, paths, files
    warnings: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase, and "wall"

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Item:
    entry: FileEntry
    sid: ObjectId  # the snapshot the entry comes from
    replaces_db: bool = False  # the target holds a SQLite database (or its side files) there


def checkout(
    repo: Repository,
    ref: str,
    target: Path | str,
    paths: Sequence[str] = (),
    *,
    safety_snapshot: bool = True,
    force: bool = False,
    smoke: bool = True,
    smoke_cmd: str | None = None,
    progress: ProgressFn | None = None,
    all_paths: bool = False,
    data_dir: Path | str | None = None,
) -> CheckoutResult:
    """Restore a snapshot into target: staged and verified beside it, smoke-checked, then
    swapped in atomically per file. A failed check raises SmokeCheckFailed and leaves target
    untouched. smoke=False skips the built-in checks (hashes are still verified); smoke_cmd is a
    shell command run with the staged dir in CASNAP_STAGED_DIR (also when smoke=False);
    progress gets (bytes done, bytes total). With all_paths, the newest snapshot of each group of
    snapshots committed with the same paths (of the data dir ref was taken of) is restored at
    once, a newer one winning where they overlap.

    A full checkout (no paths) removes the target's files the snapshot lacks only from a folder
    known to hold this data (data_dir, the caller's data dir; one a full checkout went into or
    a snapshot was committed from: removals.py); anywhere else it raises InvalidArgument before
    anything is read or written, unless force (which also lets a database some process holds
    open be replaced).

    A signal the command line handles (Terminated, KeyboardInterrupt) waits for the end of a
    swap begun; raised once every file is in place, it carries the result (errors.landed):
    the checkout completed, and nothing is taken back.
    """
    options = CheckoutOptions(
        safety_snapshot=safety_snapshot,
        force=force,
        smoke=smoke,
        smoke_cmd=smoke_cmd,
        data_dir=Path(data_dir) if data_dir is not None else None,
    )
    phases = Phases.begin(repo)  # counts the opening of a fresh repo
    run: _Checkout | None = None
    try:
        with repo.lock("checkout", folder=Path(target)):  # waits for a commit of target
            repo.refresh(only_if_changed=True)
            sid = repo.resolve(ref)
            snap = repo.snapshot(sid)
            sources = (
                selection.newest_of_groups(repo.snapshots(), snap.source, snap.host)
                if all_paths
                else [(sid, snap)]
            )
            phases.since("open", phases.start)
            chosen = selection.Selection.of(sources)
            run = _Checkout(repo, chosen, Path(target), paths, options, progress, phases)
            result = run.run()
        result.phases = phases.report(CHECKOUT_PHASES)
    except (Terminated, KeyboardInterrupt) as exc:
        if run is not None and run.swapped:  # such as while the lock is released
            landed(exc, run.result)
        raise
    return result


class _Checkout:
    """One checkout run: the state shared by its phases."""

    def __init__(
        self,
        repo: Repository,
        chosen: selection.Selection,
        target: Path,
        paths: Sequence[str],
        options: CheckoutOptions,
        progress: ProgressFn | None,
        phases: Phases | None = None,
    ) -> None:
        self.phases = phases or Phases()
        self.began = time.perf_counter()  # planning starts
        self.repo = repo
        self.sel = chosen
        self.paths = tuple(paths)
        self.opts = options
        self.progress = progress
        self.target = resolve_trusted(Path(target))
        self.shown_target = target
        last = chosen.sources[-1][0]
        self.result = CheckoutResult(id=last.hex(), target=str(self.target))
        self.result.sources = [
            {"id": sid.hex(), "paths": list(snap.paths), "time": snap.time}
            for sid, snap in chosen.sources
        ]
        self.repo_ids = repo.folder_ids()
        self.protected = self._protected()
        self.others = placement.OtherRepositories(self.target)  # any repository inside it
        self.present = Present(repo, self.target, strict=options.safety_snapshot)
        self.modes = swap.OwnerFirst(selection.FolderModes(chosen, self.target))  # folders made
        self.scope: Sequence[str] = ()  # the paths checked out (none: all)
        self.swapped = False  # every file is in place (a signal now stops a completed checkout)
        self.clears_the_way = True  # may remove a file where a folder goes (known or forced)

    # -- the whole run ---------------------------------------------------------------------

    def run(self) -> CheckoutResult:
        t0 = time.perf_counter()
        repo = self.repo
        repo.ensure_index()
        repo.clean_scratch()
        wanted = self._wanted()
        if self.target.exists() and not self.target.is_dir():
            raise SourceError(f"checkout target {self.shown_target} is not a directory")
        if not self.paths:
            refuse_broad_target(self.target, self.shown_target)
        created_root = make_target(self.target, self.sel.dirs.get("."), self.modes.shut)
        try:
            root = Dir.open(self.target)
        except BaseException:
            undo_target(created_root)
            raise
        with root, Tree(root, self.modes) as tree:
            try:
                # one checkout into it at once, and no commit of it meanwhile
                with folderlocks.target_lock(root.fd, self.shown_target, self.repo.notify):
                    removing = self._removals(tree)  # from listings, before any file is read
                    self._run(tree, wanted, removing)
            except BaseException:
                tree.undo_created()
                undo_target(created_root)
                raise
        self.result.seconds = time.perf_counter() - t0
        return self.result

    def _run(self, tree: Tree, wanted: list[_Item], removing: list[str]) -> None:
        here = os.fstat(tree.root.fd)
        ident = (here.st_dev, here.st_ino)
        whole = not self.paths or restored_files.whole_checkout(
            self.repo.id, str(self.target), ident
        )
        in_way = removing if self.clears_the_way else []  # moved aside for what goes there
        cleared = swap.clear_the_way(tree, in_way, self.sel.entries)
        plan, unchanged, unsaved = self._plan(tree, wanted)
        if self.opts.safety_snapshot:  # what it removes is read only to be saved
            unsaved += removals.unsaved(tree, self.present, removing)
        placing = [(i.entry.path, i.replaces_db) for i in plan]
        preflight.check(tree, placing, removing)  # before the work; again before the swap
        for item in plan:
            if item.replaces_db:
                self._check_db(tree, item.entry.path)
        for rel in removing:
            if self._is_db_place(tree, rel):
                self._check_db(tree, rel)
        with contextlib.ExitStack() as swapping:
            with untouched(self.target, self.shown_target):  # a full disk: say so
                stage = Stage(stage_parent(self.target), also_clean=self.target)
            with stage:
                with untouched(self.target, self.shown_target):
                    self._stage(tree, stage, plan, wanted, unchanged, removing)
                replaced = [i.entry.path for i in plan] + removing
                written = self.present.written_since(tree, replaced)  # and stamped again
                unsaved += [rel for rel in written if rel not in unsaved]  # meanwhile: save it too
                if unsaved and self.opts.safety_snapshot:
                    with self.phases.timed("save"):
                        self.result.safety_snapshot = presave.save(
                            self.repo,
                            self.target,
                            self.sel.sources,
                            unsaved,
                            self.result.warnings,
                        )
                presave.confirm_lock(self.repo, self.result.safety_snapshot)  # before a rename
                swap_start = time.perf_counter()
                preflight.check(tree, placing, removing)
                swapping.enter_context(uninterrupted())  # every file swapped in, not some
                touched = self._swap(tree, stage, plan, replaced)
                self.swapped = True
                # the mark stays while files the snapshot lacks are removed: a kill among them
                # leaves files of two snapshots as well
                removed, emptied = swap.remove_files(
                    tree, [r for r in removing if r not in cleared]
                )
                if not self.paths:  # a killed swap into it finished: said no more (swapmark.py)
                    swapmark.finished(self.target, self.sel.sources)
            self.result.removed += sorted(cleared) + removed
            moved = set(self.present.written_since(tree, [i.entry.path for i in unchanged]))
            for item in (i for i in unchanged if i.entry.path not in moved):  # not an app's write
                swap.restore_attrs(tree, item.entry)
            folders = [f for f in self.sel.empty_folders(self.scope) if not self._in_repo(f)]
            self.result.folders_created = swap.make_folders(tree, folders, self.result.warnings)
            self.modes.finish(tree, self.result.warnings)  # the folders are filled
            swap.sync_folders(tree, touched | emptied)
            self.result.files_written = len(plan)
            self.result.files_unchanged = len(unchanged)
            self.result.unchanged = sorted(i.entry.path for i in unchanged)
            self.result.bytes_compared = self.present.bytes_read
            self.result.files_removed = len(removing)
            placed = [(i.entry, i.sid.hex()) for i in plan + unchanged if i.entry.path not in moved]
            restored_files.record(self.repo.id, self.target, placed, whole)
            self.phases.since("swap", swap_start)

    # -- plan ------------------------------------------------------------------------------

    def _protected(self) -> str | None:
        """The repository's path relative to the target when it lies inside it; InvalidArgument when
        the target is the repository or lies inside it, or holds (or lies inside) another one."""
        if self.repo.root is not None and self.repo.holds_path(self.target):
            raise InvalidArgument(
                f"refusing to check out into {self.shown_target}: it is the repository or lies "
                "inside it"
            )
        placement.refuse_other_repository(self.target, self.shown_target)
        if self.repo.root is None:
            return None
        repo_root = self.repo.root.resolve()
        if capture.inside(repo_root, self.target):
            return repo_root.relative_to(self.target).as_posix()
        return None

    def _in_repo(self, rel: str, st: os.stat_result | None = None) -> bool:
        """Whether rel lies in the repository: by path, or (given its lstat) a folder of the
        repository reached another way, such as a bind mount; or in a folder holding any other."""
        p = self.protected
        if (p is not None and (rel == p or rel.startswith(p + "/"))) or self.others.holds(rel):
            return True
        return st is not None and (st.st_dev, st.st_ino) in self.repo_ids

    def _wanted(self) -> list[_Item]:
        """The entries to restore (all, or those under the given paths), repository excluded."""
        entries = self.sel.entries
        if self.paths:
            # read as every command reads paths, against the data dir the snapshot was taken of;
            # each must name a file or folder of the snapshot (not of any data dir)
            holds = selection.holds(entries, self.sel.folders)
            source = Path(self.sel.sources[-1][1].source)
            wanted = self.scope = normalize_paths(self.paths, source, exists=holds)
            for rel in wanted:
                if not holds(rel):
                    ids = [sid.short for sid, _ in self.sel.sources]
                    what = f"snapshot{'s' if len(ids) > 1 else ''} {', '.join(ids)}"
                    others = [snap for _, snap in self.repo.snapshots()]
                    hint = selection.outside(rel, [snap for _, snap in self.sel.sources], others)
                    raise SnapshotNotFound(f"{rel} is not in {what}{hint}")
            entries = {k: v for k, v in entries.items() if capture.in_scope(k, wanted)}
        items = []
        for path in sorted(entries):
            entry, sid = entries[path]
            if self._in_repo(path):
                self.result.warnings.append(
                    f"{path}: lies inside a repository, which a checkout never touches; skipped"
                )
                continue
            items.append(_Item(entry, sid))
        return items

    def _plan(self, tree: Tree, wanted: list[_Item]) -> tuple[list[_Item], list[_Item], list[str]]:
        """(items to write, items already in place, paths of target data no snapshot holds that
        this checkout replaces)."""
        plan: list[_Item] = []
        unchanged: list[_Item] = []
        unsaved: list[str] = []
        places: dict[str, tuple[int, int] | None] = {}
        missing: set[str] = set()  # folders the target lacks: looked for once, not per file
        for item in wanted:
            rel = item.entry.path
            head, name = split(rel)
            parent = None if head in missing else tree.dir(head)
            if parent is None:
                missing.add(head)
            if parent is not None and self._in_repo(rel, os.fstat(parent.fd)):
                self.result.warnings.append(
                    f"{rel}: lies inside a repository, which a checkout never touches; skipped"
                )
                continue
            st = parent.lstat(name) if parent is not None and rel not in tree.clearing else None
            places[rel] = (st.st_dev, st.st_ino) if st is not None else None
            if st is None:
                if parent is not None and any(parent.lstat(name + s) for s in SQLITE_SIDE_SUFFIXES):
                    item.replaces_db = True
                plan.append(item)
                continue
            if stat.S_ISLNK(st.st_mode) and (self.target / rel).exists():
                raise HostileManifest(f"{self.target / rel} is a symbolic link: {IN_THE_WAY_HINT}")
            if not stat.S_ISREG(st.st_mode):
                raise SourceError(
                    f"cannot restore {rel}: {self.target / rel} exists and is not a file: "
                    f"{IN_THE_WAY_HINT}"
                )
            assert parent is not None
            item.replaces_db = swap.is_sqlite(parent, name) or any(
                parent.lstat(name + s) for s in SQLITE_SIDE_SUFFIXES
            )
            if item.replaces_db:
                holder = inuse.sqlite_lock(parent, name)
                if holder is not None:  # being written: do not even wait to read it
                    self._check_db(tree, rel)
            try:
                current = self.present.hash_of(parent, name, rel)
            except AccessDenied as exc:
                if self.opts.safety_snapshot:
                    raise removals.unreadable(exc, removed=False) from exc
                plan.append(item)  # replaced unread, as asked: nothing is saved
                continue
            if current == item.entry.hash:
                unchanged.append(item)
                continue
            if not self.present.held(current, rel):
                unsaved.append(rel)
            plan.append(item)
        # a hard link is in place only when it is the same file as its primary, in place too
        in_place = {i.entry.path for i in unchanged}
        for item in list(unchanged):
            link = item.entry.link
            if link is not None and (
                link not in in_place or places.get(link) != places.get(item.entry.path)
            ):
                unchanged.remove(item)
                plan.append(item)
        # hard links after the files they link to, then by path
        return (
            sorted(plan, key=lambda i: (i.entry.link is not None, i.entry.path)),
            unchanged,
            unsaved,
        )

    def _removals(self, tree: Tree) -> list[str]:
        """Target files the snapshots' scopes cover but do not hold (full checkouts only), from
        the listings alone; InvalidArgument when there are some and the target is not known to
        hold this data, unless forced; AccessDenied for a folder it may not list."""
        if self.paths:
            return []
        denied: list[AccessDenied] = []  # folders it may not list: refused, or said
        out = removals.listed(tree, self.sel, self._in_repo, denied)
        if (out or denied) and not self.opts.force:
            if not removals.known(self.repo, self.target, tree.root.fd, self.opts.data_dir):
                removals.refuse(out, self.sel, self.shown_target)
                self.clears_the_way = False  # a file where a folder goes: refused by the plan
        if denied:
            raise removals.unlisted(denied[0]) from denied[0]
        return out

    def _is_db_place(self, tree: Tree, rel: str) -> bool:
        parent, name = tree.parent_of(rel)
        return parent is not None and swap.is_sqlite(parent, name)

    def _check_db(self, tree: Tree, rel: str) -> None:
        parent, name = tree.parent_of(rel)
        if parent is not None:
            inuse.refuse_if_in_use(parent, name, str(self.target / rel), self.opts.force)

    # -- stage -----------------------------------------------------------------------------

    def _stage(
        self,
        tree: Tree,
        stage: Stage,
        plan: list[_Item],
        wanted: list[_Item],
        unchanged: list[_Item],
        removals: list[str],
    ) -> None:
        """Write every planned file (and, for the checks, unchanged databases or, for a smoke
        command, every unchanged file) into the stage, verified; then smoke-check it."""
        opts = self.opts
        staged = list(plan)
        staged += [
            u for u in unchanged if opts.smoke_cmd or (opts.smoke and u.entry.kind == "sqlite")
        ]
        smoke_start = self.phases.since("plan", self.began)
        with smoke.SmokeSession(
            databases=[i.entry.path for i in wanted if i.entry.kind == "sqlite"],
            builtin=opts.smoke,
            expect_faiss=any(smoke.may_be_faiss(i.entry.path, i.entry.chunker) for i in wanted),
        ) as checks:
            kept = {i.entry.path for i in unchanged} - {i.entry.path for i in staged}
            for item in unchanged:  # indexes left in place are read while the rest is restored
                if item.entry.path in kept and smoke.may_be_faiss(
                    item.entry.path, item.entry.chunker
                ):
                    checks.present(self.target / item.entry.path)
            self.phases.since("smoke" if opts.smoke else "plan", smoke_start)  # FAISS probe child
            entries = [i.entry for i in staged]
            before = stage_files(self.repo, stage, entries, checks, self.progress, self.phases)
            self.result.bytes_written = sum(i.entry.size for i in plan)
            if opts.smoke or opts.smoke_cmd:
                with self.phases.timed("smoke"):
                    report = self._smoke(
                        tree, stage, wanted, staged, unchanged, removals, checks, before
                    )
                report.raise_if_failed(f"nothing restored, {self.shown_target} untouched")
                self.result.smoke = report.to_json()

    def _smoke(
        self,
        tree: Tree,
        stage: Stage,
        wanted: list[_Item],
        staged: list[_Item],
        unchanged: list[_Item],
        removals: list[str],
        checks: smoke.SmokeSession,
        before: dict[str, tuple[int, ...] | None],
    ) -> smoke_report.SmokeReport:
        """Smoke-check the restored files in the stage; the command sees the whole result."""
        view: dict[str, Path] = {}
        staged_paths = {i.entry.path for i in staged}
        selected = {i.entry.path for i in wanted}
        removed = set(removals)
        if self.target.is_dir():
            seen = capture.ScanOptions(  # what cannot be read by path (PATH_MAX) is not shown
                prune=self.repo.nested_in(self.target), prune_ids=self.repo_ids, unreadable=[]
            )
            for src in capture.scan(self.target, options=seen):
                if src.path in selected or src.path in removed or self._in_repo(src.path):
                    continue
                if self.opts.smoke_cmd:  # the data dir's other files, so the command sees them
                    try:
                        copy_into(src, stage.path / src.path)
                    except AccessDenied as exc:  # a file it leaves alone (skipped at commit)
                        self.result.warnings.append(f"{exc}: left out of the smoke command's copy")
                        continue
                    view[src.path] = stage.path / src.path
                else:
                    view[src.path] = src.abspath
        for item in unchanged:
            view[item.entry.path] = self.target / item.entry.path
        for item in staged:
            view[item.entry.path] = stage.path / item.entry.path
        env = {"CASNAP_TARGET_DIR": str(self.target), "CASNAP_SNAPSHOT": self.result.id}
        report = checks.finish(view, sorted(selected), staged_dir=stage.path)
        if self.opts.smoke and (self.paths or any(s.paths for _, s in self.sel.sources)):
            kept = {i.entry.path for i in unchanged}
            whole = storeparts.whole_stores(
                self.sel, view, selected, kept, lambda rel: self.present.hash_at(tree, rel)
            )
            report = smoke_report.SmokeReport((*report.checks, *whole))
        if not self.opts.smoke_cmd:  # the built-in checks only read (immutable, read-only)
            return report
        # on a copy: the command may write, the stage stays as verified, unless it wrote there
        report = run_smoke_cmd(stage, self.opts.smoke_cmd, env, report)
        now = stage.fingerprints(sorted(staged_paths))
        changed = sorted(p for p in staged_paths if now[p] != before[p])
        if changed:
            detail = (
                f"the smoke command modified {', '.join(changed[:3])}; restored files must stay "
                "as verified"
            )
            extra = smoke_report.Check("staged-unchanged", changed[0], False, detail)
            report = smoke_report.SmokeReport((*report.checks, extra))
        return report

    # -- swap ------------------------------------------------------------------------------

    def _swap(self, tree: Tree, stage: Stage, plan: list[_Item], replaced: list[str]) -> set[str]:
        """Rename every staged file of the plan into place; returns the folders touched.

        Databases about to be replaced are locked the way SQLite locks them first, all before
        the first rename, so no app starts a transaction on one meanwhile (and one that holds a
        lock stops the checkout before anything changed). A file it replaces or removes that
        was written since the pre-checkout snapshot read it (an app still saving) stops it
        then too: that content is in no snapshot."""
        dbs = [item.entry.path for item in plan if item.replaces_db]
        let_be = {rel: swap.let_be(tree, rel) for rel in dbs} if self.opts.force else {}
        with contextlib.ExitStack() as held:
            for item in plan:
                if item.replaces_db:
                    parent, name = tree.parent_of(item.entry.path)
                    if parent is not None:
                        if not self.opts.force:
                            self._check_db(tree, item.entry.path)
                        held.enter_context(
                            inuse.held_sqlite_locks(parent, name, self.target / item.entry.path)
                        )
            written_now = self.present.written_since(tree, replaced)
            if written_now and self.opts.safety_snapshot:
                raise SourceError(
                    f"{self.target / written_now[0]} was written while the checkout ran, after "
                    "the data it replaces was saved (an app still writing there?): nothing "
                    "restored; stop the app and check out again"
                )
            placing = [(item.entry.path, item.replaces_db) for item in plan]
            entries = [item.entry for item in plan]
            if plan:  # a kill from here on leaves the target part old, part new: said later
                with untouched(self.target, self.shown_target):
                    swapmark.mark(stage.dir, self.result.id, self.target)
            written, touched = swap.swap_in(tree, stage.dir, placing, self.modes, entries, let_be)
            self.result.written += written
        return touched

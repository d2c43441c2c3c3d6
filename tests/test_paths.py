"""One reading of user-given paths for every command: relative to the data dir, `./x`, paths
relative to the working dir or absolute inside the data dir; outside it is a usage error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap.cli import cli
from casnap.errors import EXIT_CODES, InvalidArgument, SourceError
from casnap.locations import S3Url, parse_location
from casnap.paths import commit_paths, normalize_paths
from tests.helpers_smoke import make_app
from tests.util import snapshot_tree


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path/data with app.db and faiss/*; the working dir is tmp_path."""
    monkeypatch.chdir(tmp_path)
    return make_app(tmp_path / "data")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (["app.db"], ("app.db",)),
        (["./app.db"], ("app.db",)),
        (["data/app.db"], ("app.db",)),
        (["./data/faiss/"], ("faiss",)),
        (["faiss", "faiss/ivf.index"], ("faiss",)),
        (["faiss", "app.db"], ("app.db", "faiss")),
        (["."], ()),
        (["data"], ()),
        (["app.db", "."], ()),
    ],
)
def test_relative_paths(data: Path, given: list[str], expected: tuple[str, ...]) -> None:
    assert normalize_paths(given, Path("data")) == expected
    assert normalize_paths(given, data) == expected  # the data dir given absolute


def test_absolute_paths_and_the_data_dir_itself(data: Path) -> None:
    assert normalize_paths([str(data / "app.db")], Path("data")) == ("app.db",)
    assert normalize_paths([str(data / "faiss") + "/"], data) == ("faiss",)
    assert normalize_paths([str(data)], Path("data")) == ()
    link = data.parent / "link"
    link.symlink_to(data)
    assert normalize_paths([str(data / "app.db")], link) == ("app.db",)
    assert normalize_paths([str(link / "app.db")], data) == ("app.db",)


@pytest.mark.parametrize("given", ["../elsewhere", "/etc/passwd", "data/../../x", "..", ""])
def test_outside_is_a_usage_error_naming_the_path(data: Path, given: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        normalize_paths([given], Path("data"))
    assert info.value.exit_code == EXIT_CODES["usage"]
    if given:
        assert given in str(info.value)


def test_from_inside_the_data_dir(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(data / "faiss")
    root = data.parent / "data"
    assert normalize_paths(["ivf.index"], root) == ("faiss/ivf.index",)
    assert normalize_paths(["../app.db"], root) == ("app.db",)
    assert normalize_paths(["app.db"], root) == ("app.db",)  # the data-dir reading exists
    assert normalize_paths(["."], root) == ()


def test_the_reading_that_exists_wins(data: Path) -> None:
    (data / "data").mkdir()
    (data / "data" / "app.db").write_bytes(b"x")
    # both readings exist: the data-dir one first
    assert normalize_paths(["data/app.db"], Path("data")) == ("data/app.db",)
    # what exists is the caller's: in a snapshot holding app.db only, the cwd reading wins
    assert normalize_paths(["data/app.db"], Path("data"), exists={"app.db"}.__contains__) == (
        "app.db",
    )
    # neither exists: the data-dir reading (commit then says it does not exist)
    assert normalize_paths(["nope/x"], Path("data")) == ("nope/x",)


def test_commit_paths_must_exist(data: Path) -> None:
    assert commit_paths(["data/app.db"], Path("data")) == ("app.db",)
    with pytest.raises(SourceError, match="does not exist"):
        commit_paths(["missing.db"], Path("data"))


@pytest.mark.parametrize("text", ["sftp://host/dir", "file:///srv/backups", "gs://bucket/x"])
def test_other_repository_urls_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument, match="not supported"):
        parse_location(text)
    assert parse_location("./backups") == Path("backups")
    assert parse_location("weird:name") == Path("weird:name")  # no `//`: a local name


def test_s3_urls_are_parsed_once() -> None:
    """s3://BUCKET/PREFIX: the bucket by S3's naming rules, the prefix a clean relative path."""
    assert parse_location("s3://my-bucket/app/backups") == S3Url("my-bucket", "app/backups")
    assert parse_location("s3://my.bucket.1") == S3Url("my.bucket.1", "")
    assert parse_location("s3://bkt/x/") == S3Url("bkt", "x")  # one trailing slash dropped
    assert str(S3Url("bkt", "x/y")) == "s3://bkt/x/y"
    assert str(S3Url("bkt")) == "s3://bkt"


BAD_S3 = [
    "s3://",
    "s3:///x",
    "s3://ab/x",  # too short
    "s3://" + "a" * 64,
    "s3://My-Bucket/x",
    "s3://-bucket/x",
    "s3://bucket-/x",
    "s3://b..b/x",
    "s3://192.168.1.1/x",
    "s3://b_b_b/x",
    "s3://bucket//x",
    "s3://bucket/x//y",
    "s3://bucket/x/../y",
    "s3://bucket/..",
    "s3://bucket/./x",
    "s3://bucket/x//",
    "s3://bucket/x\ny",
]


@pytest.mark.parametrize("text", BAD_S3)
def test_bad_s3_urls_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument, match="repository"):
        parse_location(text)


def test_a_bad_s3_prefix_is_told_without_refusing_the_trailing_slash_it_takes() -> None:
    """The refusal of `s3://bucket/x//` said "no trailing '/'", while `s3://bucket/x/` is taken
    (one trailing slash is dropped): it says what is refused, and that one trailing slash is
    fine."""
    with pytest.raises(InvalidArgument) as caught:
        parse_location("s3://bucket/x//")
    message = str(caught.value)
    assert "doubled" in message and "one trailing '/' is dropped" in message, message


# -- through the CLI, from the data dir's parent ------------------------------------------------


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--repo", "repo", "--data", "data", *args])
    return result.exit_code, result.stdout, result.stderr


def committed_paths() -> list[list[str]]:
    return [r["paths"] for r in json.loads(run("log", "--json")[1])]


@pytest.mark.parametrize("form", ["app.db", "./app.db", "data/app.db", "ABS"])
def test_commit_and_checkout_accept_every_form(data: Path, tmp_path: Path, form: str) -> None:
    given = str(data / "app.db") if form == "ABS" else form
    code, _, err = run("commit", given)
    assert code == 0, err
    assert committed_paths() == [["app.db"]]
    state = snapshot_tree(data)
    code, _, err = run("checkout", "latest", given, "--to", "out")
    assert code == 0, err
    assert snapshot_tree(tmp_path / "out") == {"app.db": state["app.db"]}


def test_checkout_path_need_only_exist_in_the_snapshot(data: Path, tmp_path: Path) -> None:
    assert run("commit")[0] == 0
    state = snapshot_tree(data)
    (data / "faiss" / "ivf.index").unlink()
    code, _, err = run("checkout", "latest", "data/faiss/ivf.index", "--no-safety-snapshot")
    assert code == 0, err
    assert (data / "faiss" / "ivf.index").read_bytes() == state["faiss/ivf.index"]
    code, _, err = run("checkout", "latest", "faiss/nope.index")
    assert code == EXIT_CODES["not-found"] and "not in snapshot" in err


@pytest.mark.parametrize("command", ["commit", "checkout latest", "prune --keep-last 1 --path"])
@pytest.mark.parametrize("form", ["../other.db", "ABS"])
def test_a_path_outside_the_data_dir_is_a_usage_error(data: Path, command: str, form: str) -> None:
    assert run("commit")[0] == 0
    (data.parent / "other.db").write_bytes(b"x")
    given = str(data.parent / "other.db") if form == "ABS" else form
    code, _, err = run(*command.split(), given)
    assert code == EXIT_CODES["usage"], err
    assert f"{given} is outside the data dir" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("command", "code", "message"),
    [
        ("ls latest", "not-found", "nonexist is not in snapshot"),
        ("checkout latest", "not-found", "nonexist is not in snapshot"),
        ("show latest --path", "not-found", "no snapshot committed with nonexist"),
        ("log --path", "ok", "no snapshots committed with nonexist"),
        ("prune --keep-last 1 --path", "not-found", "no snapshot committed with nonexist"),
        ("forget latest --path", "not-found", "no snapshot committed with nonexist"),
        ("commit", "source", "nonexist does not exist in the data dir"),
    ],
)
def test_a_bare_name_the_data_dir_lacks_is_read_in_the_data_dir(
    data: Path, command: str, code: str, message: str
) -> None:
    """Run from the data dir's parent, a name the data dir and its snapshots lack was said to
    be "outside the data dir" (exit 2) when something of that name lay beside the working
    dir. From the working dir it names nothing inside the data dir, so the only reading is the
    data dir's: the name is not in the snapshot (exit 4), as `faiss/x` is."""
    assert run("commit")[0] == 0
    (data.parent / "nonexist").write_bytes(b"beside the working dir, not in the data dir")
    got, out, err = run(*command.split(), "nonexist")
    assert got == EXIT_CODES[code], err
    assert message in out + err and "outside" not in err, err
    assert len((out + err).strip().splitlines()) == 1


def test_prune_path_in_any_form_selects_the_group(data: Path) -> None:
    for _ in range(2):
        assert run("commit", "app.db")[0] == 0
        assert run("commit", "faiss")[0] == 0
    for form in ("data/app.db", str(data / "app.db"), "./app.db"):
        code, out, err = run("prune", "--keep-last", "2", "--path", form, "--dry-run", "--json")
        assert code == 0, err
        assert [g["paths"] for g in json.loads(out)["groups"]] == [["app.db"]]
    code, out, err = run("prune", "--keep-last", "1", "--path", "data/app.db", "--json")
    assert code == 0, err
    assert len(json.loads(out)["removed"]) == 1
    assert sorted(map(tuple, committed_paths())) == [("app.db",), ("faiss",), ("faiss",)]


@pytest.mark.parametrize(
    "form", ["faiss", "faiss/", "./faiss", "data/faiss", "ABS", "./faiss/*", "data/faiss/*"]
)
def test_an_exclude_is_read_as_paths_are(data: Path, form: str) -> None:
    """`--exclude data/faiss` beside the data dir, or its absolute path (as restic takes one),
    left out nothing: the glob was matched against data-dir paths as given."""
    given = str(data / "faiss") if form == "ABS" else form
    code, _, err = run("commit", "--exclude", given)
    assert code == 0, err
    assert [f["path"] for f in json.loads(run("ls", "latest", "--json")[1])["files"]] == ["app.db"]


@pytest.mark.parametrize("form", ["notes.txt/", "./notes.txt/", "data/notes.txt/", "*.txt/"])
def test_an_exclude_ending_in_a_slash_leaves_out_folders_only(data: Path, form: str) -> None:
    """`--exclude notes.txt/` (as in .gitignore: folders of that name) left out the file
    notes.txt too: a file the user meant to keep was in no snapshot."""
    (data / "notes.txt").write_text("keep me")
    (data / "sub" / "notes.txt").mkdir(parents=True)
    (data / "sub" / "notes.txt" / "inner").write_text("leave me out")
    code, _, err = run("commit", "--exclude", form)
    assert code == 0, err
    files = [f["path"] for f in json.loads(run("ls", "latest", "--json")[1])["files"]]
    assert "notes.txt" in files
    assert "sub/notes.txt/inner" not in files or form in ("./notes.txt/", "data/notes.txt/")


def test_a_file_a_newer_snapshot_with_a_folder_exclude_lacks_is_not_brought_back(
    data: Path,
) -> None:
    """A newer whole-dir snapshot committed with `--exclude notes.txt/` (folders only) was
    taken of sub/notes.txt's place, a file: the user had deleted it. `checkout latest
    --all-paths` still took it from an older snapshot of sub/ as if the newer one had left
    it out, and brought the deleted file back."""
    (data / "sub").mkdir()
    (data / "sub" / "notes.txt").write_text("deleted since")
    (data / "sub" / "kept").write_text("kept")
    assert run("commit", "sub")[0] == 0
    (data / "sub" / "notes.txt").unlink()
    code, _, err = run("commit", "--exclude", "notes.txt/")
    assert code == 0, err
    code, _, err = run("checkout", "latest", "--all-paths")
    assert code == 0, err
    assert sorted(p.name for p in (data / "sub").iterdir()) == ["kept"]


@pytest.mark.parametrize("form", ["*/", "**/", "?*/"])
def test_an_exclude_of_every_folder_keeps_the_files_at_the_top(data: Path, form: str) -> None:
    """`--exclude '*/'` matched the data dir itself (`.`), so the snapshot held nothing."""
    code, _, err = run("commit", "--exclude", form)
    assert code == 0, err
    assert [f["path"] for f in json.loads(run("ls", "latest", "--json")[1])["files"]] == ["app.db"]


@pytest.mark.parametrize(
    ("paths", "form"),
    [(["faiss"], "*/"), (["faiss"], "faiss"), (["faiss"], "**/"), (["app.db"], "*")],
)
def test_an_exclude_of_all_a_commit_of_paths_takes_is_a_usage_error(
    data: Path, paths: list[str], form: str
) -> None:
    """`commit faiss --exclude '*/'` (the files at the top of faiss/, one would think) matched
    faiss itself, so the snapshot held nothing, exit 0, not a word: the data dir is never
    matched so, and a commit's own path left out whole is the usage error of the data dir's."""
    code, _, err = run("commit", *paths, "--exclude", form)
    assert code == EXIT_CODES["usage"] and len(err.strip().splitlines()) == 1, err
    assert form in err and paths[0] in err
    assert run("log", "--json")[1].strip() in ("", "[]")


@pytest.mark.parametrize("given", ["../elsewhere", "/tmp", ".", "/"])
def test_an_exclude_outside_the_data_dir_or_of_all_of_it_is_a_usage_error(
    data: Path, given: str
) -> None:
    code, _, err = run("commit", "--exclude", given)
    assert code == EXIT_CODES["usage"] and len(err.strip().splitlines()) == 1, err
    assert given in err

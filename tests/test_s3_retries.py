"""Every request to an S3 store is retried when it fails transiently, the first ones of a
command too: those that look at what the location holds before the repository is opened or made
(its config, the bucket, what a prefix holds), which on a host with no cache of the location (a
fresh container, a new machine) are the first requests a command makes (docs/FORMAT.md,
"Retries")."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap.cli import cli
from tests.conftest import make_app
from tests.tcpproxy import CuttingProxy

PW = "correct horse"


def _cli(repo: str, data: Path, *args: str) -> tuple[int, str, str]:
    env = {"CASNAP_PASSWORD": PW, "CASNAP_PASSWORD_FILE": None, "CASNAP_PASSWORD_COMMAND": None}
    result = CliRunner().invoke(cli, ["--repo", repo, "--data", str(data), *args], env=env)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.usefixtures("quick_retries")
@pytest.mark.parametrize(
    "request_line",
    [
        rb"^HEAD /[^/ ]+ ",  # init: is the bucket there?
        rb"^HEAD /\S+/app/config ",  # is a repository there?
        rb"^GET /[^/ ]+/?\?list-type=2&prefix=app%2F",  # what else the prefix holds
        rb"^HEAD /[^/ ]+/config ",  # a repository above the prefix?
    ],
)
def test_a_request_dropped_before_the_repository_is_made_is_retried(
    request_line: bytes,
    s3_server: str,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The network drops one of init's first requests, each in turn: init still makes the
    repository, a commit into it stores its snapshot."""
    data = tmp_path / "data"
    make_app(data, rows=20, vectors=30)
    repo = f"s3://{s3_bucket}/app"
    with CuttingProxy(s3_server) as proxy:
        monkeypatch.setenv("CASNAP_S3_ENDPOINT", proxy.endpoint)
        proxy.drop_once(request_line)
        code, _, err = _cli(repo, data, "init")
        assert proxy.dropped, proxy.requests  # the request was made, and dropped
        assert code == 0, err
        code, out, err = _cli(repo, data, "commit", "-q")
        assert code == 0, err


@pytest.mark.usefixtures("quick_retries")
@pytest.mark.parametrize("command", ["log", "commit"])
def test_a_request_dropped_while_a_host_without_a_cache_opens_the_repository_is_retried(
    command: str,
    s3_server: str,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A host that keeps nothing of the location (its cache dir new) first looks for the
    config: the network drops that request, and the command goes on as if it had not."""
    data = tmp_path / "data"
    make_app(data, rows=20, vectors=30)
    repo = f"s3://{s3_bucket}/app"
    with CuttingProxy(s3_server) as proxy:
        monkeypatch.setenv("CASNAP_S3_ENDPOINT", proxy.endpoint)
        code, _, err = _cli(repo, data, "commit", "-q")
        assert code == 0, err
        monkeypatch.setenv("CASNAP_CACHE_DIR", str(tmp_path / "new-cache"))
        proxy.drop_once(rb"^HEAD /\S+/app/config ")
        code, out, err = _cli(repo, data, command)
        assert proxy.dropped, proxy.requests
        assert code == 0, err


@pytest.mark.usefixtures("quick_retries")
def test_a_store_that_accepts_connections_and_never_answers_is_given_up_on_after_two_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endpoint that accepts connections and sends nothing (a hung server, a stopped
    process behind a live socket) had each request wait its whole read timeout 8 times over
    (8.5 minutes at 60 s): a store silent for two whole timeouts in a row is given up on, with
    one line saying so; one that fails in other ways keeps every attempt."""
    import socket

    import casnap.backends.s3 as s3

    monkeypatch.setattr(s3, "READ_TIMEOUT", 0.3)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # the kernel accepts; nobody ever answers
        port = silent.getsockname()[1]
        monkeypatch.setenv("CASNAP_S3_ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        code, _, err = _cli("s3://bucket/app", tmp_path / "data", "log")
    assert code != 0 and len(err.strip().splitlines()) == 1, err
    assert "2 of them unanswered" in err and "gave up after 2 attempts" in err, err

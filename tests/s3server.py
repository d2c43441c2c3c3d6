"""A real S3 HTTP server for the tests: moto's, started once per session on 127.0.0.1.

`s3_server` (session) starts `python -m moto.server` on a free port and stops it at the end;
`s3_env` (per test) points casnap at it through the environment (CASNAP_S3_ENDPOINT and fake
credentials, so no request reaches any other host) and `s3_bucket` gives each test a fresh
bucket name (created by the test or by `casnap init`); `quick_retries` keeps the retry policy's
attempts but makes its waits milliseconds long.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
# never read the user's own configuration, nor another endpoint
CLEARED = ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION")
_buckets = itertools.count()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def have_s3() -> bool:
    """True when botocore and moto's server can be imported."""
    try:
        import botocore  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError:
        return False
    return True


def server_env(endpoint: str, home: Path) -> dict[str, str]:
    """The environment of a process that talks to the test server only."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(FAKE_ENV)
    env["CASNAP_S3_ENDPOINT"] = endpoint
    env["AWS_CONFIG_FILE"] = str(home / "aws-config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(home / "aws-credentials")
    return env


@contextlib.contextmanager
def moto_server(log_dir: Path) -> Iterator[str]:
    """A moto S3 server on a free port of 127.0.0.1 while the block runs: its endpoint URL."""
    port = _free_port()
    log = log_dir / "server.log"
    env = server_env("", log_dir)
    env.pop("CASNAP_S3_ENDPOINT")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=2).close()  # noqa: S310
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start: {log.read_text()}") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL of a moto S3 server running for the whole session."""
    if not have_s3():
        pytest.skip("boto3 and moto[server] are not installed (pip install -e '.[dev]')")
    with moto_server(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """This process (and the casnap processes it starts with os.environ) talks to the test
    server with fake credentials; the environment for subprocesses is returned too."""
    env = server_env(s3_server, tmp_path)
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    for name in (*FAKE_ENV, "CASNAP_S3_ENDPOINT", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.setenv(name, env[name])
    return env


@pytest.fixture
def s3_bucket(s3_env: dict[str, str]) -> str:
    """A bucket name no other test uses (not created: `init` or the test creates it)."""
    return f"casnap-test-{os.getpid()}-{next(_buckets)}"


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The retry policy's attempts, with waits of milliseconds: a store gone is given up on
    after as many tries as in production, without a minute of sleeping."""
    from casnap.backends.retrying import RetryingBackend
    from casnap.constants import RETRY_ATTEMPTS

    init = RetryingBackend.__init__
    defaults = init.__defaults__
    assert defaults is not None and defaults[0] == RETRY_ATTEMPTS
    monkeypatch.setattr(init, "__defaults__", (RETRY_ATTEMPTS, 0.001, 0.005, *defaults[3:]))


def make_bucket(name: str) -> None:
    """Create a bucket on the test server (s3_env must be active)."""
    from casnap.backends.s3 import make_client

    client = make_client()
    try:
        client.create_bucket(Bucket=name)
    finally:
        client.close()

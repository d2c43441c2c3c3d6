"""Which Python S3 client casnap's S3 backend uses: boto3 against obstore, on one local server.

Starts a moto S3 server on 127.0.0.1 (fake credentials, nothing leaves the machine), then times,
for each client: put and get of 16 MiB objects, put and get of 1 KiB objects (put-if-absent,
as casnap stores), ranged gets of 512 KiB from a 16 MiB object from 8 threads, and a listing of
1000 keys. Prints a table and writes results/s3_clients.json.

    .venv/bin/pip install -e '.[dev]' obstore
    .venv/bin/python benchmarks/s3_clients.py [--rounds 3] [--out benchmarks/results]

The local server makes every request cheap, so what differs is the client's own cost per
request and per byte: on a real store, latency dominates small requests for both.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BIG = 16 << 20
SMALL = 1 << 10
RANGE = 512 << 10
N_BIG = 4
N_SMALL = 200
N_RANGES = 64
N_LIST = 1000
THREADS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=2).close()  # noqa: S310
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto server did not start")


class Boto3Client:
    name = "boto3"

    def __init__(self, endpoint: str, bucket: str) -> None:
        os.environ["CASNAP_S3_ENDPOINT"] = endpoint
        from casnap.backends.s3 import make_client

        self.c = make_client()
        self.bucket = bucket

    def put(self, key: str, data: bytes) -> None:
        self.c.put_object(Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*")

    def get(self, key: str) -> bytes:
        return self.c.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        rng = f"bytes={offset}-{offset + length - 1}"
        return self.c.get_object(Bucket=self.bucket, Key=key, Range=rng)["Body"].read()

    def list(self, prefix: str) -> int:
        pages = self.c.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sum(len(p.get("Contents", ())) for p in pages)


class ObstoreClient:
    name = "obstore"

    def __init__(self, endpoint: str, bucket: str) -> None:
        import obstore
        from obstore.store import S3Store

        self.o = obstore
        self.s = S3Store(
            bucket,
            endpoint=endpoint,
            region="us-east-1",
            access_key_id="testing",
            secret_access_key="testing",
            virtual_hosted_style_request=False,
            client_options={"allow_http": True, "pool_max_idle_per_host": "64"},
        )

    def put(self, key: str, data: bytes) -> None:
        self.o.put(self.s, key, data, mode="create")

    def get(self, key: str) -> bytes:
        return self.o.get(self.s, key).bytes().to_bytes()

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self.o.get_range(self.s, key, start=offset, length=length).to_bytes()

    def list(self, prefix: str) -> int:
        return sum(len(batch) for batch in self.o.list(self.s, prefix + "/", chunk_size=1000))


def timed(fn: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure(client: Boto3Client | ObstoreClient, rounds: int) -> dict[str, float]:
    rng = random.Random(0)
    big = [rng.randbytes(BIG) for _ in range(N_BIG)]
    small = [rng.randbytes(SMALL) for _ in range(N_SMALL)]
    run = [0]

    def put_big() -> None:
        run[0] += 1
        for i, b in enumerate(big):
            client.put(f"{client.name}/big/{run[0]}/{i}", b)

    def put_small() -> None:
        run[0] += 1
        for i, b in enumerate(small):
            client.put(f"{client.name}/small/{run[0]}/{i}", b)

    out: dict[str, float] = {}
    out["put 16 MiB (MiB/s)"] = N_BIG * BIG / (1 << 20) / timed(put_big, rounds)
    last = run[0]
    out["put 1 KiB (req/s)"] = N_SMALL / timed(put_small, rounds)

    def get_big() -> None:
        for i in range(N_BIG):
            assert len(client.get(f"{client.name}/big/{last}/{i}")) == BIG

    def get_small() -> None:
        for i in range(N_SMALL):
            assert len(client.get(f"{client.name}/small/{run[0]}/{i}")) == SMALL

    offsets = [rng.randrange(0, BIG - RANGE) for _ in range(N_RANGES)]

    def ranges() -> None:
        key = f"{client.name}/big/{last}/0"
        with ThreadPoolExecutor(THREADS) as pool:
            got = list(pool.map(lambda o: client.get_range(key, o, RANGE), offsets))
        assert all(len(g) == RANGE for g in got)

    for i in range(N_LIST):
        client.put(f"{client.name}/list/{i:04d}", b"x")

    def listing() -> None:
        assert client.list(f"{client.name}/list") == N_LIST

    out["get 16 MiB (MiB/s)"] = N_BIG * BIG / (1 << 20) / timed(get_big, rounds)
    out["get 1 KiB (req/s)"] = N_SMALL / timed(get_small, rounds)
    out[f"ranged get 512 KiB, {THREADS} threads (MiB/s)"] = (
        N_RANGES * RANGE / (1 << 20) / timed(ranges, rounds)
    )
    out["list 1000 keys (s)"] = timed(listing, rounds)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="best of N rounds (default 3)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        os.environ.pop(var, None)
    proc, url = start_server()
    try:
        results: dict[str, dict[str, float]] = {}
        for cls in (Boto3Client, ObstoreClient):
            bucket = f"bench-{cls.name}"
            Boto3Client(url, "x").c.create_bucket(Bucket=bucket)
            results[cls.name] = measure(cls(url, bucket), args.rounds)
    finally:
        proc.terminate()
        proc.wait()
    rows = list(next(iter(results.values())))
    width = max(len(r) for r in rows)
    print(f"{'':<{width}}  " + "  ".join(f"{n:>10}" for n in results))
    for row in rows:
        print(f"{row:<{width}}  " + "  ".join(f"{results[n][row]:>10.2f}" for n in results))
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "s3_clients.json"
    target.write_text(json.dumps({"server": "moto (local)", "results": results}, indent=2) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()

"""boto3 against obstore on the same S3 server: which client the S3 backend should use.

Run ``python -m bench.s3_clients`` (``--quick`` for a small size). It starts moto's server on
127.0.0.1 (:mod:`tests.s3d`), then times, for each client, the puts and gets of a few large
objects and of many small ones, with the same number of threads, alternating the two clients
so that neither profits from a warmer machine. docs/s3.md keeps the figures of the last run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from tests.s3d import REGION, S3Server, new_bucket, start_s3_server, stop_s3_server

MiB = 1024 * 1024


def boto3_ops(server: S3Server, bucket: str) -> tuple[Callable[[str, bytes], None], Callable[[str], bytes]]:
    """put and get of one object with one boto3 client shared by every thread (as the backend does)."""
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=server.endpoint, region_name=REGION,
                          aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key,
                          config=Config(max_pool_connections=32, s3={"addressing_style": "path"}))

    def put(key: str, data: bytes) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=data)

    def get(key: str) -> bytes:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()

    return put, get


def obstore_ops(server: S3Server, bucket: str) -> tuple[Callable[[str, bytes], None], Callable[[str], bytes]]:
    """put and get of one object with one obstore S3Store shared by every thread."""
    import obstore
    from obstore.store import S3Store

    store = S3Store(bucket, endpoint=server.endpoint, region=REGION, access_key_id=server.access_key,
                    secret_access_key=server.secret_key, virtual_hosted_style_request=False,
                    client_options={"allow_http": True})

    def put(key: str, data: bytes) -> None:
        obstore.put(store, key, data, use_multipart=False)

    def get(key: str) -> bytes:
        return bytes(obstore.get(store, key).bytes())

    return put, get


def timed(jobs: list[Callable[[], object]], threads: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda job: job(), jobs))
    return time.perf_counter() - start


def run(count_large: int, count_small: int, rounds: int, threads: int) -> dict[str, dict[str, list[float]]]:
    """Seconds of each (client, workload), ``rounds`` times, alternating the clients."""
    large = [os.urandom(4 * MiB) for _ in range(8)]
    small = [os.urandom(4096) for _ in range(64)]
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        server = start_s3_server(Path(scratch))
        try:
            for _ in range(rounds):
                for client, ops in (("boto3", boto3_ops), ("obstore", obstore_ops)):
                    put, get = ops(server, new_bucket(server))
                    row = results.setdefault(client, {})
                    for label, blobs, count in ((f"{count_large} x 4 MiB", large, count_large),
                                                (f"{count_small} x 4 KiB", small, count_small)):
                        keys = [f"{label[:4].strip()}/{i}" for i in range(count)]
                        puts = [lambda k=k, i=i: put(k, blobs[i % len(blobs)]) for i, k in enumerate(keys)]
                        row.setdefault(f"put {label}", []).append(timed(puts, threads))
                        row.setdefault(f"get {label}", []).append(timed([lambda k=k: get(k) for k in keys], threads))
        finally:
            stop_s3_server(server)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 x 4 MiB and 500 x 4 KiB, one round")
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    sizes = (64, 500, 1) if args.quick else (256, 2000, 3)
    results = run(*sizes, threads=args.threads)
    print(f"| workload ({args.threads} threads, median of {sizes[2]}) | boto3 s | obstore s |")
    print("|---|---:|---:|")
    for workload in results["boto3"]:
        cells = [f"{statistics.median(results[c][workload]):.2f}" for c in ("boto3", "obstore")]
        print(f"| {workload} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()

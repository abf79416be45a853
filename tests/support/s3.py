"""An S3-compatible server on loopback (moto in server mode), configured the way users configure S3: the
usual AWS_* variables, set for this process, its subprocesses and a Ray started after them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Distinctive, so that a message that leaked it would be caught by a plain substring test.
SECRET = "dj-test-secret-9f3c1e7a"
ACCESS_KEY = "AKIDDJTESTKEY"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_server(log: Path) -> Iterator[str]:
    """``moto_server`` on 127.0.0.1; yields its endpoint once it answers."""
    import boto3

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    t0 = time.time()
    try:
        while True:
            try:
                boto3.client(
                    "s3",
                    endpoint_url=endpoint,
                    aws_access_key_id=ACCESS_KEY,
                    aws_secret_access_key=SECRET,
                    region_name="us-east-1",
                ).list_buckets()
                break
            except Exception:  # noqa: BLE001 - the server is still starting
                assert time.time() - t0 < 30, log.read_text()
                time.sleep(0.3)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


def aws_env(endpoint: str) -> dict[str, str]:
    """The variables a user sets for an S3-compatible store on a private network."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@contextmanager
def environment(values: dict[str, str | None]) -> Iterator[None]:
    """``values`` in ``os.environ`` while the block runs (None: unset), restored after."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def s3_client(endpoint: str):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )

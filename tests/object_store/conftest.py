"""A real S3-compatible server for the object-store tests: moto's server mode, started per module
on a free loopback port (no mock: every request goes over HTTP, through pyarrow's S3 client)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.study_tools import free_port

BUCKET = "studies-bucket"


def s3_env(endpoint: str) -> dict[str, str]:
    """What a process needs to reach the server (dummy credentials: moto accepts any)."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL of a moto S3 server that has the bucket ``BUCKET``."""
    pytest.importorskip("moto")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = Path(tmp_path_factory.mktemp("moto")) / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start:\n{log.read_text(errors='replace')}") from None
                time.sleep(0.2)
        req = urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT")
        urllib.request.urlopen(req, timeout=10).close()
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """This process reaches the server (``AWS_*`` in the environment); returns the endpoint."""
    for key, value in s3_env(s3_server).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return s3_server

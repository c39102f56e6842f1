"""A live `rescam serve` on loopback, started as a user would, for the tests that need HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(registry: Path, workers: int = 1, env: dict[str, str] | None = None, timeout: float = 60
                ) -> Iterator[str]:
    """`rescam serve` on a free port until the block ends; its URL once /readyz answers 200."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    with tempfile.TemporaryFile("w+") as log:  # a pipe nobody reads would fill and stall the server
        proc = subprocess.Popen([sys.executable, "-m", "training.cli", "serve", "--port", str(port), "--workers",
                                 str(workers), "--registry", str(registry)], env=env, cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + timeout
            while not _ready(url):
                if time.time() > deadline or proc.poll() is not None:
                    log.seek(0)
                    pytest.fail(f"the server did not become ready: {log.read()[-3000:]}")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            proc.wait(10)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False

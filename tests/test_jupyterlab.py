"""The suite is Jupyter-first: JupyterLab from .venv starts headless and serves notebooks/.

The server listens on loopback only, on a free port, with a random token; the test asks its REST API
for the contents of notebooks/ and stops it (bounded: 120 s to come up)."""
from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STARTUP_SECONDS = 120


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_jupyterlab_serves_the_notebooks(tmp_path):
    port, token = _free_loopback_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_DATA_DIR": str(tmp_path / "data")}
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={ROOT}", "--ServerApp.open_browser=False"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:    # CI and containers run as root
        command.append("--allow-root")
    log = open(tmp_path / "jupyterlab.log", "w+")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, listing = time.monotonic() + STARTUP_SECONDS, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                listing = _get_json(f"{base}/api/contents/notebooks?token={token}")
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        if listing is None:
            log.seek(0)
            pytest.fail(f"JupyterLab did not answer on {base} within {STARTUP_SECONDS} s "
                        f"(exit code {server.poll()}); its log:\n{log.read()[-3000:]}")
        served = {item["name"] for item in listing["content"] if item["type"] == "notebook"}
        on_disk = {path.name for path in (ROOT / "notebooks").glob("*.ipynb")}
        assert on_disk and served == on_disk
        lab = urllib.request.urlopen(f"{base}/lab?token={token}", timeout=10)
        assert lab.status == 200 and b"JupyterLab" in lab.read()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()

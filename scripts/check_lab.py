"""CI's check that `make lab` works: start it, wait until JupyterLab serves, stop it.

.venv/bin/python scripts/check_lab.py [--timeout 300]
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serves(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status == 200 and b"JupyterLab" in reply.read()
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    port, token = free_port(), secrets.token_hex(16)
    lab_args = f"--no-browser --ServerApp.port={port} --IdentityProvider.token={token}"
    url = f"http://127.0.0.1:{port}/lab?token={token}"
    command = ["make", "--no-print-directory", "lab", f"LAB_ARGS={lab_args}"]
    lab = subprocess.Popen(command, cwd=REPO, start_new_session=True)
    deadline = time.monotonic() + args.timeout
    try:
        while time.monotonic() < deadline:
            if lab.poll() is not None:
                print(f"check_lab: `make lab` exited with {lab.returncode}", file=sys.stderr)
                return 1
            if serves(url):
                print(f"check_lab: `make lab` serves JupyterLab on port {port}")
                return 0
            time.sleep(1.0)  # polling a server that is starting up; nothing to wait on
        print(f"check_lab: no JupyterLab after {args.timeout:g} s", file=sys.stderr)
        return 1
    finally:
        if lab.poll() is None:
            os.killpg(lab.pid, signal.SIGTERM)
            try:
                lab.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(lab.pid, signal.SIGKILL)
                lab.wait()


if __name__ == "__main__":
    sys.exit(main())

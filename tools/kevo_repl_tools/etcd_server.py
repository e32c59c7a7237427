"""A real etcd server on loopback, on free ports and a data directory of its own (tests, the
HA demo, the chaos suite). The binary is `etcd` on PATH (Debian's etcd-server; .ci/run
installs it) or $KEVO_REPL_ETCD."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from kevo_repl.errors import KevoReplError


def etcd_binary() -> str:
    found = os.environ.get("KEVO_REPL_ETCD") or shutil.which("etcd")
    if not found:
        raise KevoReplError(
            "etcd is not installed: apt-get install etcd-server (or set $KEVO_REPL_ETCD)"
        )
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class EtcdServer:
    """One etcd member; restartable on the same ports and data (etcd_restart chaos)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.client_port = _free_port()
        self.peer_port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_file = self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def command(self) -> list[str]:
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            etcd_binary(), "--name", "kevo", "--data-dir", str(self.data_dir),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"kevo={peer}", "--initial-cluster-state", "new",
            "--heartbeat-interval", "50", "--election-timeout", "500",
        ]

    def start(self, timeout: float = 30.0) -> str:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            self.proc = subprocess.Popen(
                self.command(), stdout=out, stderr=out, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise KevoReplError(f"etcd exited ({self.proc.returncode}); see {self.log_file}")
            if self._healthy():
                return self.address
            time.sleep(0.05)
        self.kill()
        raise KevoReplError(f"etcd did not become healthy within {timeout}s")

    def _healthy(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.client_port}/health", timeout=1
            ) as resp:
                return b'"true"' in resp.read()
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

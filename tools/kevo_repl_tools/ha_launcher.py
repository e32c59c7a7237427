"""Start and kill `kevo-repl ha` agents (each runs its node as a child that dies with it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kevo_repl.client.client import Client
from kevo_repl.errors import KevoReplError
from kevo_repl_tools.launcher import read_line


class HANode:
    def __init__(
        self, name: str, data_dir: Path, *, etcd: str, cluster: str, ttl_s: int = 3,
        applier: str = "lmdb", env: Mapping[str, str] | None = None, log_level: str = "INFO",
    ) -> None:
        self.name = name
        self.data_dir = Path(data_dir)
        self.etcd = etcd
        self.cluster = cluster
        self.ttl_s = ttl_s
        self.applier = applier
        self.env = dict(env or {})
        self.log_level = log_level
        self.listen = "127.0.0.1:0"
        self.address = ""
        self.log_file = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "kevo_repl", "--log-level", self.log_level,
                "--log-file", str(self.log_file), "ha", "--data-dir", str(self.data_dir),
                "--listen", self.listen, "--applier", self.applier, "--etcd", self.etcd,
                "--cluster", self.cluster, "--name", self.name, "--ttl-s", str(self.ttl_s)]

    def start(self, timeout: float = 30.0) -> str:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as err:
            self.proc = subprocess.Popen(
                self.command(), stdout=subprocess.PIPE, stderr=err,
                env={**os.environ, **self.env}, start_new_session=True,
            )
        assert self.proc.stdout is not None
        line = read_line(self.proc.stdout, timeout)
        if not line:
            self.kill()
            raise KevoReplError(f"ha agent {self.name} did not start; see {self.log_file}")
        self.address = json.loads(line)["address"]
        self.listen = self.address  # a restart keeps the address peers know
        return self.address

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the agent; its node dies with it (PR_SET_PDEATHSIG)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def client(self, timeout: float = 10.0) -> Client:
        return Client(self.address, timeout=timeout)

    def status(self) -> dict[str, Any]:
        with self.client() as c:
            return c.status()

    def digest(self) -> dict[str, Any]:
        with self.client(120.0) as c:
            return c.digest()

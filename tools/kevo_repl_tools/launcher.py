"""Start and stop node processes on loopback (used by the demo, tests and benchmarks)."""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kevo_repl import with_parent
from kevo_repl.client.client import Client
from kevo_repl.config import ConnectorConfig
from kevo_repl.errors import KevoReplError

log = logging.getLogger(__name__)


class NodeProcess:
    """One `kevo-repl primary|replica` child process, restartable on the same data dir."""

    def __init__(
        self,
        role: str,
        data_dir: Path,
        *,
        listen: str = "127.0.0.1:0",
        primary: str | None = None,
        replica_id: str | None = None,
        applier: str | None = None,
        config: Path | None = None,
        env: Mapping[str, str] | None = None,
        log_level: str = "INFO",
        client_config: ConnectorConfig | None = None,
        metrics: str | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.role = role
        self.data_dir = Path(data_dir)
        self.listen = listen
        self.primary = primary
        self.replica_id = replica_id
        self.applier = applier
        self.config = config
        self.env = dict(env or {})
        self.log_level = log_level
        self.client_config = client_config
        self.metrics = metrics
        #: the node gets SIGTERM when the process that started it dies, however it dies
        self.die_with_parent = die_with_parent
        self.log_file = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.stderr_file = self.data_dir.parent / f"{self.data_dir.name}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.metrics_address = ""

    def command(self) -> list[str]:
        args = ["--log-level", self.log_level, "--log-file", str(self.log_file), self.role,
                "--data-dir", str(self.data_dir), "--listen", self.listen]
        cmd = self._run(args)
        if self.applier:
            cmd += ["--applier", self.applier]
        if self.metrics:
            cmd += ["--metrics", self.metrics]
        if self.config:
            cmd += ["--config", str(self.config)]
        if self.role == "replica":
            assert self.primary
            cmd += ["--primary", self.primary]
            if self.replica_id:
                cmd += ["--replica-id", self.replica_id]
        return cmd

    def _run(self, args: list[str]) -> list[str]:
        if self.die_with_parent:
            # the child sets its death signal itself: a preexec_fn in this process, which
            # runs gRPC threads, crashed children before exec now and then (SIGSEGV)
            return with_parent.command(os.getpid(), args, death_signal="TERM")
        # the console script when installed, so that `ps | grep kevo-repl` finds the node
        script = Path(sys.executable).parent / "kevo-repl"
        run = [str(script)] if script.exists() else [sys.executable, "-m", "kevo_repl"]
        return [*run, *args]

    def start(self, timeout: float = 30.0) -> str:
        """Start the process and wait (bounded) for its one 'listening' line."""
        if self.running:
            raise KevoReplError(f"{self.role} at {self.data_dir} is already running")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        # stderr goes to a file, not a pipe nobody drains (a full pipe would block the node)
        with open(self.stderr_file, "ab") as err:
            self.proc = subprocess.Popen(
                self.command(), stdout=subprocess.PIPE, stderr=err, env=env,
                start_new_session=True,
            )
        assert self.proc.stdout is not None
        started = time.monotonic()
        line = read_line(self.proc.stdout, timeout)
        if not line:
            self.kill()
            # a node that exits during start-up ends its stdout: that is known at once
            what = (f"it exited with code {self.proc.returncode}"
                    if time.monotonic() - started < timeout else
                    f"no 'listening' line within {timeout}s")
            raise KevoReplError(
                f"{self.role} at {self.data_dir} did not start: {what}; the end of its log:\n"
                f"{self.log_tail(15)}"
            )
        ready = json.loads(line)
        self.address = ready["listening"]
        self.metrics_address = ready.get("metrics", "")
        # later restarts reuse the port, so peers configured with it find the node again
        self.listen = self.address
        return self.address

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self._reap(10.0)

    def terminate(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop on SIGTERM; killing it", self.role)
                self.proc.kill()
        self._reap(10.0)
        return self.proc.returncode

    def _reap(self, timeout: float) -> None:
        if self.proc is None:
            return
        self.proc.wait(timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def client(self, timeout: float = 30.0) -> Client:
        return Client(self.address, timeout=timeout, connector=self.client_config)

    def status(self) -> dict[str, Any]:
        with self.client(10.0) as c:
            return c.status()

    def digest(self) -> dict[str, Any]:
        with self.client(120.0) as c:
            return c.digest()

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for path in (self.log_file, self.stderr_file):
            try:
                out += path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                pass
        return "\n".join(out)


def read_line(stream: Any, timeout: float) -> bytes:
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buf = b""
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                return b""
            chunk = os.read(stream.fileno(), 4096)
            if not chunk:
                return b""
            buf += chunk
    finally:
        sel.close()
    return buf.split(b"\n", 1)[0]


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Check `predicate` until it holds; raise after `timeout` seconds naming `what`."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            if predicate():
                return
        except Exception as exc:  # a node still starting answers UNAVAILABLE
            last = exc
        else:
            last = None
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"timed out after {timeout}s waiting for {what} (last error: {last})"
            )
        time.sleep(interval)


def caught_up(primary: NodeProcess, replicas: Sequence[NodeProcess]) -> bool:
    head = primary.status()["head_sequence"]
    return all(r.status()["last_applied"] >= head for r in replicas)

"""The node process an HA agent runs: `kevo-repl primary|replica` as a child that dies with
the agent (PR_SET_PDEATHSIG), so a killed agent never leaves a primary writing on its own."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

from kevo_repl import with_parent
from kevo_repl.errors import KevoReplError

log = logging.getLogger(__name__)

#: how long a node may take to print its "listening" line
START_TIMEOUT_S = 60.0


class Child:
    def __init__(self, role: str, argv: list[str], primary: str = "") -> None:
        self.role = role
        self.argv = argv
        self.primary = primary
        self.proc: asyncio.subprocess.Process | None = None

    @classmethod
    async def start(
        cls, role: str, *, data_dir: Path, listen: str, applier: str, config: str | None,
        log_level: str, primary: str = "", replica_id: str = "",
    ) -> Child:
        # the node dies with this process (see with_parent why not a preexec_fn)
        argv = with_parent.command(os.getpid(), [
            "--log-level", log_level, role,
            "--data-dir", str(data_dir), "--listen", listen, "--applier", applier])
        if config:
            argv += ["--config", config]
        if role == "replica":
            argv += ["--primary", primary, "--replica-id", replica_id]
        child = cls(role, argv, primary)
        child.proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE,
        )
        assert child.proc.stdout is not None
        try:
            line = await asyncio.wait_for(child.proc.stdout.readline(), START_TIMEOUT_S)
        except TimeoutError:
            line = b""
        if not line:
            await child.kill()
            raise KevoReplError(f"the {role} node did not start (see its log)")
        log.info("%s node started: %s", role, json.loads(line))
        return child

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def kill(self) -> None:
        """SIGKILL: used to fence a primary, which must stop at once."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
        if self.proc is not None:
            await self.proc.wait()

    async def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            await self.kill()

"""An HA agent's node dies with the agent (kevo_repl.with_parent), started without a
preexec_fn (gRPC's fork handlers crashed such children now and then)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kevo_repl import with_parent
from kevo_repl.with_parent import ORPHANED


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too (its parent, the killed agent, no longer reaps it; init does)
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"


def test_the_node_dies_when_its_agent_is_killed(tmp_path: Path) -> None:
    agent = textwrap.dedent(f"""
        import asyncio, sys
        from pathlib import Path
        from kevo_repl.ha.child import Child

        async def main() -> None:
            child = await Child.start("primary", data_dir=Path({str(tmp_path / "p")!r}),
                                      listen="127.0.0.1:0", applier="lmdb", config=None,
                                      log_level="WARNING")
            print(child.proc.pid, flush=True)
            await asyncio.sleep(600)

        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", agent], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        node = int(proc.stdout.readline())
        assert _alive(node)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while _alive(node) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(node), "the node outlived its agent"
    finally:
        proc.kill()
        proc.wait(10)


def test_a_node_whose_agent_is_already_gone_does_not_start(tmp_path: Path) -> None:
    # a parent pid that is not ours: as if the agent died before the death signal was set
    res = subprocess.run(
        [sys.executable, "-m", "kevo_repl.with_parent", "1", "primary", "--data-dir",
         str(tmp_path / "p"), "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60,
    )
    assert res.returncode == ORPHANED and res.stdout == ""
    assert not (tmp_path / "p").exists()


def test_an_unknown_death_signal_is_refused() -> None:
    with pytest.raises(ValueError, match="death signal 'HUP'"):
        with_parent.command(os.getpid(), ["primary"], death_signal="HUP")
    assert with_parent.command(123, ["primary"], death_signal="TERM")[-4:] == [
        "--signal", "TERM", "123", "primary"]

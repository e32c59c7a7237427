"""`kevo-repl demo` as a user runs it: exit code, summary, and no process left behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

DEMO = [sys.executable, "-m", "kevo_repl", "demo", "--no-tty"]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie has exited; only its parent (already gone) could reap it
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def _pids(out: str) -> set[int]:
    pids = {int(p) for p in re.findall(r"\bpid (\d+)", out)}
    for line in out.splitlines():
        if line.startswith("stopped node processes:"):
            pids |= {int(p) for p in re.findall(r"\d+", line)}
    return pids


def test_demo_runs_green_and_cleans_up(tmp_path: Path) -> None:
    res = subprocess.run(DEMO, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "RESULT: OK" in out
    assert "entries written:   100000" in out
    assert re.search(r"write throughput: +[\d,]+ entries/s", out)
    assert re.search(r"lag p99: +replica-1 [\d.]+ ms", out)
    digests = re.findall(r"^digest \S+ +sequence=100000 keys=100000 ([0-9a-f]{64})$", out, re.M)
    assert len(digests) == 3 and len(set(digests)) == 1
    assert "SIGKILL replica-2" in out and "resumes from its stored position" in out
    assert "no entry applied twice" in out
    pids = _pids(out)
    assert len(pids) >= 4  # primary, two replicas, and the restarted one
    assert all(_gone(p) for p in pids), [p for p in pids if not _gone(p)]
    assert (tmp_path / "kevo-demo" / "primary.log").exists()  # logs go to files there

    # a second run starts clean in the same place
    again = subprocess.run([*DEMO, "--count", "2000"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "entries written:   2000" in again.stdout


def test_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    proc = subprocess.Popen([*DEMO, "--rate", "2000"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen = ""
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            seen += line
            if "written" in line or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    seen += out
    assert proc.returncode == 130, seen + err
    assert "interrupted" in err
    pids = _pids(seen)
    assert len(pids) == 3
    assert all(_gone(p) for p in pids)


def test_refuses_a_directory_it_did_not_make(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "data.txt").write_text("keep me")
    res = subprocess.run([*DEMO, "--dir", str(target)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and "not made by the demo" in res.stderr
    assert (target / "data.txt").read_text() == "keep me"

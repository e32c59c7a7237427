"""`kevo-repl demo` as a user runs it: exit code, summary, and no process left behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


KEVO_REPL = str(Path(sys.executable).parent / "kevo-repl")


def _start_demo(tmp_path: Path) -> tuple[subprocess.Popen[str], set[int]]:
    """A slow demo, started as an operator does, once its three nodes are up."""
    proc = subprocess.Popen([KEVO_REPL, "demo", "--no-tty", "--rate", "500"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        seen += line
        if "written" in line or time.monotonic() > deadline:
            break
    pids = _pids(seen)
    assert len(pids) == 3, seen
    # nodes run as `kevo-repl`, so that ps finds them by that name
    for pid in pids:
        assert "kevo-repl" in Path(f"/proc/{pid}/cmdline").read_text(), pid
    return proc, pids


def _wait_gone(pids: set[int], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(_gone(p) for p in pids):
        assert time.monotonic() < deadline, [p for p in pids if not _gone(p)]
        time.sleep(0.1)


def test_nodes_die_with_a_killed_demo(tmp_path: Path) -> None:
    proc, pids = _start_demo(tmp_path)
    try:
        proc.kill()  # SIGKILL: no handler of the demo runs; the nodes' parent-death signal
        proc.wait(10)
        _wait_gone(pids)
    finally:
        for pid in pids:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_closing_the_terminal_stops_every_node(tmp_path: Path) -> None:
    proc, pids = _start_demo(tmp_path)
    try:
        proc.send_signal(signal.SIGHUP)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "interrupted" in err
        _wait_gone(pids)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in pids:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_node_failing_at_start_up_fails_the_demo_at_once_with_its_log(tmp_path: Path) -> None:
    work = tmp_path / "kevo-demo"
    (work / "primary").mkdir(parents=True)
    (work / ".kevo-demo").write_text("made by kevo-repl demo\n")
    # a primary's data directory that holds a replica's data: the primary refuses to start
    (work / "primary" / "node.json").write_text('{"role": "replica", "applier": "lmdb"}')
    started = time.monotonic()
    res = subprocess.run([KEVO_REPL, "demo", "--no-tty", "--keep"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 20
    assert res.returncode == 2, res.stdout + res.stderr
    assert "did not start: it exited with code" in res.stderr
    assert "holds a replica's data" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("args,message", [
    (["--count", "0"], "--count must be >= 1"),
    (["--count", "-5"], "--count must be >= 1"),
    (["--dir", "README.md"], "is not a directory"),
])
def test_bad_arguments_are_refused(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "README.md").write_text("not a directory\n")
    res = subprocess.run([KEVO_REPL, "demo", "--no-tty", *args], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr

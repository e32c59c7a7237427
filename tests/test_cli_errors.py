"""Operator mistakes get a message that says what to do, never a traceback, and a node that
cannot start leaves nothing behind. Every test runs the installed console script."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
from cli_script import KEVO_REPL, run
from kevo_repl_tools.launcher import wait_until


@pytest.fixture
def applier() -> str:
    """These tests are about the CLI and status, not the store: one applier is enough."""
    return "lmdb"


def _refused(res: subprocess.CompletedProcess[bytes], *needles: str) -> str:
    err = res.stderr.decode()
    assert res.returncode == 2, (res.returncode, err)
    assert "Traceback" not in err and "was never awaited" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_busy_metrics_port_is_refused_before_anything_exists(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = run("primary", "--data-dir", str(tmp_path / "p"), "--listen", "127.0.0.1:0",
                  "--metrics", f"127.0.0.1:{port}")
    err = _refused(res, f"cannot serve metrics on 127.0.0.1:{port}", "in use")
    assert "listening" not in err and res.stdout == b""
    assert not (tmp_path / "p").exists()


def test_busy_listen_port_leaves_no_data_dir(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = run("primary", "--data-dir", str(tmp_path / "p"), "--listen", f"127.0.0.1:{port}")
    _refused(res, f"cannot listen on 127.0.0.1:{port}")
    assert not (tmp_path / "p").exists()


def test_unknown_applier_names_the_distribution_and_leaves_no_data_dir(tmp_path: Path) -> None:
    res = run("primary", "--data-dir", str(tmp_path / "p"), "--listen", "127.0.0.1:0",
              "--applier", "rocks")
    _refused(res, "unknown applier 'rocks'", "available: ")
    assert not (tmp_path / "p").exists()


def test_missing_store_plugin_names_what_to_install(tmp_path: Path) -> None:
    # a core-only install: the lmdb plugin's distribution is not there
    res = subprocess.run(
        [KEVO_REPL, "primary", "--data-dir", str(tmp_path / "p"), "--listen", "127.0.0.1:0"],
        capture_output=True, timeout=60,
        env={**os.environ, "KEVO_REPL_BLOCK_PLUGINS": "lmdb,leveldb"},
    )
    _refused(res, "unknown applier 'lmdb'", "kevo-repl-lmdb distribution",
             "pip install 'kevo-repl[lmdb]'", "kevo-repl[all]")
    assert not (tmp_path / "p").exists()


def test_data_dir_in_use_names_the_pid_and_role_mismatch_says_what_to_do(cluster) -> None:
    primary = cluster.primary()
    res = run("primary", "--data-dir", str(primary.data_dir), "--listen", "127.0.0.1:0")
    _refused(res, f"in use by another kevo-repl process (pid {primary.pid})")
    primary.terminate()
    res = run("replica", "--data-dir", str(primary.data_dir), "--listen", "127.0.0.1:0",
              "--primary", "127.0.0.1:1", "--replica-id", "r1")
    _refused(res, "holds a primary's data; it cannot be run as a replica",
             "`kevo-repl primary`")


def test_replica_requires_its_primary(tmp_path: Path) -> None:
    res = run("replica", "--data-dir", str(tmp_path / "r"), "--listen", "127.0.0.1:0")
    _refused(res, "a replica needs its primary: --primary HOST:PORT")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("target", ["localhost", "127.0.0.1", "README.md"])
def test_target_must_be_host_port_or_a_data_dir(target: str) -> None:
    _refused(run("status", "--target", target), "must be HOST:PORT", repr(target))


def test_data_dir_as_target_reads_node_addr(cluster) -> None:
    primary = cluster.primary()
    res = run("put", "--target", str(primary.data_dir), "k", "v")
    assert res.returncode == 0, res.stderr
    assert run("get", "--target", str(primary.data_dir), "k").stdout == b"v\n"


def test_a_port_that_is_not_kevo_repl_and_one_with_nobody(cluster) -> None:
    primary = cluster.primary(metrics="127.0.0.1:0")
    res = run("status", "--target", primary.metrics_address, "--timeout", "5")
    assert res.returncode == 3 and b"Traceback" not in res.stderr
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    res = run("status", "--target", f"127.0.0.1:{port}", "--timeout", "3")
    assert res.returncode == 3
    assert b"UNAVAILABLE" in res.stderr and b"is a kevo-repl node running" in res.stderr


def test_replica_pointed_at_a_replica_is_told_the_primary(cluster) -> None:
    primary = cluster.primary()
    r1 = cluster.replica(primary)
    r2 = cluster.replica(r1, name="r2", replica_id="r2")
    wait_until(lambda: "is a replica" in r2.status()["last_error"], 30, "r2 to be refused")
    st = r2.status()
    assert st["state"] == "ERROR" and primary.address in st["last_error"]
    assert "point --primary there" in st["last_error"]


def test_status_into_a_closed_pipe_is_quiet(cluster) -> None:
    primary = cluster.primary()
    head = subprocess.Popen(["head", "-c", "1"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL)
    proc = subprocess.run([KEVO_REPL, "slots", "list", "--target", primary.address, "--json"],
                          stdout=head.stdin, stderr=subprocess.PIPE, timeout=60)
    assert head.stdin is not None
    head.stdin.close()
    head.wait(10)
    assert b"Traceback" not in proc.stderr and b"BrokenPipe" not in proc.stderr
    # a large output into a reader that leaves at once
    big = subprocess.run(
        f"{KEVO_REPL} --help | head -1 >/dev/null; {KEVO_REPL} plugins --json | head -c 1",
        shell=True, capture_output=True, timeout=60,
    )
    assert b"Traceback" not in big.stderr


def test_version_and_help_on_every_flag() -> None:
    res = run("--version")
    assert res.returncode == 0 and res.stdout.decode().startswith("kevo-repl ")
    top = run("--help").stdout.decode()
    assert "only place" not in top and "logging is set up" not in top
    for cmd in (("primary",), ("replica",), ("put",), ("get",), ("load",), ("status",),
                ("wait",), ("verify",), ("digest",), ("slots", "list"), ("slots", "drop")):
        text = run(*cmd, "--help").stdout.decode()
        assert text, cmd
        for flag, desc in re.findall(r"^  (--[\w-]+)(?: [A-Z_]+)?(.*)$", text, re.M):
            if flag == "--help":
                continue
            following = text.split(flag, 2)[-1].split("\n  -", 1)[0]
            assert (desc + following).strip(), f"{' '.join(cmd)} {flag} has no help"
    load_help = run("load", "--help").stdout.decode()
    for default in ("(default: 16)", "(default: 100)", "(default: 1000)", "(default: 5.0)"):
        assert default in load_help, default
    assert "Run a replica" in run("replica", "--help").stdout.decode()


def test_put_prints_json_and_wait_reports_it(cluster) -> None:
    primary = cluster.primary()
    res = run("put", "--target", primary.address, "k", "v")
    seq = json.loads(res.stdout)["sequence"]
    res = run("wait", "--target", primary.address, "--sequence", str(seq))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["applied"] >= seq

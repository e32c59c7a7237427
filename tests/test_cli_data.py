"""The CLI with real data: any bytes in keys and values, big values, exact output."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_script import KEVO_REPL, run
from conftest import Cluster


@pytest.fixture
def applier() -> str:
    """These tests are about the CLI and status, not the store: one applier is enough."""
    return "lmdb"


def test_value_file_and_stdin_round_trip_binary_bytes_exactly(
    cluster: Cluster, tmp_path: Path
) -> None:
    p = cluster.primary()
    value = os.urandom(5 << 20) + b"\n\x00\xff"  # binary, with a trailing newline of its own
    f = tmp_path / "v.bin"
    f.write_bytes(value)
    res = run("put", "--target", p.address, "big", "--value-file", str(f))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["sequence"] == 1
    got = run("get", "--target", p.address, "--raw", "big")
    assert got.returncode == 0, got.stderr
    assert got.stdout == value

    res = run("put", "--target", p.address, "from-stdin", "--value-file", "-", input=value[:1000])
    assert res.returncode == 0, res.stderr
    assert run("get", "--target", p.address, "--raw", "from-stdin").stdout == value[:1000]


def test_value_and_value_file_are_exclusive_and_one_is_required(cluster: Cluster) -> None:
    p = cluster.primary()
    for args in (("k",), ("k", "v", "--value-file", "-")):
        res = run("put", "--target", p.address, *args)
        assert res.returncode == 2
        assert b"either VALUE or --value-file" in res.stderr
        assert b"Traceback" not in res.stderr


def test_non_utf8_keys_and_values_from_argv(cluster: Cluster) -> None:
    p = cluster.primary()
    key, value = b"k\xff\xfe", b"v\x80"
    res = run("put", "--target", p.address, key, value)
    assert res.returncode == 0, res.stderr
    got = run("get", "--target", p.address, "--raw", key)
    assert got.returncode == 0, got.stderr
    assert got.stdout == value
    shown = run("get", "--target", p.address, key)  # the text form escapes, never crashes
    assert shown.stdout == b"v\\x80\n"


@pytest.mark.parametrize("flag,encode", [
    ("--hex", lambda b: b.hex()),
    ("--base64", lambda b: base64.b64encode(b).decode()),
])
def test_hex_and_base64_keys_and_values(
    cluster: Cluster, flag: str, encode: Callable[[bytes], str]
) -> None:
    p = cluster.primary()
    key, value = b"\x00\x01key", bytes(range(256))
    res = run("put", "--target", p.address, flag, encode(key), encode(value))
    assert res.returncode == 0, res.stderr
    got = run("get", "--target", p.address, flag, encode(key))
    assert got.stdout.decode().strip() == encode(value)
    assert run("get", "--target", p.address, "--raw", flag, encode(key)).stdout == value
    bad = run("get", "--target", p.address, flag, "not valid!")
    assert bad.returncode == 2 and b"not valid" in bad.stderr and b"Traceback" not in bad.stderr


def test_load_interrupted_reports_what_was_written(cluster: Cluster) -> None:
    p = cluster.primary()
    # a primary that stops mid-load: the summary says how far the load got
    proc = subprocess.Popen(
        [KEVO_REPL, "--log-level", "WARNING", "load", "--target", p.address,
         "--count", "100000000", "--batch", "100", "--timeout", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while p.status()["head_sequence"] < 500:
            assert time.monotonic() < deadline, "load made no progress"
            time.sleep(0.05)
        p.kill()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, err
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["entries"] >= 500 and summary["entries"] % 100 == 0
    assert summary["last_sequence"] == summary["entries"]
    assert summary["interrupted"].startswith("UNAVAILABLE")
    assert f"stopped after {summary['entries']} of 100000000".encode() in err
    assert b"Traceback" not in err

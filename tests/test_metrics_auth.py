"""The /metrics endpoint of a real in-process node: loopback by default, a bearer token, HTTPS
(hardening item 6)."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trustme

from kevo_repl.config import Config
from kevo_repl.node.server import Node


def _config(tmp_path: Path, **node: str) -> Config:
    cfg = Config()
    cfg.node.role = "primary"
    cfg.node.data_dir = str(tmp_path / "primary")
    cfg.node.listen = "127.0.0.1:0"
    for key, value in node.items():
        setattr(cfg.node, key, value)
    return cfg


def _get(url: str, token: str = "", context: ssl.SSLContext | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


async def test_a_bare_port_binds_loopback_only(tmp_path: Path) -> None:
    node = Node(_config(tmp_path, metrics="0"))
    await node.start()
    try:
        host, _, port = node.metrics_address.rpartition(":")
        assert host == "127.0.0.1" and int(port) > 0
        status, text = _get(f"http://{node.metrics_address}/metrics")
        assert status == 200 and "kevo_repl_head_sequence" in text
    finally:
        await node.stop()


async def test_token_is_required_when_set(tmp_path: Path) -> None:
    node = Node(_config(tmp_path, metrics="127.0.0.1:0", metrics_token="s3cret"))
    await node.start()
    try:
        url = f"http://{node.metrics_address}/metrics"
        assert _get(url) == (401, "")
        assert _get(url, token="wrong") == (401, "")
        status, text = _get(url, token="s3cret")
        assert status == 200 and "kevo_repl_head_sequence" in text
    finally:
        await node.stop()


async def test_metrics_over_https(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "m.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "m.pem"))
    node = Node(_config(tmp_path, metrics="127.0.0.1:0", metrics_token="t",
                        metrics_tls_cert=str(tmp_path / "m.pem"),
                        metrics_tls_key=str(tmp_path / "m.key")))
    await node.start()
    try:
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        status, text = _get(f"https://{node.metrics_address}/metrics", "t", ctx)
        assert status == 200 and "kevo_repl_head_sequence" in text
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # no plain HTTP
            _get(f"http://{node.metrics_address}/metrics", "t")
    finally:
        await node.stop()

"""Where a client command connects, and what its failures mean for an operator."""

from __future__ import annotations

from pathlib import Path

import grpc

from kevo_repl.config import parse_address
from kevo_repl.errors import ConfigError, KevoReplError

#: the file a node writes its bound address to (kevo_repl.node.server.ADDRESS_FILE)
_ADDRESS_FILE = "node.addr"


def resolve_target(target: str, what: str = "--target") -> str:
    """HOST:PORT as given, or the address a node wrote into its data directory. Anything
    else is refused: a bare host would silently mean gRPC's default port 443."""
    path = Path(target)
    if path.is_dir():
        addr_file = path / _ADDRESS_FILE
        try:
            address = addr_file.read_bytes().decode("ascii").strip()
        except UnicodeDecodeError:
            raise KevoReplError(
                f"{addr_file} is damaged: the address is not HOST:PORT in ASCII"
            ) from None
        except OSError:
            raise KevoReplError(
                f"{what} {target} is a directory without {_ADDRESS_FILE}: not a node's data "
                "directory, or its node never started"
            ) from None
        parse_address(address, f"{addr_file}")
        return address
    try:
        parse_address(target, what)
    except ConfigError:
        raise KevoReplError(
            f"{what} must be HOST:PORT (say 127.0.0.1:50052) or a node's data directory, "
            f"not {target!r}"
        ) from None
    return target


def explain_rpc_error(exc: grpc.RpcError, target: str | None) -> str:
    """`CODE: details`, plus what to check when the code alone says little."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if code is not None else "RPC error"
    text = f"{name}: {details}"
    where = target or "the node"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        text += f" ({where} does not speak kevo-repl's API: is it the right port?)"
    elif code == grpc.StatusCode.UNAVAILABLE:
        text += f" (is a kevo-repl node running at {where}?)"
    return text

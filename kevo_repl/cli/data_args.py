"""Keys and values on the command line, byte-exact: any bytes in, the same bytes out."""

from __future__ import annotations

import argparse
import base64
import binascii
import os
import sys

from kevo_repl.errors import KevoReplError
from kevo_repl.protocol.transport import MAX_MESSAGE_BYTES

#: the largest value `--value-file` reads: one write must fit in one gRPC message
MAX_VALUE_BYTES = MAX_MESSAGE_BYTES - (1 << 20)


def add_encoding_flags(s: argparse.ArgumentParser, what: str) -> None:
    enc = s.add_mutually_exclusive_group()
    enc.add_argument("--hex", dest="encoding", action="store_const", const="hex",
                     help=f"{what} in hexadecimal")
    enc.add_argument("--base64", dest="encoding", action="store_const", const="base64",
                     help=f"{what} in base64")
    s.set_defaults(encoding=None)


def decode_arg(text: str, args: argparse.Namespace, what: str) -> bytes:
    """An argument as bytes: hex/base64 decoded, or the argument's own bytes (undecodable
    bytes survive, as the OS gave them)."""
    try:
        if args.encoding == "hex":
            return bytes.fromhex(text)
        if args.encoding == "base64":
            return base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise KevoReplError(f"{what} is not valid {args.encoding}: {exc}") from None
    return os.fsencode(text)


def read_value(args: argparse.Namespace) -> bytes:
    """VALUE, or the exact bytes of --value-file (`-` reads stdin)."""
    if (args.value is None) == (args.value_file is None):
        raise KevoReplError("give either VALUE or --value-file FILE (`-` reads stdin)")
    if args.value is not None:
        return decode_arg(args.value, args, "VALUE")
    name = args.value_file
    try:
        if name == "-":
            data = sys.stdin.buffer.read(MAX_VALUE_BYTES + 1)
        else:
            with open(name, "rb") as f:
                data = f.read(MAX_VALUE_BYTES + 1)
    except OSError as exc:
        raise KevoReplError(f"cannot read --value-file {name}: {exc.strerror}") from None
    if len(data) > MAX_VALUE_BYTES:
        raise KevoReplError(
            f"--value-file {name} is larger than {MAX_VALUE_BYTES} bytes, the most one write "
            "carries"
        )
    return data


def write_value(value: bytes, args: argparse.Namespace) -> None:
    """--raw: the exact bytes, no newline; --hex/--base64: encoded, one line; otherwise text
    with undecodable bytes shown as escapes."""
    out = sys.stdout
    if args.raw:
        out.flush()
        out.buffer.write(value)
        out.buffer.flush()
    elif args.encoding == "hex":
        out.write(value.hex() + "\n")
    elif args.encoding == "base64":
        out.write(base64.b64encode(value).decode("ascii") + "\n")
    else:
        out.write(show_bytes(value) + "\n")


def show_bytes(data: bytes) -> str:
    return data.decode("utf-8", errors="backslashreplace")

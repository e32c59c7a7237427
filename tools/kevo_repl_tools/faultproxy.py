"""A fault-injecting TCP proxy on loopback, for tests and `kevo-repl chaos`.

It runs its own asyncio loop in a thread, so blocking code can drive it:

- `cut()` drops every connection, and refuses new ones until `resume()`;
- `stall()` stops forwarding bytes without closing anything;
- `delay(s)` holds each chunk for `s` seconds;
- `drop_replies()` forwards what clients send but drops what the target sends back (a
  request served whose reply is lost);
- `corrupt(n)` flips one byte in each of the next `n` chunks the target sends back
  (downstream: from the primary to the replica), at a seeded random offset; with `marker`,
  the byte flipped is an occurrence of `marker` in the chunk (so it lands in data the
  caller recognises, such as the values of replicated entries, rather than in framing);
- `resume()` heals everything (and cancels corruption not yet done).

Nothing ever leaves the loopback interface: both the listening side and the target are
127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from concurrent.futures import Future
from typing import Any

log = logging.getLogger(__name__)

_LOOPBACK = ("127.0.0.1", "localhost")
_CHUNK = 65536


class FaultProxy:
    """Forwards connections from its own loopback port to `target` (HOST:PORT on loopback).

    `corrupt_min_chunk`: only chunks at least this long are corrupted, so that a flipped
    byte mostly lands in replicated data rather than in small HTTP/2 control frames.
    """

    def __init__(self, target: str, *, seed: int = 0, corrupt_min_chunk: int = 1024) -> None:
        host, _, port = target.rpartition(":")
        if host not in _LOOPBACK or not port.isdigit():
            raise ValueError(f"the fault proxy forwards to loopback only, not to {target!r}")
        self.target = (host, int(port))
        self.address = ""
        #: connections accepted and forwarded, since start()
        self.connections = 0
        #: chunks corrupted so far (one flipped byte each)
        self.corrupted = 0
        self.corrupt_min_chunk = corrupt_min_chunk
        self._rng = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fault-proxy", daemon=True
        )
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._refusing = False
        self._delay = 0.0
        self._dropping = False
        self._corrupt_left = 0
        self._corrupt_marker = b""

    def _call(self, coro: Any, timeout: float = 10.0) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def start(self) -> str:
        """Listen on a free loopback port; return its HOST:PORT."""
        self._thread.start()
        self._call(self._start())
        return self.address

    @property
    def alive(self) -> bool:
        """Whether the proxy's thread is still running (false after close())."""
        return self._thread.is_alive()

    async def _start(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.connections += 1
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pipe(reader, up_writer, downstream=False),
            self._pipe(up_reader, writer, downstream=True),
            return_exceptions=True,
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, downstream: bool
    ) -> None:
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                await self._flowing.wait()
                if self._delay:
                    await asyncio.sleep(self._delay)
                if downstream and self._dropping:
                    continue
                if downstream and self._corrupt_left > 0 and len(data) >= self.corrupt_min_chunk:
                    data = self._corrupt(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def _corrupt(self, data: bytes) -> bytes:
        at = self._rng.randrange(len(data))
        marker = self._corrupt_marker
        if marker:
            found = data.find(marker, at)
            if found < 0:
                found = data.find(marker)
            if found < 0:
                return data  # nothing recognisable in this chunk: the next one, then
            at = found
        self._corrupt_left -= 1
        self.corrupted += 1
        buf = bytearray(data)
        buf[at] ^= self._rng.randrange(1, 256)
        log.debug("fault proxy %s: flipped byte %d of a %d-byte chunk", self.address, at, len(buf))
        return bytes(buf)

    # -- faults (called from any thread) -------------------------------------------------------

    def cut(self) -> None:
        """Close every connection, and refuse new ones until resume()."""

        async def _cut() -> None:
            self._refusing = True
            for w in list(self._writers):
                w.transport.abort()
            self._writers.clear()

        self._call(_cut())

    def cut_and_stall(self) -> None:
        """Close every connection; accept new ones (and connect them upstream) but forward
        nothing until resume(): a peer's reconnect is left mid-connect."""

        async def _cut() -> None:
            self._flowing.clear()
            for w in list(self._writers):
                w.transport.abort()
            self._writers.clear()

        self._call(_cut())

    def stall(self) -> None:
        """Keep connections open but forward nothing."""
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def delay(self, seconds: float) -> None:
        """Hold every chunk for `seconds` before forwarding it."""
        self._loop.call_soon_threadsafe(setattr, self, "_delay", seconds)

    def drop_replies(self) -> None:
        """Forward what clients send, drop everything the target sends back until resume()
        (the connections are useless after it: cut() them)."""
        self._loop.call_soon_threadsafe(setattr, self, "_dropping", True)

    def corrupt(self, chunks: int, marker: bytes = b"") -> None:
        """Flip one byte in each of the next `chunks` downstream chunks (0 cancels); with
        `marker`, the first byte of an occurrence of `marker` (chunks without one pass)."""

        def _set() -> None:
            self._corrupt_left = max(0, chunks)
            self._corrupt_marker = marker

        self._loop.call_soon_threadsafe(_set)

    def resume(self) -> None:
        """Heal every fault: accept connections, forward at once, corrupt nothing more."""

        def _resume() -> None:
            self._refusing = False
            self._delay = 0.0
            self._dropping = False
            self._corrupt_left = 0
            self._flowing.set()

        self._loop.call_soon_threadsafe(_resume)

    def close(self) -> None:
        """Stop listening, drop every connection and end the proxy's thread (bounded)."""
        if self._thread.ident is None:  # never started
            self._loop.close()
            return
        if not self._thread.is_alive():
            return

        async def _close() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.transport.abort()

        with contextlib.suppress(Exception):
            self._call(_close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

"""A fault-injecting TCP proxy for tests, on loopback only.

It runs its own asyncio loop in a thread, so blocking tests can drive it: `cut()` drops every
connection (new ones are refused until `resume()`), `stall()` stops forwarding bytes without
closing anything, `delay(s)` holds each chunk for `s` seconds, `resume()` heals everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import Future
from typing import Any


class FaultProxy:
    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        assert host in ("127.0.0.1", "localhost"), "the proxy forwards to loopback only"
        self.target = (host, int(port))
        self.address = ""
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._refusing = False
        self._delay = 0.0

    def _call(self, coro: Any, timeout: float = 10.0) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def start(self) -> str:
        self._thread.start()
        self._call(self._start())
        return self.address

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
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                await self._flowing.wait()
                if self._delay:
                    await asyncio.sleep(self._delay)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    # -- faults (called from the test's thread) ------------------------------------------------

    def cut(self) -> None:
        """Close every connection, and refuse new ones until resume()."""

        async def _cut() -> None:
            self._refusing = True
            for w in list(self._writers):
                w.transport.abort()
            self._writers.clear()

        self._call(_cut())

    def stall(self) -> None:
        """Keep connections open but forward nothing."""
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def delay(self, seconds: float) -> None:
        self._delay = seconds

    def resume(self) -> None:
        def _resume() -> None:
            self._refusing = False
            self._delay = 0.0
            self._flowing.set()

        self._loop.call_soon_threadsafe(_resume)

    def close(self) -> None:
        async def _close() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.transport.abort()

        with contextlib.suppress(Exception):
            self._call(_close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

"""Ceiling of one-RPC-per-write on this machine: a grpc.aio server whose unary handler does
nothing, called by 1, 8 and 64 concurrent callers from another process (like `kevo-repl bench
write`). Usage: python bench/grpc_ceiling.py [SECONDS]"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import sys
import time

import grpc


def _identity(data: bytes) -> bytes:
    return data


async def _serve(ports: mp.Queue[int], lifetime: float) -> None:
    server = grpc.aio.server()

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b""

    handler = grpc.method_handlers_generic_handler(
        "ceiling.S",
        {"E": grpc.unary_unary_rpc_method_handler(
            echo, request_deserializer=_identity, response_serializer=_identity)},
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ports.put(port)
    await asyncio.sleep(lifetime)


def _server_main(ports: mp.Queue[int], lifetime: float) -> None:
    asyncio.run(_serve(ports, lifetime))


async def _callers(port: int, callers: int, seconds: float) -> float:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            "/ceiling.S/E", request_serializer=_identity, response_deserializer=_identity
        )
        await call(b"x", timeout=10)
        done = 0
        end = time.perf_counter() + seconds

        async def one() -> None:
            nonlocal done
            while time.perf_counter() < end:
                await call(b"x" * 40, timeout=10)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(callers)))
        return done / (time.perf_counter() - started)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    ports: mp.Queue[int] = mp.Queue()
    proc = mp.Process(target=_server_main, args=(ports, seconds * 4 + 30), daemon=True)
    proc.start()
    try:
        port = ports.get(timeout=30)
        for callers in (1, 8, 64):
            rate = asyncio.run(_callers(port, callers, seconds))
            print(f"{callers:>3} callers: {rate:8.0f} no-op RPCs/s")
    finally:
        proc.terminate()
        proc.join(10)


if __name__ == "__main__":
    main()

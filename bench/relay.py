"""A TCP relay that adds a fixed one-way delay to both directions (this kernel has no netem).

    python -m bench.relay --listen 10.77.1.2:5550 --to 127.0.0.1:5550 --delay-ms 20

Every connection accepted on --listen is forwarded to --to; every chunk read from either side is
written to the other side --delay-ms after it was read, in order (a FIFO per direction), so the
link keeps its bandwidth and gains latency. bench/netns.py starts one in each host's namespace,
in front of that host's peer.
"""
from __future__ import annotations

import argparse
import asyncio
import time


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    queue: asyncio.Queue = asyncio.Queue(maxsize=4096)

    async def pump_in() -> None:
        while True:
            data = await reader.read(65536)
            await queue.put((time.monotonic() + delay_s, data))
            if not data:
                return

    async def pump_out() -> None:
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                writer.close()
                return
            writer.write(data)
            await writer.drain()

    try:
        await asyncio.gather(pump_in(), pump_out())
    except (ConnectionError, OSError):
        writer.close()


async def main(listen: str, to: str, delay_s: float) -> None:
    thost, tport = to.rsplit(":", 1)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            ureader, uwriter = await asyncio.open_connection(thost, int(tport))
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, uwriter, delay_s), _pipe(ureader, writer, delay_s),
                             return_exceptions=True)

    lhost, lport = listen.rsplit(":", 1)
    server = await asyncio.start_server(handle, lhost, int(lport), reuse_address=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--to", required=True)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    a = ap.parse_args()
    asyncio.run(main(a.listen, a.to, a.delay_ms / 1000))

#!/usr/bin/env python3
"""Opens N keep-alive HTTP/1.1 connections to 127.0.0.1:PORT, sends one
request on each and reads its response, holds them all idle, and reports
the resident memory (VmRSS) of the given processes before, while held, and
after they are closed. Also checks that a new client is still served while
they are held. Prints one JSON line.

Usage: hold.py PORT N PID[,PID...] [settle_seconds]
"""
from http1 import read_response
import asyncio, json, sys, time

PORT, N = int(sys.argv[1]), int(sys.argv[2])
PIDS = [int(p) for p in sys.argv[3].split(",")]
SETTLE = float(sys.argv[4]) if len(sys.argv) > 4 else 5.0
REQ = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: hold.py\r\n\r\n"


def rss_kib():
    total = 0
    for pid in PIDS:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


async def one(sem, held, failures):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", PORT), 30)
            writer.write(REQ)
            status = await asyncio.wait_for(read_response(reader), 30)
            if status != 200:
                failures.append(f"status {status}")
            held.append(writer)
        except Exception as e:  # noqa: BLE001 - counted and reported
            failures.append(repr(e))


async def probe():
    """A new client while the others are held: answered 200?"""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", PORT), 10)
    writer.write(REQ)
    status = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    return status


async def main():
    # Warm up (upstream pool, lazy allocations), then the baseline.
    for _ in range(20):
        await probe()
    await asyncio.sleep(SETTLE)
    baseline = rss_kib()
    held, failures = [], []
    sem = asyncio.Semaphore(256)
    t0 = time.monotonic()
    await asyncio.gather(*(one(sem, held, failures) for _ in range(N)))
    opened_s = time.monotonic() - t0
    # Idle for a while (switchyard parks a connection after 1 s idle).
    await asyncio.sleep(SETTLE)
    held_rss = rss_kib()
    probes_ok = sum([await probe() == 200 for _ in range(20)])
    for w in held:
        w.close()
    await asyncio.sleep(SETTLE)
    after = rss_kib()
    print(json.dumps({
        "connections": len(held), "failures": len(failures), "failure_examples": failures[:3],
        "open_seconds": round(opened_s, 2), "baseline_kib": baseline, "held_kib": held_rss,
        "after_close_kib": after, "probes_ok_while_held": probes_ok,
        "bytes_per_connection": round((held_rss - baseline) * 1024 / max(len(held), 1)),
    }))


asyncio.run(main())

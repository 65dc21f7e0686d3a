#!/usr/bin/env python3
"""N keep-alive clients, each sending one request every PERIOD seconds for
DURATION seconds (starts spread over one period). Reports the requests
answered, failures, and the CPU time the given processes used meanwhile
(utime + stime from /proc/PID/stat), per request. Prints one JSON line.

Usage: churn.py PORT N PERIOD DURATION PID[,PID...]
"""
from http1 import read_response
import asyncio, json, os, random, sys, time

PORT, N = int(sys.argv[1]), int(sys.argv[2])
PERIOD, DURATION = float(sys.argv[3]), float(sys.argv[4])
PIDS = [int(p) for p in sys.argv[5].split(",")]
REQ = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: churn.py\r\n\r\n"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds():
    total = 0
    for pid in PIDS:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICK


async def client(end, counts, failures):
    await asyncio.sleep(random.uniform(0, PERIOD))
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", PORT), 30)
    except Exception as e:  # noqa: BLE001 - counted and reported
        failures.append(repr(e))
        return
    while time.monotonic() < end:
        try:
            writer.write(REQ)
            status = await asyncio.wait_for(read_response(reader), 30)
            if status != 200:
                failures.append(f"status {status}")
            counts[0] += 1
        except Exception as e:  # noqa: BLE001 - counted and reported
            failures.append(repr(e))
            return
        await asyncio.sleep(PERIOD)
    writer.close()


async def main():
    counts, failures = [0], []
    cpu0 = cpu_seconds()
    t0 = time.monotonic()
    await asyncio.gather(*(client(t0 + DURATION, counts, failures) for _ in range(N)))
    wall = time.monotonic() - t0
    cpu = cpu_seconds() - cpu0
    print(json.dumps({
        "connections": N, "period_s": PERIOD, "requests": counts[0], "failures": len(failures),
        "failure_examples": failures[:3], "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
        "cpu_us_per_request": round(cpu * 1e6 / max(counts[0], 1), 1),
    }))


asyncio.run(main())

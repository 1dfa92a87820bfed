"""Commit-to-batch latency of the pgcdc Python package: reads a route for
SECONDS and prints `p50 p99 max rows` (milliseconds), each row's latency
measured from its `_commit_ts` to the moment its batch was returned.
Prints `ready` once it is reading.

Usage: latency.py local CONNINFO SLOT ROUTE SECONDS       (configures the stream)
       latency.py flight LOCATION USER PASSWORD SLOT ROUTE SECONDS
"""
import sys
import time

import pyarrow as pa

import pgcdc

if sys.argv[1] == "local":
    conninfo, slot, route, seconds = sys.argv[2:6]
    reader = pgcdc.auto_configure(conninfo, tables=route, slot=slot)[route]
else:
    location, user, password, slot, route, seconds = sys.argv[2:8]
    reader = pgcdc.flight_readers(location, user, password, slot=slot)[route]
reader.next_batch(timeout=0.5)  # attached (the snapshot of an empty table completes)
# pyarrow loads its compute kernels on the first cast (about 100 ms):
# before the clock runs, not charged to the first rows.
pa.array([0], pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_pylist()
print("ready", flush=True)
latencies = []
deadline = time.monotonic() + float(seconds)
while time.monotonic() < deadline:
    batch = reader.next_batch(timeout=0.1)
    if batch is None:
        continue
    now_us = time.time_ns() // 1000
    if batch.num_rows:
        commits = batch.column("_commit_ts").cast(pa.int64()).to_pylist()
        latencies += [(now_us - c) / 1000.0 for c in commits]
    reader.ack(batch)
latencies.sort()
if not latencies:
    sys.exit("no rows came")
pct = lambda p: latencies[min(int(len(latencies) * p), len(latencies) - 1)]
print(f"{pct(0.5):.2f} {pct(0.99):.2f} {latencies[-1]:.2f} {len(latencies)}", flush=True)

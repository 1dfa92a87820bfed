"""Drains ROWS changes of public.narrow with the pgcdc Python package and
prints the seconds it took to the last batch acknowledged: locally from
auto_configure (which starts the stream's worker); over Flight, it logs
in, prints `ready`, and times from the line the bench writes once it has
started the worker.

Usage: drain.py ROWS CONNINFO SLOT local
       drain.py ROWS CONNINFO SLOT flight LOCATION USER PASSWORD  (CONNINFO unused)
"""
import sys
import time

import pgcdc

rows, conninfo, slot, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
started = time.monotonic()
if mode == "local":
    reader = pgcdc.auto_configure(conninfo, tables="public.narrow", slot=slot)["public.narrow"]
else:
    location, user, password = sys.argv[5:8]
    reader = pgcdc.flight_readers(location, user, password, slot=slot)["public.narrow"]
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.monotonic()
received = 0
while received < rows:
    batch = reader.next_batch(timeout=30.0)
    if batch is None:
        sys.exit(f"the {mode} reader stalled at {received} of {rows} rows")
    received += batch.num_rows
    reader.ack(batch)
print(f"{time.monotonic() - started:.3f}")

"""A consumer process of the pytest suite, written as a user of the pgcdc
package would: reads one route, appends each row as
`commit_lsn lsn op id v` and, after each batch, `@ position`; then
acknowledges the batch. Killed at any moment and started again, it cuts
its file back to the last position it recorded and resumes after it, so
every change is in the file exactly once.

Usage: consume.py OUTPUT STOP ROUTE local CONNINFO SLOT
       consume.py OUTPUT STOP ROUTE flight LOCATION USER PASSWORD SLOT ROOT_CERT
"""
import os
import sys

import pgcdc

output, stop, route, mode = sys.argv[1:5]

kept, position, offset = 0, None, 0
if os.path.exists(output):
    with open(output, "rb") as f:
        for line in f:
            offset += len(line)
            if line.endswith(b"\n") and line.startswith(b"@ "):
                kept, position = offset, line[2:].decode().strip()
with open(output, "ab") as f:
    f.truncate(kept)

if mode == "local":
    conninfo, slot = sys.argv[5:7]
    reader = pgcdc.auto_configure(conninfo, tables="public.*", slot=slot)[route]
else:
    location, user, password, slot, cert = sys.argv[5:10]
    certs = open(cert, "rb").read()
    reader = pgcdc.flight_readers(location, user, password, slot=slot, tls_root_certs=certs)[route]
if position:
    reader.resume_at(position)

with open(output, "ab") as out:
    while True:
        batch = reader.next_batch(timeout=1.0)
        if batch is None:
            if os.path.exists(stop):
                break
            continue
        rows = batch.select(["_commit_lsn", "_lsn", "_op", "id", "v"]).to_pylist() if batch.num_rows else []
        lines = [f"{r['_commit_lsn']} {r['_lsn']} {r['_op']} {r['id']} {r['v']}\n" for r in rows]
        lines.append(f"@ {reader.position}\n")
        out.write("".join(lines).encode())
        out.flush()
        os.fsync(out.fileno())
        reader.ack(batch)

"""A remote consumer of `pgcdc serve`, as a user would write one with
pyarrow.flight: reads one route, appends every row as
`commit_lsn lsn table id op` to a file and, after each batch, the batch's
position; then acknowledges it. Killed at any moment and started again,
it cuts the file back to the last position it recorded and asks for the
route after it, so every row is in the file exactly once. It reconnects
when the server is gone, and stops once the stop file exists and a read
brought nothing.

Usage: client.py LOCATION USER PASSWORD SLOT ROUTE CONSUMER OUTPUT STOP [ROOT_CERT]
"""
import os
import sys
import time

import pyarrow.flight as flight

location, user, password, slot, route, consumer, output, stop = sys.argv[1:9]
root_cert = open(sys.argv[9], "rb").read() if len(sys.argv) > 9 else None


def recorded():
    """The file up to its last position line, and that position."""
    if not os.path.exists(output):
        return 0, None
    kept, position, offset = 0, None, 0
    with open(output, "rb") as f:
        for line in f:
            offset += len(line)
            if line.endswith(b"\n") and line.startswith(b"@ "):
                kept, position = offset, line[2:].decode().strip()
    return kept, position


kept, position = recorded()
with open(output, "ab") as f:
    f.truncate(kept)

while True:
    brought = 0
    try:
        client = flight.connect(location, tls_root_certs=root_cert) if root_cert else flight.connect(location)
        token = client.authenticate_basic_token(user.encode(), password.encode())
        options = flight.FlightCallOptions(headers=[token], timeout=3.0)
        ticket = f"slot={slot}\nroute={route}\nconsumer={consumer}"
        if position:
            ticket += f"\nafter={position}"
        reader = client.do_get(flight.Ticket(ticket.encode()), options)
        with open(output, "ab") as out:
            while True:
                chunk = reader.read_chunk()
                meta = dict(l.split("=", 1) for l in chunk.app_metadata.to_pybytes().decode().splitlines())
                lines = []
                batch = chunk.data
                if batch is not None and batch.num_rows:
                    columns = [batch.column(c).to_pylist() for c in ("_commit_lsn", "_lsn", "_table", "id", "_op")]
                    lines = [" ".join(str(v) for v in row) for row in zip(*columns)]
                if meta.get("snapshot") == "complete":
                    lines.append("complete")
                lines.append("@ " + meta["position"])
                out.write(("\n".join(lines) + "\n").encode())
                out.flush()
                os.fsync(out.fileno())
                position = meta["position"]
                brought += 1
                ack = f"slot={slot}\nroute={route}\nconsumer={consumer}\nposition={position}"
                list(client.do_action(flight.Action("ack", ack.encode()), options))
    except StopIteration:
        pass
    except flight.FlightUnauthenticatedError as e:
        print(f"refused: {e}", file=sys.stderr)
        sys.exit(3)
    except (flight.FlightError, OSError):
        # The server is gone, or the read timed out: ask again.
        pass
    if brought == 0 and os.path.exists(stop):
        sys.exit(0)
    if brought == 0:
        time.sleep(0.2)

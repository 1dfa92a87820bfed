"""The pgcdc Python package against a real cluster: what the README
teaches, typed batches, exactly-once delivery across killed consumers and
a killed `pgcdc serve`, async reads that a cancellation cannot rob,
merging, the catalog calls, errors, the GIL and Ctrl-C."""

import asyncio
import decimal
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import pyarrow as pa
import pytest

import pgcdc

HERE = os.path.dirname(os.path.abspath(__file__))
README = os.path.join(HERE, "..", "..", "README.md")


def eventually(what, check, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def read_rows(reader, count, timeout=30.0):
    """(op, id) of the next `count` rows, acknowledging each batch; the
    number of snapshot completion markers seen beside."""
    rows, markers = [], 0
    deadline = time.monotonic() + timeout
    while len(rows) < count:
        assert time.monotonic() < deadline, f"only {rows} of {count} rows came"
        batch = reader.next_batch(timeout=1.0)
        if batch is None:
            continue
        markers += pgcdc.completes_snapshot(batch)
        rows += [(r["_op"], r["id"]) for r in batch.select(["_op", "id"]).to_pylist()]
        reader.ack(batch)
    return rows, markers


def test_batches_are_typed_pyarrow_batches_of_snapshot_then_changes(db):
    db.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v text, n numeric(10,2), at timestamptz);"
        "INSERT INTO t VALUES (1, 'a', 1.50, '2026-01-02 03:04:05+00')"
    )
    readers = pgcdc.auto_configure(db.conninfo, tables="public.t")
    assert list(readers) == ["public.t"]
    t = readers["public.t"]
    batches = []

    def read(until):
        while not until():
            batch = t.next_batch(timeout=30.0)
            assert batch is not None, "the rows came"
            assert isinstance(batch, pa.RecordBatch)
            batches.append(batch)
            t.ack(batch)  # the snapshot completes once its rows are acknowledged

    read(lambda: any(map(pgcdc.completes_snapshot, batches)))
    db.sql("INSERT INTO t VALUES (2, 'b', 2.25, NULL); UPDATE t SET v = 'c' WHERE id = 1; DELETE FROM t WHERE id = 2")
    read(lambda: sum(b.num_rows for b in batches) >= 4)
    markers = [b for b in batches if pgcdc.completes_snapshot(b)]
    assert len(markers) == 1 and markers[0].num_rows == 0
    first = next(b for b in batches if b.num_rows)
    assert first.schema.field("id").type == pa.int32()
    assert first.schema.field("v").type == pa.string()
    assert first.schema.field("n").type == pa.decimal128(10, 2)
    assert first.schema.field("at").type == pa.timestamp("us", tz="UTC")
    rows = [r for b in batches for r in b.select(["_op", "id", "v", "n", "at"]).to_pylist()]
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert rows[:3] == [
        {"_op": "r", "id": 1, "v": "a", "n": decimal.Decimal("1.50"), "at": at},
        {"_op": "c", "id": 2, "v": "b", "n": decimal.Decimal("2.25"), "at": None},
        {"_op": "u", "id": 1, "v": "c", "n": decimal.Decimal("1.50"), "at": at},
    ]
    assert (rows[3]["_op"], rows[3]["id"]) == ("d", 2)
    # Acknowledged: a new reader of the same consumer gets nothing again.
    del t, readers
    again = pgcdc.auto_configure(db.conninfo, tables="public.t")["public.t"]
    assert again.next_batch(timeout=1.0) is None


def readme_block(section, index=0):
    text = open(README).read().split(section, 1)[1]
    return re.findall(r"```python\n(.*?)```", text, re.S)[index]


def test_the_readme_python_example_runs_as_written(db):
    """The README's example with this database's conninfo and a `process`
    that stops the program once it has seen enough rows, inside `process`:
    that batch was not acknowledged, so the next run gets it first, then
    the rows after it; what was acknowledged never comes again."""
    db.sql("CREATE TABLE orders (id int PRIMARY KEY, amount numeric(10,2)); INSERT INTO orders VALUES (1, 9.99)")
    example = readme_block("## Python").replace("host=/var/run/postgresql dbname=app", db.conninfo)
    program = (
        "import sys\n"
        "seen = []\n"
        "def process(batch):\n"
        "    seen.extend(batch.select(['_op', 'id']).to_pylist())\n"
        "    print(batch.num_rows, seen, flush=True)\n"
        "    if len(seen) >= int(sys.argv[1]): raise SystemExit(0)\n" + example
    )
    writer = threading.Timer(2.0, lambda: db.sql("INSERT INTO orders VALUES (2, 20.00)"))
    writer.start()
    first = subprocess.run([sys.executable, "-c", program, "2"], capture_output=True, text=True, timeout=60)
    writer.join()
    assert first.returncode == 0, first.stderr
    assert "[{'_op': 'r', 'id': 1}, {'_op': 'c', 'id': 2}]" in first.stdout, first.stdout
    db.sql("INSERT INTO orders VALUES (3, 1.00)")
    second = subprocess.run([sys.executable, "-c", program, "2"], capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[-1].endswith("[{'_op': 'c', 'id': 2}, {'_op': 'c', 'id': 3}]"), second.stdout


# Exactly once, across killed consumers (and a killed `pgcdc serve`).

SETUP = (
    "CREATE TABLE t (id int PRIMARY KEY, v text);"
    "INSERT INTO t SELECT g, 'snap' || g FROM generate_series(1, 500) g"
)


def change(db, round_, next_id):
    """One transaction of a mixed workload; returns how many changes it made
    and the next free id."""
    kind = round_ % 3
    if kind == 0:
        sql = (f"WITH x AS (INSERT INTO t SELECT g, 'v' || g FROM generate_series({next_id}, {next_id + 299}) g "
               "RETURNING 1) SELECT count(*) FROM x")
        next_id += 300
    elif kind == 1:
        sql = f"WITH x AS (UPDATE t SET v = v || 'u' WHERE id % 7 = {round_ % 7} RETURNING 1) SELECT count(*) FROM x"
    else:
        sql = f"WITH x AS (DELETE FROM t WHERE id % 13 = {round_ % 13} RETURNING 1) SELECT count(*) FROM x"
    return int(db.sql(sql).stdout.strip()), next_id


def recorded(output):
    rows = []
    for line in open(output).read().splitlines():
        if not line.startswith("@"):
            commit, lsn, op, id_, v = line.split(" ", 4)
            rows.append((int(commit), int(lsn), op, int(id_), v))
    return rows


def assert_exactly_once(db, output, changes):
    """Every change once, in commit order, and the snapshot's rows (each
    row of a chunk read once; a row inserted before its chunk was read is
    both a change and a snapshot row), applying to the table's contents."""
    rows = recorded(output)
    keys = [(r[0], r[1], r[2], r[3]) for r in rows]
    assert len(set(keys)) == len(keys), "no change twice"
    made = [r for r in rows if r[2] != "r"]
    assert len(made) == changes, f"{len(made)} changes recorded, {changes} made"
    read = [r[3] for r in rows if r[2] == "r"]
    assert read and len(read) == len(set(read)), "each row once in the snapshot"
    assert [r[:2] for r in rows] == sorted(r[:2] for r in rows), "commit order"
    replica = {}
    for _, _, op, id_, v in rows:
        if op == "d":
            replica.pop(id_, None)
        else:
            replica[id_] = v
    table = {int(i): v for i, v in db.rows("SELECT id, v FROM t")}
    assert replica == table, "applying the changes in order gives the table"


class Consumer:
    def __init__(self, output, stop, *args):
        self.args = [sys.executable, os.path.join(HERE, "consume.py"), output, stop, *args]
        self.start()

    def start(self):
        self.process = subprocess.Popen(self.args)

    def kill_and_restart(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.start()

    def finish(self, stop):
        open(stop, "w").close()
        assert self.process.wait(timeout=120) == 0, "the consumer ran clean"


def run_workload(db, consumer, output, kill_also=lambda round_: None):
    changes, next_id = 0, 1000
    for round_ in range(12):
        made, next_id = change(db, round_, next_id)
        changes += made
        if round_ % 4 == 1:
            time.sleep(0.3)
            consumer.kill_and_restart()
        kill_also(round_)
    eventually(
        "every change recorded",
        lambda: sum(r[2] != "r" for r in recorded(output)) >= changes,
        timeout=120,
    )
    return changes


def test_every_change_arrives_once_across_killed_consumers(db, tmp_path):
    db.sql(SETUP)
    pgcdc.auto_configure(db.conninfo, tables="public.t", slot="local")
    output, stop = str(tmp_path / "out"), str(tmp_path / "stop")
    consumer = Consumer(output, stop, "public.t", "local", db.conninfo, "local")
    changes = run_workload(db, consumer, output)
    consumer.finish(stop)
    assert_exactly_once(db, output, changes)


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """`pgcdc serve` of a database, with TLS."""

    def __init__(self, cli, db, tmp_path):
        self.cert, key = str(tmp_path / "server.crt"), str(tmp_path / "server.key")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", self.cert],
            check=True, capture_output=True,
        )
        self.port = free_port()
        self.location = f"grpc+tls://127.0.0.1:{self.port}"
        self.args = [cli, "serve", "--conninfo", f"host={db.host} port={db.port} dbname={db.name}",
                     "--listen", f"127.0.0.1:{self.port}", "--tls-cert", self.cert, "--tls-key", key]
        self.start()

    def start(self):
        import socket

        self.process = subprocess.Popen(self.args, stderr=subprocess.DEVNULL)

        def listening():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False

        eventually("pgcdc serve listening", listening)

    def kill_and_restart(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.start()

    def stop(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


@pytest.fixture
def alice():
    """A role that logs in with a password (the harness made it); each test
    grants it what it may read."""
    from conftest import env

    return env("PGCDC_TEST_FLIGHT_USER"), env("PGCDC_TEST_FLIGHT_PASSWORD")


def test_every_change_arrives_once_over_flight_across_killed_servers_and_consumers(db, tmp_path, cli, alice):
    user, password = alice
    db.sql(SETUP + f"; GRANT SELECT ON t TO {user}")
    pgcdc.auto_configure(db.conninfo, tables="public.t", slot="remote")
    served = Served(cli, db, tmp_path)
    output, stop = str(tmp_path / "out"), str(tmp_path / "stop")
    consumer = Consumer(output, stop, "public.t", "flight", served.location, user, password, "remote", served.cert)

    def kill_server(round_):
        if round_ % 4 == 3:
            served.kill_and_restart()

    try:
        changes = run_workload(db, consumer, output, kill_server)
        consumer.finish(stop)
    finally:
        served.stop()
    assert_exactly_once(db, output, changes)


def test_flight_refuses_wrong_passwords_missing_privileges_and_plain_clients(db, tmp_path, cli, alice):
    user, password = alice
    db.sql("CREATE TABLE secret (id int PRIMARY KEY, v text); CREATE TABLE open (id int PRIMARY KEY, v text);"
           f"GRANT SELECT ON open TO {user}")
    pgcdc.auto_configure(db.conninfo, tables="public.*", slot="guarded")
    served = Served(cli, db, tmp_path)
    certs = open(served.cert, "rb").read()
    try:
        with pytest.raises(pgcdc.Error, match="refused user"):
            pgcdc.flight_readers(served.location, user, "wrong", slot="guarded", tls_root_certs=certs)
        readers = pgcdc.flight_readers(served.location, user, password, slot="guarded", tls_root_certs=certs)
        assert list(readers) == ["public.open"], "only the table it may SELECT"
        hidden = pgcdc.FlightReader(served.location, user, password, "guarded", "public.secret", tls_root_certs=certs)
        with pytest.raises(pgcdc.Error, match="public.secret"):
            hidden.next_batch(timeout=10.0)
        with pytest.raises(pgcdc.Unreachable):
            pgcdc.flight_readers(served.location.replace("grpc+tls", "grpc"), user, password, slot="guarded")
    finally:
        served.stop()


# Async reads, merging, the catalog, errors, the GIL and Ctrl-C.

def test_async_reads_yield_every_batch_and_a_cancelled_read_loses_nothing(db):
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)")
    reader = pgcdc.auto_configure(db.conninfo, tables="public.t", snapshot="never")["public.t"]

    async def main():
        batches = reader.read_batches()
        # Cancelled while waiting: the row committed meanwhile is kept.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(batches.__anext__(), timeout=0.1)
        db.sql("INSERT INTO t VALUES (1, 'kept')")
        await asyncio.sleep(1.0)
        got = []
        async for batch in reader.read_batches():
            got += batch.column("id").to_pylist()
            reader.ack(batch)
            if len(got) == 1:
                db.sql("INSERT INTO t VALUES (2, 'next')")
            if len(got) >= 2:
                break
        return got

    assert asyncio.run(main()) == [1, 2]
    assert reader.next_batch(timeout=0.5) is None, "nothing twice"


def test_merge_streams_reads_routes_in_commit_order(db):
    db.sql("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)")
    readers = pgcdc.auto_configure(db.conninfo, tables="public.*", snapshot="never")
    assert sorted(readers) == ["public.a", "public.b"]
    merged = pgcdc.merge_streams(readers.values())
    db.sql("BEGIN; INSERT INTO a VALUES (1); INSERT INTO b VALUES (2); INSERT INTO a VALUES (3); COMMIT;"
           "INSERT INTO b VALUES (4)")
    got = []
    while len(got) < 4:
        batch = merged.next_batch(timeout=30.0)
        assert batch is not None
        got += [(batch.schema.metadata[b"pgcdc.table"].decode(), i) for i in batch.column("id").to_pylist()]
        merged.ack(batch)
    assert got == [("a", 1), ("b", 2), ("a", 3), ("b", 4)]
    with pytest.raises(pgcdc.Error, match="merge_streams"):
        readers["public.a"].next_batch(timeout=0.1)


def test_catalog_calls_answer_like_the_sql_functions(db):
    db.sql("CREATE SCHEMA s; CREATE TABLE s.x (id bigint PRIMARY KEY, name text NOT NULL); CREATE TABLE public.y (k int)")
    assert pgcdc.discover_tables(db.conninfo) == [("public", "y"), ("s", "x")]
    assert pgcdc.match_tables(db.conninfo, "s.*") == [("s", "x")]
    assert pgcdc.match_tables(db.conninfo, ["*.*"], exclude=["public.*"]) == [("s", "x")]
    columns = pgcdc.table_columns(db.conninfo, "s.x")
    assert [(c["column_name"], c["pg_type"], c["nullable"], c["replica_identity"]) for c in columns] == [
        ("id", "bigint", False, True),
        ("name", "text", False, False),
    ]
    assert [c["arrow_type"] for c in columns] == [r[0] for r in db.rows("SELECT arrow_type FROM cdc_table_columns('s', 'x')")]
    pgcdc.auto_configure(db.conninfo, tables="s.*", slot="cat")
    status = pgcdc.status(db.conninfo)
    assert [(s["slot_name"], s["route"]) for s in status] == [("cat", "s.x")]
    assert status[0]["snapshot"]["state"] in ("done", "running", "pending")


def test_errors_are_exceptions_with_the_sql_message(db):
    sql_error = db.sql("SELECT * FROM cdc_match_tables(ARRAY['public.[x'])", check=False).stderr
    with pytest.raises(pgcdc.DatabaseError) as raised:
        pgcdc.match_tables(db.conninfo, "public.[x")
    message = str(raised.value)
    assert message.splitlines()[0] in sql_error, (message, sql_error)
    assert raised.value.sqlstate and len(raised.value.sqlstate) == 5
    if raised.value.hint:
        assert raised.value.hint in sql_error
    with pytest.raises(pgcdc.DatabaseError) as unreachable:
        pgcdc.discover_tables(f"host={db.host} port=1 dbname={db.name}")
    assert unreachable.value.sqlstate is None
    with pytest.raises(pgcdc.ReadError, match="nowhere"):
        pgcdc._native.Reader.open("x", "/nowhere/1.ring", "default", 0.0)


def test_a_blocking_read_releases_the_gil(db):
    db.sql("CREATE TABLE t (id int PRIMARY KEY)")
    reader = pgcdc.auto_configure(db.conninfo, tables="public.t", snapshot="never")["public.t"]
    counted = [0]
    done = threading.Event()

    def count():
        while not done.is_set():
            counted[0] += 1

    thread = threading.Thread(target=count)
    thread.start()
    started = time.monotonic()
    assert reader.next_batch(timeout=1.0) is None
    waited = time.monotonic() - started
    done.set()
    thread.join()
    assert waited >= 0.9
    # Holding the GIL for a second would have let the thread count only in
    # the interpreter's switch intervals; released, it counted all along.
    assert counted[0] > 100_000, counted[0]


def test_ctrl_c_interrupts_a_blocking_read(db):
    db.sql("CREATE TABLE t (id int PRIMARY KEY)")
    pgcdc.auto_configure(db.conninfo, tables="public.t", snapshot="never")
    program = (
        "import pgcdc, sys\n"
        f"reader = pgcdc.auto_configure({db.conninfo!r}, tables='public.t', snapshot='never')['public.t']\n"
        "print('reading', flush=True)\n"
        "try:\n"
        "    for batch in reader: pass\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "reading\n"
    time.sleep(0.5)
    sent = time.monotonic()
    child.send_signal(signal.SIGINT)
    out, _ = child.communicate(timeout=10)
    assert out == "interrupted\n"
    assert time.monotonic() - sent < 5

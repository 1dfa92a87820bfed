"""PostgreSQL change data capture as Apache Arrow record batches.

    import pgcdc

    readers = pgcdc.auto_configure("host=/var/run/postgresql dbname=app", tables="public.*")
    orders = readers["public.orders"]
    for batch in orders:            # pyarrow.RecordBatch, in commit order
        apply(batch)
        orders.ack(batch)           # the worker may reuse its space, the slot move on

Readers read the shared-memory rings of a stream on this host; with
``flight="grpc+tls://host:port"`` they read the same routes from
``pgcdc serve`` on the database host instead, through the same API.
"""

import asyncio
import threading
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Union

import pyarrow as pa

from . import _native
from ._native import DatabaseError, Error, ReadError

__all__ = [
    "auto_configure",
    "merge_streams",
    "discover_tables",
    "table_columns",
    "match_tables",
    "status",
    "register_consumer",
    "drop_consumer",
    "max_commit_lsn",
    "completes_snapshot",
    "Reader",
    "MergedReader",
    "FlightReader",
    "flight_readers",
    "Error",
    "DatabaseError",
    "ReadError",
    "Unreachable",
]

#: How long ``read_batches`` waits in a worker thread before it looks again.
ASYNC_POLL = 0.5


def max_commit_lsn(batch) -> int:
    """The highest commit LSN of a change batch (of a snapshot's completion
    marker, the one it carries): what ``ack`` acknowledges up to."""
    return _native.max_commit_lsn(batch)


def completes_snapshot(batch) -> bool:
    """Whether ``batch`` is the batch of no rows that completes a table's
    snapshot (every ``r`` row of the table came before it)."""
    return _native.completes_snapshot(batch)


class _Stream:
    """What every reader does: blocking and async reads that lose nothing.

    A read that an ``asyncio`` cancellation (a timeout, a task cancelled)
    interrupts leaves its batch pending, and the next read returns it:
    the reader itself already counts it as returned, and acknowledging a
    later batch would acknowledge it too."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pending = None

    def _read(self, timeout: Optional[float], *options):
        raise NotImplementedError

    def _fill(self, timeout: Optional[float], *options) -> None:
        with self._lock:
            if self._pending is None:
                self._pending = self._read(timeout, *options)

    def _take(self) -> Optional[pa.RecordBatch]:
        with self._lock:
            batch, self._pending = self._pending, None
        return batch

    def next_batch(self, timeout: Optional[float] = None) -> Optional[pa.RecordBatch]:
        """The next batch, waiting up to ``timeout`` seconds (None: until
        one comes); None if none came. Ctrl-C interrupts the wait."""
        self._fill(timeout)
        return self._take()

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        """Every batch, as it comes: a stream never ends by itself."""
        while True:
            yield self.next_batch(None)

    async def read_batches(self):
        """``async for batch in reader.read_batches()``: the same batches,
        waited for in a worker thread with the GIL released."""
        loop = asyncio.get_running_loop()
        while True:
            await loop.run_in_executor(None, self._fill, ASYNC_POLL)
            batch = self._take()
            if batch is not None:
                yield batch

    def ack(self, batch: Union[pa.RecordBatch, int]) -> None:
        """Acknowledges the rows returned up to ``batch`` (or a commit LSN):
        every row returned whose transaction committed at or before the
        batch's last. Call it once what the batch produced is durable."""
        self._ack(batch if isinstance(batch, int) else max_commit_lsn(batch))

    def _ack(self, commit_lsn: int) -> None:
        raise NotImplementedError


class Reader(_Stream):
    """The changes of one route (a table, or a table's partition, or every
    table of a merged stream), from its ring on this host."""

    def __init__(self, native: "_native.Reader"):
        super().__init__()
        self._native = native

    @property
    def route(self) -> str:
        return self._native.route

    @property
    def position(self) -> str:
        """The position of the last row returned: record it with what the
        rows produced, and give it to ``resume_at`` after a restart."""
        return self._native.position

    def resume_at(self, position: str) -> "Reader":
        """Skips, and acknowledges, every row up to ``position``."""
        self._native.resume_at(position)
        return self

    def resume_after(self, commit_lsn: int) -> "Reader":
        """Skips, and acknowledges, every transaction committed at or before
        ``commit_lsn``."""
        self._native.resume_after(commit_lsn)
        return self

    def _read(self, timeout):
        batch = self._native.next_batch(timeout)
        return None if batch is None else pa.record_batch(batch)

    def _ack(self, commit_lsn):
        self._native.ack(commit_lsn)

    def __repr__(self):
        return f"<pgcdc.Reader {self.route}>"


class MergedReader(_Stream):
    """Several routes as one stream in commit order (``merge_streams``).
    A batch never holds rows of two routes: it is cut where another
    route's rows come in between."""

    def __init__(self, native: "_native.Merged"):
        super().__init__()
        self._native = native

    @property
    def routes(self) -> List[str]:
        return self._native.routes

    def position(self, route: int) -> str:
        """The position of the last row of ``routes[route]`` returned: what
        that route's reader ``resume_at`` takes after a restart."""
        return self._native.position(route)

    def next_batch(self, timeout: Optional[float] = None, max_rows: Optional[int] = None):
        """Like ``Reader.next_batch``, with at most ``max_rows`` rows (the
        rest stay with the reader, unreturned and unacknowledged)."""
        self._fill(timeout, max_rows)
        return self._take()

    def _read(self, timeout, max_rows=None):
        batch = self._native.next_batch(timeout, max_rows)
        return None if batch is None else pa.record_batch(batch)

    def _ack(self, commit_lsn):
        self._native.ack(commit_lsn)


from ._flight import FlightReader, Unreachable, flight_readers  # noqa: E402  (they build on _Stream)


def _patterns(tables: Union[str, Sequence[str]]) -> List[str]:
    return [tables] if isinstance(tables, str) else list(tables)


def auto_configure(
    conninfo: str,
    tables: Union[str, Sequence[str]] = "public.*",
    *,
    exclude: Sequence[str] = (),
    slot: str = "pgcdc",
    route_by_table: bool = True,
    partitions: int = 1,
    consumer: str = "default",
    snapshot: str = "initial",
    ring_timeout: float = 30.0,
    flight: Optional[str] = None,
    tls_root_certs: Optional[bytes] = None,
) -> Dict[str, _Stream]:
    """Configures capture of the tables ``tables`` selects
    (``cdc_auto_configure``) and returns a reader per route, keyed
    ``"schema.table"`` (``"schema.table#k"`` with ``partitions`` > 1; with
    ``route_by_table=False`` one reader keyed by the slot's name, whose rows
    carry ``_schema`` and ``_table``).

    Readers read the rings on this host, waiting up to ``ring_timeout``
    seconds for the worker to create one; with ``flight`` (a location such
    as ``"grpc+tls://db.example.com:50051"``) they read ``pgcdc serve`` as
    the conninfo's user and password instead."""
    routes = _native.configure(
        conninfo, _patterns(tables), list(exclude), slot, route_by_table, partitions, consumer, snapshot
    )
    by_route = {}
    for _schema, _table, route, ring_path in routes:
        by_route.setdefault(route, ring_path)
    if flight is not None:
        user, password = _native.credentials(conninfo)
        return {
            route: FlightReader(flight, user, password, slot, route, consumer=consumer, tls_root_certs=tls_root_certs)
            for route in sorted(by_route)
        }
    return {
        route: Reader(_native.Reader.open(route, path, consumer, ring_timeout)) for route, path in by_route.items()
    }


def merge_streams(readers: Iterable[_Stream]) -> MergedReader:
    """Merges local readers into one stream in commit order. The readers
    are taken over: read the merged stream, not them."""
    readers = list(readers)
    remote = [r for r in readers if not isinstance(r, Reader)]
    if remote:
        raise Error(
            "merge_streams merges readers of local rings; over Flight, read one ordered stream of "
            "several tables by configuring it with route_by_table=False"
        )
    return MergedReader(_native.merge([r._native for r in readers]))


def discover_tables(conninfo: str) -> List[tuple]:
    """(schema, table) of every user table (``cdc_discover_tables``)."""
    return _native.discover_tables(conninfo)


def table_columns(conninfo: str, table: str) -> List[dict]:
    """The columns of ``"schema.table"`` (``cdc_table_columns``): name,
    PostgreSQL type, nullability, Arrow type, replica identity."""
    schema, _, name = table.rpartition(".")
    return _native.table_columns(conninfo, schema or "public", name)


def match_tables(conninfo: str, tables: Union[str, Sequence[str]], exclude: Sequence[str] = ()) -> List[tuple]:
    """(schema, table) of each table the patterns select (``cdc_match_tables``)."""
    return _native.match_tables(conninfo, _patterns(tables), list(exclude))


def status(conninfo: str) -> List[dict]:
    """A dict per route of every stream (``cdc_status``)."""
    return _native.status(conninfo)


def register_consumer(conninfo: str, name: str, slot: str = "pgcdc") -> bool:
    """Registers consumer ``name`` for the stream (``cdc_register_consumer``);
    returns whether it was new."""
    return _native.register_consumer(conninfo, slot, name)


def drop_consumer(conninfo: str, name: str, slot: str = "pgcdc") -> None:
    """Drops consumer ``name`` of the stream (``cdc_drop_consumer``)."""
    _native.drop_consumer(conninfo, slot, name)

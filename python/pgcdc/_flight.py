"""Reading a route from ``pgcdc serve`` over Arrow Flight, with the API of
a local reader.

A thread reads the route's ``do_get`` stream ahead into a small queue (the
server reads the ring only as fast as that). What the application gets,
and may acknowledge, is what it took from the queue: an acknowledgement
names the position of the last batch taken at or below its commit LSN.
When the stream ends (a schema change) or the server goes away, the queue
is dropped and the stream asked again ``after=`` the last batch taken, so
nothing is lost and nothing comes twice.
"""

import queue
import threading
import time
from typing import Optional

import pyarrow as pa
import pyarrow.flight as flight

from . import Error, _Stream


class Unreachable(Error):
    """``pgcdc serve`` did not answer: not running (yet), restarting, or
    speaking TLS to a plain client (or the other way round)."""


#: Batches read ahead of the application.
READ_AHEAD = 2
#: Seconds between two acknowledgements sent by a reader's thread.
ACK_TICK = 0.01
#: Between attempts to reach a server that is not answering.
RETRY = 0.2
#: Errors of a server that went away or restarted: ask again.
TRANSIENT = (
    flight.FlightUnavailableError,
    flight.FlightTimedOutError,
    flight.FlightCancelledError,
    flight.FlightInternalError,
)


def _login(location: str, user: str, password: str, certs: Optional[bytes]):
    """A client of ``location`` logged in as ``user``, and the options that
    carry its token."""
    client = flight.connect(location, tls_root_certs=certs) if certs else flight.connect(location)
    try:
        token = client.authenticate_basic_token(user.encode(), password.encode())
    except TRANSIENT as e:
        raise Unreachable(f"pgcdc serve at {location} did not answer (is it running, and does it speak TLS "
                          f"exactly when the client does?): {e}") from None
    except Exception as e:
        raise Error(f"pgcdc serve at {location} refused user {user}: {e}") from None
    return client, flight.FlightCallOptions(headers=[token])


def _meta(chunk) -> dict:
    raw = chunk.app_metadata.to_pybytes().decode() if chunk.app_metadata is not None else ""
    return dict(line.split("=", 1) for line in raw.splitlines() if "=" in line)


def _marked(batch: pa.RecordBatch, meta: dict) -> pa.RecordBatch:
    """The batch with what its app_metadata says in its schema metadata, as
    a local reader's batches carry it (so ``max_commit_lsn`` and
    ``completes_snapshot`` read either)."""
    extra = {"pgcdc.commit_lsn": meta.get("commit_lsn", "")}
    if meta.get("snapshot") == "complete":
        extra.update({"pgcdc.snapshot": "complete", "pgcdc.snapshot_id": meta.get("snapshot_id", "")})
    merged = dict(batch.schema.metadata or {})
    merged.update({k.encode(): v.encode() for k, v in extra.items()})
    return batch.replace_schema_metadata(merged)


class _Pumping:
    """One ``do_get`` read ahead into a queue by a thread; stopping it
    cancels the call, so the server lets go of the consumer at once."""

    def __init__(self):
        self.queue = queue.Queue(READ_AHEAD)
        self._stopped = threading.Event()
        self._stream = None
        self._lock = threading.Lock()

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()
            if self._stream is not None:
                self._stream.cancel()

    def _put(self, item) -> bool:
        while not self._stopped.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def run(self, client, ticket: str, options) -> None:
        try:
            stream = client.do_get(flight.Ticket(ticket.encode()), options)
            with self._lock:
                if self._stopped.is_set():
                    stream.cancel()
                    return
                self._stream = stream
            while not self._stopped.is_set():
                chunk = stream.read_chunk()
                if not self._put(("batch", chunk.data, _meta(chunk))):
                    return
        except StopIteration:
            self._put(("end", None, None))
        except Exception as e:  # handed to the reading thread, which decides
            self._put(("error", e, None))


class _Acker:
    """Sends a reader's acknowledgements from a thread of its own, the
    newest only: a round trip per batch would hold a reader of small
    transactions back (at 10 000 commits a second the client fell seconds
    behind). The ring's space comes back a moment later; nothing else
    changes, since what a client keeps is its position."""

    def __init__(self, route: str):
        self._route = route
        self._lock = threading.Condition()
        self._due = None
        self._closed = False
        self._thread = None

    def due(self, client, options, position: str) -> None:
        with self._lock:
            self._due = (client, options, position)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True)
                self._thread.start()
            self._lock.notify()

    def _take(self, wait: bool):
        with self._lock:
            while wait and self._due is None and not self._closed:
                self._lock.wait()
            due, self._due = self._due, None
            return due

    def _send(self, due) -> None:
        client, options, position = due
        body = f"{self._route}\nposition={position}".encode()
        try:
            list(client.do_action(flight.Action("ack", body), options))
        except TRANSIENT + (flight.FlightUnauthenticatedError, pa.ArrowInvalid):
            # No stream open to acknowledge on (failed precondition: the
            # server restarted, or is between two of our streams): the
            # next stream starts after the last batch taken, which
            # acknowledges it there.
            pass

    def _run(self) -> None:
        while True:
            due = self._take(wait=True)
            if due is None:
                return
            self._send(due)
            # At most one a tick: back to back, a round trip per batch took
            # the GIL and a core from the reading threads.
            until = time.monotonic() + ACK_TICK
            with self._lock:
                while not self._closed and time.monotonic() < until:
                    self._lock.wait(until - time.monotonic())

    def close(self, send: bool = True) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        due = self._take(wait=False)
        if send and due is not None:
            self._send(due)


class FlightReader(_Stream):
    """One route read from ``pgcdc serve`` at ``location``, logged in as a
    PostgreSQL user."""

    def __init__(
        self,
        location: str,
        user: Optional[str],
        password: Optional[str],
        slot: str,
        route: str,
        consumer: str = "default",
        tls_root_certs: Optional[bytes] = None,
    ):
        super().__init__()
        self.route = route
        self._route = f"slot={slot}\nroute={route}\nconsumer={consumer}"
        #: (commit LSN, position) of each batch taken and not acknowledged.
        self._taken = []
        self._position: Optional[str] = None
        self._pumping: Optional[_Pumping] = None
        self._acker = _Acker(self._route)
        if not user:
            raise Error("Flight needs a user: name one in the conninfo (user=…)")
        self._login_as = (location, user, password or "", tls_root_certs)
        self._client = self._options = None
        self._login()

    @property
    def position(self) -> Optional[str]:
        """The position of the last batch taken (None before any)."""
        return self._position

    def resume_at(self, position: str) -> "FlightReader":
        """Reads on after ``position`` (a ``position`` recorded before)."""
        self._restart()
        self._position = position
        return self

    def _login(self) -> None:
        """Connects and logs in (again after a server restart: its tokens
        live in its memory only)."""
        self._client, self._options = _login(*self._login_as)

    def _start(self) -> None:
        if self._options is None:
            self._login()
        ticket = self._route + (f"\nafter={self._position}" if self._position else "")
        self._pumping = _Pumping()
        threading.Thread(target=self._pumping.run, args=(self._client, ticket, self._options), daemon=True).start()

    def _restart(self) -> None:
        if self._pumping is not None:
            self._pumping.stop()
        self._pumping = None

    def _read(self, timeout):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._pumping is None:
                try:
                    self._start()
                except Unreachable:
                    self._options = None
                    time.sleep(RETRY)
                    continue
            left = 0.1 if deadline is None else max(0.0, min(0.1, deadline - time.monotonic()))
            try:
                kind, data, meta = self._pumping.queue.get(timeout=left)
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            if kind == "batch":
                self._position = meta["position"]
                self._taken.append((int(meta.get("commit_lsn") or 0), self._position))
                return _marked(data, meta)
            self._restart()
            if kind == "error":
                if not isinstance(data, TRANSIENT + (flight.FlightUnauthenticatedError,)):
                    raise Error(f"pgcdc serve refused route {self.route}: {data}") from None
                # The server went away (or restarted, forgetting our
                # token): log in again and ask after the last batch taken.
                self._options = None
                time.sleep(RETRY)

    def _ack(self, commit_lsn: int) -> None:
        covered = [p for lsn, p in self._taken if lsn <= commit_lsn]
        if not covered:
            return
        self._taken = [(lsn, p) for lsn, p in self._taken if lsn > commit_lsn]
        self._acker.due(self._client, self._options, covered[-1])

    def close(self) -> None:
        """Sends the last acknowledgement and stops reading ahead (the
        server keeps the consumer's place). The acknowledgement goes
        first: the server takes one only while the reader's stream is
        open."""
        self._acker.close()
        self._restart()

    def __del__(self):
        self._restart()
        self._acker.close(send=False)

    def __repr__(self):
        return f"<pgcdc.FlightReader {self.route}>"


def flight_readers(
    location: str,
    user: str,
    password: str,
    *,
    slot: str = "pgcdc",
    consumer: str = "default",
    tls_root_certs: Optional[bytes] = None,
) -> dict:
    """A reader per route of stream ``slot`` that ``pgcdc serve`` at
    ``location`` lets ``user`` read (every table of the route selectable),
    keyed like ``auto_configure``'s: for a client that reaches the database
    host only through Flight."""
    client, options = _login(location, user, password, tls_root_certs)
    routes = sorted(
        info.descriptor.path[1].decode()
        for info in client.list_flights(options=options)
        if info.descriptor.path[0].decode() == slot
    )
    client.close()
    return {
        route: FlightReader(location, user, password, slot, route, consumer=consumer, tls_root_certs=tls_root_certs)
        for route in routes
    }

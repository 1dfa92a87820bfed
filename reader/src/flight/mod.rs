//! `pgcdc serve`: the routes of a database's streams over Arrow Flight, for
//! readers on other machines (DESIGN §7). Any Flight client reads them:
//! `pyarrow.flight`, Java, Go, C++.
//!
//! The protocol ([`protocol`] has its words):
//! - `handshake` with Flight basic auth: the PostgreSQL user and password,
//!   checked by connecting to the server as that user; the answer carries
//!   a bearer token for the calls after it (kept in memory only: no
//!   credential is in a ticket or a log line).
//! - `list_flights`: one flight per route the user may read (SELECT on
//!   every table of the route), with its schema and a ticket for consumer
//!   `default`.
//! - `do_get(ticket)`: the route's batches for the ticket's consumer, from
//!   what it acknowledged, or past `after=` (the `position` of the last
//!   batch the client keeps: with it, every change arrives exactly once,
//!   as with a local reader's `resume_at`). Each batch's `app_metadata`
//!   says its `position` and `commit_lsn`, and `snapshot=complete` on the
//!   batch of no rows that completes a table's snapshot. A stream has one
//!   schema: after a schema change it ends, and the next `do_get` starts
//!   with the new schema.
//! - `do_action("ack", …)`: acknowledges the rows of the client's
//!   current `do_get` up to a batch's `position`.
//!
//! A client that goes away keeps its consumer's position (and holds the
//! stream back, as `cdc_status()` shows); the server reads a ring only as
//! fast as the client takes batches, and holds no more than a few.

pub mod protocol;

use crate::changes::{ChangeReader, ReadError};
use crate::position::Position;
use arrow_array::RecordBatch;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest,
    HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket as FlightTicket,
};
use arrow_ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions};
use arrow_schema::Schema;
use futures::stream::{self, BoxStream, StreamExt};
use protocol::{batch_metadata, fingerprint, wire_batch, wire_schema, Ack, Ticket};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::metadata::MetadataMap;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

/// How `pgcdc serve` runs.
pub struct ServeConfig {
    /// Where the database is (host and dbname; each client's user and
    /// password are its own).
    pub conninfo: String,
    /// Loopback by default: exposing the rings is a decision.
    pub listen: SocketAddr,
    /// PEM certificate chain and private key: TLS, and no plain client.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Serves until the process ends.
pub fn serve(config: ServeConfig) -> Result<(), Box<dyn std::error::Error>> {
    let database: tokio_postgres::Config = config.conninfo.parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let service = FlightServiceServer::new(Service {
            database,
            sessions: Mutex::new(HashMap::new()),
            readers: Arc::new(Mutex::new(HashMap::new())),
        });
        // Without TCP_NODELAY, Nagle's algorithm and the client's delayed
        // acknowledgements held small batches back for up to 40 ms each.
        let mut server = Server::builder().tcp_nodelay(true);
        if let Some((cert, key)) = &config.tls {
            let identity = Identity::from_pem(std::fs::read(cert)?, std::fs::read(key)?);
            server = server.tls_config(ServerTlsConfig::new().identity(identity))?;
        }
        eprintln!("pgcdc serve: listening on {}{}", config.listen, if config.tls.is_some() { " (TLS)" } else { "" });
        server.add_service(service).serve(config.listen).await?;
        Ok(())
    })
}

/// A client that authenticated: its PostgreSQL connection, as itself.
struct Session {
    user: String,
    client: tokio_postgres::Client,
}

/// Which reader a `do_get` of (slot, route, consumer) reads with, for its
/// acknowledgements.
type ReaderKey = (String, String, String);

/// The reader of an open `do_get`, and the acknowledgement waiting for it.
/// `do_action` only leaves the position here: the pump holds the reader
/// while it waits for the ring, and an acknowledgement waiting for that
/// lock held a runtime thread, and the streams it served, up to a wait.
/// The pump applies it before its next read (within 50 ms) and, when the
/// `do_get` ends, before it lets the reader go: an acknowledgement that
/// `do_action` took is never dropped.
struct Pumped {
    reader: Mutex<ChangeReader>,
    ack: Mutex<Due>,
}

/// The newest acknowledgement not applied yet, and whether the pump still
/// takes them.
#[derive(Default)]
struct Due {
    position: Option<Position>,
    closed: bool,
}

impl Pumped {
    /// The next batch, after applying the acknowledgement that came
    /// meanwhile, in pieces of at most [`MESSAGE_BYTES`] (a row larger
    /// than that alone is a piece of its own), each with the position of
    /// its last row; none if no batch came within `timeout`.
    fn next(&self, timeout: Duration) -> Result<Vec<(RecordBatch, Position)>, Status> {
        let mut reader = self.reader.lock().expect("reader lock");
        if let Some(position) = self.ack.lock().expect("ack lock").position.take() {
            reader.ack_within(position.commit_lsn, position);
        }
        let Some(batch) = reader.next_batch(timeout).map_err(read_status)? else {
            return Ok(Vec::new());
        };
        let mut pieces = Vec::new();
        split(&batch, 0, batch.num_rows(), &mut |start, rows| {
            // The batch is the last the reader returned: its rows'
            // positions are known.
            let after = batch.num_rows() - start - rows;
            pieces.push((batch.slice(start, rows), reader.position_before_last(after)));
        });
        if pieces.is_empty() {
            // A marker: no rows, one message.
            pieces.push((batch, reader.position()));
        }
        Ok(pieces)
    }

    /// Leaves `position` for the pump; false once the pump has ended.
    fn acknowledge(&self, position: Position) -> bool {
        let mut due = self.ack.lock().expect("ack lock");
        if due.closed {
            return false;
        }
        due.position = Some(due.position.map_or(position, |p| p.max(position)));
        true
    }

    /// Takes no more acknowledgements and applies the last one (again: a
    /// no-op).
    fn close(&self) {
        let last = {
            let mut due = self.ack.lock().expect("ack lock");
            due.closed = true;
            due.position.take()
        };
        if let Some(position) = last {
            self.reader.lock().expect("reader lock").ack_within(position.commit_lsn, position);
        }
    }
}

struct Service {
    database: tokio_postgres::Config,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    readers: Arc<Mutex<HashMap<ReaderKey, Arc<Pumped>>>>,
}

/// Batches a `do_get` holds for a client that has not taken them yet.
const IN_FLIGHT: usize = 4;

impl Service {
    /// The session of a call's bearer token.
    fn session(&self, metadata: &MetadataMap) -> Result<Arc<Session>, Status> {
        let header = metadata.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let token = header.strip_prefix("Bearer ").ok_or_else(|| {
            Status::unauthenticated(
                "authenticate first: a handshake with the PostgreSQL user and password (Flight basic auth)",
            )
        })?;
        let sessions = self.sessions.lock().expect("sessions lock");
        sessions
            .get(token)
            .cloned()
            .ok_or_else(|| Status::unauthenticated("unknown or expired token: authenticate again"))
    }

    /// The routes `session`'s user may read: (slot, route, ring file), of
    /// tables it may SELECT, every table of a route.
    async fn routes(&self, session: &Session) -> Result<Vec<(String, String, PathBuf)>, Status> {
        let rows = session
            .client
            .query(
                "SELECT DISTINCT c.slot_name::text, c.route, c.ring_path FROM cdc_routes() c
                 WHERE NOT EXISTS (SELECT 1 FROM pgcdc.routes r
                                   WHERE r.slot_name = c.slot_name AND r.route = c.route
                                     AND NOT has_table_privilege(r.relid, 'SELECT'))
                 ORDER BY 1, 2",
                &[],
            )
            .await
            .map_err(|e| Status::internal(format!("reading the routes: {e}")))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), PathBuf::from(r.get::<_, String>(2)))).collect())
    }

    /// The ring of route `route` of stream `slot`, if the session may read it.
    async fn ring_of(&self, session: &Session, slot: &str, route: &str) -> Result<PathBuf, Status> {
        let routes = self.routes(session).await?;
        routes.into_iter().find(|(s, r, _)| s == slot && r == route).map(|(_, _, p)| p).ok_or_else(|| {
            Status::not_found(format!(
                "stream \"{slot}\" has no route \"{route}\" that user \"{}\" may read (SELECT on its tables); list_flights shows those it may",
                session.user
            ))
        })
    }
}

/// User and password of a basic `authorization` header.
fn basic_credentials(metadata: &MetadataMap) -> Result<(String, String), Status> {
    use base64::Engine;
    let missing = || Status::unauthenticated("a handshake needs Flight basic auth: the PostgreSQL user and password");
    let header = metadata.get("authorization").and_then(|v| v.to_str().ok()).ok_or_else(missing)?;
    let encoded = header.strip_prefix("Basic ").ok_or_else(missing)?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|_| missing())?;
    let text = String::from_utf8(decoded).map_err(|_| missing())?;
    let (user, password) = text.split_once(':').ok_or_else(missing)?;
    Ok((user.to_owned(), password.to_owned()))
}

/// 128 random bits as hex: a session's token.
fn new_token() -> Result<String, Status> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Status::internal(format!("no random token: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A reader error as the client sees it.
fn read_status(e: ReadError) -> Status {
    Status::failed_precondition(e.to_string())
}

#[tonic::async_trait]
impl FlightService for Service {
    type HandshakeStream = BoxStream<'static, Result<HandshakeResponse, Status>>;
    type ListFlightsStream = BoxStream<'static, Result<FlightInfo, Status>>;
    type DoGetStream = BoxStream<'static, Result<FlightData, Status>>;
    type DoPutStream = BoxStream<'static, Result<PutResult, Status>>;
    type DoActionStream = BoxStream<'static, Result<arrow_flight::Result, Status>>;
    type ListActionsStream = BoxStream<'static, Result<ActionType, Status>>;
    type DoExchangeStream = BoxStream<'static, Result<FlightData, Status>>;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        let (user, password) = basic_credentials(request.metadata())?;
        let mut config = self.database.clone();
        config.user(&user).password(&password).application_name("pgcdc serve");
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(|e| {
            let why = e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned());
            Status::unauthenticated(format!("PostgreSQL refused user \"{user}\": {why}"))
        })?;
        tokio::spawn(connection);
        let token = new_token()?;
        self.sessions.lock().expect("sessions lock").insert(token.clone(), Arc::new(Session { user, client }));
        let answer = HandshakeResponse { protocol_version: 0, payload: token.clone().into() };
        let mut response = Response::new(stream::iter([Ok(answer)]).boxed());
        let bearer = format!("Bearer {token}").parse().map_err(|_| Status::internal("a token that is no header"))?;
        response.metadata_mut().insert("authorization", bearer);
        Ok(response)
    }

    async fn list_flights(&self, request: Request<Criteria>) -> Result<Response<Self::ListFlightsStream>, Status> {
        let session = self.session(request.metadata())?;
        let mut flights = Vec::new();
        for (slot, route, path) in self.routes(&session).await? {
            // The route's latest schema, as readers that attach early see it.
            let schema = crate::ring::file::open(&path)
                .ok()
                .and_then(|ring| ring.schema())
                .and_then(|bytes| arrow_ipc::reader::StreamReader::try_new(&bytes[..], None).ok().map(|r| r.schema()))
                .map_or_else(|| Arc::new(Schema::empty()), |s| wire_schema(&s));
            let ticket = Ticket { slot: slot.clone(), route: route.clone(), consumer: "default".into(), after: None };
            let info = FlightInfo::new()
                .try_with_schema(&schema)
                .map_err(|e| Status::internal(e.to_string()))?
                .with_descriptor(FlightDescriptor::new_path(vec![slot, route]))
                .with_endpoint(FlightEndpoint::new().with_ticket(FlightTicket::new(ticket.encode())));
            flights.push(Ok(info));
        }
        Ok(Response::new(stream::iter(flights).boxed()))
    }

    async fn do_get(&self, request: Request<FlightTicket>) -> Result<Response<Self::DoGetStream>, Status> {
        let session = self.session(request.metadata())?;
        let ticket = Ticket::decode(&request.into_inner().ticket).map_err(Status::invalid_argument)?;
        let path = self.ring_of(&session, &ticket.slot, &ticket.route).await?;
        let key = (ticket.slot, ticket.route, ticket.consumer);
        // A client that comes back takes over from its stream before (its
        // pump may not have seen it go yet): what that one was told to
        // acknowledge is applied first, so the new reader starts after it.
        let before = self.readers.lock().expect("readers lock").get(&key).cloned();
        let consumer = key.2.clone();
        let reader = tokio::task::spawn_blocking(move || {
            if let Some(before) = before {
                before.close();
            }
            ChangeReader::open(&path, &consumer)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(read_status)?;
        let reader = match ticket.after {
            Some(position) => reader.resume_at(position),
            None => reader,
        };
        let reader = Arc::new(Pumped { reader: Mutex::new(reader), ack: Mutex::new(Due::default()) });
        self.readers.lock().expect("readers lock").insert(key.clone(), reader.clone());
        let (sender, receiver) = tokio::sync::mpsc::channel(IN_FLIGHT);
        let readers = self.readers.clone();
        std::thread::spawn(move || {
            pump(&reader, &sender);
            reader.close();
            // Acknowledgements go to the next do_get's reader, if any.
            let mut readers = readers.lock().expect("readers lock");
            if readers.get(&key).is_some_and(|r| Arc::ptr_eq(r, &reader)) {
                readers.remove(&key);
            }
        });
        let batches = stream::unfold(receiver, |mut r| async move { r.recv().await.map(|item| (item, r)) });
        Ok(Response::new(batches.boxed()))
    }

    async fn do_action(&self, request: Request<Action>) -> Result<Response<Self::DoActionStream>, Status> {
        let session = self.session(request.metadata())?;
        let action = request.into_inner();
        if action.r#type != "ack" {
            return Err(Status::unimplemented(format!("no action \"{}\": the one action is \"ack\"", action.r#type)));
        }
        let ack = Ack::decode(&action.body).map_err(Status::invalid_argument)?;
        self.ring_of(&session, &ack.slot, &ack.route).await?;
        let key = (ack.slot.clone(), ack.route.clone(), ack.consumer.clone());
        let reader = self.readers.lock().expect("readers lock").get(&key).cloned();
        if !reader.is_some_and(|r| r.acknowledge(ack.position)) {
            return Err(Status::failed_precondition(format!(
                "no do_get of route \"{}\" as consumer \"{}\" is open: acknowledge while reading (what was not acknowledged comes again)",
                ack.route, ack.consumer
            )));
        }
        Ok(Response::new(stream::empty().boxed()))
    }

    async fn list_actions(&self, _request: Request<Empty>) -> Result<Response<Self::ListActionsStream>, Status> {
        let ack = ActionType {
            r#type: "ack".into(),
            description: "slot=…, route=…, consumer=…, position=… (a batch's): acknowledges the do_get's rows up to it"
                .into(),
        };
        Ok(Response::new(stream::iter([Ok(ack)]).boxed()))
    }

    async fn get_flight_info(&self, _request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented("list_flights shows every route"))
    }

    async fn poll_flight_info(&self, _request: Request<FlightDescriptor>) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented("list_flights shows every route"))
    }

    async fn get_schema(&self, _request: Request<FlightDescriptor>) -> Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented("list_flights shows every route with its schema"))
    }

    async fn do_put(&self, _request: Request<Streaming<FlightData>>) -> Result<Response<Self::DoPutStream>, Status> {
        Err(Status::unimplemented("pgcdc serve is read-only"))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("acknowledge with do_action(\"ack\")"))
    }
}

/// The most rows [`pump`] puts in one message by joining batches.
const JOINED_ROWS: usize = 65_536;

/// The most bytes of Arrow buffers in one message, by joining batches or
/// splitting one: well below the 4 MiB that gRPC clients (Java, Go, C#)
/// accept by default, so that they read every route without settings
/// (pyarrow accepts any size). A single row larger than this goes alone.
const MESSAGE_BYTES: usize = 2 << 20;

/// The bytes of Arrow buffers a batch (or a slice of one) holds.
fn buffer_bytes(batch: &RecordBatch) -> usize {
    batch.columns().iter().map(|c| c.to_data().get_slice_memory_size().unwrap_or(0)).sum()
}

/// Calls `piece(start, rows)` for consecutive row ranges of `batch` from
/// `start`, `rows` long, each within [`MESSAGE_BYTES`] or of one row, by
/// halving ranges that are larger.
fn split(batch: &RecordBatch, start: usize, rows: usize, piece: &mut impl FnMut(usize, usize)) {
    if rows == 0 {
        return;
    }
    if rows == 1 || buffer_bytes(&batch.slice(start, rows)) <= MESSAGE_BYTES {
        piece(start, rows);
        return;
    }
    let half = rows / 2;
    split(batch, start, half, piece);
    split(batch, start + half, rows - half, piece);
}

/// The least time between two messages of a busy stream: a batch that
/// comes sooner after the last message waits, up to that, for more to
/// join it. A stream of small transactions would otherwise cost a message
/// (and a client's per-message work) per commit: at 10 000 commits a
/// second a Python client fell behind by up to 180 ms, and with this
/// bound its p99 latency is under 10 ms. A batch after a quiet moment
/// goes out at once.
const MESSAGE_GAP: Duration = Duration::from_millis(2);

/// The next message's batch: the first piece read, joined with those of
/// the same schema that come before `not_before` (or are ready at once),
/// within [`JOINED_ROWS`] and [`MESSAGE_BYTES`]. Pieces read and not sent
/// yet are `held` for the next message; a snapshot's marker never joins.
fn next_joined(
    reader: &Pumped,
    held: &mut VecDeque<(RecordBatch, Position)>,
    not_before: Instant,
) -> Result<Option<(RecordBatch, Position)>, Status> {
    if held.is_empty() {
        // Short waits: an acknowledgement is applied between two.
        held.extend(reader.next(Duration::from_millis(50))?);
    }
    let Some((first, position)) = held.pop_front() else {
        return Ok(None);
    };
    if first.num_rows() == 0 {
        return Ok(Some((first, position)));
    }
    let mut last = position;
    let (mut rows, mut bytes) = (first.num_rows(), buffer_bytes(&first));
    let mut joined = vec![first];
    while rows < JOINED_ROWS {
        if held.is_empty() {
            held.extend(reader.next(not_before.saturating_duration_since(Instant::now()))?);
        }
        let Some((batch, position)) = held.front() else { break };
        let size = buffer_bytes(batch);
        let joins = batch.num_rows() > 0 && fingerprint(batch) == fingerprint(&joined[0]);
        if !joins || rows + batch.num_rows() > JOINED_ROWS || bytes + size > MESSAGE_BYTES {
            break;
        }
        rows += batch.num_rows();
        bytes += size;
        last = *position;
        joined.extend(held.pop_front().map(|(batch, _)| batch));
    }
    if joined.len() == 1 {
        return Ok(joined.pop().map(|batch| (batch, last)));
    }
    let batch = arrow_select::concat::concat_batches(joined[0].schema_ref(), &joined)
        .map_err(|e| Status::internal(format!("joining batches of one schema: {e}")))?;
    Ok(Some((batch, last)))
}

/// Reads the ring into the client's stream as fast as it takes batches:
/// the schema, then each batch with its metadata; ends before a batch of
/// another schema, when the client is gone, or on an error it reports.
fn pump(reader: &Pumped, sender: &tokio::sync::mpsc::Sender<Result<FlightData, Status>>) {
    let options = IpcWriteOptions::default();
    let mut stream_schema: Option<Option<String>> = None;
    let mut held = VecDeque::new();
    let mut sent = Instant::now();
    loop {
        if sender.is_closed() {
            return;
        }
        let (batch, position) = match next_joined(reader, &mut held, sent + MESSAGE_GAP) {
            Ok(Some(next)) => next,
            Ok(None) => continue,
            Err(status) => {
                let _ = sender.blocking_send(Err(status));
                return;
            }
        };
        match &stream_schema {
            None => {
                let schema = wire_schema(batch.schema_ref());
                if sender.blocking_send(Ok(SchemaAsIpc::new(&schema, &options).into())).is_err() {
                    return;
                }
                stream_schema = Some(fingerprint(&batch));
            }
            // The next do_get starts with this batch, under its schema.
            Some(known) if *known != fingerprint(&batch) => return,
            Some(_) => {}
        }
        let data = wire_batch(&batch).and_then(|wire| {
            let mut tracker = DictionaryTracker::new(false);
            let mut context = IpcWriteContext::default();
            let (_, encoded) = IpcDataGenerator::default().encode(&wire, &mut tracker, &options, &mut context)?;
            Ok(FlightData::from(encoded).with_app_metadata(batch_metadata(&batch, position)))
        });
        let data = data.map_err(|e| Status::internal(format!("encoding a batch: {e}")));
        if sender.blocking_send(data).is_err() {
            return;
        }
        sent = Instant::now();
    }
}

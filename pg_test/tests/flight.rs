//! `pgcdc serve` (issue 10): a pyarrow.flight client on "another machine"
//! (a process that only speaks Flight) reads a route exactly once while
//! the server and the client are SIGKILLed and started again; wrong
//! passwords, tables without privilege, unknown routes and plain clients
//! of a TLS server are refused with a clear message.

use pg_test::e2e::{cli, configure, eventually, sigkill};
use pg_test::replica::snapshot_states;
use pg_test::Cluster;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn python() -> String {
    std::env::var("PGCDC_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flight/client.py")
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `pgcdc serve` process, killed when the test ends (also by a panic).
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `pgcdc serve` on `port`, with `extra` arguments.
fn serve(cluster: &Cluster, database: &str, port: u16, extra: &[&str]) -> Served {
    let conninfo = format!("host={} dbname={database}", cluster.socket_dir().display());
    let child = Command::new(cli())
        .args(["serve", "--conninfo", &conninfo, "--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .stderr(Stdio::null())
        .spawn()
        .expect("start pgcdc serve");
    eventually("pgcdc serve listening", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    Served(child)
}

/// The rows the client recorded: (commit LSN, LSN, table, id, op).
fn recorded(output: &Path) -> Vec<(u64, u64, String, i64, String)> {
    std::fs::read_to_string(output)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('@') && *l != "complete")
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Some((f[0].parse().ok()?, f[1].parse().ok()?, f[2].to_owned(), f[3].parse().ok()?, f.get(4)?.to_string()))
        })
        .collect()
}

fn run_python(args: &[&str]) -> std::process::Output {
    Command::new(python())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e} (make test installs pyarrow and sets PGCDC_PYTHON)", python()))
}

#[test]
fn a_flight_client_gets_every_change_once_across_killed_servers_and_clients() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("remote");
    client
        .batch_execute(
            "CREATE ROLE alice LOGIN PASSWORD 'wonderland';
             CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT i, 'before' FROM generate_series(1, 3000) i;
             GRANT SELECT ON t TO alice;",
        )
        .unwrap();
    cluster.require_password("alice");
    configure(&mut client, "SELECT * FROM cdc_auto_configure('public.t', slot_name => 'remote', consumer => 'far')");
    let port = free_port();
    let mut server = serve(&cluster, "remote", port, &[]);
    let dir = cluster.socket_dir().to_owned();
    let (output, stop) = (dir.join("far.txt"), dir.join("stop"));
    let location = format!("grpc://127.0.0.1:{port}");
    let spawn_client = || {
        Command::new(python())
            .arg(client_script())
            .args([&location, "alice", "wonderland", "remote", "public.t", "far"])
            .args([&output, &stop])
            .spawn()
            .expect("start the Flight client")
    };
    let mut consumer = spawn_client();
    eventually("the snapshot read", || snapshot_states(&mut client, "remote") == [("t".to_owned(), "done".to_owned())]);

    // Changes in rounds; between them the client or the server dies.
    let mut next = 3001;
    for round in 0..12 {
        client
            .batch_execute(&format!(
                "INSERT INTO t SELECT i, 'round {round}' FROM generate_series({next}, {}) i;
                 UPDATE t SET v = 'updated {round}' WHERE id = {};",
                next + 499,
                next - 1
            ))
            .unwrap();
        next += 500;
        std::thread::sleep(Duration::from_millis(150));
        match round % 4 {
            1 => {
                sigkill(consumer.id() as i32);
                consumer.wait().unwrap();
                consumer = spawn_client();
            }
            3 => {
                sigkill(server.0.id() as i32);
                server.0.wait().unwrap();
                server = serve(&cluster, "remote", port, &[]);
            }
            _ => {}
        }
    }
    let expected = (next - 1) as usize + 12;
    let deadline = Instant::now() + Duration::from_secs(120);
    while recorded(&output).len() < expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::write(&stop, b"").unwrap();
    assert!(consumer.wait().unwrap().success(), "the client ran clean");
    drop(server);

    let rows = recorded(&output);
    let keys: Vec<(u64, u64, i64, String)> = rows.iter().map(|r| (r.0, r.1, r.3, r.4.clone())).collect();
    let unique: HashSet<&(u64, u64, i64, String)> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "no row twice");
    assert_eq!(rows.len(), expected, "3000 snapshot reads, every insert and update, once each");
    let reads: Vec<i64> = rows.iter().filter(|r| r.4 == "r").map(|r| r.3).collect();
    assert_eq!(reads, (1..=3000).collect::<Vec<_>>(), "the snapshot, in key order");
    let inserts: Vec<i64> = rows.iter().filter(|r| r.4 == "c").map(|r| r.3).collect();
    assert_eq!(inserts, (3001..next).collect::<Vec<_>>(), "every insert, in commit order");
    assert!(rows.windows(2).all(|w| (w[0].0, w[0].1) <= (w[1].0, w[1].1)), "commit and LSN order");
    let text = std::fs::read_to_string(&output).unwrap();
    assert_eq!(text.lines().filter(|l| *l == "complete").count(), 1, "one completion marker");
}

#[test]
fn flight_refuses_wrong_passwords_hidden_tables_unknown_routes_and_plain_clients_of_tls() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("guarded");
    client
        .batch_execute(
            "CREATE ROLE bob LOGIN PASSWORD 'builder';
             CREATE TABLE open_t (id int PRIMARY KEY); CREATE TABLE secret (id int PRIMARY KEY);
             GRANT SELECT ON open_t TO bob;",
        )
        .unwrap();
    cluster.require_password("bob");
    configure(&mut client, "SELECT * FROM cdc_auto_configure('public.*', slot_name => 'guarded')");
    let (cert, key) = certificate(cluster.socket_dir());
    let port = free_port();
    let server =
        serve(&cluster, "guarded", port, &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);

    let probe = format!(
        r#"
import pyarrow.flight as flight, sys
def attempt(what, f):
    try:
        print(what, "ok", f())
    except Exception as e:
        print(what, "refused", type(e).__name__, str(e).splitlines()[0][:300])
tls = flight.connect("grpc+tls://127.0.0.1:{port}", tls_root_certs=open(r"{cert}", "rb").read())
attempt("wrong password", lambda: tls.authenticate_basic_token(b"bob", b"wrong"))
token = tls.authenticate_basic_token(b"bob", b"builder")
options = flight.FlightCallOptions(headers=[token], timeout=5)
attempt("routes", lambda: sorted(f.descriptor.path[1].decode() for f in tls.list_flights(options=options)))
attempt("secret", lambda: tls.do_get(flight.Ticket(b"slot=guarded\nroute=public.secret"), options).read_all())
attempt("unknown", lambda: tls.do_get(flight.Ticket(b"slot=guarded\nroute=public.nope"), options).read_all())
attempt("no token", lambda: list(tls.list_flights()))
attempt("bad ticket", lambda: tls.do_get(flight.Ticket(b"route=public.open_t"), options).read_all())
plain = flight.connect("grpc://127.0.0.1:{port}")
attempt("plain", lambda: plain.authenticate_basic_token(b"bob", b"builder", options=flight.FlightCallOptions(timeout=5)))
"#,
        cert = cert.display()
    );
    let output = run_python(&["-c", &probe]);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{text}{}", String::from_utf8_lossy(&output.stderr));
    let line = |what: &str| text.lines().find(|l| l.starts_with(what)).unwrap_or_default().to_owned();
    assert!(
        line("wrong password").contains("refused FlightUnauthenticatedError")
            && line("wrong password").contains("password authentication failed for user \"bob\""),
        "{text}"
    );
    assert_eq!(line("routes"), "routes ok ['public.open_t']", "{text}");
    assert!(line("secret").contains("refused") && line("secret").contains("may read"), "{text}");
    assert!(line("unknown").contains("refused") && line("unknown").contains("public.nope"), "{text}");
    assert!(line("no token").contains("refused FlightUnauthenticatedError"), "{text}");
    assert!(line("bad ticket").contains("the ticket has no slot="), "{text}");
    assert!(line("plain").contains("refused"), "a plain client of a TLS server: {text}");
    drop(server);
}

/// A self-signed certificate and key for 127.0.0.1, in `dir`.
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .args([&key, &PathBuf::from("-out"), &cert])
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    (cert, key)
}

/// The README's pyarrow example, with this server's address, certificate
/// and user, and a `process` that prints what it gets: it reads the
/// snapshot, the changes, and, after an `ALTER TABLE`, a stream with the
/// new schema (the first one ends: the example's `read_chunk` raises
/// StopIteration, and a second run of the same code reads on after the
/// acknowledged rows).
#[test]
fn the_readme_flight_example_runs_as_written() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let section = readme.split("## Readers on other machines").nth(1).expect("the README's Flight section");
    let example = section.split("```python\n").nth(1).and_then(|s| s.split("```").next()).expect("its example");

    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("app");
    client
        .batch_execute(
            "CREATE ROLE alice LOGIN PASSWORD 'secret';
             CREATE TABLE orders (id int PRIMARY KEY, amount numeric(10,2));
             INSERT INTO orders VALUES (1, 9.99), (2, 20.00);
             GRANT SELECT ON orders TO alice;",
        )
        .unwrap();
    cluster.require_password("alice");
    configure(&mut client, "SELECT * FROM cdc_auto_configure('public.orders', slot_name => 'app')");
    let (cert, key) = certificate(cluster.socket_dir());
    let port = free_port();
    let server =
        serve(&cluster, "app", port, &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    let program = format!(
        "import sys\n\
         def process(batch, meta):\n    \
             print(meta.get('snapshot', ''), batch.schema.names if batch is not None else None,\n          \
                   batch.to_pydict() if batch is not None else None, flush=True)\n\
         try:\n{}\nexcept StopIteration:\n    print('end of stream', flush=True)\n",
        example
            .replace("grpc+tls://db.example.com:50051", &format!("grpc+tls://127.0.0.1:{port}"))
            .replace("ca.pem", cert.to_str().unwrap())
            .lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let run = |stop_after: Duration| {
        let child = Command::new(python()).args(["-c", &program]).stdout(Stdio::piped()).spawn().unwrap();
        std::thread::sleep(stop_after);
        (child.id(), child)
    };
    let (_, first) = run(Duration::from_secs(3));
    client.batch_execute("INSERT INTO orders VALUES (3, 1.00)").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    client
        .batch_execute("ALTER TABLE orders ADD COLUMN note text; INSERT INTO orders VALUES (4, 2.00, 'new')")
        .unwrap();
    let output = first.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(text.contains("[b'app', b'public.orders']"), "list_flights: {text}");
    assert!(text.contains("'_op': ['r', 'r']") && text.contains("'id': [1, 2]"), "the snapshot: {text}");
    assert!(text.contains("complete None") || text.contains("complete ["), "its completion: {text}");
    assert!(text.contains("'_op': ['c']") && text.contains("'id': [3]"), "the change: {text}");
    assert!(text.trim_end().ends_with("end of stream"), "the stream ends at the schema change: {text}");
    assert!(!text.contains("'note'"), "{text}");

    // The same code again: the new schema, after what was acknowledged.
    let (pid, second) = run(Duration::from_secs(3));
    sigkill(pid as i32);
    let text = String::from_utf8_lossy(&second.wait_with_output().unwrap().stdout).into_owned();
    let batches: Vec<&str> = text.lines().filter(|l| l.contains("{'_op'")).collect();
    assert_eq!(batches.len(), 1, "only the row after the schema change: {text}");
    assert!(batches[0].contains("'note'") && batches[0].contains("'id': [4]"), "{text}");
    drop(server);
}

/// An acknowledgement followed at once by the end of the stream (the
/// client cancels it, or goes away) still counts: a `do_get` without
/// `after=` right after it starts past the acknowledged batch. The server
/// applies acknowledgements from its pump, between reads of the ring; one
/// that came while the pump waited was once dropped with the stream.
#[test]
fn an_acknowledgement_holds_when_the_stream_ends_right_after_it() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("acks");
    client
        .batch_execute(
            "CREATE ROLE carol LOGIN PASSWORD 'c';
             CREATE TABLE t (id int PRIMARY KEY);
             GRANT SELECT ON t TO carol;",
        )
        .unwrap();
    cluster.require_password("carol");
    configure(&mut client, "SELECT * FROM cdc_auto_configure('public.t', slot_name => 'acks', snapshot => 'never')");
    let port = free_port();
    let server = serve(&cluster, "acks", port, &[]);
    // Each round (a line on stdin: a row was inserted): a new stream from
    // the consumer's acknowledged place, its first batch acknowledged, the
    // stream cancelled at once.
    let probe = format!(
        r#"
import pyarrow.flight as flight, sys
client = flight.connect("grpc://127.0.0.1:{port}")
options = flight.FlightCallOptions(headers=[client.authenticate_basic_token(b"carol", b"c")], timeout=10)
route = "slot=acks\nroute=public.t\nconsumer=default"
for _ in sys.stdin:
    reader = client.do_get(flight.Ticket(route.encode()), options)
    chunk = reader.read_chunk()
    meta = dict(l.split("=", 1) for l in chunk.app_metadata.to_pybytes().decode().splitlines())
    list(client.do_action(flight.Action("ack", (route + "\nposition=" + meta["position"]).encode()), options))
    reader.cancel()
    print(chunk.data.column("id").to_pylist(), flush=True)
"#
    );
    let mut probe = Command::new(python())
        .args(["-c", &probe])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the probe");
    let mut round = std::io::BufReader::new(probe.stdout.take().unwrap());
    let mut said = probe.stdin.take().unwrap();
    for id in 1..=8 {
        client.batch_execute(&format!("INSERT INTO t VALUES ({id})")).unwrap();
        std::io::Write::write_all(&mut said, b"next\n").unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut round, &mut line).unwrap();
        assert_eq!(line.trim(), format!("[{id}]"), "round {id}: only the row after the one acknowledged before");
    }
    drop(said);
    assert!(probe.wait().unwrap().success());
    drop(server);
}

/// A transaction of large rows reaches a client that takes messages of
/// at most 4 MiB, gRPC's default outside pyarrow (Java, Go, C#): the
/// server sends batches in pieces below that, each with the position of
/// its last row, so acknowledging or resuming after a piece works.
#[test]
fn large_batches_go_in_pieces_a_client_with_grpcs_default_limit_reads() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("large");
    client
        .batch_execute(
            "CREATE ROLE dave LOGIN PASSWORD 'd';
             CREATE TABLE t (id int PRIMARY KEY, body text);
             GRANT SELECT ON t TO dave;",
        )
        .unwrap();
    cluster.require_password("dave");
    configure(&mut client, "SELECT * FROM cdc_auto_configure('public.t', slot_name => 'large', snapshot => 'never')");
    // 12 MB in one transaction (incompressible, as TOAST would not shrink
    // it), then one small row.
    client
        .batch_execute(
            "INSERT INTO t SELECT i, (SELECT string_agg(md5(i::text || j::text), '') FROM generate_series(1, 125) j)
             FROM generate_series(1, 3000) i;
             INSERT INTO t VALUES (5000, 'last');",
        )
        .unwrap();
    let port = free_port();
    let server = serve(&cluster, "large", port, &[]);
    let probe = format!(
        r#"
import pyarrow.flight as flight
client = flight.connect("grpc://127.0.0.1:{port}", generic_options=[("grpc.max_receive_message_length", 4 << 20)])
options = flight.FlightCallOptions(headers=[client.authenticate_basic_token(b"dave", b"d")], timeout=30)
route = "slot=large\nroute=public.t\nconsumer=default"
def meta(chunk):
    return dict(l.split("=", 1) for l in chunk.app_metadata.to_pybytes().decode().splitlines())
reader = client.do_get(flight.Ticket(route.encode()), options)
pieces = []
while sum(len(ids) for ids, _ in pieces) < 3001:
    chunk = reader.read_chunk()
    pieces.append((chunk.data.column("id").to_pylist(), meta(chunk)["position"]))
print("messages", len(pieces))
print("ids", [i for ids, _ in pieces for i in ids] == list(range(1, 3001)) + [5000])
# Acknowledged up to the first piece: a stream without after= starts
# right after it; one after= the second piece, right after that.
list(client.do_action(flight.Action("ack", (route + "\nposition=" + pieces[0][1]).encode()), options))
reader.cancel()
again = client.do_get(flight.Ticket(route.encode()), options).read_chunk()
print("after ack", again.data.column("id")[0].as_py() == pieces[1][0][0])
resumed = client.do_get(flight.Ticket((route + "\nafter=" + pieces[1][1]).encode()), options).read_chunk()
print("after position", resumed.data.column("id")[0].as_py() == pieces[2][0][0])
"#
    );
    let output = run_python(&["-c", &probe]);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{text}{}", String::from_utf8_lossy(&output.stderr));
    let messages: usize = text.lines().find_map(|l| l.strip_prefix("messages ")).unwrap().parse().unwrap();
    assert!(messages >= 6, "12 MB in pieces of at most 2 MiB: {text}");
    assert!(text.contains("ids True"), "every row once, in order: {text}");
    assert!(text.contains("after ack True"), "{text}");
    assert!(text.contains("after position True"), "{text}");
    drop(server);
}

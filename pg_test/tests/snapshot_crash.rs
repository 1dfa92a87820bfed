//! A snapshot survives every crash (issue 9): a snapshot worker's and the
//! stream worker's (each SIGKILLed, which makes the whole server
//! crash-restart) and the consumer's. Each resumes from the last chunk delivered: no row is
//! read twice, none is lost, and the consumer's copy ends exactly equal to
//! the table while a writer kept writing through all of it.

use pg_test::e2e::{configure, current_lsn, eventually, reconnect, sigkill, worker_pid};
use pg_test::replica::{ring, snapshot_states, Follower};
use pg_test::{Cluster, Settings};
use postgres::Client;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROWS: i64 = 300_000;

/// Updates, deletes and inserts (never a key change, which may rightly
/// read a row again under its new key) until told to stop, reconnecting
/// through crashes; returns how many inserts and deletes it tried.
fn write_meanwhile(conninfo: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(i64, i64)> {
    std::thread::spawn(move || {
        let mut client = reconnect(&conninfo);
        let (mut i, mut inserts, mut deletes) = (0i64, 0i64, 0i64);
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let id = (i * 7919) % ROWS + 1;
            let sql = match i % 4 {
                0 => {
                    inserts += 1;
                    format!("INSERT INTO items VALUES ({}, 'new', 0)", ROWS + i)
                }
                1 => {
                    deletes += 1;
                    format!("DELETE FROM items WHERE id = {id}")
                }
                _ => format!("UPDATE items SET label = 'changed {i}', qty = qty + 1 WHERE id = {id}"),
            };
            if client.batch_execute(&sql).is_err() {
                std::thread::sleep(Duration::from_millis(100));
                client = reconnect(&conninfo);
            }
        }
        (inserts, deletes)
    })
}

fn rows_done(client: &mut Client) -> i64 {
    client.query_one("SELECT rows_done FROM cdc_snapshots('crash')", &[]).unwrap().get(0)
}

fn snapshot_worker(client: &mut Client) -> Option<i32> {
    client
        .query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pgcdc snapshot' LIMIT 1", &[])
        .unwrap()
        .map(|r| r.get(0))
}

#[test]
fn a_snapshot_resumes_after_every_crash_and_ends_exact() {
    // A small ring: the snapshot goes at the pace of the consumer, which
    // reads a few batches between looks at the progress.
    let cluster =
        Cluster::start_with(Settings::default().with("pgcdc.snapshot_chunk_rows", "5000").with("pgcdc.ring_size", "1"));
    let mut client = cluster.database_with_pgcdc("crash");
    client
        .batch_execute(&format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, label text, qty int);
             INSERT INTO items SELECT i, 'item ' || i, i % 50 FROM generate_series(1, {ROWS}) i;"
        ))
        .unwrap();
    let conninfo = cluster.conninfo("crash");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = write_meanwhile(conninfo.clone(), stop.clone());
    let routes = configure(&mut client, "SELECT * FROM cdc_auto_configure('public.items', slot_name => 'crash')");
    let mut follower = Follower::open(&ring(&routes, "public.items"), &["id"]);

    // Each crash once the snapshot has got further.
    let mut crashes = vec!["the consumer", "the stream worker", "the server"];
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        follower.step();
        let states = snapshot_states(&mut client, "crash");
        if states.iter().all(|(_, s)| s != "pending" && s != "running") {
            break;
        }
        assert!(Instant::now() < deadline, "the snapshot did not finish: {states:?}");
        let done = rows_done(&mut client);
        if crashes.is_empty() || done < ROWS * (4 - crashes.len() as i64) / 5 {
            continue;
        }
        match *crashes.last().unwrap() {
            "the server" => {
                let Some(pid) = snapshot_worker(&mut client) else { continue };
                sigkill(pid);
                std::thread::sleep(Duration::from_millis(500));
                client = reconnect(&conninfo);
            }
            "the stream worker" => {
                let Some(pid) = worker_pid(&mut client, "crash") else { continue };
                sigkill(pid);
                std::thread::sleep(Duration::from_millis(500));
                client = reconnect(&conninfo);
            }
            _ => follower.restart(),
        }
        crashes.pop();
        let at = rows_done(&mut client);
        eprintln!("crashed at {done} rows read; resumed at {at}");
        assert!(at >= done - 5000, "a crash loses at most the chunk being read ({done} → {at})");
    }
    assert!(
        crashes.is_empty(),
        "every crash happened before the snapshot ended: {crashes:?} left; {:?}",
        client.query_one("SELECT state, rows_done, error FROM cdc_snapshots('crash')", &[]).map(|r| (
            r.get::<_, String>(0),
            r.get::<_, i64>(1),
            r.get::<_, Option<String>>(2)
        ))
    );
    stop.store(true, Ordering::Relaxed);
    let (inserts, deletes) = writer.join().unwrap();

    let before = current_lsn(&mut client);
    client.batch_execute("INSERT INTO items VALUES (0, 'last', 0)").unwrap();
    eventually("the last change", || follower.step() > before);
    follower.replica.assert_equals(&mut client, "items");
    assert_eq!(snapshot_states(&mut client, "crash"), [("items".to_owned(), "done".to_owned())]);
    let reads = follower.replica.reads as i64;
    assert!(
        (ROWS - deletes..=ROWS + inserts).contains(&reads),
        "each row read at most once, none restarted from zero: {reads} reads of {ROWS} rows (+{inserts} inserted)"
    );
    assert_eq!(follower.replica.completions, 1);
}

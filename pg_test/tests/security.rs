//! Rings only the server writes and only allowed readers open: readers in
//! `pgcdc.ring_group` (another OS user) read and acknowledge, others are
//! refused; a misconfigured group is one clear error; ring directories
//! another user made, or reached through a symbolic link, are refused.
//!
//! These tests make OS users and groups, so they need root (as `make
//! test` runs on CI).

use pg_test::e2e::configure;
use pg_test::{Cluster, Settings};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

const GROUP: &str = "pgcdcread";
const READER: &str = "pgcdcreader";
/// A second reader in the group.
const PEER: &str = "pgcdcpeer";
const OUTSIDER: &str = "pgcdcother";

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?}");
}

fn exists(database: &str, name: &str) -> bool {
    Command::new("getent").args([database, name]).output().is_ok_and(|o| o.status.success())
}

/// The group, a reader in it (and the server's `postgres` user), and a
/// user outside it.
fn users() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let root = Command::new("id").arg("-u").output().unwrap().stdout.starts_with(b"0\n");
        assert!(root, "the ring security tests make OS users: run them as root (make test does on CI)");
        if !exists("group", GROUP) {
            run("groupadd", &[GROUP]);
        }
        for (user, groups) in [(READER, Some(GROUP)), (PEER, Some(GROUP)), (OUTSIDER, None)] {
            if !exists("passwd", user) {
                run("useradd", &["--no-create-home", "--shell", "/usr/sbin/nologin", user]);
            }
            if let Some(group) = groups {
                run("usermod", &["-aG", group, user]);
            }
        }
        run("usermod", &["-aG", GROUP, "postgres"]);
    });
}

/// A directory anyone may write to, with `mode` (0o1777 is /dev/shm's).
fn scratch(cluster: &Cluster, name: &str, mode: u32) -> PathBuf {
    let dir = cluster.socket_dir().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    dir
}

/// Sets the server's ring directory and waits for the new value.
fn ring_directory(client: &mut postgres::Client, dir: &Path) {
    client.batch_execute(&format!("ALTER SYSTEM SET pgcdc.ring_directory = '{}'", dir.display())).unwrap();
    client.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
}

/// Runs the crash tests' consumer on `ring` as OS user `user`; returns its
/// exit status and what it recorded or said.
fn consume_as(user: &str, ring: &Path, dir: &Path) -> (bool, String, String) {
    consume_as_consumer(user, "default", ring, dir)
}

fn consume_as_consumer(user: &str, consumer: &str, ring: &Path, dir: &Path) -> (bool, String, String) {
    let (output, stop) = (dir.join(format!("{user}.{consumer}.txt")), dir.join(format!("{user}.stop")));
    std::fs::write(&stop, b"").unwrap();
    let result = Command::new("runuser")
        .args(["-u", user, "--", "env", &format!("PGCDC_CONSUMER={consumer}")])
        .arg(env!("CARGO_BIN_EXE_consume"))
        .arg(&output)
        .arg(&stop)
        .arg(ring)
        .output()
        .unwrap();
    let recorded = std::fs::read_to_string(&output).unwrap_or_default();
    (result.status.success(), recorded, String::from_utf8_lossy(&result.stderr).into_owned())
}

#[test]
fn readers_of_the_ring_group_read_and_acknowledge_and_others_are_refused() {
    users();
    let cluster = Cluster::start_with(Settings::default().with("pgcdc.ring_group", &format!("'{GROUP}'")));
    let mut client = cluster.database_with_pgcdc("shared");
    client.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").unwrap();
    let routes = configure(&mut client, "SELECT * FROM cdc_auto_configure('public.t', slot_name => 'shared')");
    let ring = routes[0].1.clone();
    client.batch_execute("INSERT INTO t SELECT generate_series(1, 10)").unwrap();
    let dir = scratch(&cluster, "out", 0o777);

    let (ok, recorded, said) = consume_as(READER, &ring, &dir);
    assert!(ok, "the group's reader ran: {said}");
    let ids: Vec<&str> =
        recorded.lines().filter(|l| !l.starts_with('@')).map(|l| l.rsplit(' ').next().unwrap()).collect();
    assert_eq!(ids, (1..=10).map(|i| i.to_string()).collect::<Vec<_>>(), "every row, read as {READER}");
    let status = pgcdc_reader::ring::file::open(&ring).unwrap().status();
    assert_eq!(status.consumers[0].ack_pos, status.write_pos, "and acknowledged");

    let (ok, _, said) = consume_as(OUTSIDER, &ring, &dir);
    assert!(!ok && said.contains("Permission denied"), "a user outside the group is refused: {said}");

    // Another reader of the group can neither write the ring nor move the
    // first reader's position, nor read as it.
    let state = ring.with_file_name(format!("{}.default.ack", ring.file_stem().unwrap().to_string_lossy()));
    assert!(state.exists(), "{READER} keeps its state beside the ring");
    for file in [&ring, &state] {
        let append = Command::new("runuser")
            .args(["-u", PEER, "--", "sh", "-c", &format!("echo x >> '{}'", file.display())])
            .output()
            .unwrap();
        assert!(!append.status.success(), "{PEER} may not write {}", file.display());
    }
    let (ok, _, said) = consume_as(PEER, &ring, &dir);
    assert!(!ok && said.contains("is read by the OS user with uid"), "only {READER} reads as default: {said}");

    // A consumer bound to an OS user is that user's before it ever reads.
    client.batch_execute(&format!("SELECT cdc_register_consumer('shared', 'bound', os_user => '{READER}')")).unwrap();
    let (ok, _, said) = consume_as_consumer(PEER, "bound", &ring, &dir);
    assert!(!ok && said.contains("consumer \"bound\" is read by the OS user with uid"), "{said}");
    client.batch_execute("INSERT INTO t VALUES (11)").unwrap();
    let (ok, recorded, said) = consume_as_consumer(READER, "bound", &ring, &dir);
    assert!(ok, "{READER} reads as bound: {said}");
    assert_eq!(
        recorded.lines().filter(|l| !l.starts_with('@')).count(),
        1,
        "what was committed since it was registered"
    );

    // Modes: rings readable by the group, the stream's directory open to
    // its readers' state files (sticky), nothing for others.
    let mode = |p: &Path| std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(p).unwrap()) & 0o7777;
    assert_eq!(mode(&ring), 0o640);
    assert_eq!(mode(ring.parent().unwrap()), 0o1770);
    assert_eq!(mode(ring.parent().unwrap().parent().unwrap()), 0o750);
}

#[test]
fn a_ring_group_the_server_is_not_in_is_one_clear_error() {
    users();
    // The group exists, but the server's user is not in it.
    if !exists("group", "pgcdcnobody") {
        run("groupadd", &["pgcdcnobody"]);
    }
    let cluster = Cluster::start_with(Settings::default().with("pgcdc.ring_group", "'pgcdcnobody'"));
    let mut client = cluster.database_with_pgcdc("lonely");
    client.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").unwrap();
    let e = client.batch_execute("SELECT * FROM cdc_auto_configure('public.t', slot_name => 'lonely')").unwrap_err();
    let message = e.as_db_error().unwrap().message().to_owned();
    assert!(
        message.contains("pgcdc.ring_group is 'pgcdcnobody', which the server's OS user does not belong to"),
        "{message}"
    );
    assert!(message.contains("usermod -aG pgcdcnobody"), "the fix: {message}");
    let row = client.query_one("SELECT ok FROM cdc_check_config() WHERE setting = 'pgcdc.ring_group'", &[]).unwrap();
    assert!(!row.get::<_, bool>(0));
    assert_eq!(client.query_one("SELECT count(*) FROM pg_replication_slots", &[]).unwrap().get::<_, i64>(0), 0);
}

#[test]
fn ring_directories_another_user_made_or_reached_through_a_link_are_refused() {
    users();
    let cluster = Cluster::start();
    let shared = scratch(&cluster, "shm", 0o1777);
    // Another user made the ring directory first, open to everyone, as
    // anyone may in /dev/shm before the server starts.
    let planted = shared.join("pgcdc");
    run("runuser", &["-u", OUTSIDER, "--", "mkdir", "-m", "777", planted.to_str().unwrap()]);
    let mut client = cluster.database_with_pgcdc("planted");
    client.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").unwrap();
    ring_directory(&mut client, &planted);
    let mut client = cluster.connect_to("planted");
    let e = client.batch_execute("SELECT * FROM cdc_auto_configure('public.t', slot_name => 'planted')").unwrap_err();
    let message = e.as_db_error().unwrap().message().to_owned();
    assert!(
        message.starts_with(&format!("pgcdc rings: {} is not safe for rings: it belongs to uid", planted.display())),
        "{message}"
    );
    assert!(std::fs::read_dir(&planted).unwrap().next().is_none(), "nothing was written into it");
    let slots: i64 = client.query_one("SELECT count(*) FROM pg_replication_slots", &[]).unwrap().get(0);
    assert_eq!(slots, 0, "the slot made before the failure is gone with the transaction");

    // A symbolic link on the way.
    let real = scratch(&cluster, "real", 0o700);
    std::os::unix::fs::chown(&real, Some(uid("postgres")), None).unwrap();
    std::fs::set_permissions(&real, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let link = cluster.socket_dir().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    ring_directory(&mut client, &link.join("rings"));
    let mut client = cluster.connect_to("planted");
    let e = client.batch_execute("SELECT * FROM cdc_auto_configure('public.t', slot_name => 'planted')").unwrap_err();
    let message = e.as_db_error().unwrap().message().to_owned();
    assert!(message.contains(&format!("{} is not safe for rings: it is a symbolic link", link.display())), "{message}");
}

fn uid(user: &str) -> u32 {
    let out = Command::new("id").args(["-u", user]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn a_ring_truncated_under_the_worker_is_replaced_without_a_server_crash() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("cut");
    client.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").unwrap();
    let routes = configure(&mut client, "SELECT * FROM cdc_auto_configure('public.t', slot_name => 'cut')");
    let ring = routes[0].1.clone();
    {
        let mut reader = pgcdc_reader::ChangeReader::open(&ring, "default").unwrap();
        client.batch_execute("INSERT INTO t SELECT generate_series(1, 100)").unwrap();
        let got = pg_test::e2e::consume_acking(&mut reader, 100, std::time::Duration::from_secs(5));
        assert_eq!(pg_test::e2e::row_count(&got), 100);
    }
    // Someone with write access to the ring cuts it short; the worker,
    // which has it mapped, touches it at its next heartbeat.
    std::fs::OpenOptions::new().write(true).open(&ring).unwrap().set_len(0).unwrap();
    pg_test::e2e::eventually("the worker to replace the ring", || cluster.log().contains("replacing ring"));
    client.batch_execute("INSERT INTO t SELECT generate_series(101, 200)").unwrap();
    let mut reader = pgcdc_reader::ChangeReader::open_waiting(&ring, "default", pg_test::e2e::WAIT).unwrap();
    // What the slot had not confirmed comes again (the positions in the
    // ring are gone with it), and then the rest.
    let got = pg_test::e2e::consume_acking(&mut reader, 200, std::time::Duration::from_secs(10));
    let got = pg_test::e2e::all_ints(&got, "id");
    assert!((101..=200).all(|id| got.contains(&id)), "the changes after it arrive: {} rows", got.len());
    let log = cluster.log();
    assert!(log.contains("was cut short while the worker wrote to it"), "the worker says what happened");
    assert!(!log.contains("terminated by signal 7"), "no SIGBUS took the server down");
    assert!(!log.contains("terminating any other active server processes"), "the server never restarted");
}

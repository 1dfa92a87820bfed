//! A private PostgreSQL cluster for one test, benchmark or demo.

use postgres::{Client, NoTls};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Server settings beyond the defaults every cluster gets.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `wal_level`; `logical` unless a test checks what happens without it.
    pub wal_level: &'static str,
    /// Extra `postgresql.conf` lines as (name, value), value written verbatim.
    pub extra: Vec<(String, String)>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { wal_level: "logical", extra: Vec::new() }
    }
}

impl Settings {
    /// Adds a `name = value` line (value written verbatim, quote strings).
    pub fn with(mut self, name: &str, value: &str) -> Settings {
        self.extra.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// A running cluster; stopped and deleted on drop.
pub struct Cluster {
    root: PathBuf,
    data: PathBuf,
    bindir: PathBuf,
    run_as: Option<&'static str>,
}

/// The port number only names the socket file, which lives in the
/// cluster's own directory, so every cluster can use the same one.
pub const PORT: u16 = 5432;

impl Cluster {
    /// A cluster with the default settings.
    pub fn start() -> Cluster {
        Cluster::start_with(Settings::default())
    }

    pub fn start_with(settings: Settings) -> Cluster {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let bindir = bindir();
        let run_as = is_root().then_some("postgres");
        let root = std::env::temp_dir().join(format!(
            "pgcdc-{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos())
        ));
        std::fs::create_dir_all(&root).expect("create the cluster directory");
        if let Some(user) = run_as {
            chown(&root, user);
        }
        let cluster = Cluster { data: root.join("data"), root, bindir, run_as };
        cluster.run_checked(
            "initdb",
            &[
                "-D",
                path(&cluster.data),
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        let mut conf = format!(
            "\nwal_level = {}\nmax_replication_slots = 20\nmax_wal_senders = 20\nlisten_addresses = ''\n\
             unix_socket_directories = '{}'\nport = {PORT}\nfsync = off\nmax_connections = 50\n\
             pgcdc.ring_directory = '{}'\n",
            settings.wal_level,
            cluster.root.display(),
            cluster.ring_directory().display()
        );
        if has_output_plugin_libraries(&cluster.bindir) {
            conf.push_str("output_plugin_libraries = 'pgoutput, test_decoding, wal2json, wal2arrow, pgcdc'\n");
        }
        for (name, value) in &settings.extra {
            conf.push_str(&format!("{name} = {value}\n"));
        }
        let conf_path = cluster.data.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).expect("read postgresql.conf");
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).expect("write postgresql.conf");
        cluster.pg_ctl(&["start", "-w", "-t", "60"]);
        cluster
    }

    /// Where the cluster's pgcdc workers put their rings.
    pub fn ring_directory(&self) -> PathBuf {
        self.root.join("rings")
    }

    /// The directory holding the server's socket.
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    /// A libpq connection string for `dbname`.
    pub fn conninfo(&self, dbname: &str) -> String {
        format!("host={} port={PORT} user=postgres dbname={dbname}", self.root.display())
    }

    /// Makes role `role` log in with its password (SCRAM) on the local
    /// socket, where every other role is trusted.
    pub fn require_password(&self, role: &str) {
        let hba = self.data.join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        std::fs::write(&hba, format!("local all {role} scram-sha-256\n{rules}")).expect("write pg_hba.conf");
        self.pg_ctl(&["reload"]);
    }

    /// The data directory (`$PGDATA`).
    pub fn data_directory(&self) -> &Path {
        &self.data
    }

    /// A connection to the `postgres` database.
    pub fn connect(&self) -> Client {
        self.connect_to("postgres")
    }

    pub fn connect_to(&self, dbname: &str) -> Client {
        Client::connect(&self.conninfo(dbname), NoTls)
            .unwrap_or_else(|e| panic!("connect to {dbname}: {e}\nserver log:\n{}", self.log()))
    }

    /// A connection as `user` that collects the server's notices and
    /// warnings ("SEVERITY: message").
    pub fn connect_collecting_notices(&self, dbname: &str, user: &str) -> (Client, Arc<Mutex<Vec<String>>>) {
        let notices = Arc::new(Mutex::new(Vec::new()));
        let sink = notices.clone();
        let mut config: postgres::Config = self.conninfo(dbname).parse().expect("a valid conninfo");
        config.user(user).notice_callback(move |notice| {
            sink.lock().unwrap().push(format!("{}: {}", notice.severity(), notice.message()));
        });
        let client = config.connect(NoTls).unwrap_or_else(|e| panic!("connect to {dbname} as {user}: {e}"));
        (client, notices)
    }

    /// Creates a database with the pgcdc extension and connects to it.
    pub fn database_with_pgcdc(&self, name: &str) -> Client {
        self.connect().batch_execute(&format!("CREATE DATABASE \"{name}\"")).expect("create database");
        let mut client = self.connect_to(name);
        client
            .batch_execute("CREATE EXTENSION pgcdc")
            .expect("CREATE EXTENSION pgcdc (is it installed? run `make install`)");
        client
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("log")).unwrap_or_default()
    }

    /// Runs a client program of the server's bindir (e.g. pg_recvlogical).
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        Command::new(self.bindir.join(program)).args(args).output().unwrap_or_else(|e| panic!("run {program}: {e}"))
    }

    /// Stops the server cleanly and starts it again.
    pub fn restart(&self) {
        self.pg_ctl(&["restart", "-m", "fast", "-w", "-t", "60"]);
    }

    fn pg_ctl(&self, args: &[&str]) {
        let log = self.root.join("log");
        let mut all = vec!["-D", path(&self.data), "-l", path(&log)];
        all.extend_from_slice(args);
        self.run_checked("pg_ctl", &all);
    }

    /// Runs a server program as the server's OS user, panicking with its
    /// output (and the server log) when it fails.
    fn run_checked(&self, program: &str, args: &[&str]) {
        let binary = self.bindir.join(program);
        let mut command = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        // The server must not inherit the test's working directory, which
        // the `postgres` user may not be allowed to enter.
        let output =
            command.args(args).current_dir(&self.root).output().unwrap_or_else(|e| panic!("run {program}: {e}"));
        if !output.status.success() {
            panic!(
                "{program} {args:?} failed: {}\n{}{}\nserver log:\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                self.log()
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What the server said is the first thing to read about a failure.
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("server log (last lines):\n{}", lines[lines.len().saturating_sub(60)..].join("\n"));
        }
        let log = self.root.join("log");
        let binary = self.bindir.join("pg_ctl");
        let args = ["-D", path(&self.data), "-l", path(&log), "stop", "-m", "immediate", "-w"];
        let _ = match self.run_as {
            Some(user) => Command::new("runuser").args(["-u", user, "--"]).arg(&binary).args(args).output(),
            None => Command::new(&binary).args(args).output(),
        };
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// `$PG_CONFIG --bindir`, Debian's PostgreSQL 15 by default.
pub fn bindir() -> PathBuf {
    static BINDIR: OnceLock<PathBuf> = OnceLock::new();
    BINDIR
        .get_or_init(|| {
            let pg_config =
                std::env::var("PG_CONFIG").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".to_owned());
            let out = Command::new(&pg_config)
                .arg("--bindir")
                .output()
                .unwrap_or_else(|e| panic!("run {pg_config} (set PG_CONFIG): {e}"));
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        })
        .clone()
}

/// Whether this server has `output_plugin_libraries` (15.19 and later),
/// without which it loads any output plugin.
pub fn has_output_plugin_libraries(bindir: &Path) -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        Command::new(bindir.join("postgres"))
            .arg("--describe-config")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("output_plugin_libraries"))
            .unwrap_or(false)
    })
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

fn chown(dir: &Path, user: &str) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, user]).output().expect("run id");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("no OS user {user}"))
    };
    std::os::unix::fs::chown(dir, Some(id("-u")), Some(id("-g"))).expect("chown the cluster directory");
}

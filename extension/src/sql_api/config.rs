//! The server settings and privileges change data capture needs, checked
//! all at once and reported in the format of DESIGN §3.

use super::error::SqlError;
use crate::gucs;
use pgrx::spi::{quote_identifier, Spi};

/// One requirement, as `cdc_check_config()` returns it.
#[derive(Debug, Clone)]
pub struct Check {
    pub setting: String,
    pub current: String,
    pub required: String,
    pub ok: bool,
    /// How to fix it.
    pub fix: String,
    /// The failed requirement as one report line.
    problem: String,
    /// The `postgresql.conf` line that satisfies a setting, or None for a
    /// privilege.
    conf_line: Option<String>,
}

/// What the settings are, read in one query.
struct State {
    wal_level: String,
    slots: i64,
    slots_used: i64,
    senders: i64,
    senders_used: i64,
    /// None where the server has no such setting (before 15.19).
    plugin_libraries: Option<String>,
    role: String,
    superuser: bool,
    replication: bool,
    database: String,
    can_create: bool,
}

fn state() -> Result<State, SqlError> {
    const SQL: &str = r"
        SELECT current_setting('wal_level'),
               current_setting('max_replication_slots')::int8,
               (SELECT count(*) FROM pg_replication_slots),
               current_setting('max_wal_senders')::int8,
               (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender'),
               current_user::text, r.rolsuper, r.rolreplication,
               current_database()::text, has_database_privilege(current_database(), 'CREATE')
        FROM pg_roles r WHERE r.rolname = current_user";
    Spi::connect(|client| {
        let row = client.select(SQL, Some(1), &[])?.first();
        Ok(State {
            wal_level: row.get(1)?.unwrap_or_default(),
            slots: row.get(2)?.unwrap_or(0),
            slots_used: row.get(3)?.unwrap_or(0),
            senders: row.get(4)?.unwrap_or(0),
            senders_used: row.get(5)?.unwrap_or(0),
            plugin_libraries: gucs::read_unrestricted(c"output_plugin_libraries"),
            role: row.get(6)?.unwrap_or_default(),
            superuser: row.get(7)?.unwrap_or(false),
            replication: row.get(8)?.unwrap_or(false),
            database: row.get(9)?.unwrap_or_default(),
            can_create: row.get(10)?.unwrap_or(false),
        })
    })
}

/// Every requirement. `new_slots` is how many slots the caller is about to
/// create (0 when re-configuring an existing stream).
pub fn checks(new_slots: i64) -> Result<Vec<Check>, SqlError> {
    let s = state()?;
    let restart = "then restart PostgreSQL";
    let mut checks = vec![Check {
        setting: "wal_level".into(),
        current: s.wal_level.clone(),
        required: "logical".into(),
        ok: s.wal_level == "logical",
        fix: format!("ALTER SYSTEM SET wal_level = logical; {restart}"),
        problem: format!("wal_level is '{}' but must be 'logical'", s.wal_level),
        conf_line: Some("wal_level = logical".into()),
    }];

    checks.push(capacity("max_replication_slots", s.slots, s.slots_used, new_slots.max(1)));
    checks.push(capacity("max_wal_senders", s.senders, s.senders_used, 1));

    if let Some(libraries) = &s.plugin_libraries {
        let listed = libraries.split(',').map(|l| l.trim().trim_matches('"').to_lowercase());
        let ok = listed.clone().any(|l| l == "wal2arrow");
        let wanted =
            if libraries.trim().is_empty() { "wal2arrow".to_owned() } else { format!("{libraries}, wal2arrow") };
        // A superuser-context setting: a reload applies it.
        let apply = "then SELECT pg_reload_conf()";
        checks.push(Check {
            setting: "output_plugin_libraries".into(),
            current: libraries.clone(),
            required: "a list containing wal2arrow".into(),
            ok,
            // ALTER SYSTEM takes the list unquoted: quoted, it is one name.
            fix: format!("ALTER SYSTEM SET output_plugin_libraries = {wanted}; {apply}"),
            problem: format!("output_plugin_libraries is '{libraries}' but must contain 'wal2arrow'"),
            conf_line: Some(format!("output_plugin_libraries = '{wanted}'")),
        });
    }

    if let Some(group) = gucs::ring_group() {
        let member = pgcdc_reader::ring::file::group_id(&group).map(pgcdc_reader::ring::file::member_of);
        let current = match member {
            Ok(true) => format!("'{group}', which the server's OS user belongs to"),
            Ok(false) => format!("'{group}', which the server's OS user does not belong to"),
            Err(_) => format!("'{group}', which is no group of this host"),
        };
        checks.push(Check {
            setting: "pgcdc.ring_group".into(),
            current: current.clone(),
            required: "a group the server's OS user belongs to".into(),
            ok: member.unwrap_or(false),
            fix: format!(
                "as root: usermod -aG {group} <the server's OS user>, then restart PostgreSQL; or ALTER SYSTEM RESET pgcdc.ring_group"
            ),
            problem: format!("pgcdc.ring_group is {current}: the server cannot give its ring files to it"),
            conf_line: None,
        });
    }

    let role = quote_identifier(&s.role);
    checks.push(Check {
        setting: "replication privilege".into(),
        current: match (s.superuser, s.replication) {
            (true, _) => format!("{} is a superuser", s.role),
            (false, true) => format!("{} has REPLICATION", s.role),
            (false, false) => format!("{} has neither SUPERUSER nor REPLICATION", s.role),
        },
        required: "SUPERUSER or REPLICATION".into(),
        ok: s.superuser || s.replication,
        fix: format!("as a superuser: ALTER ROLE {role} WITH REPLICATION;"),
        problem: format!(
            "role \"{}\" has neither SUPERUSER nor REPLICATION, needed to create and read replication slots",
            s.role
        ),
        conf_line: None,
    });
    checks.push(Check {
        setting: "create publications".into(),
        current: if s.can_create {
            format!("{} may create in database {}", s.role, s.database)
        } else {
            format!("{} lacks CREATE on database {}", s.role, s.database)
        },
        required: "CREATE on the database".into(),
        ok: s.can_create || s.superuser,
        fix: format!("as a superuser: GRANT CREATE ON DATABASE {} TO {role};", quote_identifier(&s.database)),
        problem: format!(
            "role \"{}\" lacks CREATE on database \"{}\", needed to create publications",
            s.role, s.database
        ),
        conf_line: None,
    });
    Ok(checks)
}

/// A setting that caps how many of something exist (slots, walsenders):
/// `needed` more than are in use must fit.
fn capacity(setting: &str, total: i64, used: i64, needed: i64) -> Check {
    let minimum = used + needed;
    let wanted = minimum.max(10);
    Check {
        setting: setting.into(),
        current: format!("{total} ({used} in use)"),
        required: format!("at least {minimum}"),
        ok: total >= minimum,
        fix: format!("ALTER SYSTEM SET {setting} = {wanted}; then restart PostgreSQL"),
        problem: format!("{setting} is '{total}' with {used} in use but must be at least '{minimum}'"),
        conf_line: Some(format!("{setting} = {wanted}")),
    }
}

/// The report of every failed check, or None when all pass:
///
/// ```text
/// PostgreSQL not configured for logical replication:
///
/// ❌ wal_level is 'replica' but must be 'logical'
///
/// Required postgresql.conf settings:
///   wal_level = logical
///   max_replication_slots = 10
///   max_wal_senders = 10
///
/// Restart PostgreSQL after changing settings.
/// ```
pub fn report(checks: &[Check]) -> Option<String> {
    let failed: Vec<&Check> = checks.iter().filter(|c| !c.ok).collect();
    if failed.is_empty() {
        return None;
    }
    let mut out = String::from("PostgreSQL not configured for logical replication:\n\n");
    for check in &failed {
        out.push_str(&format!("❌ {}\n", check.problem));
    }
    if failed.iter().any(|c| c.conf_line.is_some()) {
        out.push_str("\nRequired postgresql.conf settings:\n");
        // The three settings every stream needs, then any other that failed.
        let always = ["wal_level", "max_replication_slots", "max_wal_senders"];
        for check in checks.iter().filter(|c| always.contains(&c.setting.as_str()) || !c.ok) {
            if let Some(line) = &check.conf_line {
                out.push_str(&format!("  {line}\n"));
            }
        }
        out.push_str("\nRestart PostgreSQL after changing settings.\n");
    }
    let privileges: Vec<&&Check> = failed.iter().filter(|c| c.conf_line.is_none()).collect();
    if !privileges.is_empty() {
        out.push_str("\nGrant the missing privileges:\n");
        for check in privileges {
            out.push_str(&format!("  {}\n", check.fix));
        }
    }
    Some(out.trim_end().to_owned())
}

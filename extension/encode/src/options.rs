//! Options of the `wal2arrow` output plugin, as passed to
//! `pg_logical_slot_get_binary_changes(slot, NULL, NULL, 'key', 'value', …)`,
//! `pg_recvlogical -o key=value`, or `START_REPLICATION … (key 'value')`.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `publication_names` | none: every table | comma-separated publications whose tables (and actions) to decode, as pgoutput reads them |
//! | `include_before` | `true` | carry the `_before` old-row struct |
//! | `batch_rows` | 65536 | most rows per message |
//! | `batch_bytes` | 8388608 | message size at which a batch is flushed early (a message exceeds it by at most one row) |
//! | `flush_at_commit` | `true` | flush every open batch at each commit; off, batches span transactions until the batch bounds or the reader of the messages (the pgcdc worker) flushes them |
//! | `flush_on_table_change` | `false` | flush a table's batch as soon as a change of another table follows, so that messages follow the exact LSN order across tables (for a merged stream) |
//! | `snapshot_markers` | `false` | pass the snapshot watermarks (logical messages with prefix `pgcdc.snapshot`) on to the reader of the messages (the pgcdc worker), after flushing every open batch |
//!
//! Unknown options, repeated options and bad values are errors that name the
//! option: nothing is silently ignored.

use std::collections::HashSet;

/// Parsed plugin options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Publications to filter by; `None` decodes every table.
    pub publication_names: Option<Vec<String>>,
    pub include_before: bool,
    pub batch_rows: usize,
    pub batch_bytes: usize,
    pub flush_on_table_change: bool,
    pub flush_at_commit: bool,
    pub snapshot_markers: bool,
    /// A partition's changes reported as its root table's (DESIGN §2);
    /// off: as pgoutput does, under the partition's own name unless a
    /// publication publishes it through its root.
    pub partition_root: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            publication_names: None,
            include_before: true,
            batch_rows: 65_536,
            batch_bytes: 8 << 20,
            flush_on_table_change: false,
            flush_at_commit: true,
            snapshot_markers: false,
            partition_root: true,
        }
    }
}

/// Largest `batch_rows`: keeps every batch far from Arrow's 32-bit offsets.
pub const MAX_BATCH_ROWS: usize = 10_000_000;
/// Largest `batch_bytes`: keeps every message far from PostgreSQL's 1 GB
/// limit on a single allocation.
pub const MAX_BATCH_BYTES: usize = 256 << 20;

/// A rejected option.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("wal2arrow does not know the option \"{0}\"")]
    Unknown(String),
    #[error("wal2arrow option \"{0}\" is given more than once")]
    Repeated(String),
    #[error("wal2arrow option \"{name}\" needs a value")]
    Missing { name: String },
    #[error("invalid value \"{value}\" for wal2arrow option \"{name}\": {expected}")]
    Invalid { name: String, value: String, expected: String },
}

impl OptionError {
    /// What the user can do about it.
    pub fn hint(&self) -> String {
        match self {
            OptionError::Unknown(_) | OptionError::Repeated(_) => format!("Known options: {}.", KNOWN.join(", ")),
            OptionError::Missing { .. } | OptionError::Invalid { .. } => {
                "See the option table in the pgcdc README.".into()
            }
        }
    }
}

/// Every option's name.
const KNOWN: [&str; 8] = [
    "publication_names",
    "include_before",
    "batch_rows",
    "batch_bytes",
    "flush_on_table_change",
    "flush_at_commit",
    "snapshot_markers",
    "partition_root",
];

impl Options {
    /// Parses `(name, value)` pairs; a `None` value is an option given
    /// without one.
    pub fn parse<'a>(pairs: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> Result<Options, OptionError> {
        let mut options = Options::default();
        let mut seen = HashSet::new();
        for (name, value) in pairs {
            if !seen.insert(name.to_owned()) {
                return Err(OptionError::Repeated(name.to_owned()));
            }
            if !KNOWN.contains(&name) {
                return Err(OptionError::Unknown(name.to_owned()));
            }
            let value = value.ok_or_else(|| OptionError::Missing { name: name.to_owned() })?;
            let invalid = |expected: &str| OptionError::Invalid {
                name: name.to_owned(),
                value: value.to_owned(),
                expected: expected.to_owned(),
            };
            match name {
                "publication_names" => {
                    let names = split_identifiers(value).map_err(|why| invalid(&why))?;
                    options.publication_names = Some(names);
                }
                "include_before"
                | "flush_on_table_change"
                | "flush_at_commit"
                | "snapshot_markers"
                | "partition_root" => {
                    let flag =
                        parse_bool(value).ok_or_else(|| invalid("expected a boolean (true/false, on/off, 1/0)"))?;
                    match name {
                        "include_before" => options.include_before = flag,
                        "flush_on_table_change" => options.flush_on_table_change = flag,
                        "snapshot_markers" => options.snapshot_markers = flag,
                        "partition_root" => options.partition_root = flag,
                        _ => options.flush_at_commit = flag,
                    }
                }
                "batch_rows" => {
                    options.batch_rows = parse_count(value, 1, MAX_BATCH_ROWS)
                        .ok_or_else(|| invalid(&format!("expected an integer from 1 to {MAX_BATCH_ROWS}")))?
                }
                _ => {
                    options.batch_bytes = parse_count(value, 1024, MAX_BATCH_BYTES)
                        .ok_or_else(|| invalid(&format!("expected an integer from 1024 to {MAX_BATCH_BYTES}")))?
                }
            }
        }
        Ok(options)
    }
}

fn parse_count(value: &str, min: usize, max: usize) -> Option<usize> {
    value.trim().parse::<usize>().ok().filter(|n| (min..=max).contains(n))
}

/// PostgreSQL's boolean spellings (`parse_bool`), without prefixes.
fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "on" | "1" => Some(true),
        "false" | "f" | "no" | "n" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// A comma-separated identifier list as PostgreSQL's `SplitIdentifierString`
/// reads it: unquoted names fold to lower case, `"Quoted"` names keep their
/// case and may contain commas and doubled quotes.
pub fn split_identifiers(list: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut chars = list.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut name = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    Some('"') if chars.next_if_eq(&'"').is_some() => name.push('"'),
                    Some('"') => break,
                    Some(c) => name.push(c),
                    None => return Err("expected a closing double quote".into()),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',' && !c.is_whitespace()) {
                name.push(c.to_ascii_lowercase());
            }
        }
        if name.is_empty() {
            return Err("expected a comma-separated list of publication names".into());
        }
        names.push(name);
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match chars.next() {
            None => return Ok(names),
            Some(',') => continue,
            Some(c) => return Err(format!("unexpected \"{c}\" after a name")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_values() {
        assert_eq!(Options::parse([]).unwrap(), Options::default());
        let o = Options::parse([
            ("publication_names", Some("pub_a, \"Pub,B\"")),
            ("include_before", Some("off")),
            ("batch_rows", Some("100")),
            ("batch_bytes", Some("4096")),
            ("flush_on_table_change", Some("yes")),
        ])
        .unwrap();
        assert_eq!(o.publication_names, Some(vec!["pub_a".into(), "Pub,B".into()]));
        assert!(!o.include_before);
        assert_eq!((o.batch_rows, o.batch_bytes), (100, 4096));
        assert!(o.flush_on_table_change);
    }

    #[test]
    fn errors_name_the_option() {
        let e = Options::parse([("batch_size", Some("1"))]).unwrap_err();
        assert_eq!(e.to_string(), "wal2arrow does not know the option \"batch_size\"");
        assert!(e.hint().contains("batch_rows"));
        let e = Options::parse([("batch_rows", Some("0"))]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid value \"0\" for wal2arrow option \"batch_rows\": expected an integer from 1 to 10000000"
        );
        assert!(matches!(Options::parse([("batch_rows", Some("ten"))]), Err(OptionError::Invalid { .. })));
        assert!(matches!(Options::parse([("batch_bytes", Some("1"))]), Err(OptionError::Invalid { .. })));
        assert!(matches!(Options::parse([("include_before", Some("maybe"))]), Err(OptionError::Invalid { .. })));
        assert!(matches!(Options::parse([("include_before", None)]), Err(OptionError::Missing { .. })));
        assert!(matches!(
            Options::parse([("batch_rows", Some("1")), ("batch_rows", Some("2"))]),
            Err(OptionError::Repeated(_))
        ));
    }

    #[test]
    fn identifier_lists() {
        assert_eq!(split_identifiers("A,b").unwrap(), ["a", "b"]);
        assert_eq!(split_identifiers(" \"x\"\"y\" ").unwrap(), ["x\"y"]);
        assert!(split_identifiers("").is_err());
        assert!(split_identifiers("a,,b").is_err());
        assert!(split_identifiers("\"open").is_err());
        assert!(split_identifiers("a b").is_err());
    }
}

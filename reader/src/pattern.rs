//! Table patterns: Flink CDC's regular expressions with glob sugar
//! (DESIGN §2), shared by the extension's `cdc_*` functions and the reader.
//!
//! 1. An unescaped `.` outside `[...]` and outside double quotes separates
//!    the parts: `schema.table`, or `database.schema.table`.
//! 2. Each part is a regular expression matched against the whole name.
//!    Unquoted parts match case-insensitively; a double-quoted part
//!    (`"My Schema"`, with `""` for a quote) is a literal, case-exact name.
//! 3. `\.` inside a part is the regex "any character" (Flink's
//!    `public.\.*` is every table in `public`).
//! 4. A `*` at the start of a part or right after a letter, digit, `_` or
//!    `$` means "any sequence" (`.*`); elsewhere it is the regex quantifier.
//! 5. A single part is one expression over the qualified name
//!    `schema.table`.
//! 6. A list of patterns is their union; an exclude list removes tables.
//!
//! ```
//! use pgcdc_reader::pattern::TableFilter;
//! let filter = TableFilter::new(&["public.user_[0-9]+", "*.orders"], &["archive.*"]).unwrap();
//! assert!(filter.matches("app", "public", "user_001"));
//! assert!(!filter.matches("app", "public", "user_abc"));
//! assert!(filter.matches("app", "Sales", "ORDERS"));
//! assert!(!filter.matches("app", "archive", "orders"));
//! ```

use regex::{Regex, RegexBuilder};

/// A pattern that cannot be used, with the pattern quoted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("empty table pattern")]
    Empty,
    #[error("table pattern \"{pattern}\" has an empty part")]
    EmptyPart { pattern: String },
    #[error("table pattern \"{pattern}\" has {parts} parts; use table, schema.table or database.schema.table")]
    TooManyParts { pattern: String, parts: usize },
    #[error("table pattern \"{pattern}\" has an unclosed double quote")]
    UnclosedQuote { pattern: String },
    #[error("table pattern \"{pattern}\" has text after a quoted name; quote the whole part")]
    TextAfterQuote { pattern: String },
    #[error("table pattern \"{pattern}\" is not a valid regular expression: {message}")]
    Regex { pattern: String, message: String },
}

/// How one part matches a name.
#[derive(Debug, Clone)]
enum Part {
    /// An unquoted part: an anchored, case-insensitive regular expression.
    Regex(Regex),
    /// A quoted part: this exact name.
    Literal(String),
}

impl Part {
    fn matches(&self, name: &str) -> bool {
        match self {
            Part::Regex(regex) => regex.is_match(name),
            Part::Literal(literal) => literal == name,
        }
    }
}

/// One compiled pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    database: Option<Part>,
    /// `None` for a single-part pattern, matched against `schema.table`.
    schema: Option<Part>,
    table: Part,
}

/// A part as written, before compiling.
enum RawPart {
    Quoted(String),
    /// The regular expression, with `\.` and glob `*` already rewritten.
    Unquoted(String),
}

impl Pattern {
    /// Parses and compiles a pattern.
    pub fn parse(source: &str) -> Result<Pattern, PatternError> {
        if source.trim().is_empty() {
            return Err(PatternError::Empty);
        }
        let compile = |raw: RawPart| -> Result<Part, PatternError> {
            match raw {
                RawPart::Quoted(name) => Ok(Part::Literal(name)),
                RawPart::Unquoted(expr) => RegexBuilder::new(&format!("^(?:{expr})$"))
                    .case_insensitive(true)
                    .build()
                    .map(Part::Regex)
                    .map_err(|e| PatternError::Regex { pattern: source.to_owned(), message: e.to_string() }),
            }
        };
        let mut parts = split(source)?.into_iter().map(compile).collect::<Result<Vec<_>, _>>()?;
        let table = parts.pop().ok_or(PatternError::Empty)?;
        let schema = parts.pop();
        let database = parts.pop();
        Ok(Pattern { source: source.to_owned(), database, schema, table })
    }

    /// The pattern as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the table `schema.table` of database `database` matches.
    pub fn matches(&self, database: &str, schema: &str, table: &str) -> bool {
        if self.database.as_ref().is_some_and(|d| !d.matches(database)) {
            return false;
        }
        match &self.schema {
            Some(s) => s.matches(schema) && self.table.matches(table),
            None => self.table.matches(&format!("{schema}.{table}")),
        }
    }
}

/// Splits a pattern into its parts (rules 1, 3 and 4).
fn split(source: &str) -> Result<Vec<RawPart>, PatternError> {
    let error_pattern = || source.to_owned();
    let mut parts = Vec::new();
    let mut chars = source.chars().peekable();
    loop {
        if chars.next_if_eq(&'"').is_some() {
            let mut name = String::new();
            loop {
                match chars.next() {
                    Some('"') if chars.next_if_eq(&'"').is_some() => name.push('"'),
                    Some('"') => break,
                    Some(c) => name.push(c),
                    None => return Err(PatternError::UnclosedQuote { pattern: error_pattern() }),
                }
            }
            if name.is_empty() {
                return Err(PatternError::EmptyPart { pattern: error_pattern() });
            }
            parts.push(RawPart::Quoted(name));
            match chars.next() {
                None => break,
                Some('.') => continue,
                Some(_) => return Err(PatternError::TextAfterQuote { pattern: error_pattern() }),
            }
        }
        let mut expr = String::new();
        let mut in_brackets = false;
        // Whether the last thing written was a plain identifier character,
        // after which `*` is glob sugar.
        let mut after_plain = false;
        let mut at_start = true;
        let mut ended_by_dot = false;
        while let Some(c) = chars.next() {
            let plain = c.is_alphanumeric() || c == '_' || c == '$';
            match c {
                '\\' => match chars.next() {
                    Some('.') => expr.push('.'),
                    Some(next) => {
                        expr.push('\\');
                        expr.push(next);
                    }
                    None => expr.push('\\'),
                },
                '.' if !in_brackets => {
                    ended_by_dot = true;
                    break;
                }
                '[' if !in_brackets => {
                    in_brackets = true;
                    expr.push('[');
                    if chars.next_if_eq(&'^').is_some() {
                        expr.push('^');
                    }
                    // A `]` right after the opening bracket is a member.
                    if chars.next_if_eq(&']').is_some() {
                        expr.push_str("\\]");
                    }
                }
                ']' if in_brackets => {
                    in_brackets = false;
                    expr.push(']');
                }
                '*' if !in_brackets && (at_start || after_plain) => expr.push_str(".*"),
                c => expr.push(c),
            }
            after_plain = plain && !in_brackets;
            at_start = false;
        }
        if expr.is_empty() {
            return Err(PatternError::EmptyPart { pattern: error_pattern() });
        }
        parts.push(RawPart::Unquoted(expr));
        if !ended_by_dot {
            break;
        }
        if chars.peek().is_none() {
            return Err(PatternError::EmptyPart { pattern: error_pattern() });
        }
    }
    if parts.len() > 3 {
        return Err(PatternError::TooManyParts { pattern: error_pattern(), parts: parts.len() });
    }
    Ok(parts)
}

/// Include patterns minus exclude patterns.
#[derive(Debug, Clone)]
pub struct TableFilter {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
}

impl TableFilter {
    /// Compiles both lists; the first bad pattern is the error.
    pub fn new<S: AsRef<str>>(include: &[S], exclude: &[S]) -> Result<TableFilter, PatternError> {
        let compile = |list: &[S]| list.iter().map(|p| Pattern::parse(p.as_ref())).collect::<Result<Vec<_>, _>>();
        let include = compile(include)?;
        if include.is_empty() {
            return Err(PatternError::Empty);
        }
        Ok(TableFilter { include, exclude: compile(exclude)? })
    }

    /// Whether a table is selected.
    pub fn matches(&self, database: &str, schema: &str, table: &str) -> bool {
        self.include.iter().any(|p| p.matches(database, schema, table))
            && !self.exclude.iter().any(|p| p.matches(database, schema, table))
    }

    /// The include patterns that select none of `tables` (before excludes).
    pub fn unmatched<'a>(&'a self, database: &str, tables: &[(String, String)]) -> Vec<&'a Pattern> {
        self.include.iter().filter(|p| !tables.iter().any(|(s, t)| p.matches(database, s, t))).collect()
    }
}

/// The `limit` qualified names closest to what a pattern spells, for a
/// "did you mean" hint.
pub fn nearest(pattern: &str, tables: &[(String, String)], limit: usize) -> Vec<String> {
    let wanted = pattern.replace('"', "").to_lowercase();
    // Closest first; among equals, the longest shared prefix first.
    let mut scored: Vec<(usize, std::cmp::Reverse<usize>, String)> = tables
        .iter()
        .map(|(s, t)| {
            let name = format!("{s}.{t}");
            let lower = name.to_lowercase();
            let distance = strsim::levenshtein(&wanted, &lower).min(strsim::levenshtein(&wanted, &t.to_lowercase()));
            let prefix = wanted.chars().zip(lower.chars()).take_while(|(a, b)| a == b).count();
            (distance, std::cmp::Reverse(prefix), name)
        })
        .collect();
    scored.sort();
    scored.dedup();
    scored.into_iter().take(limit).map(|(_, _, name)| name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, schema: &str, table: &str) -> bool {
        Pattern::parse(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}")).matches("app", schema, table)
    }

    #[test]
    fn design_table() {
        assert!(m("public.users", "public", "users"));
        assert!(!m("public.users", "public", "users2"));
        for p in ["public.*", "public.\\.*"] {
            assert!(m(p, "public", "anything"), "{p}");
            assert!(!m(p, "publicity", "x"), "{p}");
        }
        assert!(m("public.user_*", "public", "user_42"));
        assert!(!m("public.user_*", "public", "users"));
        assert!(m("*.orders", "sales", "orders"));
        assert!(!m("*.orders", "sales", "orders_old"));
        assert!(m("public.*_events", "public", "click_events"));
        assert!(m("public.user_[0-9]+", "public", "user_001"));
        assert!(m("public.user_[0-9]+", "public", "user_002"));
        assert!(!m("public.user_[0-9]+", "public", "user_abc"));
        assert!(m("app_db_[0-9]+\\.orders", "app_db_1", "orders"));
        assert!(!m("app_db_[0-9]+\\.orders", "app_db_x", "orders"));
        assert!(m("\"My Schema\".\"Odd.Name\"", "My Schema", "Odd.Name"));
        assert!(!m("\"My Schema\".\"Odd.Name\"", "my schema", "Odd.Name"));
    }

    #[test]
    fn brackets_escapes_and_quantifiers() {
        // A dot inside brackets is a member, not a separator.
        assert!(m("public.v[._]1", "public", "v.1"));
        assert!(m("public.v[._]1", "public", "v_1"));
        assert!(m("public.x[]a]", "public", "x]"));
        assert!(m("public.x[^.]", "public", "xy"));
        // `*` after a bracket or group is the quantifier.
        assert!(m("public.t[0-9]*", "public", "t"));
        assert!(m("public.t[0-9]*", "public", "t123"));
        assert!(!m("public.t[0-9]*", "public", "tx"));
        assert!(m("public.(ab)*c", "public", "ababc"));
        // `\d` and friends pass through to the regex.
        assert!(m("public.log_\\d{4}", "public", "log_2024"));
        assert!(!m("public.log_\\d{4}", "public", "log_24"));
        // `+` after glob sugar is a regex quantifier on it: still valid.
        assert!(m("public.a*+", "public", "abc"));
    }

    #[test]
    fn case_and_quotes() {
        assert!(m("PUBLIC.Users", "public", "users"), "unquoted parts ignore case");
        assert!(m("public.users", "Public", "USERS"));
        assert!(!m("\"Users\".x", "users", "x"), "quoted parts are exact");
        assert!(m("\"a\"\"b\".t", "a\"b", "t"), "doubled quotes");
        assert!(m("\"sch.ema\".*", "sch.ema", "t"), "quoted dots");
        assert!(m("\"x*\".t", "x*", "t"), "no glob in quotes");
        assert!(!m("\"x*\".t", "xy", "t"));
    }

    #[test]
    fn three_parts_and_single_part() {
        assert!(m("app.public.users", "public", "users"));
        assert!(!m("other.public.users", "public", "users"), "the database part must match");
        assert!(m("APP.public.*", "public", "t"));
        assert!(m("*.*.users", "public", "users"));
        assert!(m("public\\.users", "public", "users"), "one regex over schema.table");
        assert!(m("*users", "anything", "users"));
        assert!(m("\"public.users\"", "public", "users"), "a quoted single part is the qualified name");
    }

    #[test]
    fn filters_union_and_exclude() {
        let f = TableFilter::new(&["public.*", "audit.log"], &["public.tmp_*"]).unwrap();
        assert!(f.matches("app", "public", "users"));
        assert!(f.matches("app", "audit", "log"));
        assert!(!f.matches("app", "public", "tmp_1"));
        assert!(!f.matches("app", "audit", "other"));
        let tables = vec![("public".to_owned(), "users".to_owned())];
        let unmatched: Vec<&str> = f.unmatched("app", &tables).iter().map(|p| p.source()).collect();
        assert_eq!(unmatched, ["audit.log"]);
    }

    #[test]
    fn errors_quote_the_pattern() {
        assert_eq!(Pattern::parse("").unwrap_err(), PatternError::Empty);
        assert_eq!(Pattern::parse("  ").unwrap_err(), PatternError::Empty);
        assert!(TableFilter::new::<&str>(&[], &[]).is_err());
        assert!(matches!(Pattern::parse("public."), Err(PatternError::EmptyPart { .. })));
        assert!(matches!(Pattern::parse(".users"), Err(PatternError::EmptyPart { .. })));
        assert!(matches!(Pattern::parse("a.b.c.d"), Err(PatternError::TooManyParts { parts: 4, .. })));
        assert!(matches!(Pattern::parse("\"open.t"), Err(PatternError::UnclosedQuote { .. })));
        assert!(matches!(Pattern::parse("\"a\"b.t"), Err(PatternError::TextAfterQuote { .. })));
        assert!(matches!(Pattern::parse("\"\".t"), Err(PatternError::EmptyPart { .. })));
        let e = Pattern::parse("public.user_[0-9").unwrap_err();
        assert!(matches!(&e, PatternError::Regex { pattern, .. } if pattern == "public.user_[0-9"));
        assert!(e.to_string().starts_with("table pattern \"public.user_[0-9\" is not a valid regular expression"));
        assert!(matches!(Pattern::parse("public.(a"), Err(PatternError::Regex { .. })));
        assert!(matches!(Pattern::parse("public.+x"), Err(PatternError::Regex { .. })));
    }

    #[test]
    fn nearest_names_for_hints() {
        let tables: Vec<(String, String)> = [("public", "users"), ("public", "orders"), ("sales", "user_stats")]
            .map(|(s, t)| (s.into(), t.into()))
            .to_vec();
        assert_eq!(nearest("public.user", &tables, 1), ["public.users"]);
        assert_eq!(nearest("ordrs", &tables, 1), ["public.orders"]);
        let more: Vec<(String, String)> = [("public", "users"), ("public", "orders"), ("public", "user_001")]
            .map(|(s, t)| (s.into(), t.into()))
            .to_vec();
        assert_eq!(nearest("public.user", &more, 2), ["public.users", "public.user_001"], "shared prefixes break ties");
    }

    /// Random strings over the characters that matter to the grammar either
    /// compile or give an error: never a panic.
    #[test]
    fn random_patterns_never_panic() {
        const ALPHABET: &[char] = &[
            'a', 'Z', '0', '_', '$', '.', '*', '+', '?', '"', '\\', '[', ']', '^', '(', ')', '{', '}', '|', ' ', 'é',
            '-', ',',
        ];
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut ok, mut err) = (0, 0);
        for _ in 0..20_000 {
            let len = (next() % 12) as usize;
            let pattern: String = (0..len).map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize]).collect();
            match Pattern::parse(&pattern) {
                Ok(p) => {
                    p.matches("db", "public", "users");
                    ok += 1;
                }
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    err += 1;
                }
            }
        }
        assert!(ok > 500 && err > 500, "both outcomes exercised: {ok} ok, {err} errors");
    }
}

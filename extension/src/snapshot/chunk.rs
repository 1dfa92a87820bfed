//! Reading a snapshot chunk: a table's rows in key order, a chunk at a
//! time, encoded by the code that encodes decoded changes (the same
//! relation plan, the same datum reading), so that every type maps exactly
//! as in the stream.
//!
//! Rows are read as whole-row values (`SELECT r FROM … r`): a whole-row
//! value is a tuple of the table's row type with every TOASTed value
//! inlined, so snapshot rows are always whole.

use super::error::SnapshotError;
use crate::plugin::{fill, RelationPlan};
use arrow_array::RecordBatch;
use pgcdc_encode::batch::{ChangeBatchBuilder, ChangeSchema, Image, RowMeta};
use pgcdc_reader::contract::Op;
use pgrx::pg_sys;
use pgrx::spi::{quote_identifier, quote_qualified_identifier};
use std::ffi::{CStr, CString};
use std::sync::Arc;

/// What a table's chunks are cut by: the key the stream uses for the table
/// (its replica identity index, else its primary key), the columns' names
/// and types as SQL spells them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub columns: Vec<String>,
    pub types: Vec<String>,
}

/// A chunk as read: its rows as `r` rows of the table's change schema
/// (without `_before`), and the text of its last row's key (where the next
/// chunk starts), None when it has no row.
pub struct Chunk {
    pub batch: RecordBatch,
    pub last_key: Option<Vec<String>>,
}

/// The table `relid` as the current transaction sees it: its qualified
/// name and its key. A table whose rows nothing tells apart (no primary
/// key, no replica identity index) has no key: its rows cannot be matched
/// with the changes around a chunk.
pub fn table_key(relid: u32) -> Result<(String, Key), SnapshotError> {
    with_relation(relid, |relation, plan| {
        let name = quote_qualified_identifier(&plan.spec.schema, &plan.spec.table);
        if !plan.unique_key {
            return Err(SnapshotError::NoKey(name));
        }
        let columns: Vec<String> = plan.spec.partition_key.iter().map(|i| plan.spec.columns[*i].name.clone()).collect();
        // SAFETY: the relation is open; its descriptor stays valid for the
        // call, and format_type_with_typemod returns a palloc'd string.
        let types = unsafe {
            let desc = (*relation).rd_att;
            plan.spec
                .partition_key
                .iter()
                .map(|i| {
                    let att = &*(*desc).attrs.as_ptr().add(plan.columns[*i].attidx);
                    CStr::from_ptr(pg_sys::format_type_with_typemod(att.atttypid, att.atttypmod))
                        .to_string_lossy()
                        .into_owned()
                })
                .collect()
        };
        Ok((name, Key { columns, types }))
    })
}

/// Reads up to `limit` rows of table `relid` whose key comes after `after`
/// and not after `upto` (key texts; None: from the first row, to the last),
/// in key order — PostgreSQL's own ordering of the key's types and
/// collations, so that the next chunk starts exactly where this one ended.
///
/// Must run inside a transaction that has taken no snapshot yet: the
/// table is locked first, so that the rows are read under a snapshot taken
/// once nothing can change its columns any more (see `reconcile`).
pub fn read_chunk(
    relid: u32,
    key: &Key,
    after: Option<&[String]>,
    upto: Option<&[String]>,
    limit: usize,
) -> Result<Chunk, SnapshotError> {
    with_relation(relid, |relation, plan| {
        let table = quote_qualified_identifier(&plan.spec.schema, &plan.spec.table);
        let sql = chunk_query(&table, &row_alias(plan), relation, key, after.is_some(), upto.is_some(), limit);
        let params: Vec<&str> = after.into_iter().chain(upto).flatten().map(String::as_str).collect();
        // SAFETY: the relation stays open for the call.
        unsafe { run_chunk_query(relation, plan, &table, &sql, &params, key.columns.len(), limit) }
    })
}

/// Runs `f` with table `relid` open and described.
fn with_relation<T>(
    relid: u32,
    f: impl FnOnce(pg_sys::Relation, &RelationPlan) -> Result<T, SnapshotError>,
) -> Result<T, SnapshotError> {
    // SAFETY: inside a transaction: the relation is opened by OID under an
    // ACCESS SHARE lock (held to the end of the transaction), described
    // into a child of the current memory context, and closed again.
    unsafe {
        let relation = pg_sys::try_relation_open(pg_sys::Oid::from(relid), pg_sys::AccessShareLock as i32);
        if relation.is_null() {
            return Err(SnapshotError::TableGone(relid));
        }
        let plan = RelationPlan::describe(relation, pg_sys::CurrentMemoryContext);
        let result = f(relation, &plan);
        plan.release();
        pg_sys::relation_close(relation, pg_sys::NoLock as i32);
        result
    }
}

/// An alias for the table that no column of it has: a table's alias names
/// its whole row only where no column takes the name.
pub fn row_alias(plan: &RelationPlan) -> String {
    (0..)
        .map(|i| if i == 0 { "r".to_owned() } else { format!("r{i}") })
        .find(|alias| plan.spec.columns.iter().all(|c| c.name != *alias))
        .expect("some alias is free")
}

/// `SELECT t, key::text… FROM [ONLY] table t [WHERE (key…) > ($1…) AND
/// (key…) <= ($n…)] ORDER BY key… LIMIT n` (`t`: `alias`), the parameters
/// cast from text to the key columns' types.
fn chunk_query(
    table: &str,
    alias: &str,
    relation: pg_sys::Relation,
    key: &Key,
    after: bool,
    upto: bool,
    limit: usize,
) -> String {
    // SAFETY: the relation is open; its pg_class row stays valid.
    let partitioned = unsafe { (*(*relation).rd_rel).relkind as u8 == pg_sys::RELKIND_PARTITIONED_TABLE };
    let columns: Vec<String> = key.columns.iter().map(|k| format!("{alias}.{}", quote_identifier(k))).collect();
    let list = columns.join(", ");
    let texts: String = columns.iter().map(|c| format!(", {c}::text")).collect();
    // A partitioned table is read with its partitions (its changes are
    // published through it); any other table without its inheritance
    // children, which are tables of their own.
    let only = if partitioned { "" } else { "ONLY " };
    let mut sql = format!("SELECT {alias}{texts} FROM {only}{table} {alias}");
    let params = |from: usize| -> String {
        key.types.iter().enumerate().map(|(i, t)| format!("${}::{t}", from + i + 1)).collect::<Vec<_>>().join(", ")
    };
    let mut conditions = Vec::new();
    if after {
        conditions.push(format!("({list}) > ({})", params(0)));
    }
    if upto {
        conditions.push(format!("({list}) <= ({})", params(if after { key.types.len() } else { 0 })));
    }
    if !conditions.is_empty() {
        sql.push_str(&format!(" WHERE {}", conditions.join(" AND ")));
    }
    sql.push_str(&format!(" ORDER BY {list} LIMIT {limit}"));
    sql
}

/// Runs the chunk query and encodes its rows.
///
/// # Safety
/// `relation` must be open (and `plan` its description), inside a
/// transaction.
unsafe fn run_chunk_query(
    relation: pg_sys::Relation,
    plan: &RelationPlan,
    table: &str,
    sql: &str,
    params: &[&str],
    keys: usize,
    limit: usize,
) -> Result<Chunk, SnapshotError> {
    let nul = |_| SnapshotError::Read { table: table.to_owned(), why: "a name or key with a NUL byte".into() };
    let sql = CString::new(sql).map_err(nul)?;
    let params: Vec<CString> = params.iter().map(|p| CString::new(*p)).collect::<Result<_, _>>().map_err(nul)?;
    // SAFETY: SPI is connected here and finished below, also on error (an
    // ERROR raised inside aborts the transaction, which cleans SPI up);
    // text parameters are the text datums cstring_to_text makes; the
    // result table is read before SPI_finish frees it.
    unsafe {
        pg_sys::SPI_connect();
        let mut types: Vec<pg_sys::Oid> = params.iter().map(|_| pg_sys::TEXTOID).collect();
        let mut values: Vec<pg_sys::Datum> =
            params.iter().map(|p| pg_sys::Datum::from(pg_sys::cstring_to_text(p.as_ptr()))).collect();
        let code = pg_sys::SPI_execute_with_args(
            sql.as_ptr(),
            i32::try_from(params.len()).unwrap_or(0),
            types.as_mut_ptr(),
            values.as_mut_ptr(),
            std::ptr::null(),
            false,
            i64::try_from(limit).unwrap_or(i64::MAX),
        );
        if code != pg_sys::SPI_OK_SELECT as i32 {
            pg_sys::SPI_finish();
            return Err(SnapshotError::Read { table: table.to_owned(), why: format!("SPI code {code}") });
        }
        let result = pg_sys::SPI_tuptable;
        let count = usize::try_from(pg_sys::SPI_processed).unwrap_or(0);
        let tuples = if count == 0 { &[][..] } else { std::slice::from_raw_parts((*result).vals, count) };
        let chunk = encode(relation, plan, table, (*result).tupdesc, tuples, keys);
        pg_sys::SPI_finish();
        chunk
    }
}

/// Encodes the result rows (a whole-row value, then the key's text) as `r`
/// rows.
///
/// # Safety
/// `tuples` must be rows of `result`'s shape, `relation` open and `plan`
/// its description.
unsafe fn encode(
    relation: pg_sys::Relation,
    plan: &RelationPlan,
    table: &str,
    result: pg_sys::TupleDesc,
    tuples: &[pg_sys::HeapTuple],
    keys: usize,
) -> Result<Chunk, SnapshotError> {
    let schema = Arc::new(ChangeSchema::new(plan.spec.clone(), false));
    let mut batch = ChangeBatchBuilder::new(schema);
    let natts = plan.natts;
    let (mut values, mut nulls) = (vec![pg_sys::Datum::null(); natts], vec![true; natts]);
    let meta = RowMeta { op: Op::Read, lsn: 0, commit_lsn: 0, xid: 0, commit_time: 0 };
    // SAFETY: each row's first column is a composite datum of the
    // relation's row type (a whole-row value, flattened: nothing TOASTed
    // out of line), deformed with the relation's descriptor; the key texts
    // are read with SPI_getvalue.
    unsafe {
        let desc = (*relation).rd_att;
        for &tuple in tuples {
            let mut is_null = true;
            let whole = pg_sys::SPI_getbinval(tuple, result, 1, &mut is_null);
            if is_null {
                continue;
            }
            let header = pg_sys::pg_detoast_datum(whole.cast_mut_ptr()).cast::<pg_sys::HeapTupleHeaderData>();
            let mut row_tuple = pg_sys::HeapTupleData {
                t_len: varsize(header.cast()),
                t_self: pg_sys::ItemPointerData::default(),
                t_tableOid: (*relation).rd_id,
                t_data: header,
            };
            let mut row = batch.row(meta);
            fill(&mut row, Image::New, &mut row_tuple, desc, None, plan, &mut values, &mut nulls);
            row.finish();
        }
        let last_key = tuples.last().map(|&tuple| {
            (0..keys)
                .map(|k| {
                    let text = pg_sys::SPI_getvalue(tuple, result, i32::try_from(k + 2).unwrap_or(0));
                    if text.is_null() {
                        String::new()
                    } else {
                        CStr::from_ptr(text).to_string_lossy().into_owned()
                    }
                })
                .collect()
        });
        let batch = batch.finish().map_err(|e| SnapshotError::Read { table: table.to_owned(), why: e.to_string() })?;
        Ok(Chunk { batch, last_key })
    }
}

/// The length of a varlena with a 4-byte header.
///
/// # Safety
/// `ptr` must point at a detoasted varlena.
unsafe fn varsize(ptr: *const u8) -> u32 {
    // SAFETY: a detoasted varlena starts with its 4-byte length word, the
    // length in its upper 30 bits (little-endian: shifted right by two).
    unsafe { u32::from_le_bytes(std::ptr::read_unaligned(ptr.cast::<[u8; 4]>())) >> 2 }
}

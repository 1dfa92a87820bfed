//! Reading a snapshot chunk: a table's rows in key order, a chunk at a
//! time, encoded by the code that encodes decoded changes (the same
//! relation plan, the same datum reading), so that every type maps exactly
//! as in the stream.
//!
//! Rows are encoded as the executor produces them (a `DestReceiver`, no
//! result table), from the scan's own datums; values PostgreSQL keeps in
//! the TOAST table are fetched, so snapshot rows are always whole. (Read
//! as whole-row values into SPI's result table, each row was copied three
//! times before it was encoded: a third of the snapshot workers' time.)

use super::error::SnapshotError;
use crate::plugin::{fetched, fill_datums, RelationPlan};
use arrow_array::RecordBatch;
use pgcdc_encode::batch::{ChangeBatchBuilder, ChangeSchema, Image, RowMeta};
use pgcdc_reader::contract::Op;
use pgrx::spi::{quote_identifier, quote_qualified_identifier};
use pgrx::{pg_guard, pg_sys};
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
                    let att = crate::majors::attribute(desc, plan.columns[*i].attidx);
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
        let sql = chunk_query(&table, plan, relation, key, after.is_some(), upto.is_some(), limit);
        let params: Vec<&str> = after.into_iter().chain(upto).flatten().map(String::as_str).collect();
        // SAFETY: the relation stays open for the call.
        unsafe { run_chunk_query(plan, &table, &sql, &params, key.columns.len()) }
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

/// `SELECT t.c1, …, t.cn, t.k1::text, … FROM [ONLY] table t
/// [WHERE (k…) > ($1…) AND (k…) <= ($n…)] ORDER BY k… LIMIT n`: the
/// plan's columns in its order, then the key's text (where the next chunk
/// starts); the parameters cast from text to the key columns' types.
fn chunk_query(
    table: &str,
    plan: &RelationPlan,
    relation: pg_sys::Relation,
    key: &Key,
    after: bool,
    upto: bool,
    limit: usize,
) -> String {
    // SAFETY: the relation is open; its pg_class row stays valid.
    let partitioned = unsafe { (*(*relation).rd_rel).relkind as u8 == pg_sys::RELKIND_PARTITIONED_TABLE };
    let column = |name: &str| format!("t.{}", quote_identifier(name));
    let keys: Vec<String> = key.columns.iter().map(|k| column(k)).collect();
    let list = keys.join(", ");
    let selected: Vec<String> =
        plan.spec.columns.iter().map(|c| column(&c.name)).chain(keys.iter().map(|k| format!("{k}::text"))).collect();
    // A partitioned table is read with its partitions (its changes are
    // published through it); any other table without its inheritance
    // children, which are tables of their own.
    let only = if partitioned { "" } else { "ONLY " };
    let mut sql = format!("SELECT {} FROM {only}{table} t", selected.join(", "));
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

/// What the executor's rows are encoded into, one at a time, as it
/// produces them: no result table is kept.
struct Receiving<'a> {
    plan: &'a RelationPlan,
    batch: ChangeBatchBuilder,
    keys: usize,
    /// The key's text of the last row.
    last_key: Vec<String>,
    /// Reset after every row: detoasted values and output-function text.
    row_context: pg_sys::MemoryContext,
}

/// A `DestReceiver` that hands each row to its [`Receiving`].
#[repr(C)]
struct Receiver<'a> {
    /// First, so that PostgreSQL's pointer to it is one to the receiver.
    base: pg_sys::DestReceiver,
    receiving: *mut Receiving<'a>,
}

/// Runs the chunk query, encoding its rows as the executor produces them.
///
/// # Safety
/// `plan` must describe the open relation the query reads, inside a
/// transaction.
unsafe fn run_chunk_query(
    plan: &RelationPlan,
    table: &str,
    sql: &str,
    params: &[&str],
    keys: usize,
) -> Result<Chunk, SnapshotError> {
    let nul = |_| SnapshotError::Read { table: table.to_owned(), why: "a name or key with a NUL byte".into() };
    let sql = CString::new(sql).map_err(nul)?;
    let params: Vec<CString> = params.iter().map(|p| CString::new(*p)).collect::<Result<_, _>>().map_err(nul)?;
    let batch = ChangeBatchBuilder::new(Arc::new(ChangeSchema::new(plan.spec.clone(), false)));
    // SAFETY: SPI is connected here and finished below, also on error (an
    // ERROR raised inside aborts the transaction, which cleans SPI up, and
    // the row context with it); the parameter list holds text datums
    // cstring_to_text makes; the receiver and its state outlive the query.
    unsafe {
        pg_sys::SPI_connect();
        let count = i32::try_from(params.len()).unwrap_or(0);
        let list = pg_sys::makeParamList(count);
        (*list).numParams = count;
        for (slot, param) in (*list).params.as_mut_slice(params.len()).iter_mut().zip(&params) {
            *slot = pg_sys::ParamExternData {
                value: pg_sys::Datum::from(pg_sys::cstring_to_text(param.as_ptr())),
                isnull: false,
                pflags: pg_sys::PARAM_FLAG_CONST as u16,
                ptype: pg_sys::TEXTOID,
            };
        }
        let row_context = pg_sys::AllocSetContextCreateInternal(
            pg_sys::CurrentMemoryContext,
            c"pgcdc snapshot row".as_ptr(),
            0,
            pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
        );
        let mut receiving = Receiving { plan, batch, keys, last_key: Vec::new(), row_context };
        let mut receiver = Receiver {
            base: pg_sys::DestReceiver {
                receiveSlot: Some(receive),
                rStartup: Some(startup),
                rShutdown: Some(nothing),
                rDestroy: Some(nothing),
                // Not DestNone (SPI would call the query a utility) nor
                // DestSPI (SPI would look for its result table).
                mydest: pg_sys::CommandDest::DestTuplestore,
            },
            receiving: &mut receiving,
        };
        let options = pg_sys::SPIExecuteOptions { params: list, dest: &mut receiver.base, ..Default::default() };
        let code = pg_sys::SPI_execute_extended(sql.as_ptr(), &options);
        pg_sys::SPI_finish();
        if code != pg_sys::SPI_OK_SELECT as i32 {
            return Err(SnapshotError::Read { table: table.to_owned(), why: format!("SPI code {code}") });
        }
        let last_key = (!receiving.batch.is_empty()).then_some(receiving.last_key);
        let batch = receiving
            .batch
            .finish()
            .map_err(|e| SnapshotError::Read { table: table.to_owned(), why: e.to_string() })?;
        Ok(Chunk { batch, last_key })
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn startup(_receiver: *mut pg_sys::DestReceiver, _operation: i32, _desc: pg_sys::TupleDesc) {}

#[pg_guard]
unsafe extern "C-unwind" fn nothing(_receiver: *mut pg_sys::DestReceiver) {}

/// Encodes one row of the chunk query (the plan's columns, then the key's
/// text) as an `r` row.
#[pg_guard]
unsafe extern "C-unwind" fn receive(slot: *mut pg_sys::TupleTableSlot, receiver: *mut pg_sys::DestReceiver) -> bool {
    // SAFETY: the receiver is the `Receiver` run_chunk_query made, whose
    // state lives until the query ends; the slot holds a row of the chunk
    // query, whose first columns are the plan's and whose datums live until
    // the next row; values PostgreSQL keeps in the TOAST table are fetched
    // whole (a snapshot reads every value), in the row context.
    unsafe {
        let receiving = &mut *(*receiver.cast::<Receiver>()).receiving;
        pg_sys::slot_getallattrs(slot);
        let columns = receiving.plan.columns.len();
        let values = std::slice::from_raw_parts((*slot).tts_values, columns + receiving.keys);
        let nulls = std::slice::from_raw_parts((*slot).tts_isnull, columns + receiving.keys);
        let outer = pg_sys::MemoryContextSwitchTo(receiving.row_context);
        let plan = receiving.plan;
        let meta = RowMeta { op: Op::Read, lsn: 0, commit_lsn: 0, xid: 0, commit_time: 0 };
        let mut row = receiving.batch.row(meta);
        fill_datums(&mut row, Image::New, plan, |i| (!nulls[i]).then(|| fetched(&plan.columns[i], values[i])));
        row.finish();
        receiving.last_key.resize(receiving.keys, String::new());
        for (k, text) in receiving.last_key.iter_mut().enumerate() {
            text.clear();
            if !nulls[columns + k] {
                text.push_str(
                    &CStr::from_ptr(pg_sys::text_to_cstring(values[columns + k].cast_mut_ptr())).to_string_lossy(),
                );
            }
        }
        pg_sys::MemoryContextSwitchTo(outer);
        pg_sys::MemoryContextReset(receiving.row_context);
        true
    }
}

//! The `steps` table: one row per (instance, host, group, index) with the
//! last execution's status, log and results.

use std::collections::{BTreeMap, HashMap};

use ibkit_api::InstanceSpec;
use ibkit_api::operator::StepView;
use ibkit_api::wire::{FinalStatus, StepOutcome, StepStatus};
use rusqlite::{Connection, OptionalExtension as _, params};

use super::{StepKey, StoreResult, col};

/// Which steps an operation touches.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    Instance(&'a str),
    Host(&'a str, &'a str),
    Step(&'a str, &'a StepKey),
}

impl Scope<'_> {
    /// The WHERE clause over ?1..?4 and its arguments.
    fn filter(&self) -> (&'static str, Vec<&dyn rusqlite::ToSql>) {
        match self {
            Scope::Instance(inst) => ("instance = ?1", vec![inst]),
            Scope::Host(inst, host) => ("instance = ?1 AND host = ?2", vec![inst, host]),
            Scope::Step(inst, (h, g, i)) => (
                "instance = ?1 AND host = ?2 AND grp = ?3 AND idx = ?4",
                vec![inst, h, g, i],
            ),
        }
    }
}

/// `UPDATE steps SET {set}` on one step; `set` numbers its values from ?5.
fn update(
    c: &Connection,
    inst: &str,
    key: &StepKey,
    set: &str,
    values: &[&dyn rusqlite::ToSql],
) -> StoreResult<()> {
    let mut args: Vec<&dyn rusqlite::ToSql> = vec![&inst, &key.0, &key.1, &key.2];
    args.extend_from_slice(values);
    c.prepare_cached(&format!(
        "UPDATE steps SET {set} WHERE instance = ?1 AND host = ?2 AND grp = ?3 AND idx = ?4"
    ))?
    .execute(args.as_slice())?;
    Ok(())
}

/// One `pending` row per step of each of its hosts.
pub fn insert_all(c: &Connection, inst: &str, spec: &InstanceSpec) -> StoreResult<()> {
    for g in &spec.groups {
        for h in &g.hosts {
            for st in &g.steps {
                insert(
                    c,
                    inst,
                    &(h.clone(), g.name.clone(), st.index),
                    &st.hash(),
                    st.options.once,
                )?;
            }
        }
    }
    Ok(())
}

pub fn insert(
    c: &Connection,
    inst: &str,
    key: &StepKey,
    hash: &str,
    once: bool,
) -> StoreResult<()> {
    c.prepare_cached(
        "INSERT INTO steps (instance, host, grp, idx, hash, once, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![inst, key.0, key.1, key.2, hash, once, StepStatus::Pending.as_str()])?;
    Ok(())
}

/// A changed step: its new hash and `once`.
pub fn set_hash(
    c: &Connection,
    inst: &str,
    key: &StepKey,
    hash: &str,
    once: bool,
) -> StoreResult<()> {
    update(c, inst, key, "hash = ?5, once = ?6", params![hash, once])?;
    Ok(())
}

pub fn delete(c: &Connection, inst: &str, key: &StepKey) -> StoreResult<()> {
    c.execute(
        "DELETE FROM steps WHERE instance = ?1 AND host = ?2 AND grp = ?3 AND idx = ?4",
        params![inst, key.0, key.1, key.2],
    )?;
    Ok(())
}

/// The stored hash of every step of the instance.
pub fn hashes(c: &Connection, inst: &str) -> StoreResult<BTreeMap<StepKey, String>> {
    let mut stmt = c.prepare("SELECT host, grp, idx, hash FROM steps WHERE instance = ?1")?;
    let rows = stmt.query_map(params![inst], |r| {
        Ok(((r.get(0)?, r.get(1)?, r.get(2)?), r.get(3)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The status of every step of the instance.
pub fn statuses(c: &Connection, inst: &str) -> StoreResult<HashMap<StepKey, StepStatus>> {
    let mut stmt =
        c.prepare_cached("SELECT host, grp, idx, status FROM steps WHERE instance = ?1")?;
    let rows = stmt.query_map(params![inst], |r| {
        Ok(((r.get(0)?, r.get(1)?, r.get(2)?), col(r, 3)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn status(c: &Connection, inst: &str, key: &StepKey) -> StoreResult<Option<StepStatus>> {
    Ok(c.query_row(
        "SELECT status FROM steps WHERE instance = ?1 AND host = ?2 AND grp = ?3 AND idx = ?4",
        params![inst, key.0, key.1, key.2],
        |r| col(r, 0),
    )
    .optional()?)
}

/// Step counts by (host, status).
pub fn counts(c: &Connection, inst: &str) -> StoreResult<Vec<(String, StepStatus, i64)>> {
    let mut stmt = c.prepare_cached(
        "SELECT host, status, COUNT(*) FROM steps WHERE instance = ?1 GROUP BY host, status",
    )?;
    let rows = stmt.query_map(params![inst], |r| Ok((r.get(0)?, col(r, 1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Steps not `ok` or `skipped`.
pub fn count_not_done(c: &Connection, inst: &str) -> StoreResult<i64> {
    Ok(c.query_row(
        "SELECT COUNT(*) FROM steps WHERE instance = ?1 AND status NOT IN (?2, ?3)",
        params![inst, StepStatus::Ok.as_str(), StepStatus::Skipped.as_str()],
        |r| r.get(0),
    )?)
}

/// A failed step with its error and log.
pub struct FailedStep {
    pub host: String,
    pub group: String,
    pub index: u32,
    pub error: Option<String>,
    pub log: Option<String>,
}

/// The failed steps of an instance in (host, group, index) order.
pub fn failed(c: &Connection, inst: &str, limit: Option<u32>) -> StoreResult<Vec<FailedStep>> {
    let mut stmt = c.prepare_cached(
        "SELECT host, grp, idx, error, log FROM steps WHERE instance = ?1 AND status = ?2
         ORDER BY host, grp, idx LIMIT ?3",
    )?;
    let rows = stmt.query_map(
        params![
            inst,
            StepStatus::Failed.as_str(),
            limit.map_or(-1, i64::from)
        ],
        |r| {
            Ok(FailedStep {
                host: r.get(0)?,
                group: r.get(1)?,
                index: r.get(2)?,
                error: r.get(3)?,
                log: r.get(4)?,
            })
        },
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The columns of a [`StepView`] row; `{log}` is the log column or `NULL`
/// (listings that show only its size), and the last column is the log's
/// size in bytes.
const VIEW_COLUMNS: &str =
    "host, grp, idx, hash, once, status, exec_id, dispatched_at, attempts, exit_code,
    signal, timed_out, halted, started_at_ms, finished_at_ms, {log}, log_truncated_bytes, result,
    result_truncated_bytes, error, ever_ok, structured_result, length(CAST(log AS BLOB))";

/// Whether a step listing carries the logs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Logs {
    Included,
    SizeOnly,
}

/// The steps of a host in (group, index) order, each with its stored
/// structured result text (the view's `structured_result` is left empty:
/// parsing it is the caller's choice).
pub fn list_for_host(
    c: &Connection,
    inst: &str,
    host: &str,
) -> StoreResult<Vec<(StepView, Option<String>)>> {
    Ok(list(c, inst, host, Logs::Included)?
        .into_iter()
        .map(|(view, structured, _)| (view, structured))
        .collect())
}

/// [`list_for_host`] without the logs (`log` is `None`), each step with its
/// log's size in bytes instead: the console's instance page, polled every
/// few seconds, does not read many MiB of logs each time.
pub fn list_for_host_log_sizes(
    c: &Connection,
    inst: &str,
    host: &str,
) -> StoreResult<Vec<(StepView, Option<i64>)>> {
    Ok(list(c, inst, host, Logs::SizeOnly)?
        .into_iter()
        .map(|(view, _, log_bytes)| (view, log_bytes))
        .collect())
}

/// A step row: the view, its structured result text, its log's size.
type StepRow = (StepView, Option<String>, Option<i64>);

fn list(c: &Connection, inst: &str, host: &str, logs: Logs) -> StoreResult<Vec<StepRow>> {
    let columns = VIEW_COLUMNS.replace(
        "{log}",
        if logs == Logs::Included {
            "log"
        } else {
            "NULL"
        },
    );
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {columns} FROM steps WHERE instance = ?1 AND host = ?2 ORDER BY grp, idx"
    ))?;
    let rows = stmt.query_map(params![inst, host], |r| {
        let structured: Option<String> = r.get(21)?;
        let view = StepView {
            host: col(r, 0)?,
            group: col(r, 1)?,
            index: r.get(2)?,
            hash: r.get(3)?,
            once: r.get(4)?,
            status: col(r, 5)?,
            exec_id: r.get(6)?,
            dispatched_at: r.get(7)?,
            attempts: r.get(8)?,
            exit_code: r.get(9)?,
            signal: r.get(10)?,
            timed_out: r.get(11)?,
            halted: r.get(12)?,
            started_at_ms: r.get(13)?,
            finished_at_ms: r.get(14)?,
            log: r.get(15)?,
            log_truncated_bytes: r.get(16)?,
            result: r.get(17)?,
            result_truncated_bytes: r.get(18)?,
            structured_result: None,
            structured_result_bytes: structured
                .as_ref()
                .map(|t| i64::try_from(t.len()).unwrap_or(i64::MAX)),
            error: r.get(19)?,
            ever_ok: r.get(20)?,
        };
        Ok((view, structured, r.get(22)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A byte range of a step's log: (status, the bytes, the log's size); the
/// bytes and size are `None` when the step has no log.
pub type LogRange = (StepStatus, Option<(Vec<u8>, i64)>);

/// `len` bytes of a step's log from byte `offset` (the console pages a log
/// of many MiB without reading it all into the page); `None`: no such step.
pub fn log_range(
    c: &Connection,
    inst: &str,
    key: &StepKey,
    offset: u64,
    len: u64,
) -> StoreResult<Option<LogRange>> {
    // substr() of a BLOB counts bytes, from 1.
    let from = i64::try_from(offset).unwrap_or(i64::MAX).saturating_add(1);
    let len = i64::try_from(len).unwrap_or(i64::MAX);
    Ok(c.prepare_cached(
        "SELECT status, substr(CAST(log AS BLOB), ?5, ?6), length(CAST(log AS BLOB)) FROM steps
         WHERE instance = ?1 AND host = ?2 AND grp = ?3 AND idx = ?4",
    )?
    .query_row(params![inst, key.0, key.1, key.2, from, len], |r| {
        let bytes: Option<Vec<u8>> = r.get(1)?;
        let total: Option<i64> = r.get(2)?;
        Ok((col(r, 0)?, bytes.zip(total)))
    })
    .optional()?)
}

/// (status, raw result, structured result text) of one step.
pub type StoredResult = (StepStatus, Option<String>, Option<String>);

pub fn result(c: &Connection, inst: &str, key: &StepKey) -> StoreResult<Option<StoredResult>> {
    Ok(c.prepare_cached(
        "SELECT status, result, structured_result FROM steps
         WHERE instance = ?1 AND host = ?2 AND grp = ?3 AND idx = ?4",
    )?
    .query_row(params![inst, key.0, key.1, key.2], |r| {
        Ok((col(r, 0)?, r.get(1)?, r.get(2)?))
    })
    .optional()?)
}

/// The work of the host's step in flight (handed out, not finished).
pub fn inflight_work(c: &Connection, inst: &str, host: &str) -> StoreResult<Option<String>> {
    Ok(c.query_row(
        "SELECT work_json FROM steps WHERE instance = ?1 AND host = ?2
         AND exec_id IS NOT NULL AND status IN (?3, ?4) LIMIT 1",
        params![
            inst,
            host,
            StepStatus::Pending.as_str(),
            StepStatus::Running.as_str()
        ],
        |r| r.get(0),
    )
    .optional()?)
}

/// Hands the step out: a new execution with its work.
pub fn dispatch(
    c: &Connection,
    inst: &str,
    key: &StepKey,
    exec_id: &str,
    work_json: &str,
    now: i64,
) -> StoreResult<()> {
    update(
        c,
        inst,
        key,
        "exec_id = ?5, dispatched_at = ?6, work_json = ?7",
        params![exec_id, now, work_json],
    )?;
    Ok(())
}

/// Fails a step before it runs (a reference that cannot be resolved).
pub fn fail_unrun(
    c: &Connection,
    inst: &str,
    key: &StepKey,
    error: &str,
    now: i64,
) -> StoreResult<()> {
    update(
        c,
        inst,
        key,
        "status = ?5, error = ?6, finished_at_ms = ?7",
        params![StepStatus::Failed.as_str(), error, now],
    )?;
    Ok(())
}

/// The step an execution id belongs to, with its status.
pub struct Execution {
    pub instance: String,
    pub host: String,
    pub key: StepKey,
    pub status: StepStatus,
}

pub fn by_exec(c: &Connection, exec_id: &str) -> StoreResult<Option<Execution>> {
    Ok(c.query_row(
        "SELECT instance, host, grp, idx, status FROM steps WHERE exec_id = ?1",
        params![exec_id],
        |r| {
            let host: String = r.get(1)?;
            Ok(Execution {
                instance: r.get(0)?,
                key: (host.clone(), r.get(2)?, r.get(3)?),
                host,
                status: col(r, 4)?,
            })
        },
    )
    .optional()?)
}

/// An attempt started.
pub fn mark_running(
    c: &Connection,
    inst: &str,
    key: &StepKey,
    attempt: u32,
    started_at_ms: i64,
) -> StoreResult<()> {
    update(
        c,
        inst,
        key,
        "status = ?5, attempts = ?6, started_at_ms = COALESCE(started_at_ms, ?7)",
        params![StepStatus::Running.as_str(), attempt, started_at_ms],
    )?;
    Ok(())
}

/// The final outcome of an execution. `refused` is why the service refused
/// its structured result, if it did: the step then fails.
pub fn finish(
    c: &Connection,
    inst: &str,
    key: &StepKey,
    o: &StepOutcome,
    refused: Option<&str>,
) -> StoreResult<()> {
    let ok = o.status == FinalStatus::Ok && refused.is_none();
    let (structured, error) = match refused {
        Some(why) => {
            let why = format!("the service refused the structured result: {why}");
            let error = match &o.error {
                Some(e) if !e.is_empty() => format!("{e}; {why}"),
                _ => why,
            };
            (None, Some(error))
        }
        None => (
            o.structured_result.as_ref().map(|j| j.as_str()),
            o.error.clone(),
        ),
    };
    update(
        c,
        inst,
        key,
        "status = ?5, attempts = ?6, exit_code = ?7, signal = ?8,
         timed_out = ?9, halted = ?10, started_at_ms = ?11, finished_at_ms = ?12,
         log = ?13, log_truncated_bytes = ?14, result = ?15,
         result_truncated_bytes = ?16, structured_result = ?17, error = ?18,
         ever_ok = MAX(ever_ok, ?19)",
        params![
            if ok {
                StepStatus::Ok.as_str()
            } else {
                StepStatus::Failed.as_str()
            },
            o.attempts,
            o.exit_code,
            o.signal,
            o.timed_out,
            o.halted,
            o.started_at_ms,
            o.finished_at_ms,
            o.log,
            i64::try_from(o.log_truncated_bytes).unwrap_or(i64::MAX),
            o.result,
            i64::try_from(o.result_truncated_bytes).unwrap_or(i64::MAX),
            structured,
            error,
            ok
        ],
    )?;
    Ok(())
}

/// Sets the steps in `scope` back to `pending` (a `once` step that was
/// ever ok becomes `skipped`), superseding any in-flight execution.
pub fn reset(c: &Connection, scope: Scope<'_>) -> StoreResult<()> {
    let (filter, mut args) = scope.filter();
    let n = args.len();
    let (skipped, pending) = (StepStatus::Skipped.as_str(), StepStatus::Pending.as_str());
    args.push(&skipped);
    c.execute(
        &format!(
            "UPDATE steps SET status = ?{}, exec_id = NULL, dispatched_at = NULL, work_json = NULL
             WHERE once = 1 AND ever_ok = 1 AND ({filter})",
            n + 1
        ),
        args.as_slice(),
    )?;
    args.pop();
    args.push(&pending);
    c.execute(
        &format!(
            "UPDATE steps SET status = ?{}, exec_id = NULL, dispatched_at = NULL, work_json = NULL,
               attempts = 0, exit_code = NULL, signal = NULL, timed_out = 0, halted = 0,
               started_at_ms = NULL, finished_at_ms = NULL, log = NULL, log_truncated_bytes = 0,
               result = NULL, result_truncated_bytes = 0, structured_result = NULL, error = NULL
             WHERE NOT (once = 1 AND ever_ok = 1) AND ({filter})",
            n + 1
        ),
        args.as_slice(),
    )?;
    Ok(())
}

//! The `health_results` table: the latest result of each check per host.

use std::collections::{HashMap, HashSet};

use ibkit_api::operator::HealthResultView;
use ibkit_api::wire::HealthReport;
use rusqlite::{Connection, params};

use super::StoreResult;

/// The latest result of each check of a host, by check name.
pub fn list(c: &Connection, inst: &str, host: &str) -> StoreResult<Vec<HealthResultView>> {
    let mut stmt = c.prepare_cached(
        "SELECT check_name, ok, detail, at_ms, received_at, last_ok_at FROM health_results
         WHERE instance = ?1 AND host = ?2 ORDER BY check_name",
    )?;
    let rows = stmt.query_map(params![inst, host], |r| {
        Ok(HealthResultView {
            check: r.get(0)?,
            ok: r.get(1)?,
            detail: r.get(2)?,
            at_ms: r.get(3)?,
            received_at: r.get(4)?,
            last_ok_at: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Stores a result (with `detail` as the service keeps it); `last_ok_at`
/// moves only when it passed.
pub fn record(
    c: &Connection,
    inst: &str,
    host: &str,
    report: &HealthReport,
    detail: &str,
    now: i64,
) -> StoreResult<()> {
    let (check, ok, at_ms) = (&report.check, report.ok, report.at_ms);
    c.execute(
        "INSERT INTO health_results (instance, host, check_name, ok, detail, at_ms, received_at, last_ok_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, CASE WHEN ?4 THEN ?7 END)
         ON CONFLICT (instance, host, check_name) DO UPDATE SET ok = ?4, detail = ?5,
           at_ms = ?6, received_at = ?7, last_ok_at = CASE WHEN ?4 THEN ?7 ELSE last_ok_at END",
        params![inst, host, check, ok, detail, at_ms, now],
    )?;
    Ok(())
}

/// Forgets a host's results (its VM is recreated).
pub fn clear_host(c: &Connection, inst: &str, host: &str) -> StoreResult<()> {
    c.execute(
        "DELETE FROM health_results WHERE instance = ?1 AND host = ?2",
        params![inst, host],
    )?;
    Ok(())
}

/// (host, check) pairs whose latest result passed.
pub fn passing(c: &Connection, inst: &str) -> StoreResult<HashSet<(String, String)>> {
    let mut stmt = c.prepare_cached(
        "SELECT host, check_name FROM health_results WHERE instance = ?1 AND ok = 1",
    )?;
    let rows = stmt.query_map(params![inst], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// When each (host, check) last passed.
pub fn last_ok(c: &Connection, inst: &str) -> StoreResult<HashMap<(String, String), i64>> {
    let mut stmt = c.prepare_cached(
        "SELECT host, check_name, last_ok_at FROM health_results
         WHERE instance = ?1 AND last_ok_at IS NOT NULL",
    )?;
    let rows = stmt.query_map(params![inst], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

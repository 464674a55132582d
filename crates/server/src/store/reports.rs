//! The `processed_reports` table: report ids already applied, per host, so
//! an agent resending a report after a lost answer is told it is a duplicate.

use rusqlite::{Connection, OptionalExtension as _, params};

use super::StoreResult;

/// Was this report id seen from this host? (`('', '')` holds the ids an
/// older service recorded globally.)
pub fn seen(c: &Connection, inst: &str, host: &str, report_id: &str) -> StoreResult<bool> {
    let seen: Option<i64> = c
        .query_row(
            "SELECT 1 FROM processed_reports WHERE report_id = ?3
             AND ((instance = ?1 AND host = ?2) OR (instance = '' AND host = ''))",
            params![inst, host, report_id],
            |r| r.get(0),
        )
        .optional()?;
    Ok(seen.is_some())
}

pub fn record(
    c: &Connection,
    inst: &str,
    host: &str,
    report_id: &str,
    now: i64,
) -> StoreResult<()> {
    c.execute(
        "INSERT INTO processed_reports (instance, host, report_id, at) VALUES (?1, ?2, ?3, ?4)",
        params![inst, host, report_id, now],
    )?;
    Ok(())
}

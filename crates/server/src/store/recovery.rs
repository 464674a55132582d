//! The `recovery_requests` table: requests to recreate a host's VM.

use ibkit_api::operator::{
    RecoveryKind, RecoveryQuery, RecoveryRequest, RecoveryRequestId, RecoveryStatus,
};
use rusqlite::{Connection, params};

use super::{StoreError, StoreResult, col};

/// The requests matching the filters, oldest first.
pub fn list(c: &Connection, q: &RecoveryQuery) -> StoreResult<Vec<RecoveryRequest>> {
    let mut stmt = c.prepare_cached(
        "SELECT id, instance, host, kind, reason, created_at, status, resolved_at
         FROM recovery_requests WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR instance = ?2)
         ORDER BY created_at",
    )?;
    let rows = stmt.query_map(
        params![
            q.status.map(RecoveryStatus::as_str),
            q.instance.as_ref().map(|i| i.as_str())
        ],
        |r| {
            Ok(RecoveryRequest {
                id: col(r, 0)?,
                instance: col(r, 1)?,
                host: col(r, 2)?,
                kind: col(r, 3)?,
                reason: r.get(4)?,
                created_at: r.get(5)?,
                status: col(r, 6)?,
                resolved_at: r.get(7)?,
            })
        },
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Resolves one request (idempotent: the first resolution time stays).
pub fn resolve(c: &Connection, id: &RecoveryRequestId, now: i64) -> StoreResult<()> {
    let n = c.execute(
        "UPDATE recovery_requests SET status = ?2, resolved_at = COALESCE(resolved_at, ?3) WHERE id = ?1",
        params![id.as_str(), RecoveryStatus::Resolved.as_str(), now],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("no recovery request {id}")));
    }
    Ok(())
}

/// Resolves every open request of an instance (it is deleted).
pub fn resolve_all(c: &Connection, inst: &str, now: i64) -> StoreResult<()> {
    c.execute(
        "UPDATE recovery_requests SET status = ?3, resolved_at = ?2 WHERE instance = ?1 AND status = ?4",
        params![inst, now, RecoveryStatus::Resolved.as_str(), RecoveryStatus::Open.as_str()],
    )?;
    Ok(())
}

/// Opens a request unless the host already has an open one; true when opened.
pub fn open_once(
    c: &Connection,
    inst: &str,
    host: &str,
    kind: RecoveryKind,
    reason: &str,
    now: i64,
) -> StoreResult<bool> {
    let open: i64 = c.query_row(
        "SELECT COUNT(*) FROM recovery_requests WHERE instance = ?1 AND host = ?2 AND status = ?3",
        params![inst, host, RecoveryStatus::Open.as_str()],
        |r| r.get(0),
    )?;
    if open > 0 {
        return Ok(false);
    }
    c.execute(
        "INSERT INTO recovery_requests (id, instance, host, kind, reason, created_at, status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            RecoveryRequestId::new_v4().as_str(),
            inst,
            host,
            kind.as_str(),
            reason,
            now,
            RecoveryStatus::Open.as_str()
        ],
    )?;
    Ok(true)
}

/// How many requests of each kind are open (kinds with none are absent).
pub fn open_by_kind(c: &Connection) -> StoreResult<Vec<(RecoveryKind, u64)>> {
    let mut stmt = c.prepare_cached(
        "SELECT kind, COUNT(*) FROM recovery_requests WHERE status = ?1 GROUP BY kind",
    )?;
    let rows = stmt.query_map(params![RecoveryStatus::Open.as_str()], |r| {
        Ok((col(r, 0)?, r.get(1)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

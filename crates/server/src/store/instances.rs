//! The `instances` table.

use ibkit_api::InstanceSpec;
use ibkit_api::operator::{InstanceId, InstanceSummary};
use ibkit_api::wire::InstanceStatus;
use rusqlite::{Connection, OptionalExtension as _, params};

use super::{StoreError, StoreResult, col};

/// A new instance, `applying` at generation 1.
pub fn insert(
    c: &Connection,
    id: &InstanceId,
    spec: &InstanceSpec,
    pairing_key_ttl_ms: Option<i64>,
    now: i64,
) -> StoreResult<()> {
    c.execute(
        "INSERT INTO instances (id, name, spec_json, status, generation, created_at, updated_at,
         pairing_key_ttl_ms)
         VALUES (?1, ?2, ?3, ?4, 1, ?5, ?5, ?6)",
        params![
            id.as_str(),
            spec.name,
            serde_json::to_string(spec)?,
            InstanceStatus::Applying.as_str(),
            now,
            pairing_key_ttl_ms
        ],
    )?;
    Ok(())
}

const SUMMARY_COLUMNS: &str = "id, name, status, status_reason, generation, created_at, updated_at";

fn summary(r: &rusqlite::Row<'_>) -> rusqlite::Result<InstanceSummary> {
    Ok(InstanceSummary {
        id: col(r, 0)?,
        name: r.get(1)?,
        status: col(r, 2)?,
        status_reason: r.get(3)?,
        generation: r.get(4)?,
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
    })
}

/// Every instance, oldest first.
pub fn list(c: &Connection) -> StoreResult<Vec<InstanceSummary>> {
    let mut stmt = c.prepare(&format!(
        "SELECT {SUMMARY_COLUMNS} FROM instances ORDER BY created_at"
    ))?;
    let rows = stmt.query_map([], summary)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The instance's summary and stored spec (JSON text).
pub fn get(c: &Connection, id: &InstanceId) -> StoreResult<(InstanceSummary, String)> {
    c.query_row(
        &format!("SELECT {SUMMARY_COLUMNS}, spec_json FROM instances WHERE id = ?1"),
        params![id.as_str()],
        |r| Ok((summary(r)?, r.get(7)?)),
    )
    .optional()?
    .ok_or_else(|| not_found(id.as_str()))
}

pub(crate) fn not_found(id: &str) -> StoreError {
    StoreError::NotFound(format!("no instance {id}"))
}

/// The ids of every instance not deleted.
pub fn live_ids(c: &Connection) -> StoreResult<Vec<String>> {
    let mut stmt = c.prepare("SELECT id FROM instances WHERE status != ?1")?;
    let rows = stmt.query_map(params![InstanceStatus::Deleted.as_str()], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The status, `None` for an unknown instance.
pub fn status(c: &Connection, id: &str) -> StoreResult<Option<InstanceStatus>> {
    Ok(c.query_row(
        "SELECT status FROM instances WHERE id = ?1",
        params![id],
        |r| col(r, 0),
    )
    .optional()?)
}

/// The status of an instance that must exist.
pub fn existing_status(c: &Connection, id: &str) -> StoreResult<InstanceStatus> {
    status(c, id)?.ok_or_else(|| not_found(id))
}

/// The status of an instance that must exist and not be deleted.
pub fn live_status(c: &Connection, id: &str) -> StoreResult<InstanceStatus> {
    match existing_status(c, id)? {
        InstanceStatus::Deleted => Err(StoreError::Conflict("the instance is deleted".into())),
        s => Ok(s),
    }
}

/// The stored spec as JSON text.
pub fn spec_json(c: &Connection, id: &str) -> StoreResult<String> {
    c.query_row(
        "SELECT spec_json FROM instances WHERE id = ?1",
        params![id],
        |r| r.get(0),
    )
    .optional()?
    .ok_or_else(|| not_found(id))
}

/// The instance's own pairing key lifetime, if it was created with one.
pub fn pairing_key_ttl_ms(c: &Connection, id: &str) -> StoreResult<Option<i64>> {
    Ok(c.query_row(
        "SELECT pairing_key_ttl_ms FROM instances WHERE id = ?1",
        params![id],
        |r| r.get(0),
    )?)
}

/// A new spec: the next generation, `applying`.
pub fn store_spec(c: &Connection, id: &str, spec: &InstanceSpec, now: i64) -> StoreResult<()> {
    c.execute(
        "UPDATE instances SET spec_json = ?2, name = ?3, generation = generation + 1,
         status = ?4, updated_at = ?5 WHERE id = ?1",
        params![
            id,
            serde_json::to_string(spec)?,
            spec.name,
            InstanceStatus::Applying.as_str(),
            now
        ],
    )?;
    Ok(())
}

/// The next generation of the same spec (a redeploy), `applying`.
pub fn next_generation(c: &Connection, id: &str, now: i64) -> StoreResult<()> {
    c.execute(
        "UPDATE instances SET generation = generation + 1, status = ?2, updated_at = ?3 WHERE id = ?1",
        params![id, InstanceStatus::Applying.as_str(), now],
    )?;
    Ok(())
}

/// (status, generation).
pub fn status_and_generation(c: &Connection, id: &str) -> StoreResult<(InstanceStatus, i64)> {
    Ok(c.query_row(
        "SELECT status, generation FROM instances WHERE id = ?1",
        params![id],
        |r| Ok((col(r, 0)?, r.get(1)?)),
    )?)
}

/// Marks the instance deleted, with the reason.
pub fn mark_deleted(c: &Connection, id: &str, reason: &str, now: i64) -> StoreResult<()> {
    c.execute(
        "UPDATE instances SET status = ?2, status_reason = ?3, updated_at = ?4 WHERE id = ?1",
        params![id, InstanceStatus::Deleted.as_str(), reason, now],
    )?;
    Ok(())
}

/// Sets status and reason when they changed.
pub fn set_status(
    c: &Connection,
    id: &str,
    status: InstanceStatus,
    reason: Option<&str>,
    now: i64,
) -> StoreResult<()> {
    c.execute(
        "UPDATE instances SET status = ?2, status_reason = ?3, updated_at = ?4
         WHERE id = ?1 AND (status != ?2 OR status_reason IS NOT ?3)",
        params![id, status.as_str(), reason, now],
    )?;
    Ok(())
}

/// How many instances have each status (statuses with none are absent).
pub fn count_by_status(c: &Connection) -> StoreResult<Vec<(InstanceStatus, u64)>> {
    let mut stmt = c.prepare_cached("SELECT status, COUNT(*) FROM instances GROUP BY status")?;
    let rows = stmt.query_map([], |r| Ok((col(r, 0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

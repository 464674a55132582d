//! The deployment controller's published timeline of an instance (its
//! attempts and VM recoveries): one JSON document per instance, replaced
//! on every publish. The controller owns the record; this is a copy for
//! the console and other readers.

use ibkit_api::operator::DeploymentTimeline;
use rusqlite::{Connection, OptionalExtension as _, params};

use super::StoreResult;

/// Stores `timeline` as the instance's, replacing the previous one.
pub fn put(c: &Connection, inst: &str, timeline: &DeploymentTimeline, now: i64) -> StoreResult<()> {
    let json = serde_json::to_string(timeline)?;
    c.execute(
        "INSERT INTO deployments (instance, timeline_json, stored_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (instance) DO UPDATE SET timeline_json = ?2, stored_at = ?3",
        params![inst, json, now],
    )?;
    Ok(())
}

/// The instance's last published timeline, if any.
pub fn get(c: &Connection, inst: &str) -> StoreResult<Option<DeploymentTimeline>> {
    let json: Option<String> = c
        .query_row(
            "SELECT timeline_json FROM deployments WHERE instance = ?1",
            params![inst],
            |r| r.get(0),
        )
        .optional()?;
    Ok(match json {
        Some(j) => Some(serde_json::from_str(&j)?),
        None => None,
    })
}

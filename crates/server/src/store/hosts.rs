//! The `hosts` table: pairing keys and credentials, heartbeats, health.

use ibkit_api::operator::{HostHealth, HostView, InstanceId};
use ibkit_api::wire::InstanceStatus;
use rusqlite::{Connection, OptionalExtension as _, params};

use super::{StoreError, StoreResult, col};

/// A new host with its (hashed) pairing key.
pub fn insert(
    c: &Connection,
    inst: &InstanceId,
    host: &str,
    pairing_key_hash: &str,
    expires_at: i64,
) -> StoreResult<()> {
    c.execute(
        "INSERT INTO hosts (instance, name, pairing_key_hash, pairing_key_expires_at)
         VALUES (?1, ?2, ?3, ?4)",
        params![inst.as_str(), host, pairing_key_hash, expires_at],
    )?;
    Ok(())
}

/// The hosts of an instance in creation order, as stored: the route adds
/// the step counts and the heartbeats kept in memory.
pub fn list(c: &Connection, inst: &str) -> StoreResult<Vec<HostView>> {
    let mut stmt = c.prepare_cached(
        "SELECT name, credential_hash IS NOT NULL, paired_at, last_heartbeat_at, agent_version,
                health, unhealthy_reason, unhealthy_since, checks_active_since,
                pairing_key_expires_at, pairing_key_used_at, last_pairing_refusal,
                last_pairing_refusal_at
         FROM hosts WHERE instance = ?1 ORDER BY rowid",
    )?;
    let rows = stmt.query_map(params![inst], |r| {
        Ok(HostView {
            name: col(r, 0)?,
            paired: r.get(1)?,
            paired_at: r.get(2)?,
            last_heartbeat_at: r.get(3)?,
            agent_version: r.get(4)?,
            health: col(r, 5)?,
            unhealthy_reason: r.get(6)?,
            unhealthy_since: r.get(7)?,
            checks_active_since: r.get(8)?,
            pairing_key_expires_at: r.get(9)?,
            pairing_key_used_at: r.get(10)?,
            last_pairing_refusal: r.get(11)?,
            last_pairing_refusal_at: r.get(12)?,
            steps: Default::default(),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// `NotFound` unless the instance has the host.
pub fn ensure_exists(c: &Connection, inst: &str, host: &str) -> StoreResult<()> {
    let found: Option<i64> = c
        .query_row(
            "SELECT 1 FROM hosts WHERE instance = ?1 AND name = ?2",
            params![inst, host],
            |r| r.get(0),
        )
        .optional()?;
    found
        .map(|_| ())
        .ok_or_else(|| StoreError::NotFound(format!("no host {host} in instance {inst}")))
}

/// (instance, host) of a live credential.
pub fn by_credential(c: &Connection, hash: &str) -> StoreResult<Option<(String, String)>> {
    Ok(c.query_row(
        "SELECT h.instance, h.name FROM hosts h JOIN instances i ON i.id = h.instance
         WHERE h.credential_hash = ?1 AND i.status != ?2",
        params![hash, InstanceStatus::Deleted.as_str()],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()?)
}

/// The pairing state of a host of a live instance.
pub struct PairingState {
    pub key_hash: Option<String>,
    pub expires_at: Option<i64>,
    pub used_at: Option<i64>,
}

pub fn pairing_state(c: &Connection, inst: &str, host: &str) -> StoreResult<Option<PairingState>> {
    Ok(c.query_row(
        "SELECT h.pairing_key_hash, h.pairing_key_expires_at, h.pairing_key_used_at
         FROM hosts h JOIN instances i ON i.id = h.instance
         WHERE h.instance = ?1 AND h.name = ?2 AND i.status != ?3",
        params![inst, host, InstanceStatus::Deleted.as_str()],
        |r| {
            Ok(PairingState {
                key_hash: r.get(0)?,
                expires_at: r.get(1)?,
                used_at: r.get(2)?,
            })
        },
    )
    .optional()?)
}

/// Remembers why a pairing was refused, for the operator.
pub fn note_pairing_refusal(
    c: &Connection,
    inst: &str,
    host: &str,
    note: &str,
    now: i64,
) -> StoreResult<()> {
    c.execute(
        "UPDATE hosts SET last_pairing_refusal = ?3, last_pairing_refusal_at = ?4
         WHERE instance = ?1 AND name = ?2",
        params![inst, host, note, now],
    )?;
    Ok(())
}

/// Stores the host's credential and uses up its pairing key.
pub fn pair(
    c: &Connection,
    inst: &str,
    host: &str,
    credential_hash: &str,
    agent_version: &str,
    now: i64,
) -> StoreResult<()> {
    c.execute(
        "UPDATE hosts SET credential_hash = ?3, paired_at = ?4, agent_version = ?5,
         pairing_key_used_at = ?4
         WHERE instance = ?1 AND name = ?2 AND pairing_key_used_at IS NULL",
        params![inst, host, credential_hash, now, agent_version],
    )?;
    Ok(())
}

/// A fresh, unused pairing key; the old credential is revoked and the
/// host's health starts over. `NotFound` for an unknown host.
pub fn rekey(
    c: &Connection,
    inst: &str,
    host: &str,
    key_hash: &str,
    expires_at: i64,
) -> StoreResult<()> {
    let n = c.execute(
        "UPDATE hosts SET pairing_key_hash = ?3, pairing_key_expires_at = ?4,
         pairing_key_used_at = NULL, credential_hash = NULL, paired_at = NULL,
         checks_active_since = NULL, health = ?5, unhealthy_reason = NULL, unhealthy_since = NULL
         WHERE instance = ?1 AND name = ?2",
        params![
            inst,
            host,
            key_hash,
            expires_at,
            HostHealth::Unknown.as_str()
        ],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound(format!(
            "no host {host} in instance {inst}"
        )));
    }
    Ok(())
}

/// Revokes every credential and pairing key of the instance.
pub fn revoke_all(c: &Connection, inst: &str) -> StoreResult<()> {
    c.execute(
        "UPDATE hosts SET credential_hash = NULL, pairing_key_hash = NULL WHERE instance = ?1",
        params![inst],
    )?;
    Ok(())
}

/// The host's health checks stop counting until its steps are done again.
pub fn deactivate_checks(c: &Connection, inst: &str, host: Option<&str>) -> StoreResult<()> {
    c.execute(
        "UPDATE hosts SET checks_active_since = NULL WHERE instance = ?1 AND (?2 IS NULL OR name = ?2)",
        params![inst, host],
    )?;
    Ok(())
}

/// Every step of the host is done: its health checks count from `now`.
pub fn activate_checks(c: &Connection, inst: &str, host: &str, now: i64) -> StoreResult<()> {
    c.execute(
        "UPDATE hosts SET checks_active_since = ?3
         WHERE instance = ?1 AND name = ?2 AND checks_active_since IS NULL",
        params![inst, host, now],
    )?;
    Ok(())
}

/// Writes heartbeats kept in memory (never moving one back in time).
pub fn flush_heartbeats<'a>(
    c: &Connection,
    seen: impl IntoIterator<Item = (&'a str, &'a str, i64, &'a str)>,
) -> StoreResult<()> {
    let mut stmt = c.prepare_cached(
        "UPDATE hosts SET last_heartbeat_at = MAX(COALESCE(last_heartbeat_at, 0), ?3),
         agent_version = COALESCE(NULLIF(?4, ''), agent_version) WHERE instance = ?1 AND name = ?2",
    )?;
    for (inst, host, at_ms, version) in seen {
        stmt.execute(params![inst, host, at_ms, version])?;
    }
    Ok(())
}

/// What the monitor judges a host by.
pub struct MonitorRow {
    pub name: String,
    pub paired_at: Option<i64>,
    pub last_heartbeat_at: Option<i64>,
    pub checks_active_since: Option<i64>,
    pub health: HostHealth,
}

pub fn monitor_rows(c: &Connection, inst: &str) -> StoreResult<Vec<MonitorRow>> {
    let mut stmt = c.prepare_cached(
        "SELECT name, paired_at, last_heartbeat_at, checks_active_since, health
         FROM hosts WHERE instance = ?1",
    )?;
    let rows = stmt.query_map(params![inst], |r| {
        Ok(MonitorRow {
            name: r.get(0)?,
            paired_at: r.get(1)?,
            last_heartbeat_at: r.get(2)?,
            checks_active_since: r.get(3)?,
            health: col(r, 4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Unhealthy with `reason`; `since` is kept while it stays unhealthy.
pub fn mark_unhealthy(
    c: &Connection,
    inst: &str,
    host: &str,
    reason: &str,
    now: i64,
) -> StoreResult<()> {
    c.execute(
        "UPDATE hosts SET health = ?5, unhealthy_reason = ?3,
         unhealthy_since = CASE WHEN health = ?5 THEN unhealthy_since ELSE ?4 END
         WHERE instance = ?1 AND name = ?2",
        params![inst, host, reason, now, HostHealth::Unhealthy.as_str()],
    )?;
    Ok(())
}

pub fn mark_healthy(c: &Connection, inst: &str, host: &str) -> StoreResult<()> {
    c.execute(
        "UPDATE hosts SET health = ?3, unhealthy_reason = NULL, unhealthy_since = NULL
         WHERE instance = ?1 AND name = ?2",
        params![inst, host, HostHealth::Healthy.as_str()],
    )?;
    Ok(())
}

/// The hosts of live instances as the metrics count them.
pub struct HostCounts {
    pub by_health: Vec<(HostHealth, u64)>,
    /// Hosts with a valid agent credential.
    pub paired: u64,
}

/// How many hosts of live instances have each health, and how many are paired.
pub fn counts(c: &Connection) -> StoreResult<HostCounts> {
    let mut stmt = c.prepare_cached(
        "SELECT h.health, COUNT(*), SUM(h.credential_hash IS NOT NULL)
         FROM hosts h JOIN instances i ON i.id = h.instance
         WHERE i.status != ?1 GROUP BY h.health",
    )?;
    let rows = stmt.query_map(params![InstanceStatus::Deleted.as_str()], |r| {
        Ok((
            col::<HostHealth>(r, 0)?,
            r.get::<_, u64>(1)?,
            r.get::<_, u64>(2)?,
        ))
    })?;
    let mut counts = HostCounts {
        by_health: Vec::new(),
        paired: 0,
    };
    for row in rows {
        let (health, n, paired) = row?;
        counts.by_health.push((health, n));
        counts.paired += paired;
    }
    Ok(counts)
}

/// (instance, host, last heartbeat or pairing time as stored) of every
/// paired host of a live instance.
pub fn paired_last_seen(c: &Connection) -> StoreResult<Vec<(String, String, i64)>> {
    let mut stmt = c.prepare_cached(
        "SELECT h.instance, h.name, MAX(COALESCE(h.paired_at, 0), COALESCE(h.last_heartbeat_at, 0))
         FROM hosts h JOIN instances i ON i.id = h.instance
         WHERE i.status != ?1 AND h.credential_hash IS NOT NULL",
    )?;
    let rows = stmt.query_map(params![InstanceStatus::Deleted.as_str()], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

//! The billing emulator's tables: per instance a service token (simple
//! push) and rotating access keys (secure push), the usage counted per
//! option and UTC day, and the metric ids already counted.
//!
//! Credentials are looked up by their SHA-256 only. The plaintext of the
//! service token and of keys still valid is kept too, because this
//! service is their issuer and must hand them out again (the agent's
//! token file, `GET /v1/instances/{id}/billing`) — like the marketplace,
//! which shows them to the vendor. The database is the service's user's
//! only (0600, in a 0700 directory); a key's plaintext is dropped once it
//! expires, its hash kept to tell "expired" from "unknown".

use ibkit_api::operator::{AccessKeyView, MAX_PUSH_LOG, PushRecord};
use ibkit_support::secret::Secret;
use rusqlite::{Connection, OptionalExtension as _, params};

use super::StoreResult;

/// An access key of an instance.
#[derive(Debug, Clone)]
pub struct KeyRow {
    /// `None` once expired (the plaintext is dropped).
    pub key: Option<Secret>,
    pub created_at: i64,
    pub expires_at: i64,
}

/// The instance's service token, if it has one.
pub fn token(c: &Connection, inst: &str) -> StoreResult<Option<Secret>> {
    Ok(c.query_row(
        "SELECT token FROM billing_tokens WHERE instance = ?1",
        params![inst],
        |r| r.get::<_, String>(0),
    )
    .optional()?
    .map(Secret::new))
}

/// Stores the instance's service token (one per instance).
pub fn insert_token(
    c: &Connection,
    inst: &str,
    token: &Secret,
    token_hash: &str,
    now: i64,
) -> StoreResult<()> {
    c.execute(
        "INSERT INTO billing_tokens (instance, token_hash, token, created_at)
         VALUES (?1, ?2, ?3, ?4)",
        params![inst, token_hash, token.expose(), now],
    )?;
    Ok(())
}

/// The instance a service token belongs to.
pub fn token_owner(c: &Connection, token_hash: &str) -> StoreResult<Option<String>> {
    Ok(c.query_row(
        "SELECT instance FROM billing_tokens WHERE token_hash = ?1",
        params![token_hash],
        |r| r.get(0),
    )
    .optional()?)
}

/// The owner of an access key.
#[derive(Debug, Clone)]
pub struct KeyOwner {
    pub instance: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// The instance an access key belongs to, when it was issued and when it
/// expires.
pub fn key_owner(c: &Connection, key_hash: &str) -> StoreResult<Option<KeyOwner>> {
    Ok(c.query_row(
        "SELECT instance, created_at, expires_at FROM billing_keys WHERE key_hash = ?1",
        params![key_hash],
        |r| {
            Ok(KeyOwner {
                instance: r.get(0)?,
                created_at: r.get(1)?,
                expires_at: r.get(2)?,
            })
        },
    )
    .optional()?)
}

/// Every key issued to the instance, oldest first, without the keys.
pub fn key_history(c: &Connection, inst: &str) -> StoreResult<Vec<AccessKeyView>> {
    let mut stmt = c.prepare_cached(
        "SELECT created_at, expires_at FROM billing_keys
         WHERE instance = ?1 ORDER BY created_at, rowid",
    )?;
    let rows = stmt.query_map(params![inst], |r| {
        Ok(AccessKeyView {
            created_at: r.get(0)?,
            expires_at: r.get(1)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Logs a push the instance's credential was accepted for, keeping the
/// newest [`MAX_PUSH_LOG`] of the instance.
pub fn log_push(c: &Connection, inst: &str, p: &PushRecord) -> StoreResult<()> {
    c.execute(
        "INSERT INTO billing_pushes
           (instance, at, scheme, status, metrics, counted, key_created_at, error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            inst,
            p.at,
            p.scheme.as_str(),
            p.status,
            p.metrics,
            p.counted,
            p.key_created_at,
            p.error
        ],
    )?;
    c.execute(
        "DELETE FROM billing_pushes WHERE instance = ?1 AND rowid NOT IN
           (SELECT rowid FROM billing_pushes WHERE instance = ?1
            ORDER BY at DESC, rowid DESC LIMIT ?2)",
        params![inst, MAX_PUSH_LOG as i64],
    )?;
    Ok(())
}

/// The instance's logged pushes, oldest first.
pub fn pushes(c: &Connection, inst: &str) -> StoreResult<Vec<PushRecord>> {
    let mut stmt = c.prepare_cached(
        "SELECT at, scheme, status, metrics, counted, key_created_at, error
         FROM billing_pushes WHERE instance = ?1 ORDER BY at, rowid",
    )?;
    let rows = stmt.query_map(params![inst], |r| {
        Ok(PushRecord {
            at: r.get(0)?,
            scheme: super::col(r, 1)?,
            status: r.get(2)?,
            metrics: r.get(3)?,
            counted: r.get(4)?,
            key_created_at: r.get(5)?,
            error: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The instance's keys valid at `now`, newest first.
pub fn live_keys(c: &Connection, inst: &str, now: i64) -> StoreResult<Vec<KeyRow>> {
    let mut stmt = c.prepare_cached(
        "SELECT key, created_at, expires_at FROM billing_keys
         WHERE instance = ?1 AND expires_at > ?2 ORDER BY created_at DESC, rowid DESC",
    )?;
    let rows = stmt.query_map(params![inst, now], |r| {
        Ok(KeyRow {
            key: r.get::<_, Option<String>>(0)?.map(Secret::new),
            created_at: r.get(1)?,
            expires_at: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Stores a new access key.
pub fn insert_key(
    c: &Connection,
    inst: &str,
    key: &Secret,
    key_hash: &str,
    now: i64,
    expires_at: i64,
) -> StoreResult<()> {
    c.execute(
        "INSERT INTO billing_keys (key_hash, instance, key, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![key_hash, inst, key.expose(), now, expires_at],
    )?;
    Ok(())
}

/// Drops the plaintext of the instance's expired keys (the hashes stay).
pub fn forget_expired(c: &Connection, inst: &str, now: i64) -> StoreResult<()> {
    c.execute(
        "UPDATE billing_keys SET key = NULL
         WHERE instance = ?1 AND expires_at <= ?2 AND key IS NOT NULL",
        params![inst, now],
    )?;
    Ok(())
}

/// Remembers a metric id of the instance; `false` when it was counted
/// before (`id` is its compact JSON: `5001` and `"5001"` differ).
pub fn remember_metric(c: &Connection, inst: &str, id: &str, now: i64) -> StoreResult<bool> {
    let n = c.execute(
        "INSERT INTO billing_metric_ids (instance, metric_id, at) VALUES (?1, ?2, ?3)
         ON CONFLICT (instance, metric_id) DO NOTHING",
        params![inst, id, now],
    )?;
    Ok(n == 1)
}

/// Adds one value to the option's total of a UTC day (`2024-03-20`).
pub fn add_usage(
    c: &Connection,
    inst: &str,
    param: &str,
    day: &str,
    value: f64,
    now: i64,
) -> StoreResult<()> {
    c.execute(
        "INSERT INTO billing_usage (instance, param, day, total, count, last_push_at)
         VALUES (?1, ?2, ?3, ?4, 1, ?5)
         ON CONFLICT (instance, param, day) DO UPDATE SET total = total + ?4,
           count = count + 1, last_push_at = max(last_push_at, ?5)",
        params![inst, param, day, value, now],
    )?;
    Ok(())
}

/// One row of usage: (param, day, total, count, last push).
pub type UsageRow = (String, String, f64, i64, i64);

/// The instance's usage by option, then day.
pub fn usage(c: &Connection, inst: &str) -> StoreResult<Vec<UsageRow>> {
    let mut stmt = c.prepare_cached(
        "SELECT param, day, total, count, last_push_at FROM billing_usage
         WHERE instance = ?1 ORDER BY param, day",
    )?;
    let rows = stmt.query_map(params![inst], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

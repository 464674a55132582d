//! The marketplace's usage billing, emulated (VK's "push model" of
//! postpaid options): the simple push with a service token ([`simple`])
//! and the secure push with rotating access keys, RSA-OAEP + AES-CBC
//! encryption and signed answers ([`secure`]). Instances whose spec has
//! `billing` get a service token and access keys; usage is counted per
//! option and UTC day. See docs/billing.md.
//!
//! This module owns the billing state ([`Billing`]: the emulator's key
//! pair), the credential rules (issue, rotation, lookup) and the usage
//! rules (params, values, dates) both schemes share.

pub mod crypto;
pub mod keys;
pub mod secure;
pub mod simple;

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use ibkit_api::InstanceSpec;
use ibkit_api::operator::{PushRecord, PushScheme};
use ibkit_api::wire::{BillingToken, InstanceStatus};
use ibkit_support::clock::{format_utc_ms, now_ms};
use ibkit_support::secret::Secret;
use rusqlite::Connection;
use serde::de::DeserializeOwned;

use crate::auth::{hash_secret, new_secret};
use crate::error::{ApiError, ApiResult};
use crate::{AppState, dispatch, store};
use keys::MarketplaceKey;

/// VK's paths, under the service's own URL instead of the cloud's.
pub const SIMPLE_PUSH_PATH: &str = "/marketplace/api/infra-api/api/v1-public/usages";
pub const AUTH_KEY_PATH: &str = "/marketplace/api/infra-api/v1-public/auth/key";
pub const DECRYPT_PATH: &str = "/marketplace/api/infra-api/v1-public/metrics/decrypt";
pub const PUSH_PATH: &str = "/marketplace/api/infra-api/v1-public/metrics/push";

/// Largest request body of a push (413 beyond).
pub const MAX_BODY_BYTES: usize = 64 << 10;
/// Most metrics in one secure push (VK: "не более 50 метрик").
pub const MAX_METRICS: usize = 50;
/// A secure push's `timestamp` may be this old...
pub const MAX_TIMESTAMP_AGE_MS: i64 = 3_600_000;
/// ...or this far ahead of the service's clock.
pub const MAX_TIMESTAMP_AHEAD_MS: i64 = 300_000;
/// Shortest `refresh_after_ms` told to the agent.
const MIN_REFRESH_MS: i64 = 1000;

/// The billing emulator's state: its key pair, made on first use so a
/// service that never bills never spends the RSA key generation.
pub struct Billing {
    dir: PathBuf,
    key: tokio::sync::OnceCell<Arc<MarketplaceKey>>,
}

impl Billing {
    /// The emulator of a service whose state is in `state_dir`
    /// (`STATE/billing/`).
    pub fn new(state_dir: &std::path::Path) -> Self {
        Billing {
            dir: state_dir.join("billing"),
            key: tokio::sync::OnceCell::new(),
        }
    }

    /// The key pair, loaded or generated (off the async threads).
    pub async fn key(&self) -> ApiResult<Arc<MarketplaceKey>> {
        self.key
            .get_or_try_init(|| async {
                let dir = self.dir.clone();
                tokio::task::spawn_blocking(move || MarketplaceKey::load_or_create(&dir))
                    .await
                    .map_err(|e| ApiError::internal(format!("billing key task failed: {e}")))?
                    .map(Arc::new)
                    .map_err(|e| ApiError::internal(format!("billing key: {e:#}")))
            })
            .await
            .cloned()
    }
}

/// The raw body of a push, read within the route's limit (413 beyond)
/// before the credentials are checked: answering 401 while a client is
/// still sending breaks HTTP/2 clients (curl: "Stream error in the HTTP/2
/// framing layer"), and the limit is small.
pub struct PushBody(pub Vec<u8>);

impl<S: Send + Sync> FromRequest<S> for PushBody {
    type Rejection = ApiError;
    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        tokio::time::timeout(crate::BODY_TIMEOUT, crate::read_body(req))
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body did not arrive in time",
                )
            })?
            .map(PushBody)
            .map_err(|e| {
                if e.status == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        e.status,
                        format!("the body is over {} KiB", MAX_BODY_BYTES >> 10),
                    )
                } else {
                    e
                }
            })
    }
}

impl PushBody {
    /// The body as JSON `T`, whatever the Content-Type (VK's clients send
    /// JSON); a 400 naming the problem otherwise.
    pub fn parse<T: DeserializeOwned>(&self) -> ApiResult<T> {
        serde_json::from_slice(&self.0)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// The spec of an instance that bills now; otherwise 401 (its token or
/// key exists but no longer grants anything).
pub fn billing_spec(s: &AppState, c: &Connection, inst: &str) -> ApiResult<Arc<InstanceSpec>> {
    let gone = || ApiError::unauthorized(format!("instance {inst} has no billing"));
    match store::instances::status(c, inst)? {
        None | Some(InstanceStatus::Deleted) => return Err(gone()),
        Some(_) => {}
    }
    let spec = dispatch::spec_of(s, c, inst)?;
    if spec.billing.is_none() {
        return Err(gone());
    }
    Ok(spec)
}

/// The instance's access keys after any rotation that is due.
#[derive(Debug, Clone)]
pub struct CurrentKeys {
    /// The newest key.
    pub key: Secret,
    pub key_expires_at: i64,
    /// The previous key while it is still valid.
    pub secondary: Option<Secret>,
    /// Milliseconds until the newest key is due to be replaced.
    pub refresh_after_ms: i64,
}

/// The instance's service token and access keys, issuing what is missing
/// and rotating the key when the newest is half its lifetime old (the
/// older stays valid until its own expiry). Call inside a write
/// transaction.
pub fn current_keys(c: &Connection, inst: &str, ttl_ms: i64, now: i64) -> ApiResult<CurrentKeys> {
    if store::billing::token(c, inst)?.is_none() {
        let token = Secret::new(new_secret("mst_"));
        store::billing::insert_token(c, inst, &token, &hash_secret(token.expose()), now)?;
    }
    store::billing::forget_expired(c, inst, now)?;
    let half = ttl_ms / 2;
    let mut live = store::billing::live_keys(c, inst, now)?;
    let due = match live.first() {
        Some(newest) => newest.key.is_none() || now.saturating_sub(newest.created_at) >= half,
        None => true,
    };
    if due {
        let key = Secret::new(new_secret("mpk_"));
        let expires_at = now.saturating_add(ttl_ms);
        store::billing::insert_key(c, inst, &key, &hash_secret(key.expose()), now, expires_at)?;
        live = store::billing::live_keys(c, inst, now)?;
        tracing::info!("billing: issued a new access key for instance {inst}");
    }
    let mut keys = live.into_iter();
    let newest = keys
        .next()
        .ok_or_else(|| ApiError::internal("billing: the new access key was not stored"))?;
    let key = newest
        .key
        .ok_or_else(|| ApiError::internal("billing: the newest access key has no plaintext"))?;
    Ok(CurrentKeys {
        key,
        key_expires_at: newest.expires_at,
        secondary: keys.next().and_then(|k| k.key),
        refresh_after_ms: newest
            .created_at
            .saturating_add(half)
            .saturating_sub(now)
            .max(MIN_REFRESH_MS),
    })
}

/// `--billing-key-ttl` in milliseconds.
pub fn key_ttl_ms(s: &AppState) -> i64 {
    i64::try_from(s.cfg.billing_key_ttl.as_millis()).unwrap_or(i64::MAX)
}

/// Credentials of a billing instance (issued or rotated as due), with its
/// spec; 404 when the instance has no billing.
pub async fn credentials(
    s: &Arc<AppState>,
    inst: &str,
) -> ApiResult<(Arc<InstanceSpec>, Secret, CurrentKeys)> {
    let (st, id, ttl) = (s.clone(), inst.to_string(), key_ttl_ms(s));
    s.db.write(move |c| {
        let tx = c.transaction()?;
        let deleted = store::instances::existing_status(&tx, &id)? == InstanceStatus::Deleted;
        let spec = dispatch::spec_of(&st, &tx, &id)?;
        if deleted || spec.billing.is_none() {
            return Err(ApiError::not_found(format!("instance {id} has no billing")));
        }
        let keys = current_keys(&tx, &id, ttl, now_ms())?;
        let token = store::billing::token(&tx, &id)?
            .ok_or_else(|| ApiError::internal("billing: the service token was not stored"))?;
        tx.commit()?;
        Ok((spec, token, keys))
    })
    .await
}

/// `GET /v1/agent/billing-token`: the current keys for the agent's token
/// file.
pub async fn agent_token(s: &Arc<AppState>, inst: &str) -> ApiResult<BillingToken> {
    let (_, _, keys) = credentials(s, inst).await?;
    Ok(BillingToken {
        instance_uuid: inst.to_string(),
        key: keys.key.expose().to_string(),
        secondary_key: keys.secondary.map(|k| k.expose().to_string()),
        refresh_after_ms: u64::try_from(keys.refresh_after_ms).unwrap_or(0),
    })
}

/// One value to count.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub param: String,
    pub value: f64,
    /// The metric id (secure push), as compact JSON: a re-sent one is not
    /// counted again.
    pub id: Option<String>,
}

/// Refuses a param the instance does not bill and a value that is not a
/// finite number ≥ 0; `at` names the item (`usages[2]`).
pub fn check_usage(spec: &InstanceSpec, at: &str, param: &str, value: f64) -> ApiResult<()> {
    let params = spec.billing.as_ref().map_or(&[][..], |b| &b.params[..]);
    if !params.iter().any(|p| p == param) {
        return Err(ApiError::bad_request(format!(
            "{at}: unknown param {param:?}; this instance bills {params:?}"
        )));
    }
    if !value.is_finite() || value < 0.0 {
        return Err(ApiError::bad_request(format!(
            "{at}: value {value} of param {param:?} must be a finite number >= 0"
        )));
    }
    Ok(())
}

/// Unix milliseconds of an RFC 3339 date-time (`2024-03-20T14:00:00Z`,
/// `…14:00:00.5+03:00`); a zone is required.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let (rest, offset_s) = if let Some(r) = text.strip_suffix(['Z', 'z']) {
        (r, 0i64)
    } else {
        let split = text.len().checked_sub(6)?;
        let (r, zone) = (text.get(..split)?, text.get(split..)?);
        let b = zone.as_bytes();
        let sign = match b[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        if b[3] != b':' || !b[1..3].iter().chain(&b[4..6]).all(u8::is_ascii_digit) {
            return None;
        }
        let (h, m): (i64, i64) = (zone[1..3].parse().ok()?, zone[4..6].parse().ok()?);
        if h > 23 || m > 59 {
            return None;
        }
        (r, sign * (h * 3600 + m * 60))
    };
    let (main, frac) = match rest.split_once('.') {
        Some((m, f)) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => (m, f),
        Some(_) => return None,
        None => (rest, ""),
    };
    // YYYY-MM-DDTHH:MM:SS exactly (parse_utc is laxer).
    let shape = main.len() == 19
        && main.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T' || b == b't',
            13 | 16 => b == b':',
            _ => b.is_ascii_digit(),
        });
    if !shape {
        return None;
    }
    let (date, time) = (main.get(..10)?, main.get(11..)?);
    let secs = i64::try_from(ibkit_support::clock::parse_utc(&format!("{date}T{time}Z"))?).ok()?;
    // The day must exist (parse_utc takes Feb 31).
    if format_utc_ms(secs * 1000).get(..10) != Some(date) {
        return None;
    }
    let ms: i64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    Some((secs - offset_s) * 1000 + ms)
}

/// The UTC day (`2024-03-20`) a push counts on: its `base_date`, else now.
pub fn day_of(base_date: Option<&str>, now: i64) -> ApiResult<String> {
    let ms = match base_date {
        Some(d) => parse_rfc3339_ms(d).ok_or_else(|| {
            ApiError::bad_request(format!(
                "base_date {d:?} is not an RFC 3339 date-time (2024-03-20T14:00:00Z)"
            ))
        })?,
        None => now,
    };
    Ok(format_utc_ms(ms).chars().take(10).collect())
}

/// Logs a push for its instance: `Ok((metrics, counted))` or the error
/// answered. A failure to log is itself only logged: the push's answer
/// stands.
pub async fn log_push(
    s: &Arc<AppState>,
    inst: &str,
    scheme: PushScheme,
    key_created_at: Option<i64>,
    outcome: &ApiResult<(usize, usize)>,
) {
    let (status, metrics, counted, error) = match outcome {
        Ok((n, c)) => (StatusCode::OK, *n, *c, None),
        Err(e) => (e.status, 0, 0, Some(e.message.clone())),
    };
    let record = PushRecord {
        at: now_ms(),
        scheme,
        status: status.as_u16(),
        metrics: u32::try_from(metrics).unwrap_or(u32::MAX),
        counted: u32::try_from(counted).unwrap_or(u32::MAX),
        key_created_at,
        error,
    };
    let id = inst.to_string();
    let logged =
        s.db.write(move |c| Ok::<_, ApiError>(store::billing::log_push(c, &id, &record)?))
            .await;
    if let Err(e) = logged {
        tracing::warn!("billing: cannot log a push of instance {inst}: {e}");
    }
}

/// Counts `usages` on `day` in one transaction; a metric id counted before
/// (or twice in this push) is skipped. Returns how many were counted.
pub async fn record(
    s: &Arc<AppState>,
    inst: &str,
    day: String,
    usages: Vec<Usage>,
) -> ApiResult<usize> {
    let id = inst.to_string();
    s.db.write(move |c| {
        let tx = c.transaction()?;
        let now = now_ms();
        let mut counted = 0;
        for u in &usages {
            if let Some(mid) = &u.id
                && !store::billing::remember_metric(&tx, &id, mid, now)?
            {
                continue;
            }
            store::billing::add_usage(&tx, &id, &u.param, &day, u.value, now)?;
            counted += 1;
        }
        tx.commit()?;
        Ok::<_, ApiError>(counted)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates_with_zones() {
        let base = 1_710_943_200_000; // 2024-03-20T14:00:00Z
        for (text, ms) in [
            ("2024-03-20T14:00:00Z", base),
            ("2024-03-20t14:00:00z", base),
            ("2024-03-20T14:00:00.5Z", base + 500),
            ("2024-03-20T14:00:00.123456789Z", base + 123),
            ("2024-03-20T17:00:00+03:00", base),
            ("2024-03-20T13:30:00-00:30", base),
            ("2024-03-20T14:00:00.250+00:00", base + 250),
        ] {
            assert_eq!(parse_rfc3339_ms(text), Some(ms), "{text}");
        }
        for bad in [
            "2024-03-20T14:00:00",
            "2024-03-20 14:00:00Z",
            "2024-02-31T14:00:00Z",
            "2024-03-20T24:00:00Z",
            "2024-03-20T14:00:00.Z",
            "2024-03-20T14:00:00+3:00",
            "2024-3-20T14:00:00Z",
            "Z",
            "",
            "+00:00",
            "2024-03-20T14:00:00+24:00",
            "２０２４-03-20T14:00:00Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad:?}");
        }
        assert_eq!(
            day_of(Some("2024-03-21T01:00:00+03:00"), 0).ok().as_deref(),
            Some("2024-03-20")
        );
        assert_eq!(day_of(None, base).ok().as_deref(), Some("2024-03-20"));
        assert!(day_of(Some("yesterday"), 0).is_err());
    }
}

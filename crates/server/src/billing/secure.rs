//! The secure push (VK: "защищенная отправка метрик"): rotating access keys
//! (`GET …/v1-public/auth/key`), metrics encrypted to the marketplace's
//! key (`POST …/metrics/decrypt` tests, `POST …/metrics/push` counts) and
//! answers signed with it.
//!
//! The signature of an answer is RSASSA-PKCS1-v1_5 with SHA-256 by the
//! emulator's key over the exact bytes of the compact JSON of `payload` as
//! the answer carries it: the answer is always written
//! `{"payload":<those bytes>,"signature":"<base64url>"}`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use base64::Engine as _;
use ibkit_api::InstanceSpec;
use ibkit_api::operator::PushScheme;
use ibkit_support::clock::{format_utc_ms, now_ms};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::crypto::{self, EncryptedRequest};
use super::keys::MarketplaceKey;
use super::{MAX_METRICS, MAX_TIMESTAMP_AGE_MS, MAX_TIMESTAMP_AHEAD_MS, PushBody, Usage};
use crate::auth::{bearer, hash_secret};
use crate::error::{ApiError, ApiResult};
use crate::{AppState, store};

/// A request with a valid access key: its instance, which bills.
pub struct KeyAuth {
    pub instance: String,
    pub spec: Arc<InstanceSpec>,
    /// When the key used was issued.
    pub key_created_at: i64,
}

impl FromRequestParts<Arc<AppState>> for KeyAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        KeyAuth::check(state, &parts.headers, None).await
    }
}

impl KeyAuth {
    /// The instance of the request's access key: 401 when the key is
    /// missing, unknown or expired, or its instance no longer bills. An
    /// expired key of a push (`scheme`) is logged for its instance: an app
    /// that missed a rotation shows in its usage.
    pub async fn check(
        state: &Arc<AppState>,
        headers: &HeaderMap,
        scheme: Option<PushScheme>,
    ) -> ApiResult<Self> {
        let key = bearer(headers).ok_or_else(|| {
            ApiError::unauthorized("access key required (Authorization: Bearer KEY)")
        })?;
        let hash = hash_secret(key);
        let st = state.clone();
        let (owner, spec) = state
            .db
            .read(move |c| {
                let owner = store::billing::key_owner(c, &hash)?
                    .ok_or_else(|| ApiError::unauthorized("unknown access key"))?;
                let spec = super::billing_spec(&st, c, &owner.instance)?;
                Ok::<_, ApiError>((owner, spec))
            })
            .await?;
        let now = now_ms();
        if owner.expires_at <= now {
            let e = ApiError::unauthorized(format!(
                "the access key expired at {}: use the newest key (the token file, \
                 or GET auth/key with a key still valid)",
                format_utc_ms(owner.expires_at)
            ));
            if let Some(scheme) = scheme {
                super::log_push(
                    state,
                    &owner.instance,
                    scheme,
                    Some(owner.created_at),
                    &Err(e.clone()),
                )
                .await;
            }
            return Err(e);
        }
        Ok(KeyAuth {
            instance: owner.instance,
            spec,
            key_created_at: owner.created_at,
        })
    }
}

/// The answer of `GET …/v1-public/auth/key` (VK's shape).
// No `Debug`: it holds the keys.
#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuthKeyAnswer {
    pub instance_uuid: String,
    /// The newest key; switch to it when `secondary_key` is present.
    pub key: String,
    /// The older key while it is still valid (it expires on its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_key: Option<String>,
}

/// `GET …/v1-public/auth/key`: the current keys, rotated when due.
pub async fn auth_key(
    State(s): State<Arc<AppState>>,
    auth: KeyAuth,
) -> ApiResult<Json<AuthKeyAnswer>> {
    let (_, _, keys) = super::credentials(&s, &auth.instance).await?;
    Ok(Json(AuthKeyAnswer {
        instance_uuid: auth.instance,
        key: keys.key.expose().to_string(),
        secondary_key: keys.secondary.map(|k| k.expose().to_string()),
    }))
}

/// What an answer signs.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SignedPayload {
    /// The `id`s of the metrics (integers or strings), as sent, re-sent
    /// ones too.
    pub metrics_ids: Vec<Value>,
    /// When the service handled the push (RFC 3339, UTC).
    pub timestamp: String,
}

/// The answer of `…/metrics/decrypt` and `…/metrics/push`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SignedAnswer {
    pub payload: SignedPayload,
    /// Base64url (padded) RSASSA-PKCS1-v1_5 SHA-256 signature over the
    /// exact bytes of `payload` in this body (compact JSON).
    pub signature: String,
}

/// The decrypted JSON: VK's Python example sends `payload` as an object,
/// its Go example as base64url of the object's JSON.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Plaintext {
    payload: Value,
    timestamp: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    metrics: Vec<Metric>,
    #[serde(default)]
    base_date: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Metric {
    id: Value,
    param: String,
    value: f64,
}

/// Longest string metric id.
const MAX_ID_LEN: usize = 256;

/// A push checked whole: nothing is counted unless every metric is valid.
#[derive(Debug)]
pub struct Checked {
    pub ids: Vec<Value>,
    pub usages: Vec<Usage>,
    pub day: String,
}

/// Parses and checks the decrypted JSON of a push at time `now`.
pub fn check_plaintext(spec: &InstanceSpec, plain: &[u8], now: i64) -> ApiResult<Checked> {
    let bad = |m: String| ApiError::bad_request(m);
    let p: Plaintext = serde_json::from_slice(plain).map_err(|e| {
        bad(format!(
            "the decrypted payload is not {{\"payload\": …, \"timestamp\": …}} JSON: {e}"
        ))
    })?;
    let ts = super::parse_rfc3339_ms(&p.timestamp).ok_or_else(|| {
        bad(format!(
            "timestamp {:?} is not an RFC 3339 date-time (2024-03-20T14:00:00Z)",
            p.timestamp
        ))
    })?;
    if now.saturating_sub(ts) > MAX_TIMESTAMP_AGE_MS {
        return Err(bad(format!(
            "stale timestamp {}: more than 1h before the service's clock ({})",
            p.timestamp,
            format_utc_ms(now)
        )));
    }
    if ts.saturating_sub(now) > MAX_TIMESTAMP_AHEAD_MS {
        return Err(bad(format!(
            "stale timestamp {}: more than 5m after the service's clock ({})",
            p.timestamp,
            format_utc_ms(now)
        )));
    }
    let payload: Payload = match p.payload {
        Value::String(text) => {
            let json = crypto::decode_b64("payload", &text).map_err(|e| bad(e.to_string()))?;
            serde_json::from_slice(&json)
        }
        other => serde_json::from_value(other),
    }
    .map_err(|e| {
        bad(format!(
            "payload is not {{\"metrics\": [{{\"id\", \"param\", \"value\"}}], \"base_date\"}}: {e}"
        ))
    })?;
    if payload.metrics.is_empty() {
        return Err(bad("payload.metrics is empty".into()));
    }
    if payload.metrics.len() > MAX_METRICS {
        return Err(bad(format!(
            "payload.metrics has {} metrics; at most {MAX_METRICS} per push",
            payload.metrics.len()
        )));
    }
    let day = super::day_of(payload.base_date.as_deref(), now)?;
    let mut ids = Vec::with_capacity(payload.metrics.len());
    let mut usages = Vec::with_capacity(payload.metrics.len());
    for (i, m) in payload.metrics.into_iter().enumerate() {
        let at = format!("payload.metrics[{i}]");
        let id_ok = match &m.id {
            Value::Number(n) => n.is_i64() || n.is_u64(),
            Value::String(s) => !s.is_empty() && s.len() <= MAX_ID_LEN,
            _ => false,
        };
        if !id_ok {
            return Err(bad(format!(
                "{at}: id {} must be an integer or a string of 1-{MAX_ID_LEN} bytes",
                m.id
            )));
        }
        super::check_usage(spec, &at, &m.param, m.value)?;
        usages.push(Usage {
            param: m.param,
            value: m.value,
            id: Some(m.id.to_string()),
        });
        ids.push(m.id);
    }
    Ok(Checked { ids, usages, day })
}

/// The signed answer, written so that `payload`'s bytes are those signed.
pub fn signed_answer(key: &MarketplaceKey, ids: Vec<Value>, now: i64) -> ApiResult<Response> {
    let payload = SignedPayload {
        metrics_ids: ids,
        timestamp: format_utc_ms(now),
    };
    let bytes = serde_json::to_vec(&payload)
        .map_err(|e| ApiError::internal(format!("cannot encode the answer: {e}")))?;
    let sig = key
        .sign(&bytes)
        .map_err(|e| ApiError::internal(format!("{e:#}")))?;
    let sig = base64::engine::general_purpose::URL_SAFE.encode(sig);
    let mut body = Vec::with_capacity(bytes.len() + sig.len() + 32);
    body.extend_from_slice(b"{\"payload\":");
    body.extend_from_slice(&bytes);
    body.extend_from_slice(b",\"signature\":\"");
    body.extend_from_slice(sig.as_bytes());
    body.extend_from_slice(b"\"}");
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// Authenticates, then decrypts and checks a push off the async threads;
/// counts it when `count`. Every push whose key names an instance is
/// logged for it, accepted or refused.
async fn handle(
    s: Arc<AppState>,
    headers: HeaderMap,
    body: PushBody,
    count: bool,
) -> ApiResult<Response> {
    let scheme = if count {
        PushScheme::Secure
    } else {
        PushScheme::Decrypt
    };
    let auth = KeyAuth::check(&s, &headers, Some(scheme)).await?;
    let outcome = decrypt_and_count(&s, &auth, body, count).await;
    super::log_push(
        &s,
        &auth.instance,
        scheme,
        Some(auth.key_created_at),
        &outcome
            .as_ref()
            .map(|(n, c, _)| (*n, *c))
            .map_err(Clone::clone),
    )
    .await;
    outcome.map(|(_, _, answer)| answer)
}

/// The push after its key: decrypted, checked, counted when `count`;
/// (metrics, counted, the signed answer).
async fn decrypt_and_count(
    s: &Arc<AppState>,
    auth: &KeyAuth,
    body: PushBody,
    count: bool,
) -> ApiResult<(usize, usize, Response)> {
    let req: EncryptedRequest = body.parse()?;
    let key = s.billing.key().await?;
    let (k, spec) = (key.clone(), auth.spec.clone());
    let started = std::time::Instant::now();
    let checked = tokio::task::spawn_blocking(move || {
        let plain = crypto::unwrap(&k, &req).map_err(|e| ApiError::bad_request(e.to_string()))?;
        check_plaintext(&spec, &plain, now_ms())
    })
    .await
    .map_err(|e| ApiError::internal(format!("billing decryption task failed: {e}")))??;
    let decrypt_ms = started.elapsed().as_secs_f64() * 1000.0;
    let n = checked.usages.len();
    let mut counted = 0;
    if count {
        counted = super::record(s, &auth.instance, checked.day, checked.usages).await?;
        tracing::info!(
            "billing: secure push for instance {}: {n} metrics, {counted} counted ({decrypt_ms:.1} ms to decrypt)",
            auth.instance
        );
    } else {
        tracing::info!(
            "billing: test decryption for instance {}: {n} metrics ({decrypt_ms:.1} ms)",
            auth.instance
        );
    }
    Ok((n, counted, signed_answer(&key, checked.ids, now_ms())?))
}

/// `POST …/v1-public/metrics/decrypt`: checks a push, counts nothing.
pub async fn decrypt(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: PushBody,
) -> ApiResult<Response> {
    handle(s, headers, body, false).await
}

/// `POST …/v1-public/metrics/push`: checks a push and counts it.
pub async fn push(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: PushBody,
) -> ApiResult<Response> {
    handle(s, headers, body, true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InstanceSpec {
        serde_json::from_str(
            r#"{"name":"x","hosts":[{"name":"a"}],"billing":{"params":["cpu","ram"]}}"#,
        )
        .expect("spec")
    }

    const NOW: i64 = 1_710_943_200_000; // 2024-03-20T14:00:00Z

    fn check(plain: &str) -> Result<Checked, String> {
        check_plaintext(&spec(), plain.as_bytes(), NOW).map_err(|e| e.message)
    }

    #[test]
    fn python_and_go_shapes_are_read() {
        let c = check(
            r#"{"payload":{"metrics":[{"id":5001,"param":"cpu","value":85.5},
                {"id":"u-1","param":"ram","value":16384}],"base_date":"2024-03-19T23:00:00Z"},
                "timestamp":"2024-03-20T14:00:00Z"}"#,
        )
        .expect("python shape");
        assert_eq!(c.day, "2024-03-19");
        assert_eq!(
            c.ids,
            vec![serde_json::json!(5001), serde_json::json!("u-1")]
        );
        assert_eq!(c.usages[0].id.as_deref(), Some("5001"));
        assert_eq!(c.usages[1].id.as_deref(), Some("\"u-1\""));
        let inner = r#"{"metrics":[{"id":"unique-id","param":"cpu","value":1.5}],"base_date":"2024-10-24T10:00:00Z"}"#;
        let b64 = base64::engine::general_purpose::URL_SAFE.encode(inner);
        let c = check(&format!(
            r#"{{"payload":"{b64}","timestamp":"2024-03-20T14:04:59.999999999Z"}}"#
        ))
        .expect("go shape");
        assert_eq!(c.day, "2024-10-24");
        assert_eq!(c.usages[0].value, 1.5);
    }

    #[test]
    fn bad_pushes_name_the_problem() {
        let ok_metric = r#"{"id":1,"param":"cpu","value":1}"#;
        let with = |metrics: &str, ts: &str| {
            format!(r#"{{"payload":{{"metrics":[{metrics}]}},"timestamp":"{ts}"}}"#)
        };
        let t = "2024-03-20T14:00:00Z";
        for (plain, want) in [
            (with(ok_metric, "2024-03-20T12:59:59Z"), "stale timestamp"),
            (with(ok_metric, "2024-03-20T14:05:01Z"), "stale timestamp"),
            (with(ok_metric, "now"), "not an RFC 3339"),
            (
                with(r#"{"id":1,"param":"gpu","value":1}"#, t),
                "unknown param \"gpu\"",
            ),
            (
                with(r#"{"id":1,"param":"cpu","value":-1}"#, t),
                "finite number >= 0",
            ),
            (
                with(r#"{"id":1.5,"param":"cpu","value":1}"#, t),
                "must be an integer or a string",
            ),
            (
                with(r#"{"id":"","param":"cpu","value":1}"#, t),
                "must be an integer or a string",
            ),
            (
                with(r#"{"param":"cpu","value":1}"#, t),
                "missing field `id`",
            ),
            (
                with(r#"{"id":1,"param":"cpu","value":"1"}"#, t),
                "payload is not",
            ),
            (with("", t), "payload.metrics is empty"),
            (
                with(&vec![ok_metric; 51].join(","), t),
                "has 51 metrics; at most 50",
            ),
            (
                r#"{"payload":"!!","timestamp":"2024-03-20T14:00:00Z"}"#.into(),
                "payload is not base64",
            ),
            ("[]".into(), "is not {\"payload\""),
            ("\u{0}".into(), "is not {\"payload\""),
        ] {
            let e = check(&plain).expect_err(&plain);
            assert!(e.contains(want), "{plain}: {e}");
        }
        assert!(check(&with(&vec![ok_metric; 50].join(","), t)).is_ok());
    }
}

//! Bearer authentication: the operator token and agent credentials. Only
//! SHA-256s of secrets are stored or compared.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine as _;
use ibkit_api::step::sha256_hex;
use rand::RngCore as _;

use crate::AppState;
use crate::error::ApiError;

/// A new random secret: 32 bytes, URL-safe base64 with a prefix.
pub fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

pub fn hash_secret(secret: &str) -> String {
    sha256_hex(secret.as_bytes())
}

/// Compares two equal-length hex digests without an early exit.
pub fn digest_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let v = headers.get(axum::http::header::AUTHORIZATION)?;
    let v = v.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// Whether `token` is the operator token (compared as digests, without an
/// early exit): the API's bearer check and the console's login share it.
pub fn is_operator_token(state: &AppState, token: &str) -> bool {
    digest_eq(&hash_secret(token), &state.operator_token_hash)
}

/// An operator request (valid operator token).
pub struct Operator;

impl FromRequestParts<Arc<AppState>> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).ok_or_else(|| {
            ApiError::unauthorized("operator token required (Authorization: Bearer TOKEN)")
        })?;
        if is_operator_token(state, token) {
            Ok(Operator)
        } else {
            Err(ApiError::unauthorized("invalid operator token"))
        }
    }
}

/// A metrics scrape: the operator token, or the metrics token
/// (`--metrics-token-file`) that opens `/metrics` and nothing else.
pub struct MetricsReader;

impl FromRequestParts<Arc<AppState>> for MetricsReader {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).ok_or_else(|| {
            ApiError::unauthorized(
                "metrics token or operator token required (Authorization: Bearer TOKEN)",
            )
        })?;
        let hash = hash_secret(token);
        let metrics = state
            .metrics_token_hash
            .as_deref()
            .is_some_and(|h| digest_eq(&hash, h));
        if metrics || digest_eq(&hash, &state.operator_token_hash) {
            Ok(MetricsReader)
        } else {
            Err(ApiError::unauthorized("invalid metrics or operator token"))
        }
    }
}

/// An agent request: the credential names its instance and host.
#[derive(Debug, Clone)]
pub struct AgentAuth {
    pub instance: String,
    pub host: String,
    pub credential_hash: String,
}

impl FromRequestParts<Arc<AppState>> for AgentAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).ok_or_else(|| {
            ApiError::unauthorized("agent credential required (Authorization: Bearer CREDENTIAL)")
        })?;
        let hash = hash_secret(token);
        let h = hash.clone();
        let found = state
            .db
            .read(move |c| crate::store::hosts::by_credential(c, &h).map_err(ApiError::from))
            .await?;
        match found {
            Some((instance, host)) => Ok(AgentAuth {
                instance,
                host,
                credential_hash: hash,
            }),
            None => Err(ApiError::unauthorized(
                "unknown or revoked agent credential",
            )),
        }
    }
}

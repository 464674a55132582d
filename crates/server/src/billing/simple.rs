//! The simple push (VK: `POST …/api/v1-public/usages` with an
//! `x-service-token`): plain JSON usages of one instance.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use ibkit_api::InstanceSpec;
use ibkit_api::operator::PushScheme;
use ibkit_support::clock::now_ms;
use serde::{Deserialize, Serialize};

use super::{PushBody, Usage};
use crate::auth::hash_secret;
use crate::error::{ApiError, ApiResult};
use crate::{AppState, store};

/// The header VK's simple push authenticates with.
pub const SERVICE_TOKEN_HEADER: &str = "x-service-token";

/// A request with a valid service token: its instance, which bills.
pub struct ServiceToken {
    pub instance: String,
    pub spec: Arc<InstanceSpec>,
}

impl ServiceToken {
    /// The instance of the request's service token: 401 when it is
    /// missing or unknown, or its instance no longer bills.
    pub async fn check(state: &Arc<AppState>, headers: &HeaderMap) -> ApiResult<Self> {
        let token = headers
            .get(SERVICE_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized(format!("service token required ({SERVICE_TOKEN_HEADER})"))
            })?;
        let hash = hash_secret(token);
        let st = state.clone();
        state
            .db
            .read(move |c| {
                let instance = store::billing::token_owner(c, &hash)?
                    .ok_or_else(|| ApiError::unauthorized("unknown service token"))?;
                let spec = super::billing_spec(&st, c, &instance)?;
                Ok(ServiceToken { instance, spec })
            })
            .await
    }
}

/// The body of the simple push (VK's fields).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimplePush {
    /// When the usage was measured (RFC 3339); its UTC day is the day it
    /// counts on. Default: now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_date: Option<String>,
    /// The broker's id at the marketplace; accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_id: Option<String>,
    pub usages: Vec<SimpleUsage>,
}

/// One usage of the simple push.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimpleUsage {
    /// The instance: the service token's own.
    pub instance_uuid: String,
    /// The option (its YAML file's name): one of the instance's
    /// `billing.params`.
    pub param: String,
    /// The quantity used: a finite number >= 0.
    pub value: f64,
}

/// The answer of the simple push.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SimplePushAck {
    /// Usages counted.
    pub accepted: usize,
}

/// `POST …/api/v1-public/usages`: counts the usages, all or none. A push
/// whose token names an instance is logged for it, accepted or refused.
pub async fn push(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: PushBody,
) -> ApiResult<Json<SimplePushAck>> {
    // The body is read first (see PushBody), parsed after the token.
    let auth = ServiceToken::check(&s, &headers).await?;
    let outcome = count(&s, &auth, body).await;
    super::log_push(&s, &auth.instance, PushScheme::Simple, None, &outcome).await;
    outcome.map(|(_, accepted)| Json(SimplePushAck { accepted }))
}

/// The push after its token: checked whole, then counted; (usages, counted).
async fn count(
    s: &Arc<AppState>,
    auth: &ServiceToken,
    body: PushBody,
) -> ApiResult<(usize, usize)> {
    let body: SimplePush = body.parse()?;
    if body.usages.is_empty() {
        return Err(ApiError::bad_request("usages is empty"));
    }
    // Another instance's usage is an authorization failure, whatever else
    // is wrong with the push.
    for (i, u) in body.usages.iter().enumerate() {
        if !u.instance_uuid.eq_ignore_ascii_case(&auth.instance) {
            return Err(ApiError::unauthorized(format!(
                "usages[{i}]: instance_uuid {:?} is not this service token's instance",
                u.instance_uuid
            )));
        }
    }
    for (i, u) in body.usages.iter().enumerate() {
        super::check_usage(&auth.spec, &format!("usages[{i}]"), &u.param, u.value)?;
    }
    let day = super::day_of(body.base_date.as_deref(), now_ms())?;
    let n = body.usages.len();
    let usages: Vec<Usage> = body
        .usages
        .into_iter()
        .map(|u| Usage {
            param: u.param,
            value: u.value,
            id: None,
        })
        .collect();
    let accepted = super::record(s, &auth.instance, day, usages).await?;
    tracing::info!(
        "billing: simple push for instance {}: {accepted} usages",
        auth.instance
    );
    Ok((n, accepted))
}

//! Unauthenticated documents: liveness, OpenAPI, installer, agent binary.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::error::ApiError;

pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document_json(),
    )
        .into_response()
}

pub async fn install_sh(State(s): State<Arc<AppState>>) -> Response {
    let script = ibkit_api::dist::install_script(
        &s.public_url,
        s.cert_sha256.as_deref().unwrap_or(""),
        s.curl_pin.as_deref().unwrap_or(""),
    );
    ([(header::CONTENT_TYPE, "text/x-shellscript")], script).into_response()
}

pub async fn binary(State(s): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let data = tokio::fs::read(&s.agent_binary).await.map_err(|e| {
        ApiError::not_found(format!(
            "the agent binary {} is not available: {e}",
            s.agent_binary.display()
        ))
    })?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from(data),
    )
        .into_response())
}

//! The HTTP API. [`ROUTES`] lists every route; the router and the OpenAPI
//! document are both built from the same handlers and checked against it.

pub mod agent;
pub mod docs;
pub mod operator;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::AppState;
use crate::error::ApiError;

/// (method, path, auth, summary) of every route.
pub const ROUTES: &[(&str, &str, &str, &str)] = &[
    ("get", "/healthz", "none", "Liveness of the service"),
    ("get", "/v1/openapi.json", "none", "This OpenAPI document"),
    (
        "get",
        "/v1/agent/install.sh",
        "none",
        "The agent installer (curl | sh)",
    ),
    ("get", "/v1/agent/binary", "none", "The agent binary"),
    (
        "post",
        "/v1/agent/pair",
        "none",
        "Exchange a pairing key for a host credential",
    ),
    (
        "get",
        "/v1/agent/work",
        "agent",
        "Long poll for the next step and the health checks",
    ),
    (
        "post",
        "/v1/agent/reports",
        "agent",
        "Report a step event (running, ok, failed)",
    ),
    ("post", "/v1/agent/heartbeat", "agent", "Agent heartbeat"),
    (
        "post",
        "/v1/agent/health",
        "agent",
        "One health check result",
    ),
    (
        "get",
        "/v1/service",
        "operator",
        "The service's URL, certificate pins, intervals and version",
    ),
    ("get", "/v1/instances", "operator", "List instances"),
    (
        "post",
        "/v1/instances",
        "operator",
        "Create an instance from an InstanceSpec",
    ),
    (
        "get",
        "/v1/instances/{id}",
        "operator",
        "Instance status, hosts and step counts",
    ),
    (
        "put",
        "/v1/instances/{id}",
        "operator",
        "Update the instance's spec",
    ),
    (
        "delete",
        "/v1/instances/{id}",
        "operator",
        "Delete the instance (revokes credentials)",
    ),
    (
        "post",
        "/v1/instances/{id}/redeploy",
        "operator",
        "Run all steps again (once steps are skipped)",
    ),
    (
        "post",
        "/v1/instances/{id}/hosts/{host}/pairing-key",
        "operator",
        "Issue a fresh pairing key (recreated VM)",
    ),
    (
        "get",
        "/v1/instances/{id}/hosts/{host}/steps",
        "operator",
        "Every step of a host with logs and results",
    ),
    (
        "get",
        "/v1/instances/{id}/hosts/{host}/health",
        "operator",
        "Latest health results of a host",
    ),
    (
        "get",
        "/v1/instances/{id}/results/{host}/{group}/{index}",
        "operator",
        "A step's raw and structured result",
    ),
    (
        "get",
        "/v1/recovery-requests",
        "operator",
        "Recovery requests (status, instance filters)",
    ),
    (
        "post",
        "/v1/recovery-requests/{id}/resolve",
        "operator",
        "Mark a recovery request resolved",
    ),
];

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(docs::healthz))
        .route("/v1/openapi.json", get(docs::openapi))
        .route("/v1/agent/install.sh", get(docs::install_sh))
        .route("/v1/agent/binary", get(docs::binary))
        .route("/v1/agent/pair", post(agent::pair))
        .route("/v1/agent/work", get(agent::work))
        .route(
            "/v1/agent/reports",
            post(agent::report).layer(DefaultBodyLimit::max(ibkit_api::wire::MAX_REPORT_BYTES)),
        )
        .route("/v1/agent/heartbeat", post(agent::heartbeat))
        .route("/v1/agent/health", post(agent::health))
        .route("/v1/service", get(operator::service_info))
        .route("/v1/instances", get(operator::list).post(operator::create))
        .route(
            "/v1/instances/{id}",
            get(operator::show)
                .put(operator::update)
                .delete(operator::delete),
        )
        .route("/v1/instances/{id}/redeploy", post(operator::redeploy))
        .route(
            "/v1/instances/{id}/hosts/{host}/pairing-key",
            post(operator::rekey),
        )
        .route(
            "/v1/instances/{id}/hosts/{host}/steps",
            get(operator::steps),
        )
        .route(
            "/v1/instances/{id}/hosts/{host}/health",
            get(operator::host_health),
        )
        .route(
            "/v1/instances/{id}/results/{host}/{group}/{index}",
            get(operator::result),
        )
        .route("/v1/recovery-requests", get(operator::recovery_list))
        .route(
            "/v1/recovery-requests/{id}/resolve",
            post(operator::recovery_resolve),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(1 << 20))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

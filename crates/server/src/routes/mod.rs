//! The HTTP API. The operator endpoints are the types of
//! `ibkit_api::operator::endpoint`, implemented in [`operator`] and mounted
//! from the same list ([`ibkit_api::for_each_operator_endpoint`]) that
//! builds the OpenAPI document; [`SERVICE_ROUTES`] lists the others (agent,
//! installer, docs, the billing emulator's marketplace API). [`routes`] is every route, as the tests check it.
//! [`CONSOLE_ROUTES`] are the web console's HTML pages ([`console`]): not
//! API, so not in the OpenAPI document.

pub mod agent;
pub mod console;
pub mod docs;
pub mod operator;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{MethodFilter, get, on, post};
use ibkit_api::operator::endpoint::{Endpoint, Method};

use crate::error::ApiError;
use crate::{AppState, billing};
use operator::Serve;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    None,
    Agent,
    Operator,
    /// The billing emulator's simple push: `x-service-token`.
    ServiceToken,
    /// The billing emulator's secure push: a rotating access key (Bearer).
    BillingKey,
    /// `/metrics`: the metrics token or the operator token (Bearer).
    Metrics,
}

impl Auth {
    pub fn as_str(self) -> &'static str {
        match self {
            Auth::None => "none",
            Auth::Agent => "agent",
            Auth::Operator => "operator",
            Auth::ServiceToken => "service_token",
            Auth::BillingKey => "billing_key",
            Auth::Metrics => "metrics",
        }
    }
}

/// One route: method (lower case, as OpenAPI writes it), path, auth, summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteInfo {
    pub method: &'static str,
    pub path: &'static str,
    pub auth: Auth,
    pub summary: &'static str,
}

/// The routes that are not operator endpoints.
pub const SERVICE_ROUTES: &[RouteInfo] = &[
    route("get", "/healthz", Auth::None, "Liveness of the service"),
    route(
        "get",
        crate::metrics::PATH,
        Auth::Metrics,
        "Prometheus metrics (text format 0.0.4)",
    ),
    route(
        "get",
        "/v1/openapi.json",
        Auth::None,
        "This OpenAPI document",
    ),
    route(
        "get",
        "/v1/agent/install.sh",
        Auth::None,
        "The agent installer (curl | sh)",
    ),
    route("get", "/v1/agent/binary", Auth::None, "The agent binary"),
    route(
        "get",
        docs::AGENT_DEB_PATH,
        Auth::None,
        "The agent's Debian package (ibkit serve --agent-deb)",
    ),
    route(
        "post",
        "/v1/agent/pair",
        Auth::None,
        "Exchange a pairing key for a host credential",
    ),
    route(
        "get",
        "/v1/agent/work",
        Auth::Agent,
        "Long poll for the next step and the health checks",
    ),
    route(
        "post",
        "/v1/agent/reports",
        Auth::Agent,
        "Report a step event (running, ok, failed)",
    ),
    route(
        "post",
        "/v1/agent/heartbeat",
        Auth::Agent,
        "Agent heartbeat",
    ),
    route(
        "post",
        "/v1/agent/health",
        Auth::Agent,
        "One health check result",
    ),
    route(
        "get",
        "/v1/agent/billing-token",
        Auth::Agent,
        "The instance's billing access keys, for the agent's token file",
    ),
    route(
        "post",
        billing::SIMPLE_PUSH_PATH,
        Auth::ServiceToken,
        "Billing emulator: simple usage push (VK marketplace API)",
    ),
    route(
        "get",
        billing::AUTH_KEY_PATH,
        Auth::BillingKey,
        "Billing emulator: the current access keys, rotated when due",
    ),
    route(
        "post",
        billing::DECRYPT_PATH,
        Auth::BillingKey,
        "Billing emulator: decrypt and check an encrypted push (counts nothing)",
    ),
    route(
        "post",
        billing::PUSH_PATH,
        Auth::BillingKey,
        "Billing emulator: secure (encrypted) usage push",
    ),
];

/// The web console's routes ([`console`]): HTML for a browser, behind the
/// operator token or a console session; left out of the OpenAPI document
/// (they are not API), and the console's tests check each is routed.
pub const CONSOLE_ROUTES: &[RouteInfo] = {
    use ibkit_console::paths;
    &[
        route(
            "get",
            paths::LIST,
            Auth::Operator,
            "Console: the instance list",
        ),
        route(
            "get",
            paths::LIST_LIVE,
            Auth::Operator,
            "Console: the instance list's live part",
        ),
        route("get", paths::LOGIN, Auth::None, "Console: the login form"),
        route(
            "post",
            paths::LOGIN,
            Auth::None,
            "Console: log in with the operator token",
        ),
        route("post", paths::LOGOUT, Auth::None, "Console: log out"),
        route("get", paths::SCRIPT, Auth::None, "Console: its script"),
        route("get", paths::STYLE, Auth::None, "Console: its style sheet"),
        route(
            "get",
            paths::INSTANCE,
            Auth::Operator,
            "Console: an instance",
        ),
        route(
            "get",
            paths::INSTANCE_LIVE,
            Auth::Operator,
            "Console: an instance's live part",
        ),
        route(
            "get",
            paths::LOG,
            Auth::Operator,
            "Console: a step's log, paged",
        ),
        route(
            "get",
            paths::RESULT,
            Auth::Operator,
            "Console: a step's result, revealed",
        ),
    ]
};

const fn route(
    method: &'static str,
    path: &'static str,
    auth: Auth,
    summary: &'static str,
) -> RouteInfo {
    RouteInfo {
        method,
        path,
        auth,
        summary,
    }
}

/// The route of operator endpoint `E`.
pub fn endpoint_route<E: Endpoint>() -> RouteInfo {
    let method = match E::METHOD {
        Method::Get => "get",
        Method::Post => "post",
        Method::Put => "put",
        Method::Delete => "delete",
    };
    route(method, E::PATH, Auth::Operator, E::SUMMARY)
}

/// Every route the service answers, in the OpenAPI document's order.
pub fn routes() -> Vec<RouteInfo> {
    let mut v = SERVICE_ROUTES.to_vec();
    macro_rules! add {
        ($e:ty) => {
            v.push(endpoint_route::<$e>());
        };
    }
    ibkit_api::for_each_operator_endpoint!(add);
    v
}

/// Mounts operator endpoint `E` at its path and method.
fn mount<E: Serve>(router: Router<Arc<AppState>>) -> Router<Arc<AppState>> {
    let filter = match E::METHOD {
        Method::Get => MethodFilter::GET,
        Method::Post => MethodFilter::POST,
        Method::Put => MethodFilter::PUT,
        Method::Delete => MethodFilter::DELETE,
    };
    router.route(E::PATH, on(filter, operator::handle::<E>))
}

pub fn router(state: Arc<AppState>) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(docs::healthz))
        .route(crate::metrics::PATH, get(crate::metrics::scrape))
        .route("/v1/openapi.json", get(docs::openapi))
        .route("/v1/agent/install.sh", get(docs::install_sh))
        .route("/v1/agent/binary", get(docs::binary))
        .route(docs::AGENT_DEB_PATH, get(docs::agent_deb))
        .route("/v1/agent/pair", post(agent::pair))
        .route("/v1/agent/work", get(agent::work))
        .route(
            "/v1/agent/reports",
            post(agent::report).layer(DefaultBodyLimit::max(ibkit_api::wire::MAX_REPORT_BYTES)),
        )
        .route("/v1/agent/heartbeat", post(agent::heartbeat))
        .route("/v1/agent/health", post(agent::health))
        .route("/v1/agent/billing-token", get(agent::billing_token))
        .route(billing::AUTH_KEY_PATH, get(billing::secure::auth_key));
    // Pushes take at most 64 KiB (413 beyond).
    let push_limit = || DefaultBodyLimit::max(billing::MAX_BODY_BYTES);
    router = router
        .route(
            billing::SIMPLE_PUSH_PATH,
            post(billing::simple::push).layer(push_limit()),
        )
        .route(
            billing::DECRYPT_PATH,
            post(billing::secure::decrypt).layer(push_limit()),
        )
        .route(
            billing::PUSH_PATH,
            post(billing::secure::push).layer(push_limit()),
        );
    macro_rules! mount {
        ($e:ty) => {
            router = mount::<$e>(router);
        };
    }
    ibkit_api::for_each_operator_endpoint!(mount);
    router
        .merge(console::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(1 << 20))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::count_requests,
        ))
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

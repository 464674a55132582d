//! The web console (`/console`): read-only pages `ibkit_console` renders
//! from the data the operator endpoints answer (their `serve` functions and
//! the same store functions), behind the operator token.
//!
//! A browser logs in with the operator token in a form and gets a session
//! cookie (random id, only its SHA-256 kept in memory, 12 h); API clients
//! may send `Authorization: Bearer <operator token>` instead. Pages without
//! either redirect to the login form; the live endpoints the script polls
//! answer 401. Every answer carries a strict Content-Security-Policy (no
//! inline script or style), `nosniff` and no framing.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use ibkit_api::operator::endpoint::{self as ep};
use ibkit_api::operator::{GroupName, HostName, InstanceId, NoBody, NoQuery, RecoveryQuery};
use ibkit_console::{self as console, paths};
use ibkit_support::clock::now_ms;
use serde::Deserialize;

use super::operator::Serve;
use crate::AppState;
use crate::auth::{bearer, hash_secret, is_operator_token, new_secret};
use crate::error::{ApiError, ApiResult};
use crate::{dispatch, store};

/// How long a console session lasts.
const SESSION_TTL_MS: i64 = 12 * 3600 * 1000;
/// Sessions kept at most; past it the oldest is dropped (a login loop
/// cannot grow the service's memory).
const MAX_SESSIONS: usize = 256;
/// Failed logins accepted per minute, all clients together; past it the
/// form answers 429 without checking the token (guessing a 256-bit token
/// is hopeless anyway; this keeps a flood cheap).
const MAX_FAILED_LOGINS_PER_MINUTE: usize = 10;

/// The console's sessions and recent failed logins.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<SessionState>,
}

#[derive(Default)]
struct SessionState {
    /// SHA-256 of a session id → when it expires (Unix ms).
    live: HashMap<String, i64>,
    /// When recent logins failed (Unix ms), oldest first.
    failures: VecDeque<i64>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, SessionState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session; returns its id (the cookie's value).
    fn create(&self, now: i64) -> String {
        let id = new_secret("cs_");
        let mut st = self.lock();
        st.live.retain(|_, exp| *exp > now);
        while st.live.len() >= MAX_SESSIONS {
            let oldest = st
                .live
                .iter()
                .min_by_key(|(_, exp)| **exp)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => st.live.remove(&k),
                None => break,
            };
        }
        st.live.insert(hash_secret(&id), now + SESSION_TTL_MS);
        id
    }

    fn valid(&self, id: &str, now: i64) -> bool {
        self.lock()
            .live
            .get(&hash_secret(id))
            .is_some_and(|exp| *exp > now)
    }

    fn end(&self, id: &str) {
        self.lock().live.remove(&hash_secret(id));
    }

    /// Whether another login may be tried now.
    fn login_allowed(&self, now: i64) -> bool {
        let mut st = self.lock();
        while st.failures.front().is_some_and(|t| *t <= now - 60_000) {
            st.failures.pop_front();
        }
        st.failures.len() < MAX_FAILED_LOGINS_PER_MINUTE
    }

    fn failed_login(&self, now: i64) {
        self.lock().failures.push_back(now);
    }
}

/// The session cookie's value, if the request has one.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == console::SESSION_COOKIE)
        .map(|(_, v)| v)
}

/// The operator token as a bearer, or a live session cookie.
fn authorized(headers: &HeaderMap, state: &AppState) -> bool {
    if let Some(token) = bearer(headers) {
        return is_operator_token(state, token);
    }
    session_cookie(headers).is_some_and(|id| state.console_sessions.valid(id, now_ms()))
}

/// A page request from an operator; anyone else is sent to the login form.
pub struct PageUser;

impl FromRequestParts<Arc<AppState>> for PageUser {
    type Rejection = Redirect;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        if authorized(&parts.headers, state) {
            Ok(PageUser)
        } else {
            Err(Redirect::to(paths::LOGIN))
        }
    }
}

/// A live-data request from an operator; anyone else gets 401 (the script
/// says the session expired).
pub struct DataUser;

impl FromRequestParts<Arc<AppState>> for DataUser {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        if authorized(&parts.headers, state) {
            Ok(DataUser)
        } else {
            Err(ApiError::unauthorized(
                "console session required (log in at /console/login) or Authorization: Bearer TOKEN",
            ))
        }
    }
}

/// An error shown as an HTML page with its status.
pub struct PageError(ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        if self.0.status.is_server_error() {
            tracing::error!("console: {}", self.0.message);
        }
        (
            self.0.status,
            Html(console::error_page(self.0.status.as_u16(), &self.0.message)),
        )
            .into_response()
    }
}

type PageResult = Result<Html<String>, PageError>;

/// The console's routes (see `super::CONSOLE_ROUTES`), with the security
/// headers on every answer.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route(paths::LIST, get(list))
        .route(paths::LIST_LIVE, get(list_live))
        .route(paths::LOGIN, get(login_form).post(login))
        .route(paths::LOGOUT, post(logout))
        .route(paths::SCRIPT, get(script))
        .route(paths::STYLE, get(style))
        .route(paths::INSTANCE, get(instance))
        .route(paths::INSTANCE_LIVE, get(instance_live))
        .route(paths::LOG, get(log))
        .route(paths::RESULT, get(result))
        .layer(axum::middleware::map_response(security_headers))
}

async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(console::CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Pages show live state and secrets-adjacent data: never cached.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        console::SCRIPT,
    )
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        console::STYLE,
    )
}

async fn login_form(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if authorized(&headers, &s) {
        return Redirect::to(paths::LIST).into_response();
    }
    Html(console::login_page(None)).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(s): State<Arc<AppState>>, Form(form): Form<LoginForm>) -> Response {
    let now = now_ms();
    if !s.console_sessions.login_allowed(now) {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            Html(console::login_page(Some(
                "Too many failed logins: wait a minute and try again.",
            ))),
        )
            .into_response();
    }
    if !is_operator_token(&s, form.token.trim()) {
        s.console_sessions.failed_login(now);
        tracing::warn!("console: a login with a wrong operator token");
        return (
            StatusCode::UNAUTHORIZED,
            Html(console::login_page(Some("Wrong operator token."))),
        )
            .into_response();
    }
    let id = s.console_sessions.create(now);
    let cookie = format!(
        "{}={id}; Path={}; HttpOnly; SameSite=Strict; Max-Age={}{}",
        console::SESSION_COOKIE,
        console::BASE,
        SESSION_TTL_MS / 1000,
        // Over TLS the cookie never travels in clear.
        if s.cert_sha256.is_some() {
            "; Secure"
        } else {
            ""
        }
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to(paths::LIST)).into_response()
}

async fn logout(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        s.console_sessions.end(id);
    }
    let cookie = format!(
        "{}=; Path={}; HttpOnly; SameSite=Strict; Max-Age=0",
        console::SESSION_COOKIE,
        console::BASE
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to(paths::LOGIN)).into_response()
}

/// The list's rows: `GET /v1/instances`' answer with each one's host count.
async fn list_rows(s: &Arc<AppState>) -> ApiResult<Vec<console::ListRow>> {
    let summaries =
        ep::ListInstances::serve(s.clone(), ep::NoParams {}, NoQuery {}, NoBody).await?;
    let st = s.clone();
    s.db.read(move |c| {
        summaries
            .into_iter()
            .map(|summary| {
                let hosts = dispatch::spec_of(&st, c, summary.id.as_str())?
                    .host_names()
                    .count();
                Ok(console::ListRow { summary, hosts })
            })
            .collect::<ApiResult<_>>()
    })
    .await
}

async fn list(_: PageUser, State(s): State<Arc<AppState>>) -> PageResult {
    Ok(Html(console::list_page(&list_rows(&s).await?)))
}

async fn list_live(_: DataUser, State(s): State<Arc<AppState>>) -> ApiResult<Html<String>> {
    Ok(Html(console::list_live(&list_rows(&s).await?)))
}

fn instance_id(text: &str) -> ApiResult<InstanceId> {
    InstanceId::parse(text).map_err(|e| ApiError::not_found(format!("no instance {text:?}: {e}")))
}

/// What the instance page shows: `GET /v1/instances/{id}`'s answer, and per
/// host its health results and steps (without logs), and the recovery
/// requests, read with the operator endpoints' store functions.
async fn instance_view(s: &Arc<AppState>, id: InstanceId) -> ApiResult<console::InstanceView> {
    let detail = ep::GetInstance::serve(
        s.clone(),
        ep::InstancePath { id: id.clone() },
        NoQuery {},
        NoBody,
    )
    .await?;
    let st = s.clone();
    let hosts: Vec<String> = detail.hosts.iter().map(|h| h.name.to_string()).collect();
    let (checks, steps, recovery, deployment) =
        s.db.read(move |c| {
            let spec = dispatch::spec_of(&st, c, id.as_str())?;
            let mut checks = BTreeMap::new();
            let mut steps = BTreeMap::new();
            for h in hosts {
                checks.insert(h.clone(), store::health::list(c, id.as_str(), &h)?);
                let mut rows: Vec<console::StepRow> =
                    store::steps::list_for_host_log_sizes(c, id.as_str(), &h)?
                        .into_iter()
                        .map(|(view, n)| console::StepRow {
                            view,
                            log_bytes: n.and_then(|n| u64::try_from(n).ok()),
                        })
                        .collect();
                // Dispatch order, as `GET …/steps` lists them.
                spec.sort_in_dispatch_order(&mut rows, |r| (r.view.group.as_str(), r.view.index));
                steps.insert(h, rows);
            }
            let recovery = store::recovery::list(
                c,
                &RecoveryQuery {
                    status: None,
                    instance: Some(id.clone()),
                },
            )?;
            let deployment = store::deployments::get(c, id.as_str())?;
            Ok::<_, ApiError>((checks, steps, recovery, deployment))
        })
        .await?;
    Ok(console::InstanceView {
        detail,
        checks,
        steps,
        recovery,
        deployment,
    })
}

async fn instance(
    _: PageUser,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> PageResult {
    let view = instance_view(&s, instance_id(&id)?).await?;
    let sections = console::instance_sections(&view, now_ms());
    Ok(Html(console::instance_page(&view.detail, &sections)))
}

async fn instance_live(
    _: DataUser,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Html<String>> {
    let view = instance_view(&s, instance_id(&id)?).await?;
    Ok(Html(console::instance_live(&console::instance_sections(
        &view,
        now_ms(),
    ))))
}

/// A step's path parameters, checked like the API's.
fn step_path((id, host, group, index): (String, String, String, u32)) -> ApiResult<ep::StepPath> {
    let not_found = |what: &str, e: String| ApiError::not_found(format!("no {what}: {e}"));
    Ok(ep::StepPath {
        id: instance_id(&id)?,
        host: HostName::parse(&host).map_err(|e| not_found("host", e.to_string()))?,
        group: GroupName::parse(&group).map_err(|e| not_found("group", e.to_string()))?,
        index,
    })
}

#[derive(Deserialize)]
struct LogQuery {
    page: Option<u64>,
}

async fn log(
    _: PageUser,
    State(s): State<Arc<AppState>>,
    Path(p): Path<(String, String, String, u32)>,
    Query(q): Query<LogQuery>,
) -> PageResult {
    let p = step_path(p)?;
    let page = q.page.unwrap_or(1);
    let (offset, len) =
        console::log::range(page).ok_or_else(|| ApiError::bad_request("pages count from 1"))?;
    let key = (p.host.to_string(), p.group.to_string(), p.index);
    let id = p.id.to_string();
    let k = key.clone();
    let found =
        s.db.read(move |c| Ok::<_, ApiError>(store::steps::log_range(c, &id, &k, offset, len)?))
            .await?;
    let (status, log) = found.ok_or_else(|| {
        ApiError::not_found(format!(
            "no step {}/{}/{} in instance {}",
            key.0, key.1, key.2, p.id
        ))
    })?;
    let (bytes, total) = log.unwrap_or_default();
    let total = u64::try_from(total).unwrap_or(0);
    if page > console::log::pages(total) {
        return Err(ApiError::not_found(format!(
            "the log has {} page(s)",
            console::log::pages(total)
        ))
        .into());
    }
    let text = console::log::page_text(&bytes, page == 1);
    let step = console::StepRef {
        instance: p.id.as_str(),
        host: p.host.as_str(),
        group: p.group.as_str(),
        index: p.index,
    };
    Ok(Html(console::log_page(&step, status, page, total, &text)))
}

async fn result(
    _: PageUser,
    State(s): State<Arc<AppState>>,
    Path(p): Path<(String, String, String, u32)>,
) -> PageResult {
    let p = step_path(p)?;
    let r = ep::GetStepResult::serve(s, p.clone(), NoQuery {}, NoBody).await?;
    let step = console::StepRef {
        instance: p.id.as_str(),
        host: p.host.as_str(),
        group: p.group.as_str(),
        index: p.index,
    };
    Ok(Html(console::result_page(
        &step,
        r.raw.as_deref(),
        r.structured.as_ref(),
    )))
}

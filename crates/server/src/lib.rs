//! `ibkit serve`: the configuration service the agents talk to (SPEC §2):
//! desired state, dispatch of steps, results, heartbeats, health and
//! recovery requests. HTTPS + JSON, state in SQLite.

pub mod auth;
pub mod billing;
pub mod config;
pub mod db;
pub mod dispatch;
pub mod error;
pub mod metrics;
pub mod monitor;
pub mod openapi;
pub mod routes;
pub mod store;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use ibkit_api::InstanceSpec;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

pub use config::{ServeConfig, TlsMode};
use db::Db;
use error::ApiError;

/// Last time an agent was heard from, kept in memory and flushed to the DB.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at_ms: i64,
    pub agent_version: String,
    pub dirty: bool,
}

/// Shared state of the running service.
pub struct AppState {
    pub db: Db,
    pub cfg: ServeConfig,
    pub public_url: String,
    /// SHA-256 of the certificate served (local clients pin it).
    pub cert_sha256: Option<String>,
    /// The certificate hash agents and installers pin: only the generated
    /// self-signed certificate's. An operator-provided certificate is
    /// verified with the CA roots, so it can be renewed without breaking
    /// every agent.
    pub agent_cert_sha256: Option<String>,
    /// curl's pin, when the certificate is self-signed.
    pub curl_pin: Option<String>,
    pub operator_token_hash: String,
    /// SHA-256 of the token that opens `/metrics` only (`--metrics-token-file`).
    pub metrics_token_hash: Option<String>,
    /// The counters and histograms of `/metrics` (this service's own).
    pub metrics: metrics::Metrics,
    pub started_at_ms: i64,
    pub agent_binary: PathBuf,
    pub heartbeats: Mutex<HashMap<(String, String), Seen>>,
    /// Agent binary downloads in progress (`--max-agent-downloads`).
    pub downloads: Arc<tokio::sync::Semaphore>,
    /// KiB of report bodies being received or applied at once, all hosts.
    pub report_kib: Arc<tokio::sync::Semaphore>,
    /// One report at a time per host, so one host cannot hold the budget.
    report_slots: Mutex<HashMap<(String, String), Arc<tokio::sync::Semaphore>>>,
    watchers: Mutex<HashMap<String, HashMap<String, watch::Sender<u64>>>>,
    specs: Mutex<HashMap<String, Arc<InstanceSpec>>>,
    /// The marketplace billing emulator (its key pair).
    pub billing: billing::Billing,
    /// The web console's browser sessions (in memory: a restart logs out).
    pub console_sessions: routes::console::Sessions,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// KiB of report bodies received and applied at once, all hosts: one of the
/// largest plus room for the small ones beside it. A report costs about
/// three times its body while it is parsed (the body, and serde's buffers
/// for the wire type's flattened, tagged event), so this bounds that cost
/// near 60 MiB whatever the agents send.
pub const REPORT_BUDGET_KIB: usize = (ibkit_api::wire::MAX_REPORT_BYTES + (4 << 20)) / 1024;

/// The permits a report holds while it is received and applied.
pub struct ReportPermit {
    _host: tokio::sync::OwnedSemaphorePermit,
    _bytes: tokio::sync::OwnedSemaphorePermit,
}

impl AppState {
    /// Waits for the host's report slot, then for `declared` bytes (the
    /// Content-Length; the largest report when unknown) of the budget.
    pub async fn report_permit(
        &self,
        inst: &str,
        host: &str,
        declared: Option<usize>,
    ) -> Result<ReportPermit, ApiError> {
        let slot = lock(&self.report_slots)
            .entry((inst.to_string(), host.to_string()))
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(1)))
            .clone();
        let closed = |_| ApiError::internal("the service is stopping");
        let host = slot.acquire_owned().await.map_err(closed)?;
        let max = ibkit_api::wire::MAX_REPORT_BYTES;
        let kib = declared.unwrap_or(max).min(max).div_ceil(1024).max(1);
        let bytes = self
            .report_kib
            .clone()
            .acquire_many_owned(u32::try_from(kib).unwrap_or(u32::MAX))
            .await
            .map_err(closed)?;
        Ok(ReportPermit {
            _host: host,
            _bytes: bytes,
        })
    }

    pub fn cached_spec(&self, inst: &str) -> Option<Arc<InstanceSpec>> {
        lock(&self.specs).get(inst).cloned()
    }
    pub fn cache_spec(&self, inst: &str, spec: Arc<InstanceSpec>) {
        lock(&self.specs).insert(inst.to_string(), spec);
    }
    pub fn forget_spec(&self, inst: &str) {
        lock(&self.specs).remove(inst);
    }

    /// Subscribe to changes for a host (before reading the DB).
    pub fn subscribe(&self, inst: &str, host: &str) -> watch::Receiver<u64> {
        let mut w = lock(&self.watchers);
        w.entry(inst.to_string())
            .or_default()
            .entry(host.to_string())
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe()
    }
    pub fn notify_host(&self, inst: &str, host: &str) {
        if let Some(hosts) = lock(&self.watchers).get(inst)
            && let Some(tx) = hosts.get(host)
        {
            tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }
    pub fn notify_instance(&self, inst: &str) {
        if let Some(hosts) = lock(&self.watchers).get(inst) {
            for tx in hosts.values() {
                tx.send_modify(|v| *v = v.wrapping_add(1));
            }
        }
    }

    /// Last seen of a host in memory (newer than the DB's).
    pub fn seen(&self, inst: &str, host: &str) -> Option<Seen> {
        lock(&self.heartbeats)
            .get(&(inst.to_string(), host.to_string()))
            .cloned()
    }
    pub fn record_heartbeat(&self, inst: &str, host: &str, agent_version: &str) {
        lock(&self.heartbeats).insert(
            (inst.to_string(), host.to_string()),
            Seen {
                at_ms: ibkit_support::clock::now_ms(),
                agent_version: agent_version.to_string(),
                dirty: true,
            },
        );
    }
    /// Writes pending heartbeats to the DB.
    pub async fn flush_heartbeats(self: &Arc<Self>) -> Result<(), ApiError> {
        let dirty: Vec<((String, String), Seen)> = {
            let mut hb = lock(&self.heartbeats);
            hb.iter_mut()
                .filter(|(_, s)| s.dirty)
                .map(|(k, s)| {
                    s.dirty = false;
                    (k.clone(), s.clone())
                })
                .collect()
        };
        if dirty.is_empty() {
            return Ok(());
        }
        self.db
            .write(move |c| {
                let tx = c.transaction()?;
                store::hosts::flush_heartbeats(
                    &tx,
                    dirty.iter().map(|((i, h), s)| {
                        (i.as_str(), h.as_str(), s.at_ms, s.agent_version.as_str())
                    }),
                )?;
                tx.commit()?;
                Ok::<_, ApiError>(())
            })
            .await
    }
}

/// How long a client may take to send a request body (a 16 MiB report
/// needs about 56 KB/s): a slow sender cannot hold its permits forever.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// JSON body extractor whose rejections are JSON errors (never a plain-text
/// 422). The body (at most the route's `DefaultBodyLimit`) is read into one
/// buffer sized from its Content-Length and deserialized straight into `T`:
/// no second copy of the body and no `serde_json::Value` of it.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .is_some_and(|m| m == "application/json" || m.ends_with("+json"));
        if !is_json {
            return Err(ApiError::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected a JSON body (Content-Type: application/json)",
            ));
        }
        let body = tokio::time::timeout(BODY_TIMEOUT, read_body(req))
            .await
            .map_err(|_| {
                ApiError::new(
                    axum::http::StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request body did not arrive within {}s",
                        BODY_TIMEOUT.as_secs()
                    ),
                )
            })??;
        serde_json::from_slice(&body)
            .map(ApiJson)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// The body, within the route's limit, in one buffer.
async fn read_body(req: Request) -> Result<Vec<u8>, ApiError> {
    use axum::RequestExt as _;
    use http_body_util::BodyExt as _;
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let mut body = req.into_limited_body();
    // Never trust a declared length beyond the largest body any route takes.
    let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(ibkit_api::wire::MAX_REPORT_BYTES));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(s) = src {
                if s.is::<http_body_util::LengthLimitError>() {
                    return ApiError::new(
                        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                        "the request body is larger than this route accepts",
                    );
                }
                src = s.source();
            }
            ApiError::bad_request(format!("cannot read the request body: {e}"))
        })?;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

/// Query extractor with JSON errors. Operator routes use structs with
/// `#[serde(deny_unknown_fields)]` ([`NoQuery`] when the route takes
/// none): a misspelt filter (`?stauts=open`) is refused, never ignored.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|rej| {
                let text = rej.body_text();
                let text = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text);
                // serde's words, after the path axum puts in front.
                match text.find("unknown field ").map(|i| &text[i + 14..]) {
                    Some(rest) => ApiError::bad_request(format!(
                        "unknown query parameter {}",
                        rest.replace("there are no fields", "this route takes none")
                    )),
                    None => ApiError::bad_request(format!("invalid query: {text}")),
                }
            })
    }
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    write_atomic(path, data, 0o600)
}

/// What `ibkit serve` sets before it creates anything: files and
/// directories it (or the deployment recovery inside it) creates are its
/// user's only, whatever the caller's umask.
pub fn set_private_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// Creates `dir` (mode 0700), or narrows an existing one to its owner: it
/// holds the database (every script, variable and result), the TLS key and
/// the operator token. A directory others may write to (e.g. `/tmp`) is
/// refused rather than narrowed.
pub fn prepare_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let meta = std::fs::metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if !meta.is_dir() {
        anyhow::bail!("{} is not a directory", dir.display());
    }
    if mode & 0o1002 != 0 {
        anyhow::bail!(
            "{} is writable by other users (mode {mode:04o}): use a private directory for the state",
            dir.display()
        );
    }
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private (mode 0700)", dir.display()))?;
        tracing::warn!(
            "{} was mode {mode:04o}; narrowed to 0700 (it holds secrets)",
            dir.display()
        );
    }
    Ok(())
}

/// Narrows an existing file to mode 0600 when group or others may read it.
pub(crate) fn narrow_to_owner(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::symlink_metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private (mode 0600)", path.display()))?;
    }
    Ok(())
}

fn write_atomic(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    ibkit_support::fs::write_atomic(path, data, mode)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `STATE/endpoint.json` so a local `ibkit deploy` finds the service.
fn write_endpoint(state_dir: &Path, url: &str, cert_sha256: Option<&str>) -> anyhow::Result<()> {
    let endpoint = ibkit_api::wire::ServiceEndpoint {
        url: url.to_string(),
        cert_sha256: cert_sha256.map(str::to_string),
    };
    let mut json = serde_json::to_vec_pretty(&endpoint)?;
    json.push(b'\n');
    // Private like the rest of the state (only the service's user, who runs
    // a local `ibkit deploy`, reads it).
    write_private(
        &state_dir.join(ibkit_api::wire::ServiceEndpoint::FILE_NAME),
        &json,
    )
}

fn operator_token_hash(cfg: &ServeConfig) -> anyhow::Result<String> {
    let path = cfg
        .operator_token_file
        .clone()
        .unwrap_or_else(|| cfg.state_dir.join("operator-token"));
    let token = match std::fs::read_to_string(&path) {
        Ok(s) => {
            if cfg.operator_token_file.is_none() {
                narrow_to_owner(&path)?;
            } else if let Ok(m) = std::fs::metadata(&path)
                && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o077 != 0
            {
                tracing::warn!(
                    "the operator token file {} is readable by group or others",
                    path.display()
                );
            }
            s.trim().to_string()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let t = auth::new_secret("op_");
            write_private(&path, format!("{t}\n").as_bytes())?;
            tracing::info!("generated the operator token in {}", path.display());
            t
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if token.is_empty() {
        anyhow::bail!("the operator token file {} is empty", path.display());
    }
    Ok(auth::hash_secret(&token))
}

/// The metrics token's hash, when `--metrics-token-file` is given. Never
/// generated: without the file only the operator token opens `/metrics`.
fn metrics_token_hash(cfg: &ServeConfig) -> anyhow::Result<Option<String>> {
    let Some(path) = &cfg.metrics_token_file else {
        return Ok(None);
    };
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the metrics token file {}", path.display()))?;
    if let Ok(m) = std::fs::metadata(path)
        && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o077 != 0
    {
        tracing::warn!(
            "the metrics token file {} is readable by group or others",
            path.display()
        );
    }
    let token = token.trim();
    if token.is_empty() {
        anyhow::bail!("the metrics token file {} is empty", path.display());
    }
    Ok(Some(auth::hash_secret(token)))
}

/// `--public-url`, checked: it is pasted into the installer and the install
/// command, so only characters that need no shell quoting (the installer's
/// own rule for `--server-url`).
fn check_public_url(url: &str) -> anyhow::Result<String> {
    let url = url.trim_end_matches('/');
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .filter(|r| !r.is_empty());
    let Some(rest) = rest else {
        anyhow::bail!("--public-url {url:?} must start with https:// or http://");
    };
    if let Some(c) = rest
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ".:/_[]-".contains(*c)))
    {
        anyhow::bail!(
            "--public-url {url:?} has the character {c:?}; allowed after the scheme: \
             A-Z a-z 0-9 . : / _ [ ] -"
        );
    }
    Ok(url.to_string())
}

/// A started service.
pub struct Server {
    pub local_addr: SocketAddr,
    /// The public URL (installers and agents use it).
    pub url: String,
    pub cert_sha256: Option<String>,
    pub state: Arc<AppState>,
    handle: axum_server::Handle<SocketAddr>,
    serve: tokio::task::JoinHandle<std::io::Result<()>>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Opens the state, binds the listener and starts serving.
    pub async fn start(cfg: ServeConfig) -> anyhow::Result<Server> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        if !(config::MIN_BILLING_KEY_TTL..=config::MAX_BILLING_KEY_TTL)
            .contains(&cfg.billing_key_ttl)
        {
            anyhow::bail!("the billing key lifetime must be between 2s and 365 days");
        }
        prepare_private_dir(&cfg.state_dir)?;
        let tls = tls::load(&cfg.tls, &cfg.state_dir)?;
        let token_hash = operator_token_hash(&cfg)?;
        let metrics_token_hash = metrics_token_hash(&cfg)?;
        let metrics = metrics::Metrics::new();
        let mut db = Db::open(&cfg.state_dir.join("ibkit.db"), 4, cfg.pairing_key_ttl)?;
        db.time_writes(metrics.db_write_seconds());
        let listener = std::net::TcpListener::bind(cfg.listen)
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let local_addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = match &cfg.public_url {
            Some(u) => check_public_url(u)?,
            None => {
                let host = if local_addr.ip().is_unspecified() {
                    config::hostname().unwrap_or_else(|| "127.0.0.1".into())
                } else {
                    match local_addr.ip() {
                        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                        ip => ip.to_string(),
                    }
                };
                format!("{scheme}://{host}:{}", local_addr.port())
            }
        };
        let agent_binary = match &cfg.agent_binary {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("ibkit-agent")))
                .unwrap_or_else(|| PathBuf::from("ibkit-agent")),
        };
        let state = Arc::new(AppState {
            db,
            public_url: url.clone(),
            cert_sha256: tls.as_ref().map(|t| t.cert_sha256.clone()),
            agent_cert_sha256: tls
                .as_ref()
                .filter(|t| t.self_signed)
                .map(|t| t.cert_sha256.clone()),
            curl_pin: tls
                .as_ref()
                .filter(|t| t.self_signed)
                .map(|t| t.curl_pin.clone()),
            operator_token_hash: token_hash,
            metrics_token_hash,
            metrics,
            started_at_ms: ibkit_support::clock::now_ms(),
            agent_binary,
            heartbeats: Mutex::new(HashMap::new()),
            downloads: Arc::new(tokio::sync::Semaphore::new(cfg.max_agent_downloads.max(1))),
            report_kib: Arc::new(tokio::sync::Semaphore::new(REPORT_BUDGET_KIB)),
            report_slots: Mutex::new(HashMap::new()),
            watchers: Mutex::new(HashMap::new()),
            specs: Mutex::new(HashMap::new()),
            billing: billing::Billing::new(&cfg.state_dir),
            console_sessions: routes::console::Sessions::default(),
            cfg,
        });
        let app = routes::router(state.clone());
        let handle = axum_server::Handle::new();
        let serve = match &tls {
            Some(t) => {
                let rc = axum_server::tls_rustls::RustlsConfig::from_pem(
                    t.cert_pem.clone(),
                    t.key_pem.clone(),
                )
                .await
                .context("cannot use the TLS certificate")?;
                let server = axum_server::from_tcp_rustls(listener, rc)?.handle(handle.clone());
                tokio::spawn(server.serve(app.into_make_service()))
            }
            None => {
                let server = axum_server::from_tcp(listener)?.handle(handle.clone());
                tokio::spawn(server.serve(app.into_make_service()))
            }
        };
        if let Err(e) = write_endpoint(&state.cfg.state_dir, &url, state.cert_sha256.as_deref()) {
            handle.shutdown();
            return Err(e);
        }
        let background = monitor::spawn(state.clone());
        tracing::info!("ibkit serve listening on {local_addr}, public URL {url}");
        Ok(Server {
            local_addr,
            url,
            cert_sha256: state.cert_sha256.clone(),
            state,
            handle,
            serve,
            background,
        })
    }

    /// The ready line on stdout: `ibkit serve listening on URL cert-sha256 HEX`.
    pub fn print_ready(&self) -> anyhow::Result<()> {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "ibkit serve listening on {} cert-sha256 {}",
            self.url,
            self.cert_sha256.as_deref().unwrap_or("none")
        )?;
        out.flush()?;
        Ok(())
    }

    /// The service as a client on this machine reaches it: the bound port
    /// on loopback when listening on every address (the public URL may name
    /// a host that does not resolve here).
    pub fn local_url(&self) -> String {
        let scheme = if self.state.cfg.tls_enabled() {
            "https"
        } else {
            "http"
        };
        let ip = if self.local_addr.ip().is_unspecified() {
            match self.local_addr.ip() {
                std::net::IpAddr::V6(_) => "[::1]".to_string(),
                std::net::IpAddr::V4(_) => "127.0.0.1".to_string(),
            }
        } else {
            match self.local_addr.ip() {
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            }
        };
        format!("{scheme}://{ip}:{}", self.local_addr.port())
    }

    /// The operator token file in use.
    pub fn operator_token_file(&self) -> PathBuf {
        self.state
            .cfg
            .operator_token_file
            .clone()
            .unwrap_or_else(|| self.state.cfg.state_dir.join("operator-token"))
    }

    /// Stops serving, flushes heartbeats.
    pub async fn shutdown(self) {
        self.handle.shutdown();
        for b in &self.background {
            b.abort();
        }
        let _ = self.serve.await;
        let _ = self.state.flush_heartbeats().await;
    }

    /// Serves until the server stops or ctrl-c / SIGTERM.
    pub async fn wait(self) -> anyhow::Result<()> {
        let handle = self.handle.clone();
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("stopping");
            let _ = state.flush_heartbeats().await;
            handle.graceful_shutdown(Some(std::time::Duration::from_secs(2)));
        });
        let r = self.serve.await;
        let _ = self.state.flush_heartbeats().await;
        r.context("server task failed")?.context("server failed")
    }
}

/// Runs `ibkit serve`: prints the ready line on stdout, serves until stopped.
pub async fn run(config: ServeConfig) -> anyhow::Result<()> {
    let server = Server::start(config).await?;
    server.print_ready()?;
    server.wait().await
}

/// The router, for tests that want it without a listener.
pub fn app(state: Arc<AppState>) -> Router {
    routes::router(state)
}

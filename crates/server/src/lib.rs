//! `ibkit serve`: the configuration service the agents talk to (SPEC §2):
//! desired state, dispatch of steps, results, heartbeats, health and
//! recovery requests. HTTPS + JSON, state in SQLite.

pub mod auth;
pub mod config;
pub mod db;
pub mod dispatch;
pub mod error;
pub mod monitor;
pub mod openapi;
pub mod routes;
pub mod tls;
pub mod views;

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
    pub cert_sha256: Option<String>,
    /// curl's pin, when the certificate is self-signed.
    pub curl_pin: Option<String>,
    pub operator_token_hash: String,
    pub started_at_ms: i64,
    pub agent_binary: PathBuf,
    pub heartbeats: Mutex<HashMap<(String, String), Seen>>,
    watchers: Mutex<HashMap<String, HashMap<String, watch::Sender<u64>>>>,
    specs: Mutex<HashMap<String, Arc<InstanceSpec>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AppState {
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
                at_ms: db::now_ms(),
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
                {
                    let mut stmt = tx.prepare_cached(
                        "UPDATE hosts SET last_heartbeat_at = MAX(COALESCE(last_heartbeat_at, 0), ?3),
                         agent_version = COALESCE(NULLIF(?4, ''), agent_version) WHERE instance = ?1 AND name = ?2",
                    )?;
                    for ((i, h), s) in &dirty {
                        stmt.execute(rusqlite::params![i, h, s.at_ms, s.agent_version])?;
                    }
                }
                tx.commit()?;
                Ok(())
            })
            .await
    }
}

/// JSON body extractor whose rejections are JSON errors (never a plain-text 422).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rej) => {
                let status = match rej.status().as_u16() {
                    413 => axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                    415 => axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    _ => axum::http::StatusCode::BAD_REQUEST,
                };
                Err(ApiError::new(status, rej.body_text()))
            }
        }
    }
}

/// Query extractor with JSON errors.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|rej| ApiError::bad_request(rej.body_text()))
    }
}

/// Path extractor with JSON errors.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|rej| ApiError::bad_request(rej.body_text()))
    }
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    write_atomic(path, data, 0o600)
}

/// Writes a file anyone may read (nothing secret in it).
pub fn write_public(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    write_atomic(path, data, 0o644)
}

/// Temporary file, fsync, rename: readers see the old or the new content,
/// never a partial file.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    // The umask may have narrowed the mode, and a stale temp file keeps its own.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Writes `STATE/endpoint.json` so a local `ibkit deploy` finds the service.
fn write_endpoint(state_dir: &Path, url: &str, cert_sha256: Option<&str>) -> anyhow::Result<()> {
    let endpoint = ibkit_api::wire::ServiceEndpoint {
        url: url.to_string(),
        cert_sha256: cert_sha256.map(str::to_string),
    };
    let mut json = serde_json::to_vec_pretty(&endpoint)?;
    json.push(b'\n');
    write_public(
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
        Ok(s) => s.trim().to_string(),
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
        std::fs::create_dir_all(&cfg.state_dir)
            .with_context(|| format!("cannot create {}", cfg.state_dir.display()))?;
        let tls = tls::load(&cfg.tls, &cfg.state_dir)?;
        let token_hash = operator_token_hash(&cfg)?;
        let db = Db::open(&cfg.state_dir.join("ibkit.db"), 4)?;
        let listener = std::net::TcpListener::bind(cfg.listen)
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let local_addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = match &cfg.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
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
            curl_pin: tls
                .as_ref()
                .filter(|t| t.self_signed)
                .map(|t| t.curl_pin.clone()),
            operator_token_hash: token_hash,
            started_at_ms: db::now_ms(),
            agent_binary,
            heartbeats: Mutex::new(HashMap::new()),
            watchers: Mutex::new(HashMap::new()),
            specs: Mutex::new(HashMap::new()),
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

//! The agent's main loops: pairing, heartbeats, the outbox sender, the
//! work loop and health checks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ibkit_api::wire::{Heartbeat, PairRequest, ReportEvent};
use ibkit_support::fs::write_atomic;
use tokio::sync::watch;

use crate::client::{Api, ApiError};
use crate::config::Config;
use crate::executor::{Executor, Known};
use crate::journal::StateDir;
use crate::outbox::{DeliverError, Outbox};

/// How long the service may hold a work request.
pub const WORK_WAIT: Duration = Duration::from_secs(25);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const UNAUTHORIZED_BACKOFF: Duration = Duration::from_secs(30);

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Exponential backoff from 250 ms, capped.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Backoff {
    pub(crate) fn new(cap: Duration) -> Self {
        Backoff {
            next: Duration::from_millis(250),
            cap,
        }
    }
    pub(crate) fn reset(&mut self) {
        self.next = Duration::from_millis(250);
    }
    async fn wait_deliver(&mut self, err: &DeliverError) {
        match err {
            DeliverError::Api(a) => self.wait(a).await,
            DeliverError::Io(_) => tokio::time::sleep(MAX_BACKOFF).await,
            DeliverError::Refused { .. } => {
                tokio::time::sleep(crate::outbox::REFUSED_RETRY).await;
            }
        }
    }

    pub(crate) async fn wait(&mut self, err: &ApiError) {
        if matches!(err, ApiError::Unauthorized(_)) {
            self.next = (self.next * 2).min(self.cap);
            tokio::time::sleep(UNAUTHORIZED_BACKOFF).await;
        } else {
            self.pause().await;
        }
    }

    /// The next pause, for a failure that is not the service's.
    pub(crate) async fn pause(&mut self) {
        let d = self.next;
        self.next = (self.next * 2).min(self.cap);
        tokio::time::sleep(d).await;
    }
}

/// Pairs when there is no credential yet; returns the credential.
///
/// The pairing key is used once: after pairing, `pairing_key_file` is
/// deleted and an inline `pairing_key` is removed from `config_path` (the
/// file `cfg` was read from), so no copy of it stays on the VM.
pub async fn ensure_paired(
    cfg: &Config,
    state: &StateDir,
    config_path: Option<&Path>,
) -> anyhow::Result<String> {
    let path = state.credential_path();
    if let Ok(c) = std::fs::read_to_string(&path)
        && !c.trim().is_empty()
    {
        forget_pairing_key(cfg, config_path);
        return Ok(c.trim().to_string());
    }
    let key = cfg.read_pairing_key()?;
    let api = Api::new(&cfg.server_url, cfg.pin())?;
    let resp = api
        .pair(&PairRequest {
            instance: cfg.instance.clone(),
            host: cfg.host.clone(),
            pairing_key: key,
            agent_version: VERSION.into(),
            protocol: ibkit_api::PROTOCOL_VERSION,
        })
        .await
        .with_context(|| {
            format!(
                "pairing host {} of instance {} with {}",
                cfg.host, cfg.instance, cfg.server_url
            )
        })?;
    write_atomic(&path, resp.credential.as_bytes(), 0o600)
        .with_context(|| format!("saving the credential to {}", path.display()))?;
    tracing::info!(host = %resp.host, instance = %resp.instance, "paired");
    forget_pairing_key(cfg, config_path);
    Ok(resp.credential)
}

/// Deletes the pairing key once a credential is saved (see
/// [`ensure_paired`]); a failure is logged, never fatal.
fn forget_pairing_key(cfg: &Config, config_path: Option<&Path>) {
    if let Some(file) = &cfg.pairing_key_file {
        match std::fs::remove_file(file) {
            Ok(()) => tracing::info!("deleted the used pairing key {}", file.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot delete the used pairing key {}: {e}", file.display()),
        }
    }
    let Some(config_path) = config_path else {
        return;
    };
    if cfg.pairing_key.is_empty() {
        return;
    }
    let scrub = || -> std::io::Result<bool> {
        let text = std::fs::read_to_string(config_path)?;
        let Some(new) = crate::config::without_inline_pairing_key(&text) else {
            return Ok(false);
        };
        let mode = std::fs::metadata(config_path)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
            .unwrap_or(0o600);
        write_atomic(config_path, new.as_bytes(), mode & 0o700)?;
        Ok(true)
    };
    match scrub() {
        Ok(true) => tracing::info!(
            "removed the used pairing key from {}",
            config_path.display()
        ),
        Ok(false) => {}
        Err(e) => tracing::warn!(
            "cannot remove the used pairing key from {}: {e}",
            config_path.display()
        ),
    }
}

/// `ibkit-agent run`: never returns unless setup fails. `config_path` is
/// the file `cfg` was read from (see [`ensure_paired`]).
pub async fn run(cfg: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let started = Instant::now();
    let state = StateDir::open(&cfg.state_dir)
        .with_context(|| format!("opening the state directory {}", cfg.state_dir.display()))?;
    // Ready as soon as the state is usable: pairing may wait for the
    // service for a long time and must not trip systemd's start timeout.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    if let Some(wd) = sd_notify::watchdog_enabled() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(wd / 2);
            loop {
                tick.tick().await;
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
        });
    }
    let credential = loop {
        match ensure_paired(&cfg, &state, config_path.as_deref()).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!("{e:#}; retrying in 5s");
                tokio::time::sleep(MAX_BACKOFF).await;
            }
        }
    };
    let api = Api::new(&cfg.server_url, cfg.pin())?.with_credential(credential);
    let outbox = Outbox::open(state.outbox_dir())?;
    let runner_exe = std::env::current_exe().context("locating the agent binary")?;
    let executor = Arc::new(
        Executor::new(
            state.clone(),
            outbox.clone(),
            runner_exe.clone(),
            cfg.host.clone(),
            cfg.max_output_bytes,
        )
        .with_max_structured_bytes(cfg.max_structured_result_bytes),
    );

    // Outbox sender: delivers whenever something is queued.
    {
        let outbox = outbox.clone();
        let api = api.clone();
        tokio::spawn(async move {
            let mut backoff = Backoff::new(MAX_BACKOFF);
            loop {
                match outbox.deliver(&api).await {
                    Ok(()) => {
                        backoff.reset();
                        let _ =
                            tokio::time::timeout(Duration::from_secs(60), outbox.queued()).await;
                    }
                    Err(e) => {
                        tracing::warn!("reports wait on disk: {e}");
                        backoff.wait_deliver(&e).await;
                    }
                }
            }
        });
    }

    // Heartbeats.
    let default_hb = cfg
        .heartbeat_interval
        .unwrap_or(ibkit_api::Duration::from_secs(30));
    let (hb_tx, hb_rx) = watch::channel(default_hb);
    {
        let api = api.clone();
        let executor = Arc::clone(&executor);
        let outbox = outbox.clone();
        let mut hb_rx = hb_rx;
        tokio::spawn(async move {
            loop {
                let hb = Heartbeat {
                    agent_version: VERSION.into(),
                    uptime_s: started.elapsed().as_secs(),
                    running_exec: executor.running(),
                    queued_reports: outbox.len(),
                };
                if let Err(e) = api.heartbeat(&hb).await {
                    tracing::warn!("heartbeat not delivered: {e}");
                }
                let every = (*hb_rx.borrow_and_update())
                    .to_std()
                    .max(Duration::from_secs(1));
                let _ = tokio::time::timeout(every, hb_rx.changed()).await;
            }
        });
    }

    // The marketplace's billing token file, when the vendor asked for one.
    if let Some(b) = cfg.billing_token.clone() {
        tokio::spawn(crate::billing_token::run(b, api.clone()));
    }

    // Steps a previous agent left unfinished.
    let recovered = executor
        .recover()
        .await
        .context("recovering unfinished steps")?;
    if !recovered.is_empty() {
        tracing::info!("recovered {} unfinished step(s)", recovered.len());
    }

    work_loop(&cfg, &api, &state, &executor, &outbox, &hb_tx, runner_exe).await
}

async fn work_loop(
    cfg: &Config,
    api: &Api,
    state: &StateDir,
    executor: &Executor,
    outbox: &Outbox,
    hb_tx: &watch::Sender<ibkit_api::Duration>,
    runner_exe: PathBuf,
) -> anyhow::Result<()> {
    let mut backoff = Backoff::new(MAX_BACKOFF);
    let mut config_rev = String::new();
    let mut health_tasks: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    loop {
        if let Err(e) = outbox.deliver(api).await {
            tracing::warn!("cannot deliver queued reports: {e}");
            backoff.wait_deliver(&e).await;
            continue;
        }
        let resp = match api.work(&config_rev, WORK_WAIT).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cannot get work: {e}");
                backoff.wait(&e).await;
                continue;
            }
        };
        backoff.reset();
        if resp.config_rev != config_rev {
            config_rev = resp.config_rev.clone();
            if cfg.heartbeat_interval.is_none() {
                let _ = hb_tx.send(resp.heartbeat_interval);
            }
            for t in health_tasks.drain(..) {
                t.abort();
            }
            let checks: Vec<_> = resp
                .health_checks
                .iter()
                .filter(|c| c.applies_to(&cfg.host))
                .cloned()
                .collect();
            tracing::info!(rev = %config_rev, checks = checks.len(), "configuration changed");
            health_tasks =
                crate::health::start(checks, api.clone(), state.clone(), runner_exe.clone());
        }
        let Some(work) = resp.work else { continue };
        match executor.known(&work.exec_id)? {
            Known::New | Known::Unfinished => {
                tracing::info!(exec = %work.exec_id, group = %work.group, index = work.index, "running a step");
                let outcome = executor.execute(&work).await?;
                tracing::info!(exec = %work.exec_id, status = ?outcome.status, "step finished");
            }
            Known::Done(outcome) => {
                // Handed out again although finished: our Finished report
                // is queued (delivered on the next round) or was dropped.
                if outbox.is_empty() {
                    tracing::warn!(exec = %work.exec_id, "the service handed out a finished step again; reporting its outcome again");
                    outbox.push(&work.exec_id, ReportEvent::Finished(outcome))?;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

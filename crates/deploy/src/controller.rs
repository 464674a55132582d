//! The controller: `up`, `status`, `outputs`, `down` and the recovery
//! loop (`watch`), driving `ibkit serve` (desired state, results, health,
//! recovery requests) and a [`ComputeBackend`] (the VMs).
//!
//! **`up`** creates the instance in the service (or updates it: the service
//! reruns only steps whose hash changed), creates or recreates the VMs that
//! need it, and waits for the instance to be `running` (every step done and
//! every health check passing) within `attempt_timeout`. A failed attempt
//! is recorded with its reason and retried with every VM recreated, up to
//! `max_attempts`.
//!
//! **Recovery** ([`Controller::watch_round`]) acts per host on two
//! signals: the backend says the VM is no longer running (found within one
//! round), or the service's monitor opened a recovery request (agent
//! silent, step failed, health missing for the detection timeout). The
//! decision is [`plan_round`] (pure, tested): backoff and a cap per window
//! from [`crate::RecoveryPolicy`]. Only the dead host's VM is recreated
//! (evidence kept), re-keyed in the service (its steps run again, `once`
//! steps that succeeded are skipped, references to other hosts' results
//! resolve again), and the instance is `running` again once the service
//! says so.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ibkit_api::reference;
use ibkit_api::wire::{InstanceStatus, StepStatus};
use serde::Serialize;

use crate::backend::{BackendError, ComputeBackend, InstanceRef, VmRequest, VmState};
use crate::client::{ClientError, InstanceDetail, RecoveryRequest, ServiceClient};
use crate::manifest::{DeployManifest, ManifestError, RecoveryPolicy, ValidationErrors};
use crate::outputs::{OutputValue, StepResultView, render_outputs};
use crate::recovery::RecoveryDecision;
use crate::store::{
    Attempt, AttemptKind, DeployStatus, DeploymentRecord, HostRecord, HostVm, PendingRecovery,
    RecoveryEvent, Store, StoreError, now_ms,
};
use crate::userdata::{AgentBootstrap, Secret, UserDataError, render_user_data};

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("the manifest is not valid:\n{0}")]
    Invalid(#[from] ValidationErrors),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Service(#[from] ClientError),
    #[error("compute backend: {0}")]
    Backend(#[from] BackendError),
    #[error("user data for host {host}: {source}")]
    UserData { host: String, source: UserDataError },
    #[error("{0}")]
    Refused(String),
}

/// Lines for the person watching (`ibkit deploy` prints them on stderr).
pub type Progress = Box<dyn Fn(&str) + Send + Sync>;

/// How the controller reaches the service and how VMs do.
pub struct Controller<B: ComputeBackend> {
    backend: B,
    client: ServiceClient,
    store: Store,
    /// The service as VMs reach it (QEMU: the bridge address).
    guest_service_url: String,
    cert_sha256: String,
    curl_pin: String,
    progress: Progress,
    /// How often the service and the backend are polled.
    pub poll: Duration,
}

/// Timestamps of an attempt or a recovery, for "where the time goes".
fn mark(milestones: &mut Vec<(String, u64)>, what: impl Into<String>) {
    let what = what.into();
    if !milestones.iter().any(|(w, _)| *w == what) {
        milestones.push((what, now_ms()));
    }
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// The last `n` lines of a text.
fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One service call that may fail while the service restarts: retried for
/// up to a minute.
async fn patient<T, F, Fut>(what: &str, mut f: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match f().await {
            Err(ClientError::Unreachable { url, why }) if std::time::Instant::now() < deadline => {
                tracing::warn!("{what}: {url} unreachable ({why}); retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            other => return other,
        }
    }
}

impl<B: ComputeBackend> Controller<B> {
    /// Asks the service for its certificate pins (over the pinned,
    /// authenticated connection) so that VMs can trust it too.
    pub async fn new(
        backend: B,
        client: ServiceClient,
        store: Store,
        guest_service_url: String,
        progress: Progress,
    ) -> Result<Self, DeployError> {
        let info = client.service_info().await?;
        Ok(Controller {
            backend,
            client,
            store,
            guest_service_url,
            cert_sha256: info.cert_sha256.unwrap_or_default(),
            curl_pin: info.curl_pin.unwrap_or_default(),
            progress,
            poll: Duration::from_secs(2),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn say(&self, line: &str) {
        tracing::info!("{line}");
        (self.progress)(line);
    }

    /// A deployment is only driven through the backend it runs on: the
    /// other one would not find its VMs (and `down` would leak them).
    fn check_backend(&self, record: &DeploymentRecord) -> Result<(), DeployError> {
        let here = self.backend.spec();
        if record.backend == here {
            return Ok(());
        }
        Err(DeployError::Refused(format!(
            "{} runs on {}, not on {here} (pass the backend options it was deployed with)",
            record.name, record.backend
        )))
    }

    fn instance_ref(r: &DeploymentRecord) -> InstanceRef {
        InstanceRef {
            id: r.instance_id,
            name: r.name.clone(),
        }
    }

    /// Deploys or updates the manifest at `path`; returns the record once
    /// the deployment is `running` or `failed`.
    pub async fn up(&self, path: &Path) -> Result<DeploymentRecord, DeployError> {
        let (manifest, text) = DeployManifest::read_validated(path)?;
        let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let name = manifest.instance.name.clone();
        let _lock = self
            .store
            .lock(&format!("up {name}"), Duration::from_secs(600))
            .await?;
        let spec = manifest.to_instance_spec();
        let existing = match self.store.load(&name) {
            Ok(r) if r.status != DeployStatus::Deleted => Some(r),
            Ok(_) | Err(StoreError::Unknown(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let (mut record, mut keys, mut recreate, mut kind) = match existing {
            None => {
                self.say(&format!("creating instance {name} in the service"));
                let created = self.client.create_instance(&spec).await?;
                let keys: HashMap<String, Secret> = created
                    .hosts
                    .into_iter()
                    .map(|h| (h.name, Secret::new(h.pairing_key)))
                    .collect();
                let now = now_ms();
                let mut record = DeploymentRecord {
                    name: name.clone(),
                    backend: self.backend.spec(),
                    guest_service_url: Some(self.guest_service_url.clone()),
                    instance_id: created.id,
                    status: DeployStatus::Applying,
                    status_reason: None,
                    manifest_path: abs,
                    manifest_text: text,
                    hosts: manifest
                        .hosts
                        .iter()
                        .map(|h| (h.name.clone(), HostRecord::default()))
                        .collect(),
                    attempts: Vec::new(),
                    recoveries: Vec::new(),
                    created_ms: now,
                    updated_ms: now,
                };
                self.store.save(&mut record)?;
                let all: Vec<String> = manifest.hosts.iter().map(|h| h.name.clone()).collect();
                (record, keys, all, AttemptKind::Create)
            }
            Some(mut record) => {
                self.check_backend(&record)?;
                record.guest_service_url = Some(self.guest_service_url.clone());
                let old: Vec<&String> = record.hosts.keys().collect();
                let mut new: Vec<&String> = manifest.hosts.iter().map(|h| &h.name).collect();
                new.sort();
                if old != new {
                    return Err(DeployError::Refused(format!(
                        "the hosts of {name} changed ({} -> {}); adding or removing hosts is not \
                         supported: `ibkit deploy down {name}` first",
                        old.iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        new.iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                self.say(&format!(
                    "updating instance {name} ({}): only changed steps rerun",
                    record.instance_id
                ));
                self.client
                    .update_instance(record.instance_id, &spec)
                    .await?;
                record.manifest_path = abs;
                record.manifest_text = text;
                // Pending recoveries are superseded by this run.
                for h in record.hosts.values_mut() {
                    h.pending = None;
                }
                let mut recreate = Vec::new();
                for h in &manifest.hosts {
                    let vm = record.hosts.get(&h.name).and_then(|r| r.vm.clone());
                    let why = match vm {
                        None => Some("it has no VM".to_string()),
                        Some(vm) if vm.config_hash != h.config_hash() => {
                            Some("its image, flavor or user data changed".into())
                        }
                        Some(vm) => match self.backend.vm_state(&vm.id).await? {
                            VmState::Running => None,
                            s => Some(format!("its VM {} is {s:?}", vm.id)),
                        },
                    };
                    if let Some(why) = why {
                        self.say(&format!("host {}: recreating, {why}", h.name));
                        recreate.push(h.name.clone());
                    }
                }
                self.store.save(&mut record)?;
                (record, HashMap::new(), recreate, AttemptKind::Update)
            }
        };

        let max = manifest.instance.max_attempts.max(1);
        for run in 1..=max {
            let number = u32::try_from(record.attempts.len()).unwrap_or(u32::MAX) + 1;
            record.attempts.push(Attempt {
                number,
                kind,
                started_ms: now_ms(),
                ended_ms: None,
                outcome: None,
                failure: None,
                milestones: Vec::new(),
            });
            record.status = DeployStatus::Applying;
            record.status_reason = Some(format!("attempt {number} ({run} of {max} in this run)"));
            self.store.save(&mut record)?;
            self.say(&format!(
                "deployment attempt {number} ({run} of {max}): {}",
                match kind {
                    AttemptKind::Create => "creating every VM".to_string(),
                    AttemptKind::Retry => "recreating every VM".to_string(),
                    AttemptKind::Update if recreate.is_empty() => "no VM to recreate".to_string(),
                    AttemptKind::Update => format!("recreating {}", recreate.join(", ")),
                }
            ));
            let outcome = self
                .attempt(&mut record, &manifest, &recreate, &mut keys)
                .await;
            let now = now_ms();
            self.resolve_open_requests(&record, None).await;
            let attempt = record.attempts.last_mut();
            match outcome {
                Ok(()) => {
                    if let Some(a) = attempt {
                        a.ended_ms = Some(now);
                        a.outcome = Some(DeployStatus::Running);
                        self.say(&format!(
                            "running after {:.1} s (attempt {})",
                            secs(now.saturating_sub(a.started_ms)),
                            a.number
                        ));
                    }
                    record.status = DeployStatus::Running;
                    record.status_reason = None;
                    for h in record.hosts.values_mut() {
                        h.history.healthy();
                    }
                    self.store.save(&mut record)?;
                    return Ok(record);
                }
                Err(reason) => {
                    if let Some(a) = attempt {
                        a.ended_ms = Some(now);
                        a.outcome = Some(DeployStatus::Failed);
                        a.failure = Some(reason.clone());
                    }
                    self.say(&format!("deployment attempt {number} failed: {reason}"));
                    record.status_reason = Some(reason);
                    self.store.save(&mut record)?;
                    keys.clear();
                    recreate = manifest.hosts.iter().map(|h| h.name.clone()).collect();
                    kind = AttemptKind::Retry;
                }
            }
        }
        record.status = DeployStatus::Failed;
        let last = record.status_reason.take().unwrap_or_default();
        record.status_reason = Some(format!("{max} attempt(s) failed; the last: {last}"));
        self.store.save(&mut record)?;
        Ok(record)
    }

    /// One attempt: (re)create the VMs named, then wait for `running`.
    /// `Err` is the failure reason.
    async fn attempt(
        &self,
        record: &mut DeploymentRecord,
        manifest: &DeployManifest,
        recreate: &[String],
        keys: &mut HashMap<String, Secret>,
    ) -> Result<(), String> {
        let started = record.attempts.last().map_or_else(now_ms, |a| a.started_ms);
        for host in recreate {
            let key = keys.remove(host);
            self.recreate_host(record, manifest, host, key, manifest.recovery.keep_evidence)
                .await
                .map_err(|e| format!("VM {host}: {e}"))?;
        }
        if let Some(a) = record.current_attempt_mut() {
            mark(&mut a.milestones, "vms_created");
        }
        let _ = self.store.save(record);
        self.wait_running(record, manifest, started).await
    }

    /// Deletes the host's VMs (keeping evidence when asked), re-keys the
    /// host in the service unless a fresh key is given, and creates a new
    /// VM. Returns the evidence of the deleted VM(s).
    async fn recreate_host(
        &self,
        record: &mut DeploymentRecord,
        manifest: &DeployManifest,
        host: &str,
        key: Option<Secret>,
        keep_evidence: bool,
    ) -> Result<(Option<String>, Vec<PathBuf>), DeployError> {
        let def = manifest
            .host(host)
            .ok_or_else(|| DeployError::Refused(format!("no host {host} in the manifest")))?;
        let instance = Self::instance_ref(record);
        let mut evidence = Vec::new();
        let mut seq = record
            .hosts
            .get(host)
            .and_then(|h| h.vm.as_ref())
            .map_or(0, |v| v.seq);
        let old_id = record
            .hosts
            .get(host)
            .and_then(|h| h.vm.as_ref())
            .map(|v| v.id.clone());
        // Every VM of the host, also ones a crashed run left behind.
        for vm in self.backend.list(&instance).await? {
            if vm.handle.host != host {
                continue;
            }
            seq = seq.max(vm.attempt);
            let e = self.backend.delete_vm(&vm.handle.id, keep_evidence).await?;
            if !e.paths.is_empty() {
                self.say(&format!(
                    "VM {} deleted; evidence kept in {}",
                    vm.handle.id,
                    e.paths[0]
                        .parent()
                        .map_or_else(String::new, |p| p.display().to_string())
                ));
            } else {
                self.say(&format!("VM {} deleted", vm.handle.id));
            }
            evidence.extend(e.paths);
        }
        let key = match key {
            Some(k) => k,
            None => self.client.rekey(record.instance_id, host).await?,
        };
        let boot = AgentBootstrap {
            service_url: record
                .guest_service_url
                .clone()
                .unwrap_or_else(|| self.guest_service_url.clone()),
            cert_sha256_hex: self.cert_sha256.clone(),
            curl_pin: self.curl_pin.clone(),
            instance_id: record.instance_id,
            host: host.to_string(),
            pairing_key: key,
        };
        let user_data = render_user_data(def, &boot).map_err(|source| DeployError::UserData {
            host: host.to_string(),
            source,
        })?;
        let seq = seq + 1;
        let request = VmRequest {
            instance,
            host: host.to_string(),
            // A file as resolved against the manifest, else the name as
            // written (a Glance image name or id).
            image: {
                let path = manifest.image_path(def);
                if path.is_file() {
                    path.display().to_string()
                } else {
                    def.image.clone()
                }
            },
            flavor: def.flavor,
            os_flavor: def.os_flavor.clone(),
            ports: def.ports.clone(),
            user_data,
            config_hash: def.config_hash(),
            attempt: seq,
        };
        let handle = self.backend.create_vm(request).await?;
        let addresses: Vec<String> = handle.addresses.iter().map(|a| a.to_string()).collect();
        self.say(&format!(
            "VM {} started for host {host} ({})",
            handle.id,
            if addresses.is_empty() {
                "address unknown".to_string()
            } else {
                addresses.join(", ")
            }
        ));
        let entry = record.hosts.entry(host.to_string()).or_default();
        entry.vm = Some(HostVm {
            id: handle.id,
            seq,
            config_hash: def.config_hash(),
            addresses,
            created_ms: now_ms(),
        });
        self.store.save(record)?;
        Ok((old_id, evidence))
    }

    /// Polls until the service says `running`; `Err` is why not.
    async fn wait_running(
        &self,
        record: &mut DeploymentRecord,
        manifest: &DeployManifest,
        started_ms: u64,
    ) -> Result<(), String> {
        let attempt_timeout = manifest.instance.attempt_timeout.as_millis();
        let health_timeout = manifest.instance.health_timeout.as_millis();
        let mut health_since: Option<u64> = None;
        let mut last_seen: BTreeMap<String, String> = BTreeMap::new();
        loop {
            let detail = patient("instance status", || {
                self.client.instance(record.instance_id)
            })
            .await
            .map_err(|e| e.to_string())?;
            self.note_progress(record, &detail, &mut last_seen);
            match detail.status {
                InstanceStatus::Running => {
                    if let Some(a) = record.current_attempt_mut() {
                        mark(&mut a.milestones, "health_passed");
                    }
                    return Ok(());
                }
                InstanceStatus::Failed => return Err(self.failure_reason(record, &detail).await),
                InstanceStatus::Deleted => {
                    return Err("the instance was deleted in the service".into());
                }
                InstanceStatus::Applying => {}
            }
            // A VM that stopped will not finish its steps: say so now.
            for (host, h) in &record.hosts {
                let Some(vm) = &h.vm else { continue };
                match self.backend.vm_state(&vm.id).await {
                    Ok(VmState::Running) => {}
                    Ok(state) => {
                        let console = self.console(&vm.id).await;
                        return Err(format!(
                            "VM {} of host {host} is {state:?} during the attempt{console}",
                            vm.id
                        ));
                    }
                    Err(e) => tracing::warn!("state of VM {}: {e}", vm.id),
                }
            }
            let now = now_ms();
            let steps_done = detail
                .hosts
                .iter()
                .all(|h| h.paired && h.steps_not_done() == 0);
            if steps_done && health_since.is_none() {
                health_since = Some(now);
                if let Some(a) = record.current_attempt_mut() {
                    mark(&mut a.milestones, "steps_done");
                }
                self.say("every step is done; waiting for the health checks");
            }
            if let Some(since) = health_since
                && now.saturating_sub(since) > health_timeout
            {
                return Err(self.health_reason(record, manifest).await);
            }
            if now.saturating_sub(started_ms) > attempt_timeout {
                return Err(self.timeout_reason(record, manifest, &detail).await);
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    /// Progress lines and milestones when a host pairs or a step finishes.
    fn note_progress(
        &self,
        record: &mut DeploymentRecord,
        detail: &InstanceDetail,
        last_seen: &mut BTreeMap<String, String>,
    ) {
        for h in &detail.hosts {
            let ok = h.steps.get("ok").copied().unwrap_or(0)
                + h.steps.get("skipped").copied().unwrap_or(0);
            let total: i64 = h.steps.values().sum();
            let line = format!(
                "host {}: {}, steps {ok}/{total} done{}",
                h.name,
                if h.paired {
                    "agent paired"
                } else {
                    "waiting for the agent"
                },
                match h.health.as_str() {
                    "healthy" if h.checks_active_since.is_some() => ", healthy",
                    "unhealthy" => ", unhealthy",
                    _ => "",
                }
            );
            if last_seen.get(&h.name) != Some(&line) {
                if let Some(a) = record.current_attempt_mut() {
                    if h.paired {
                        mark(&mut a.milestones, format!("{}.paired", h.name));
                    }
                    if h.paired && h.steps_not_done() == 0 {
                        mark(&mut a.milestones, format!("{}.steps_done", h.name));
                    }
                }
                self.say(&line);
                last_seen.insert(h.name.clone(), line);
            }
        }
    }

    async fn console(&self, vm: &str) -> String {
        match self.backend.console_tail(vm, 64 * 1024).await {
            Ok(t) if !t.trim().is_empty() => format!("; its console ends:\n{}", tail_lines(&t, 8)),
            _ => String::new(),
        }
    }

    /// The service's reason, plus the failed step's log when the reason
    /// lacks it (the vendor needs the script's own words).
    async fn failure_reason(&self, record: &DeploymentRecord, detail: &InstanceDetail) -> String {
        let mut reason = detail
            .status_reason
            .clone()
            .unwrap_or_else(|| "the instance failed".into());
        for h in &detail.hosts {
            if h.steps.get("failed").copied().unwrap_or(0) == 0 {
                continue;
            }
            let Ok(steps) = self.client.steps(record.instance_id, &h.name).await else {
                continue;
            };
            for s in steps.iter().filter(|s| s.status == StepStatus::Failed) {
                let log = s.log.as_deref().unwrap_or("");
                let tail = tail_lines(log, 20);
                if !tail.is_empty() && !reason.contains(tail.lines().last().unwrap_or("")) {
                    reason.push_str(&format!(
                        "\nstep {}/{} on {} (attempts {}, exit code {}) log ends:\n{tail}",
                        s.group,
                        s.index,
                        h.name,
                        s.attempts,
                        s.exit_code.map_or_else(|| "none".into(), |c| c.to_string())
                    ));
                }
            }
        }
        reason
    }

    async fn health_reason(&self, record: &DeploymentRecord, manifest: &DeployManifest) -> String {
        let mut parts = Vec::new();
        for host in record.hosts.keys() {
            let results = self
                .client
                .health(record.instance_id, host)
                .await
                .unwrap_or_default();
            for check in manifest.health_checks.iter().filter(|c| c.applies_to(host)) {
                match results.iter().find(|r| r.check == check.name) {
                    Some(r) if r.ok => {}
                    Some(r) => parts.push(format!(
                        "health check {} on host {host} is failing: {}",
                        check.name, r.detail
                    )),
                    None => parts.push(format!(
                        "health check {} on host {host} has no result",
                        check.name
                    )),
                }
            }
        }
        format!(
            "the health checks did not all pass within {}: {}",
            manifest.instance.health_timeout,
            if parts.is_empty() {
                "(they passed just now)".to_string()
            } else {
                parts.join("; ")
            }
        )
    }

    async fn timeout_reason(
        &self,
        record: &DeploymentRecord,
        manifest: &DeployManifest,
        detail: &InstanceDetail,
    ) -> String {
        let mut parts = Vec::new();
        for h in &detail.hosts {
            if !h.paired {
                let console = match record.hosts.get(&h.name).and_then(|r| r.vm.as_ref()) {
                    Some(vm) => self.console(&vm.id).await,
                    None => String::new(),
                };
                parts.push(format!(
                    "the agent of host {} never paired (did cloud-init run the user data? \
                     can the VM reach {}?){console}",
                    h.name, self.guest_service_url
                ));
            } else if h.steps_not_done() > 0 {
                parts.push(format!(
                    "host {} has {} step(s) not done",
                    h.name,
                    h.steps_not_done()
                ));
            }
        }
        if let Some(r) = &detail.status_reason {
            parts.push(format!("the service says: {r}"));
        }
        format!(
            "not running within the attempt timeout {}: {}",
            manifest.instance.attempt_timeout,
            parts.join("; ")
        )
    }

    /// Resolves the instance's open recovery requests (of one host, or all):
    /// what they asked for was done, or an attempt superseded them.
    async fn resolve_open_requests(&self, record: &DeploymentRecord, host: Option<&str>) {
        let Ok(open) = self.client.open_recovery_requests(record.instance_id).await else {
            return;
        };
        for r in open.iter().filter(|r| host.is_none_or(|h| r.host == h)) {
            if let Err(e) = self.client.resolve_recovery_request(&r.id).await {
                tracing::warn!("resolving recovery request {}: {e}", r.id);
            }
        }
    }

    /// One round of recovery for a deployment: observe, decide
    /// ([`plan_round`]), act. Skipped while another `ibkit deploy` changes
    /// VMs (it holds the lock).
    pub async fn watch_round(&self, name: &str) -> Result<(), DeployError> {
        let Some(_lock) = self.store.try_lock(&format!("watch {name}"))? else {
            return Ok(());
        };
        let mut record = self.store.load(name)?;
        self.check_backend(&record)?;
        let active = record.status == DeployStatus::Running
            || record.hosts.values().any(|h| h.pending.is_some());
        if !active || record.status == DeployStatus::Deleted {
            return Ok(());
        }
        let manifest = record.manifest()?;
        let mut vm_states = BTreeMap::new();
        for (host, h) in &record.hosts {
            let state = match &h.vm {
                Some(vm) => self.backend.vm_state(&vm.id).await?,
                None => VmState::Missing,
            };
            vm_states.insert(host.clone(), state);
        }
        let requests = self
            .client
            .open_recovery_requests(record.instance_id)
            .await?;
        let detail = self.client.instance(record.instance_id).await?;
        let obs = Observations {
            vm_states,
            requests: requests.clone(),
            instance_status: detail.status,
        };
        let mut actions = plan_round(&record, &manifest, &obs, now_ms());
        // Where a recovery's time goes: when the new VM's agent paired and
        // when its steps were done.
        for h in &detail.hosts {
            let recreated = record
                .hosts
                .get(&h.name)
                .and_then(|r| r.pending.as_ref())
                .is_some_and(|p| p.recreated_ms.is_some());
            if recreated && h.paired {
                actions.insert(
                    0,
                    Action::Progress {
                        host: h.name.clone(),
                        milestone: "paired".into(),
                    },
                );
                if h.steps_not_done() == 0 {
                    actions.insert(
                        1,
                        Action::Progress {
                            host: h.name.clone(),
                            milestone: "steps_done".into(),
                        },
                    );
                }
            }
        }
        for action in actions {
            self.apply(&mut record, &manifest, &requests, action)
                .await?;
        }
        Ok(())
    }

    async fn apply(
        &self,
        record: &mut DeploymentRecord,
        manifest: &DeployManifest,
        requests: &[RecoveryRequest],
        action: Action,
    ) -> Result<(), DeployError> {
        let now = now_ms();
        match action {
            Action::Detected {
                host,
                kind,
                reason,
                act_at_ms,
                consecutive,
            } => {
                self.say(&format!(
                    "host {host} needs recovery ({kind}: {reason}); recreating its VM in {:.0} s \
                     (recovery {consecutive} in a row)",
                    secs(act_at_ms.saturating_sub(now))
                ));
                let old_vm = record
                    .hosts
                    .get(&host)
                    .and_then(|h| h.vm.as_ref())
                    .map(|v| v.id.clone());
                if let Some(h) = record.hosts.get_mut(&host) {
                    h.pending = Some(PendingRecovery {
                        kind: kind.clone(),
                        reason: reason.clone(),
                        detected_ms: now,
                        act_at_ms,
                        recreated_ms: None,
                    });
                }
                record.recoveries.push(RecoveryEvent {
                    host: host.clone(),
                    kind,
                    reason: reason.clone(),
                    detected_ms: now,
                    recreated_ms: None,
                    recovered_ms: None,
                    old_vm,
                    new_vm: None,
                    evidence: Vec::new(),
                    failure: None,
                    milestones: Vec::new(),
                });
                record.status = DeployStatus::Applying;
                record.status_reason = Some(format!("recovering host {host}: {reason}"));
                self.store.save(record)?;
            }
            Action::GiveUp { host, reason } => {
                self.say(&format!("host {host}: {reason}"));
                if let Some(ev) = open_event(record, &host) {
                    ev.failure = Some(reason.clone());
                } else {
                    record.recoveries.push(RecoveryEvent {
                        host: host.clone(),
                        kind: "gave_up".into(),
                        reason: reason.clone(),
                        detected_ms: now,
                        recreated_ms: None,
                        recovered_ms: None,
                        old_vm: None,
                        new_vm: None,
                        evidence: Vec::new(),
                        failure: Some(reason.clone()),
                        milestones: Vec::new(),
                    });
                }
                for h in record.hosts.values_mut() {
                    h.pending = None;
                }
                record.status = DeployStatus::Failed;
                record.status_reason = Some(format!("host {host}: {reason}"));
                self.store.save(record)?;
            }
            Action::Recreate { host } => {
                for r in requests.iter().filter(|r| r.host == host) {
                    if let Err(e) = self.client.resolve_recovery_request(&r.id).await {
                        tracing::warn!("resolving recovery request {}: {e}", r.id);
                    }
                }
                let keep = manifest.recovery.keep_evidence;
                match self
                    .recreate_host(record, manifest, &host, None, keep)
                    .await
                {
                    Ok((_, evidence)) => {
                        let new_vm = record
                            .hosts
                            .get(&host)
                            .and_then(|h| h.vm.as_ref())
                            .map(|v| v.id.clone());
                        if let Some(h) = record.hosts.get_mut(&host) {
                            h.history.record(now);
                            if let Some(p) = &mut h.pending {
                                p.recreated_ms = Some(now_ms());
                            }
                        }
                        if let Some(ev) = open_event(record, &host) {
                            ev.recreated_ms = Some(now_ms());
                            ev.new_vm = new_vm;
                            ev.evidence = evidence;
                            mark(&mut ev.milestones, "recreated");
                        }
                        self.store.save(record)?;
                    }
                    Err(e) => {
                        // Counted as a recovery: a backend that keeps failing
                        // reaches the cap instead of looping.
                        if let Some(h) = record.hosts.get_mut(&host) {
                            h.history.record(now);
                            h.pending = None;
                        }
                        if let Some(ev) = open_event(record, &host) {
                            ev.failure = Some(format!("recreating the VM failed: {e}"));
                        }
                        self.say(&format!("host {host}: recreating the VM failed: {e}"));
                        self.store.save(record)?;
                    }
                }
            }
            Action::Progress { host, milestone } => {
                if let Some(ev) = open_event(record, &host)
                    && !ev.milestones.iter().any(|(m, _)| *m == milestone)
                {
                    mark(&mut ev.milestones, milestone.clone());
                    let took = now.saturating_sub(ev.detected_ms);
                    self.say(&format!(
                        "host {host}: {} ({:.1} s after the failure was detected)",
                        match milestone.as_str() {
                            "paired" => "the new VM's agent paired",
                            "steps_done" => "its steps are done; waiting for the health checks",
                            other => other,
                        },
                        secs(took)
                    ));
                    self.store.save(record)?;
                }
            }
            Action::Recovered { host } => {
                let mut took = 0;
                if let Some(h) = record.hosts.get_mut(&host) {
                    h.history.healthy();
                    h.pending = None;
                }
                if let Some(ev) = open_event(record, &host) {
                    ev.recovered_ms = Some(now);
                    took = now.saturating_sub(ev.detected_ms);
                    mark(&mut ev.milestones, "running");
                }
                self.say(&format!(
                    "host {host} recovered: the instance is running again ({:.1} s after \
                     the failure was detected)",
                    secs(took)
                ));
                if record.hosts.values().all(|h| h.pending.is_none()) {
                    record.status = DeployStatus::Running;
                    record.status_reason = None;
                }
                self.store.save(record)?;
            }
        }
        Ok(())
    }

    /// Recovery rounds every `poll` for the named deployments (all when
    /// empty) until `stop` completes. Errors are logged and the loop goes
    /// on: the service or the backend may be back in the next round.
    pub async fn watch(&self, names: &[String], stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let names = if names.is_empty() {
                // Every deployment on this backend (the others have theirs).
                let here = self.backend.spec();
                self.store
                    .names()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|n| self.store.load(n).is_ok_and(|r| r.backend == here))
                    .collect()
            } else {
                names.to_vec()
            };
            for name in &names {
                if let Err(e) = self.watch_round(name).await {
                    self.say(&format!("recovery of {name}: {e}"));
                }
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(self.poll) => {}
            }
        }
    }

    /// The record with what the service and the backend say now.
    pub async fn status(&self, name: &str) -> Result<StatusView, DeployError> {
        let record = self.store.load(name)?;
        self.check_backend(&record)?;
        let service = if record.status == DeployStatus::Deleted {
            None
        } else {
            match self.client.instance(record.instance_id).await {
                Ok(d) => Some(ServiceView {
                    status: d.status.as_str().to_string(),
                    status_reason: d.status_reason,
                    generation: d.generation,
                    hosts: d
                        .hosts
                        .into_iter()
                        .map(|h| ServiceHostView {
                            steps_not_done: h.steps_not_done(),
                            name: h.name,
                            paired: h.paired,
                            health: h.health,
                            unhealthy_reason: h.unhealthy_reason,
                            steps: h.steps,
                        })
                        .collect(),
                }),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e.into()),
            }
        };
        let mut vms = Vec::new();
        for (host, h) in &record.hosts {
            if let Some(vm) = &h.vm {
                let state = self.backend.vm_state(&vm.id).await?;
                vms.push(VmView {
                    host: host.clone(),
                    id: vm.id.clone(),
                    state: format!("{state:?}").to_lowercase(),
                    addresses: vm.addresses.clone(),
                    created_ms: vm.created_ms,
                });
            }
        }
        Ok(StatusView {
            name: record.name.clone(),
            instance_id: record.instance_id,
            status: record.status,
            status_reason: record.status_reason.clone(),
            manifest: record.manifest_path.clone(),
            attempts: record.attempts.clone(),
            recoveries: record.recoveries.clone(),
            vms,
            service,
        })
    }

    /// The outputs, rendered from the results the service holds.
    pub async fn outputs(&self, name: &str) -> Result<Vec<OutputValue>, DeployError> {
        let record = self.store.load(name)?;
        if record.status == DeployStatus::Deleted {
            return Err(DeployError::Refused(format!("{name} is deleted")));
        }
        let manifest = record.manifest()?;
        let mut results: HashMap<(String, String, u32), StepResultView> = HashMap::new();
        for o in &manifest.outputs {
            for r in reference::find_references(&o.value).unwrap_or_default() {
                let key = (r.host.clone(), r.group.clone(), r.index);
                if results.contains_key(&key) {
                    continue;
                }
                match self
                    .client
                    .result(record.instance_id, &r.host, &r.group, r.index)
                    .await
                {
                    Ok(res) if matches!(res.status, StepStatus::Ok | StepStatus::Skipped) => {
                        results.insert(
                            key,
                            StepResultView {
                                raw: res.raw.unwrap_or_default(),
                                structured: res.structured,
                            },
                        );
                    }
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(render_outputs(&manifest.outputs, &|h, g, i| {
            results.get(&(h.to_string(), g.to_string(), i)).cloned()
        }))
    }

    /// Deletes the VMs (evidence kept when the manifest says so, unless
    /// `keep_evidence` overrides it), the instance in the service, and what
    /// the backend keeps for it.
    pub async fn down(
        &self,
        name: &str,
        keep_evidence: Option<bool>,
    ) -> Result<DeploymentRecord, DeployError> {
        let _lock = self
            .store
            .lock(&format!("down {name}"), Duration::from_secs(600))
            .await?;
        let mut record = self.store.load(name)?;
        self.check_backend(&record)?;
        let keep = match keep_evidence {
            Some(k) => k,
            None => record
                .manifest()
                .map(|m| m.recovery.keep_evidence)
                .unwrap_or(true),
        };
        let instance = Self::instance_ref(&record);
        for vm in self.backend.list(&instance).await? {
            let e = self.backend.delete_vm(&vm.handle.id, keep).await?;
            self.say(&format!(
                "VM {} deleted{}",
                vm.handle.id,
                if e.paths.is_empty() {
                    String::new()
                } else {
                    format!(" (evidence kept: {} file(s))", e.paths.len())
                }
            ));
        }
        match self.client.delete_instance(record.instance_id).await {
            Ok(_) => self.say(&format!(
                "instance {} deleted in the service",
                record.instance_id
            )),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        self.backend.release_instance(&instance).await?;
        for h in record.hosts.values_mut() {
            h.vm = None;
            h.pending = None;
        }
        record.status = DeployStatus::Deleted;
        record.status_reason = Some("deleted by `ibkit deploy down`".into());
        self.store.save(&mut record)?;
        Ok(record)
    }
}

fn open_event<'a>(record: &'a mut DeploymentRecord, host: &str) -> Option<&'a mut RecoveryEvent> {
    record
        .recoveries
        .iter_mut()
        .rev()
        .find(|e| e.host == host && e.recovered_ms.is_none() && e.failure.is_none())
}

/// What one recovery round sees.
#[derive(Debug, Clone)]
pub struct Observations {
    pub vm_states: BTreeMap<String, VmState>,
    /// The instance's open recovery requests.
    pub requests: Vec<RecoveryRequest>,
    pub instance_status: InstanceStatus,
}

/// What one recovery round does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A host is dead; recreate its VM at `act_at_ms` (the backoff).
    Detected {
        host: String,
        kind: String,
        reason: String,
        act_at_ms: u64,
        consecutive: u32,
    },
    /// Recreate the host's VM now.
    Recreate { host: String },
    /// The recreated host reached a milestone (for the timeline).
    Progress { host: String, milestone: String },
    /// The instance is running again with the recreated host.
    Recovered { host: String },
    /// Recovery is disabled or capped: the deployment is `failed`.
    GiveUp { host: String, reason: String },
}

/// Decides one recovery round (pure: no I/O, the time is given).
///
/// Per host: a death is the backend saying its VM is not running, or an
/// open recovery request younger than the last recreation; a recreated VM
/// that did not bring the instance back to `running` within
/// `attempt_timeout` counts as dead again. A new death asks
/// [`RecoveryPolicy::decide`]; a pending one is recreated once its backoff
/// passed; a recreated one is done when the instance is `running`.
pub fn plan_round(
    record: &DeploymentRecord,
    manifest: &DeployManifest,
    obs: &Observations,
    now: u64,
) -> Vec<Action> {
    let policy: &RecoveryPolicy = &manifest.recovery;
    let mut actions = Vec::new();
    for (host, h) in &record.hosts {
        let recreated = h.pending.as_ref().and_then(|p| p.recreated_ms);
        let vm_death = match obs.vm_states.get(host) {
            Some(VmState::Running) => None,
            Some(VmState::Stopped) => Some((
                "vm_stopped".to_string(),
                format!(
                    "its VM {} is not running",
                    h.vm.as_ref().map_or("?", |v| v.id.as_str())
                ),
            )),
            Some(VmState::Missing) | None => Some((
                "vm_missing".to_string(),
                format!(
                    "its VM {} is gone from the backend",
                    h.vm.as_ref().map_or("(none)", |v| v.id.as_str())
                ),
            )),
        };
        let request_death = obs
            .requests
            .iter()
            .filter(|r| r.host == *host)
            .filter(|r| {
                let created = u64::try_from(r.created_at).unwrap_or(0);
                recreated.is_none_or(|t| created > t)
            })
            .map(|r| (r.kind.clone(), r.reason.clone()))
            .next();
        let timeout_death = recreated.and_then(|t| {
            (now.saturating_sub(t) > manifest.instance.attempt_timeout.as_millis()
                && obs.instance_status != InstanceStatus::Running)
                .then(|| {
                    (
                        "recovery_timeout".to_string(),
                        format!(
                            "the recreated VM did not bring the instance back to running within {}",
                            manifest.instance.attempt_timeout
                        ),
                    )
                })
        });
        let death = vm_death.or(request_death).or(timeout_death);
        let decide = |kind: String, reason: String, actions: &mut Vec<Action>| match policy
            .decide(&h.history, now)
        {
            RecoveryDecision::Disabled => actions.push(Action::GiveUp {
                host: host.clone(),
                reason: format!("{kind}: {reason}; recovery is disabled"),
            }),
            RecoveryDecision::GiveUp {
                recoveries_in_window,
            } => actions.push(Action::GiveUp {
                host: host.clone(),
                reason: format!(
                    "{kind}: {reason}; already recreated {recoveries_in_window} time(s) \
                         within {}, giving up",
                    policy.window
                ),
            }),
            RecoveryDecision::Recreate { delay, consecutive } => actions.push(Action::Detected {
                host: host.clone(),
                kind,
                reason,
                act_at_ms: now.saturating_add(delay.as_millis()),
                consecutive,
            }),
        };
        match &h.pending {
            None => {
                if let Some((kind, reason)) = death {
                    decide(kind, reason, &mut actions);
                }
            }
            Some(p) if p.recreated_ms.is_none() => {
                if now >= p.act_at_ms {
                    actions.push(Action::Recreate { host: host.clone() });
                }
            }
            Some(_) => {
                if let Some((kind, reason)) = death {
                    decide(kind, reason, &mut actions);
                } else if obs.instance_status == InstanceStatus::Running {
                    actions.push(Action::Recovered { host: host.clone() });
                }
            }
        }
    }
    actions
}

#[derive(Debug, Clone, Serialize)]
pub struct VmView {
    pub host: String,
    pub id: String,
    pub state: String,
    pub addresses: Vec<String>,
    pub created_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceHostView {
    pub name: String,
    pub paired: bool,
    pub health: String,
    pub unhealthy_reason: Option<String>,
    pub steps: BTreeMap<String, i64>,
    pub steps_not_done: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceView {
    pub status: String,
    pub status_reason: Option<String>,
    pub generation: i64,
    pub hosts: Vec<ServiceHostView>,
}

/// `ibkit deploy status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    pub name: String,
    pub instance_id: uuid::Uuid,
    pub status: DeployStatus,
    pub status_reason: Option<String>,
    pub manifest: PathBuf,
    pub attempts: Vec<Attempt>,
    pub recoveries: Vec<RecoveryEvent>,
    pub vms: Vec<VmView>,
    /// `None` once deleted.
    pub service: Option<ServiceView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
[instance]
name = "demo"
attempt_timeout = "10m"
[[hosts]]
name = "primary"
image = "a.qcow2"
[[hosts]]
name = "replica"
image = "a.qcow2"
[recovery]
backoff = "10s"
max_backoff = "40s"
max_per_window = 2
window = "1h"
"#;

    fn setup() -> (DeploymentRecord, DeployManifest) {
        let manifest =
            DeployManifest::parse(MANIFEST, Path::new("/x"), "test").expect("manifest parses");
        let vm = |host: &str| HostRecord {
            vm: Some(HostVm {
                id: format!("demo.{host}-a1"),
                seq: 1,
                config_hash: String::new(),
                addresses: vec![],
                created_ms: 0,
            }),
            ..HostRecord::default()
        };
        let record = DeploymentRecord {
            name: "demo".into(),
            backend: crate::store::BackendSpec::Qemu,
            guest_service_url: None,
            instance_id: uuid::Uuid::nil(),
            status: DeployStatus::Running,
            status_reason: None,
            manifest_path: PathBuf::from("/x/deploy.toml"),
            manifest_text: MANIFEST.into(),
            hosts: BTreeMap::from([
                ("primary".into(), vm("primary")),
                ("replica".into(), vm("replica")),
            ]),
            attempts: vec![],
            recoveries: vec![],
            created_ms: 0,
            updated_ms: 0,
        };
        (record, manifest)
    }

    fn obs(
        replica: VmState,
        requests: Vec<RecoveryRequest>,
        status: InstanceStatus,
    ) -> Observations {
        Observations {
            vm_states: BTreeMap::from([
                ("primary".into(), VmState::Running),
                ("replica".into(), replica),
            ]),
            requests,
            instance_status: status,
        }
    }

    fn request(host: &str, kind: &str, at: i64) -> RecoveryRequest {
        RecoveryRequest {
            id: format!("r-{host}-{at}"),
            host: host.into(),
            kind: kind.into(),
            reason: format!("{kind} reason"),
            created_at: at,
        }
    }

    #[test]
    fn a_dead_vm_is_recreated_after_the_backoff_and_only_that_host() {
        let (mut record, manifest) = setup();
        let now = 1_000_000;
        let a = plan_round(
            &record,
            &manifest,
            &obs(VmState::Stopped, vec![], InstanceStatus::Running),
            now,
        );
        assert_eq!(a.len(), 1, "{a:?}");
        let Action::Detected {
            host,
            kind,
            act_at_ms,
            consecutive,
            ..
        } = &a[0]
        else {
            panic!("{a:?}")
        };
        assert_eq!(
            (host.as_str(), kind.as_str(), *act_at_ms, *consecutive),
            ("replica", "vm_stopped", now + 10_000, 1)
        );
        record.hosts.get_mut("replica").expect("replica").pending = Some(PendingRecovery {
            kind: kind.clone(),
            reason: String::new(),
            detected_ms: now,
            act_at_ms: *act_at_ms,
            recreated_ms: None,
        });
        // Before the backoff: nothing; after: recreate.
        let o = obs(VmState::Stopped, vec![], InstanceStatus::Applying);
        assert!(plan_round(&record, &manifest, &o, now + 5_000).is_empty());
        assert_eq!(
            plan_round(&record, &manifest, &o, now + 10_000),
            [Action::Recreate {
                host: "replica".into()
            }]
        );
        // Recreated: a request opened before the recreation is stale; once the
        // instance runs again, the host is recovered.
        let r = record.hosts.get_mut("replica").expect("replica");
        r.pending.as_mut().expect("pending").recreated_ms = Some(now + 10_000);
        r.history.record(now + 10_000);
        let stale = vec![request("replica", "agent_silent", (now + 9_000) as i64)];
        let o = obs(VmState::Running, stale.clone(), InstanceStatus::Applying);
        assert!(plan_round(&record, &manifest, &o, now + 20_000).is_empty());
        let o = obs(VmState::Running, stale, InstanceStatus::Running);
        assert_eq!(
            plan_round(&record, &manifest, &o, now + 60_000),
            [Action::Recovered {
                host: "replica".into()
            }]
        );
    }

    #[test]
    fn requests_from_the_monitor_are_deaths_and_the_cap_gives_up() {
        let (mut record, manifest) = setup();
        let now = 5_000_000;
        let reqs = vec![request("primary", "agent_silent", now as i64 - 1)];
        let a = plan_round(
            &record,
            &manifest,
            &obs(VmState::Running, reqs.clone(), InstanceStatus::Running),
            now,
        );
        assert!(
            matches!(&a[..], [Action::Detected { host, kind, .. }] if host == "primary" && kind == "agent_silent"),
            "{a:?}"
        );
        // Two recoveries within the window already: give up.
        let p = record.hosts.get_mut("primary").expect("primary");
        p.history.record(now - 1_000);
        p.history.record(now - 500);
        let a = plan_round(
            &record,
            &manifest,
            &obs(VmState::Running, reqs, InstanceStatus::Running),
            now,
        );
        assert!(
            matches!(&a[..], [Action::GiveUp { host, reason }] if host == "primary" && reason.contains("giving up")),
            "{a:?}"
        );
    }

    #[test]
    fn a_recreated_vm_that_dies_again_backs_off_longer_and_a_slow_one_times_out() {
        let (mut record, manifest) = setup();
        let now = 9_000_000;
        let r = record.hosts.get_mut("replica").expect("replica");
        r.history.record(now - 60_000);
        r.pending = Some(PendingRecovery {
            kind: "vm_stopped".into(),
            reason: String::new(),
            detected_ms: now - 70_000,
            act_at_ms: now - 60_000,
            recreated_ms: Some(now - 60_000),
        });
        let a = plan_round(
            &record,
            &manifest,
            &obs(VmState::Stopped, vec![], InstanceStatus::Applying),
            now,
        );
        assert!(
            matches!(&a[..], [Action::Detected { consecutive: 2, act_at_ms, .. }] if *act_at_ms == now + 20_000),
            "{a:?}"
        );
        // Alive but never back to running within attempt_timeout (10m).
        let later = now - 60_000 + 10 * 60_000 + 1;
        let a = plan_round(
            &record,
            &manifest,
            &obs(VmState::Running, vec![], InstanceStatus::Applying),
            later,
        );
        assert!(
            matches!(&a[..], [Action::Detected { kind, .. }] if kind == "recovery_timeout"),
            "{a:?}"
        );
    }

    #[test]
    fn disabled_recovery_fails_the_deployment() {
        let (record, _) = setup();
        let text = MANIFEST.replace("[recovery]", "[recovery]\nenabled = false");
        let manifest = DeployManifest::parse(&text, Path::new("/x"), "test").expect("parses");
        let a = plan_round(
            &record,
            &manifest,
            &obs(VmState::Missing, vec![], InstanceStatus::Running),
            1,
        );
        assert!(
            matches!(&a[..], [Action::GiveUp { reason, .. }] if reason.contains("disabled")),
            "{a:?}"
        );
    }
}

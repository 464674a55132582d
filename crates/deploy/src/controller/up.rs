//! `up`: creating or updating the instance in the service, (re)creating
//! the VMs and waiting for `running`, attempt after attempt.

use ibkit_api::operator::{CreateInstanceQuery, HostHealth};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use ibkit_api::wire::{InstanceStatus, StepStatus};
use ibkit_support::clock::unix_ms;
use ibkit_support::text::tail_lines;

use super::{Controller, DeployError, mark, secs};
use crate::backend::{ComputeBackend, VmState};
use crate::manifest::DeployManifest;
use crate::store::{Attempt, AttemptKind, DeployStatus, DeploymentRecord, HostRecord, StoreError};
use crate::userdata::Secret;
use ibkit_api::operator::InstanceDetail;
use ibkit_client::ClientError;

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
                let created = self
                    .client
                    .create_instance(
                        &spec,
                        &CreateInstanceQuery {
                            id: manifest.instance.id.clone(),
                            ..CreateInstanceQuery::default()
                        },
                    )
                    .await?;
                let keys: HashMap<String, Secret> = created
                    .hosts
                    .into_iter()
                    .map(|h| (h.name.to_string(), Secret::new(h.pairing_key)))
                    .collect();
                let now = unix_ms();
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
                self.save(&mut record).await?;
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
                    .update_instance(&record.instance_id, &spec)
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
                self.save(&mut record).await?;
                (record, HashMap::new(), recreate, AttemptKind::Update)
            }
        };

        let max = manifest.instance.max_attempts.max(1);
        for run in 1..=max {
            let number = u32::try_from(record.attempts.len()).unwrap_or(u32::MAX) + 1;
            record.attempts.push(Attempt {
                number,
                kind,
                started_ms: unix_ms(),
                ended_ms: None,
                outcome: None,
                failure: None,
                milestones: Vec::new(),
            });
            record.status = DeployStatus::Applying;
            record.status_reason = Some(format!("attempt {number} ({run} of {max} in this run)"));
            self.save(&mut record).await?;
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
            let now = unix_ms();
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
                    self.save(&mut record).await?;
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
                    self.save(&mut record).await?;
                    keys.clear();
                    recreate = manifest.hosts.iter().map(|h| h.name.clone()).collect();
                    kind = AttemptKind::Retry;
                }
            }
        }
        record.status = DeployStatus::Failed;
        let last = record.status_reason.take().unwrap_or_default();
        record.status_reason = Some(format!("{max} attempt(s) failed; the last: {last}"));
        self.save(&mut record).await?;
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
        let started = record
            .attempts
            .last()
            .map_or_else(unix_ms, |a| a.started_ms);
        for host in recreate {
            let key = keys.remove(host);
            self.recreate_host(record, manifest, host, key, manifest.recovery.keep_evidence)
                .await
                .map_err(|e| format!("VM {host}: {e}"))?;
        }
        if let Some(a) = record.current_attempt_mut() {
            mark(&mut a.milestones, "vms_created");
        }
        let _ = self.save(record).await;
        self.wait_running(record, manifest, started).await
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
                self.client.instance(&record.instance_id)
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
            let now = unix_ms();
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
            let ok = h.steps.get(&StepStatus::Ok).copied().unwrap_or(0)
                + h.steps.get(&StepStatus::Skipped).copied().unwrap_or(0);
            let total: i64 = h.steps.values().sum();
            let line = format!(
                "host {}: {}, steps {ok}/{total} done{}",
                h.name,
                if h.paired {
                    "agent paired"
                } else {
                    "waiting for the agent"
                },
                match h.health {
                    HostHealth::Healthy if h.checks_active_since.is_some() => ", healthy",
                    HostHealth::Unhealthy => ", unhealthy",
                    _ => "",
                }
            );
            if last_seen.get(h.name.as_str()) != Some(&line) {
                if let Some(a) = record.current_attempt_mut() {
                    if h.paired {
                        mark(&mut a.milestones, format!("{}.paired", h.name));
                    }
                    if h.paired && h.steps_not_done() == 0 {
                        mark(&mut a.milestones, format!("{}.steps_done", h.name));
                    }
                }
                self.say(&line);
                last_seen.insert(h.name.to_string(), line);
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
            if h.steps.get(&StepStatus::Failed).copied().unwrap_or(0) == 0 {
                continue;
            }
            let Ok(steps) = self.client.steps(&record.instance_id, &h.name).await else {
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
            let Ok(name) = super::host_name(host) else {
                continue;
            };
            let results = self
                .client
                .health(&record.instance_id, &name)
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
                let console = match record
                    .hosts
                    .get(h.name.as_str())
                    .and_then(|r| r.vm.as_ref())
                {
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
        let Ok(open) = self
            .client
            .open_recovery_requests(&record.instance_id)
            .await
        else {
            return;
        };
        for r in open.iter().filter(|r| host.is_none_or(|h| r.host == h)) {
            if let Err(e) = self.client.resolve_recovery_request(&r.id).await {
                tracing::warn!("resolving recovery request {}: {e}", r.id);
            }
        }
    }
}

//! The recovery loop (`watch`): observe each deployment, decide
//! ([`plan_round`], pure) and act (recreate a dead host's VM).

use std::collections::BTreeMap;

use ibkit_api::wire::InstanceStatus;
use ibkit_support::clock::unix_ms;

use super::{Controller, DeployError, mark, secs};
use crate::backend::{ComputeBackend, VmState};
use crate::manifest::{DeployManifest, RecoveryPolicy};
use crate::recovery::RecoveryDecision;
use crate::store::{DeployStatus, DeploymentRecord, PendingRecovery, RecoveryEvent};
use ibkit_api::operator::RecoveryRequest;

impl<B: ComputeBackend> Controller<B> {
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
            .open_recovery_requests(&record.instance_id)
            .await?;
        let detail = self.client.instance(&record.instance_id).await?;
        let obs = Observations {
            vm_states,
            requests: requests.clone(),
            instance_status: detail.status,
        };
        let mut actions = plan_round(&record, &manifest, &obs, unix_ms());
        // Where a recovery's time goes: when the new VM's agent paired and
        // when its steps were done.
        for h in &detail.hosts {
            let recreated = record
                .hosts
                .get(h.name.as_str())
                .and_then(|r| r.pending.as_ref())
                .is_some_and(|p| p.recreated_ms.is_some());
            if recreated && h.paired {
                actions.insert(
                    0,
                    Action::Progress {
                        host: h.name.to_string(),
                        milestone: "paired".into(),
                    },
                );
                if h.steps_not_done() == 0 {
                    actions.insert(
                        1,
                        Action::Progress {
                            host: h.name.to_string(),
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
        let now = unix_ms();
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
                self.save(record).await?;
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
                self.save(record).await?;
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
                                p.recreated_ms = Some(unix_ms());
                            }
                        }
                        if let Some(ev) = open_event(record, &host) {
                            ev.recreated_ms = Some(unix_ms());
                            ev.new_vm = new_vm;
                            ev.evidence = evidence;
                            mark(&mut ev.milestones, "recreated");
                        }
                        self.save(record).await?;
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
                        self.save(record).await?;
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
                    self.save(record).await?;
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
                self.save(record).await?;
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
            .map(|r| (r.kind.to_string(), r.reason.clone()))
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

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::store::{HostRecord, HostVm};

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
            instance_id: ibkit_api::operator::InstanceId::new_v4(),
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
            id: ibkit_api::operator::RecoveryRequestId::new_v4(),
            instance: ibkit_api::operator::InstanceId::new_v4(),
            host: ibkit_api::operator::HostName::parse(host).expect("host name"),
            kind: ibkit_api::operator::RecoveryKind::parse(kind),
            reason: format!("{kind} reason"),
            created_at: at,
            status: ibkit_api::operator::RecoveryStatus::Open,
            resolved_at: None,
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

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
//!
//! One file per job: `up.rs`, `recover.rs` (`watch`), `status.rs`
//! (`status`, `outputs`) and `down.rs`; this one holds what they share.

use ibkit_api::operator::{HostName, PairingKeyQuery};
use std::path::PathBuf;
use std::time::Duration;

use ibkit_support::clock::unix_ms;

use crate::backend::{BackendError, ComputeBackend, InstanceRef, VmRequest};
use crate::manifest::{DeployManifest, ManifestError, ValidationErrors};
use crate::store::{DeploymentRecord, HostVm, Store, StoreError};
use crate::userdata::{AgentBootstrap, Secret, UserDataError, render_user_data};
use ibkit_client::{ClientError, OperatorClient};

mod down;
mod recover;
mod status;
mod up;

pub use recover::{Action, Observations, plan_round};
pub use status::{ServiceHostView, ServiceView, StatusView, VmView};

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

/// A host name of the manifest as the API types it (the manifest's
/// validation already refused invalid names).
pub(crate) fn host_name(host: &str) -> Result<HostName, DeployError> {
    HostName::parse(host).map_err(|e| DeployError::Refused(e.to_string()))
}

/// Lines for the person watching (`ibkit deploy` prints them on stderr).
pub type Progress = Box<dyn Fn(&str) + Send + Sync>;

/// How the controller reaches the service and how VMs do.
pub struct Controller<B: ComputeBackend> {
    backend: B,
    client: OperatorClient,
    store: Store,
    /// The service as VMs reach it (QEMU: the bridge address).
    guest_service_url: String,
    cert_sha256: String,
    curl_pin: String,
    progress: Progress,
    /// How often the service and the backend are polled.
    pub poll: Duration,
}

/// How long a timeline publish may hold up the controller.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Timestamps of an attempt or a recovery, for "where the time goes".
fn mark(milestones: &mut Vec<(String, u64)>, what: impl Into<String>) {
    let what = what.into();
    if !milestones.iter().any(|(w, _)| *w == what) {
        milestones.push((what, unix_ms()));
    }
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

impl<B: ComputeBackend> Controller<B> {
    /// Saves the record, then publishes its timeline to the service so the
    /// console shows attempts and recoveries. The record on disk is the
    /// truth: a failed publish is logged and the next save publishes again.
    async fn save(&self, record: &mut DeploymentRecord) -> Result<(), StoreError> {
        self.store.save(record)?;
        let timeline = record.timeline();
        let publish = self.client.put_deployment(&record.instance_id, &timeline);
        match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(
                deployment = %record.name,
                "could not publish the deployment timeline to the service: {e}"
            ),
            Err(_) => tracing::warn!(
                deployment = %record.name,
                "publishing the deployment timeline timed out after {PUBLISH_TIMEOUT:?}"
            ),
        }
        Ok(())
    }

    /// Asks the service for its certificate pins (over the pinned,
    /// authenticated connection) so that VMs can trust it too.
    pub async fn new(
        backend: B,
        client: OperatorClient,
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
            id: r.instance_id.to_uuid(),
            name: r.name.clone(),
        }
    }

    /// Deletes the host's VMs (keeping evidence when asked), re-keys the
    /// host in the service unless a fresh key is given, and creates a new
    /// VM. Returns the evidence of the deleted VM(s). Used by `up` and by
    /// recovery alike.
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
            None => Secret::new(
                self.client
                    .rekey(
                        &record.instance_id,
                        &host_name(host)?,
                        &PairingKeyQuery::default(),
                    )
                    .await?
                    .pairing_key,
            ),
        };
        let boot = AgentBootstrap {
            service_url: record
                .guest_service_url
                .clone()
                .unwrap_or_else(|| self.guest_service_url.clone()),
            cert_sha256_hex: self.cert_sha256.clone(),
            curl_pin: self.curl_pin.clone(),
            instance_id: record.instance_id.to_uuid(),
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
            service_url: boot.service_url.clone(),
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
            created_ms: unix_ms(),
        });
        self.save(record).await?;
        Ok((old_id, evidence))
    }
}

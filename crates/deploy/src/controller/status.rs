//! `status` and `outputs`: the record with what the service and the
//! backend say now, and the outputs rendered from the service's results.

use ibkit_api::operator::{GroupName, HostHealth, HostName, InstanceId, InstanceUsage, StepCounts};
use std::collections::HashMap;
use std::path::PathBuf;

use ibkit_api::reference;
use ibkit_api::wire::StepStatus;
use serde::Serialize;

use super::{Controller, DeployError};
use crate::backend::ComputeBackend;
use crate::outputs::{OutputValue, StepResultView, render_outputs};
use crate::store::{Attempt, DeployStatus, RecoveryEvent};

impl<B: ComputeBackend> Controller<B> {
    /// The record with what the service and the backend say now.
    pub async fn status(&self, name: &str) -> Result<StatusView, DeployError> {
        let record = self.store.load(name)?;
        self.check_backend(&record)?;
        let service = if record.status == DeployStatus::Deleted {
            None
        } else {
            match self.client.instance(&record.instance_id).await {
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
            instance_id: record.instance_id.clone(),
            status: record.status,
            status_reason: record.status_reason.clone(),
            manifest: record.manifest_path.clone(),
            attempts: record.attempts.clone(),
            recoveries: record.recoveries.clone(),
            vms,
            service,
        })
    }

    /// What the service's billing emulator counted for the deployment's
    /// instance: totals, pushes accepted and refused, keys issued.
    pub async fn usage(&self, name: &str) -> Result<InstanceUsage, DeployError> {
        let record = self.store.load(name)?;
        self.check_backend(&record)?;
        if record.status == DeployStatus::Deleted {
            return Err(DeployError::Refused(format!("{name} is deleted")));
        }
        Ok(self.client.instance_usage(&record.instance_id).await?)
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
                let (Ok(host), Ok(group)) = (HostName::parse(&r.host), GroupName::parse(&r.group))
                else {
                    continue;
                };
                match self
                    .client
                    .result(&record.instance_id, &host, &group, r.index)
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
    pub name: HostName,
    pub paired: bool,
    pub health: HostHealth,
    pub unhealthy_reason: Option<String>,
    pub steps: StepCounts,
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
    pub instance_id: InstanceId,
    pub status: DeployStatus,
    pub status_reason: Option<String>,
    pub manifest: PathBuf,
    pub attempts: Vec<Attempt>,
    pub recoveries: Vec<RecoveryEvent>,
    pub vms: Vec<VmView>,
    /// `None` once deleted.
    pub service: Option<ServiceView>,
}

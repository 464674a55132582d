//! `down`: deleting the VMs, the instance in the service and what the
//! backend keeps for it.

use std::time::Duration;

use super::{Controller, DeployError};
use crate::backend::ComputeBackend;
use crate::store::{DeployStatus, DeploymentRecord};

impl<B: ComputeBackend> Controller<B> {
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
        match self.client.delete_instance(&record.instance_id).await {
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
        self.save(&mut record).await?;
        Ok(record)
    }
}

//! [`AnyBackend`]: the backend chosen at run time (`--backend`, or the one a
//! deployment record names), so one [`crate::Controller`] type serves both.

use crate::backend::{
    BackendError, ComputeBackend, Evidence, InstanceRef, VmHandle, VmInfo, VmRequest, VmState,
};
use crate::openstack::OpenStackBackend;
use crate::qemu_backend::QemuBackend;
use crate::store::BackendSpec;

pub enum AnyBackend {
    Qemu(QemuBackend),
    OpenStack(Box<OpenStackBackend>),
}

macro_rules! dispatch {
    ($self:ident, $b:ident => $call:expr) => {
        match $self {
            AnyBackend::Qemu($b) => $call,
            AnyBackend::OpenStack($b) => $call,
        }
    };
}

impl ComputeBackend for AnyBackend {
    fn spec(&self) -> BackendSpec {
        dispatch!(self, b => b.spec())
    }

    async fn create_vm(&self, request: VmRequest) -> Result<VmHandle, BackendError> {
        dispatch!(self, b => b.create_vm(request).await)
    }

    async fn delete_vm(&self, id: &str, keep_evidence: bool) -> Result<Evidence, BackendError> {
        dispatch!(self, b => b.delete_vm(id, keep_evidence).await)
    }

    async fn vm_state(&self, id: &str) -> Result<VmState, BackendError> {
        dispatch!(self, b => b.vm_state(id).await)
    }

    async fn list(&self, instance: &InstanceRef) -> Result<Vec<VmInfo>, BackendError> {
        dispatch!(self, b => b.list(instance).await)
    }

    async fn console_tail(&self, id: &str, max_bytes: usize) -> Result<String, BackendError> {
        dispatch!(self, b => b.console_tail(id, max_bytes).await)
    }

    async fn release_instance(&self, instance: &InstanceRef) -> Result<(), BackendError> {
        dispatch!(self, b => b.release_instance(instance).await)
    }
}

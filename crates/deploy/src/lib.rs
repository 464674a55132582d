//! `ibkit deploy`: a service instance from a vendor image, deployed onto a
//! compute backend (local QEMU first, OpenStack later).
//!
//! This crate holds the parts that need no VM and are tested on their own:
//!
//! - [`manifest`]: the deployment manifest (`deploy.toml`), its validation
//!   (every error names its path) and the [`ibkit_api::InstanceSpec`] it
//!   hands to `ibkit serve`;
//! - [`userdata`]: the per-host cloud-init user data (MIME multipart) that
//!   installs and pairs the agent and runs the vendor's boot scripts;
//! - [`outputs`]: the values shown to the buyer, rendered from step results,
//!   with sensitive ones masked unless asked for;
//! - [`recovery`]: when a dead VM is recreated (backoff, cap per window);
//! - [`backend`]: the compute backend interface the QEMU and OpenStack
//!   backends implement;
//! - [`qemu_backend`]: the local QEMU backend (detached VMs on a private
//!   bridge with dnsmasq DHCP, state on disk).
//!
//! See `docs/deploy.md` for the manifest reference and the lifecycle.

pub mod backend;
pub mod manifest;
pub mod outputs;
pub mod qemu_backend;
pub mod recovery;
pub mod userdata;

pub use backend::{
    BackendError, ComputeBackend, Evidence, InstanceRef, VmHandle, VmInfo, VmRequest, VmState,
};
pub use manifest::{
    DeployManifest, FieldError, Flavor, HostDef, InstanceSettings, ManifestError, OutputDef,
    RecoveryPolicy, UserDataSpec, ValidationErrors,
};
pub use outputs::{OutputValue, StepResultView, format_outputs, render_outputs};
pub use qemu_backend::{NetworkConfig, QemuBackend};
pub use recovery::{RecoveryDecision, RecoveryHistory};
pub use userdata::{AgentBootstrap, Secret, UserDataError, render_user_data};

//! `ibkit deploy`: a service instance from a vendor image, deployed onto a
//! compute backend: local QEMU or an OpenStack cloud.
//!
//! - [`manifest`]: the deployment manifest (`deploy.toml`), its validation
//!   (every error names its path) and the [`ibkit_api::InstanceSpec`] it
//!   hands to `ibkit serve`;
//! - [`userdata`]: the per-host cloud-init user data (MIME multipart) that
//!   installs and pairs the agent and runs the vendor's boot scripts;
//! - [`outputs`]: the values shown to the buyer, rendered from step results,
//!   with sensitive ones masked unless asked for;
//! - [`service_url`]: the service's URL as a VM reaches it (the operator
//!   API client itself is `ibkit-client`, shared with the tests);
//! - [`controller`]: `up` (attempts, updates), `status`, `outputs`, `down`
//!   and the recovery rounds (`watch`), with the pure decision
//!   [`controller::plan_round`];
//! - [`store`]: what is remembered per deployment (atomic JSON records, a
//!   lock shared by the commands);
//! - [`recovery`]: when a dead VM is recreated (backoff, cap per window);
//!   [`fleet`]: recovery rounds for deployments on several backends;
//! - [`backend`]: the compute backend interface the QEMU and OpenStack
//!   backends implement; [`any_backend`]: the one chosen at run time;
//! - [`qemu_backend`]: the local QEMU backend (detached VMs on a private
//!   bridge with dnsmasq DHCP, state on disk);
//! - [`openstack`]: the OpenStack backend (clouds.yaml, a thin Keystone /
//!   Nova / Glance / Neutron client, Nova servers, `gc` of leftovers).
//!
//! See `docs/deploy.md` for the manifest reference and the lifecycle.

pub mod any_backend;
pub mod backend;
pub mod controller;
pub mod fleet;
pub mod manifest;
pub mod openstack;
pub mod outputs;
pub mod qemu_backend;
pub mod recovery;
pub mod service_url;
pub mod store;
pub mod userdata;

pub use any_backend::AnyBackend;
pub use backend::{
    BackendError, ComputeBackend, Evidence, InstanceRef, VmHandle, VmInfo, VmRequest, VmState,
};
pub use controller::{Controller, DeployError, StatusView};
pub use manifest::{
    DeployManifest, FieldError, Flavor, HostDef, InstanceSettings, ManifestError, OutputDef,
    RecoveryPolicy, UserDataSpec, ValidationErrors,
};
pub use openstack::{OpenStackBackend, OpenStackSettings};
pub use outputs::{OutputValue, StepResultView, format_outputs, render_outputs};
pub use qemu_backend::{NetworkConfig, QemuBackend};
pub use recovery::{RecoveryDecision, RecoveryHistory};
pub use store::{BackendSpec, DeployStatus, DeploymentRecord, Store};
pub use userdata::{AgentBootstrap, Secret, UserDataError, render_user_data};

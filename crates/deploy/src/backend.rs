//! The compute backend: where the VMs of an instance run.
//!
//! [`crate::controller`] drives it as follows.
//! `up` lists the instance's VMs ([`ComputeBackend::list`]), keeps those
//! whose `config_hash` matches the manifest's host ([`crate::HostDef::config_hash`])
//! and that are `Running`, deletes the others and creates the missing ones
//! ([`ComputeBackend::create_vm`]) with fresh user data (a new pairing key
//! per VM). Recovery deletes a dead VM (keeping evidence when asked) and
//! creates it again with `attempt + 1`. `down` deletes every VM of the
//! instance. Every method is idempotent enough to be retried after a crash
//! of `ibkit deploy`: VMs are found again by instance and host.
//!
//! # QEMU backend ([`crate::qemu_backend`]; the notes below were the plan,
//! the module docs say what was built)
//!
//! - **Disks:** a copy-on-write qcow2 overlay per VM
//!   (`qemu-img create -u -f qcow2 -F FMT -b IMAGE overlay.qcow2 DISK_GiB G`,
//!   after `ibkit_vm::approve_image` approved IMAGE's whole chain)
//!   under `STATE/deploy/<instance>/<host>-a<attempt>/`, so the vendor's
//!   image is never written and a recreated VM starts from the image again.
//!   The overlay is grown to `flavor.disk_gib` (never shrunk below the
//!   image's virtual size).
//! - **User data:** a NoCloud seed (`cidata` FAT or ISO volume with
//!   `user-data`, `meta-data` holding a fresh `instance-id` per VM so
//!   per-instance modules run again on a recreated VM, `network-config`).
//! - **Network:** a private network per instance: a Linux bridge
//!   (`ibkit-<short id>`) with a /24 from `10.231.0.0/16`, one tap per VM
//!   (`/dev/net/tun`; root and bridges work on the development machine),
//!   `dnsmasq` bound to the bridge handing out DHCP leases per MAC (a
//!   locally administered MAC derived from instance, host and attempt), and
//!   NAT out through the host. The configuration service listens on the
//!   bridge address, which is the `service_url` the VMs get. Fallback
//!   without root: QEMU socket multicast networking between the VMs
//!   (`-netdev socket,mcast=230.0.0.1:PORT`) plus a user-mode NIC per VM
//!   reaching the service at 10.0.2.2 (`guestfwd` or the host's address);
//!   addresses then come from a static plan in `network-config`.
//! - **VM:** `qemu-system-x86_64` (KVM when it works, else TCG, as
//!   `ibkit boot-test` decides) with `flavor.vcpus` and `memory_mib`, the
//!   serial console to `serial.log`, a QMP socket, and a pidfile; daemonised
//!   so the VM outlives `ibkit deploy up`. `vm_state` reads the pidfile and
//!   QMP (`query-status`); a VM whose process is gone is `Stopped` (its
//!   directory still exists) or `Missing`.
//! - **Evidence:** `delete_vm(id, keep_evidence = true)` stops QEMU and
//!   moves `serial.log` and the overlay to
//!   `STATE/deploy/<instance>/evidence/<host>-a<attempt>-<time>/`.
//!
//! # OpenStack backend ([`crate::openstack`])
//!
//! Nova servers named `ibkit-<instance>-<host>-a<attempt>` with metadata
//! naming instance, host, attempt and config hash (which `list` reads
//! back), a config drive and base64 user data; a tagged Neutron port each,
//! on a per-instance network; evidence is the console log.

use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::manifest::Flavor;

/// The instance a VM belongs to: the service's instance id and the
/// manifest's name (used in VM names).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceRef {
    pub id: uuid::Uuid,
    pub name: String,
}

/// What to create.
#[derive(Clone, PartialEq, Eq)]
pub struct VmRequest {
    pub instance: InstanceRef,
    pub host: String,
    /// An image file (QEMU, see [`crate::DeployManifest::image_path`]) or
    /// a Glance image name or id (OpenStack).
    pub image: String,
    pub flavor: Flavor,
    /// OpenStack: a Nova flavor by name or id, overriding `flavor`.
    pub os_flavor: Option<String>,
    /// TCP ports open to anyone (OpenStack security group; SSH always).
    pub ports: Vec<u16>,
    /// The MIME multipart from [`crate::userdata::render_user_data`]; holds
    /// the host's pairing key.
    pub user_data: Vec<u8>,
    /// The service as the VM reaches it (the URL in `user_data`). The QEMU
    /// backend's firewall opens its port on the bridge address and nothing
    /// else of the host's.
    pub service_url: String,
    /// [`crate::HostDef::config_hash`], stored with the VM for `list`.
    pub config_hash: String,
    /// 1 for the first VM of a host; each recreation adds one.
    pub attempt: u32,
}

impl std::fmt::Debug for VmRequest {
    // The user data carries the pairing key: show its size only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmRequest")
            .field("instance", &self.instance)
            .field("host", &self.host)
            .field("image", &self.image)
            .field("flavor", &self.flavor)
            .field("os_flavor", &self.os_flavor)
            .field("ports", &self.ports)
            .field(
                "user_data",
                &format_args!("<{} bytes>", self.user_data.len()),
            )
            .field("service_url", &self.service_url)
            .field("config_hash", &self.config_hash)
            .field("attempt", &self.attempt)
            .finish()
    }
}

/// A created VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmHandle {
    /// The backend's id (QEMU: the VM directory's name; OpenStack: the
    /// server's uuid).
    pub id: String,
    pub host: String,
    /// Addresses on the instance's network, as far as known.
    pub addresses: Vec<IpAddr>,
}

/// A VM as `list` finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmInfo {
    pub handle: VmHandle,
    pub state: VmState,
    pub config_hash: String,
    pub attempt: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmState {
    /// Powered on (whether its agent works is the service's business).
    Running,
    /// Exists but is not running (crashed, shut down, error state).
    Stopped,
    /// The backend does not know the VM (deleted behind our back).
    Missing,
}

/// What a deleted VM left for a post-mortem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    /// Local files: serial log, disk overlay, saved console output.
    pub paths: Vec<PathBuf>,
    /// Resources kept on the backend, e.g. an OpenStack snapshot id.
    pub retained: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("no VM {0}")]
    NotFound(String),
    #[error("image {image}: {why}")]
    Image { image: String, why: String },
    #[error("not enough capacity: {0}")]
    Capacity(String),
    #[error("the backend is unavailable: {0}")]
    Unavailable(String),
    /// A host command (`ip`, `dnsmasq`, `qemu-img`…) failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

/// A place to run VMs. Futures are `Send` so a multi-threaded runtime can
/// drive several hosts at once; the trait need not be object safe.
pub trait ComputeBackend: Send + Sync {
    /// What deployment records remember about this backend.
    fn spec(&self) -> crate::store::BackendSpec;

    /// Creates and starts a VM; returns once it is started (not booted).
    fn create_vm(
        &self,
        request: VmRequest,
    ) -> impl Future<Output = Result<VmHandle, BackendError>> + Send;

    /// Stops and deletes a VM; with `keep_evidence` its serial log and disk
    /// are kept and returned. Deleting a missing VM is not an error.
    fn delete_vm(
        &self,
        id: &str,
        keep_evidence: bool,
    ) -> impl Future<Output = Result<Evidence, BackendError>> + Send;

    fn vm_state(&self, id: &str) -> impl Future<Output = Result<VmState, BackendError>> + Send;

    /// Every VM of the instance, including stopped ones.
    fn list(
        &self,
        instance: &InstanceRef,
    ) -> impl Future<Output = Result<Vec<VmInfo>, BackendError>> + Send;

    /// The end of a VM's console output (at most `max_bytes`), for failure
    /// reasons: a VM whose agent never paired says why on its console.
    fn console_tail(
        &self,
        id: &str,
        max_bytes: usize,
    ) -> impl Future<Output = Result<String, BackendError>> + Send;

    /// The instance is gone (`down`, after its VMs were deleted): free what
    /// the backend keeps for it (addresses, networks).
    fn release_instance(
        &self,
        instance: &InstanceRef,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::pin::pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll, Waker};

    use super::*;

    /// Drives a future that never waits (the fake backend's).
    fn block_on<F: Future>(f: F) -> F::Output {
        let mut f = pin!(f);
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    #[derive(Default)]
    struct Fake {
        vms: Mutex<BTreeMap<String, (VmRequest, VmState)>>,
    }

    impl ComputeBackend for Fake {
        fn spec(&self) -> crate::store::BackendSpec {
            crate::store::BackendSpec::Qemu
        }

        async fn create_vm(&self, r: VmRequest) -> Result<VmHandle, BackendError> {
            let id = format!("{}-{}-a{}", r.instance.name, r.host, r.attempt);
            let handle = VmHandle {
                id: id.clone(),
                host: r.host.clone(),
                addresses: vec![IpAddr::from([10, 231, 0, 10 + r.attempt as u8])],
            };
            let mut vms = self
                .vms
                .lock()
                .map_err(|e| BackendError::Other(e.to_string()))?;
            vms.insert(id, (r, VmState::Running));
            Ok(handle)
        }

        async fn delete_vm(&self, id: &str, keep: bool) -> Result<Evidence, BackendError> {
            let mut vms = self
                .vms
                .lock()
                .map_err(|e| BackendError::Other(e.to_string()))?;
            vms.remove(id);
            Ok(Evidence {
                paths: if keep {
                    vec![PathBuf::from(format!("evidence/{id}/serial.log"))]
                } else {
                    Vec::new()
                },
                retained: Vec::new(),
            })
        }

        async fn vm_state(&self, id: &str) -> Result<VmState, BackendError> {
            let vms = self
                .vms
                .lock()
                .map_err(|e| BackendError::Other(e.to_string()))?;
            Ok(vms.get(id).map_or(VmState::Missing, |(_, s)| *s))
        }

        async fn list(&self, instance: &InstanceRef) -> Result<Vec<VmInfo>, BackendError> {
            let vms = self
                .vms
                .lock()
                .map_err(|e| BackendError::Other(e.to_string()))?;
            Ok(vms
                .iter()
                .filter(|(_, (r, _))| r.instance == *instance)
                .map(|(id, (r, s))| VmInfo {
                    handle: VmHandle {
                        id: id.clone(),
                        host: r.host.clone(),
                        addresses: Vec::new(),
                    },
                    state: *s,
                    config_hash: r.config_hash.clone(),
                    attempt: r.attempt,
                })
                .collect())
        }

        async fn console_tail(&self, id: &str, _max: usize) -> Result<String, BackendError> {
            Ok(format!("console of {id}"))
        }

        async fn release_instance(&self, _instance: &InstanceRef) -> Result<(), BackendError> {
            Ok(())
        }
    }

    /// What recovery will do, written against the trait.
    async fn recreate<B: ComputeBackend>(
        b: &B,
        old: &VmInfo,
        request: VmRequest,
    ) -> Result<(Evidence, VmHandle), BackendError> {
        let evidence = b.delete_vm(&old.handle.id, true).await?;
        let handle = b.create_vm(request).await?;
        Ok((evidence, handle))
    }

    #[test]
    fn the_trait_drives_a_recreation() {
        let b = Fake::default();
        let instance = InstanceRef {
            id: uuid::Uuid::nil(),
            name: "demo".into(),
        };
        let req = |attempt| VmRequest {
            instance: instance.clone(),
            host: "primary".into(),
            image: "app.qcow2".into(),
            flavor: Flavor::default(),
            os_flavor: None,
            ports: Vec::new(),
            user_data: b"key inside".to_vec(),
            service_url: "https://10.77.0.1:8443".into(),
            config_hash: "h".into(),
            attempt,
        };
        let first = block_on(b.create_vm(req(1))).expect("created");
        assert_eq!(block_on(b.vm_state(&first.id)).ok(), Some(VmState::Running));
        let listed = block_on(b.list(&instance)).expect("listed");
        assert_eq!(listed.len(), 1);
        let (evidence, second) = block_on(recreate(&b, &listed[0], req(2))).expect("recreated");
        assert_eq!(evidence.paths.len(), 1);
        assert_eq!(second.id, "demo-primary-a2");
        assert_eq!(block_on(b.vm_state(&first.id)).ok(), Some(VmState::Missing));
        assert!(!format!("{:?}", req(1)).contains("key inside"));
    }
}

//! What a boot test run is told: the image, the app manifest, the
//! accelerator, flavors, timeouts, where to keep the evidence.

use std::path::PathBuf;
use std::time::Duration;

use ibkit_rules::manifest::Manifest;

/// Which accelerator to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccelRequest {
    /// KVM when a real probe boot shows it works, else TCG.
    Auto,
    /// KVM, no probe (fails if it does not work).
    Kvm,
    /// Software emulation.
    Tcg,
}

/// vCPUs and RAM of a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flavor {
    /// vCPUs.
    pub vcpus: u32,
    /// RAM in MiB.
    pub memory_mib: u64,
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The image (qcow2 or raw); never modified.
    pub image: PathBuf,
    /// The vendor's app manifest (units, ports, `[health]`).
    pub manifest: Option<Manifest>,
    /// KVM or TCG.
    pub accel: AccelRequest,
    /// Where VMs' disks, logs and captures go. None: a temporary directory,
    /// removed after a passing run (kept, without the disks, after a failure).
    pub work_dir: Option<PathBuf>,
    /// Keep everything, disks included.
    pub keep: bool,
    /// The first VM's flavor.
    pub small: Flavor,
    /// The second VM's flavor.
    pub large: Flavor,
    /// How much larger the second VM's disk is than the image.
    pub extra_disk: u64,
    /// Boot to SSH.
    pub boot_timeout: Duration,
    /// Restart (reboot or reset) to SSH.
    pub restart_timeout: Duration,
    /// Give up waiting for SSH when the guest has sent nothing on its NIC
    /// for this long after QEMU started (a NIC that never comes up).
    pub silent_network_timeout: Duration,
    /// Overrides the manifest's `[health] timeout`.
    pub health_timeout: Option<Duration>,
    /// Boot the second VM while the first is being tested (2+ cores).
    pub parallel: bool,
    /// Let the guests reach the host's loopback and every address the host
    /// reaches (QEMU's unrestricted user network). Off by default: the
    /// image is untrusted, and only the billing emulator is forwarded in.
    pub open_network: bool,
    /// Cache for the KVM probe result.
    pub cache_dir: PathBuf,
}

impl Options {
    /// Defaults for `image`: 1 vCPU / 1 GiB then 2 vCPU / 4 GiB with a
    /// 2 GiB larger disk, generous timeouts for TCG.
    pub fn new(image: PathBuf) -> Options {
        let cache_dir = std::env::var_os("IBKIT_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("ibkit-cache"));
        Options {
            image,
            manifest: None,
            accel: AccelRequest::Auto,
            work_dir: None,
            keep: false,
            small: Flavor {
                vcpus: 1,
                memory_mib: 1024,
            },
            large: Flavor {
                vcpus: 2,
                memory_mib: 4096,
            },
            extra_disk: 2 << 30,
            boot_timeout: Duration::from_secs(360),
            restart_timeout: Duration::from_secs(300),
            silent_network_timeout: Duration::from_secs(200),
            health_timeout: None,
            parallel: true,
            open_network: false,
            cache_dir,
        }
    }
}

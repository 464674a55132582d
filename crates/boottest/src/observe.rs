//! What the boot test saw: plain data gathered from the VMs by the course
//! (`run`, `gather`), judged by the pure functions in [`crate::checks`].
//! Kept serialisable so a run's raw observations can be saved next to the
//! report (`observations.json` in the work directory) and replayed in tests.

use serde::{Deserialize, Serialize};

use ibkit_rules::billing::BillingManifest;

pub use crate::billing::{BillingObs, SetupRun};
use crate::guest::{Listener, SerialSummary, ShadowSummary};
use crate::health::HealthSpec;

/// Everything observed in one `boot-test` run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Observations {
    /// `kvm` or `tcg`, and why.
    pub accel: Option<ibkit_vm::AccelChoice>,
    /// The app's health check from the manifest (None: no `[health]`).
    pub health_spec: Option<HealthSpec>,
    /// Whether an app manifest was given (its declared ports are then binding).
    pub manifest_given: bool,
    /// Ports the manifest declares, `8080/tcp`.
    pub declared_ports: Vec<String>,
    /// Units the manifest names as the app.
    pub app_units: Vec<String>,
    /// First boot: small flavor, NoCloud seed.
    pub first: Option<BootObs>,
    /// `systemctl reboot` over SSH on the first VM.
    pub soft_reboot: Option<RestartObs>,
    /// QMP `system_reset` on the first VM.
    pub hard_reset: Option<RestartObs>,
    /// Second VM: bigger flavor and disk, new MAC, OpenStack config drive.
    pub flavor: Option<BootObs>,
    /// OS-NO-FIXED-MAC findings of the offline check, shown when the live
    /// network check fails (they usually say why).
    pub offline_fixed_mac: Vec<String>,
    /// The manifest's `[billing]` (None: no such table).
    pub billing_spec: Option<BillingManifest>,
    /// The billing watch on the first VM (when the plan bills).
    pub billing: Option<BillingObs>,
}

/// One VM's boot.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BootObs {
    /// `first boot`, `flavor boot`.
    pub label: String,
    /// vCPUs given.
    pub vcpus: u32,
    /// RAM given.
    pub memory_mib: u64,
    /// Virtual disk size given.
    pub disk_bytes: u64,
    /// The NIC's MAC.
    pub mac: String,
    /// `NoCloud` or `ConfigDrive`: the seed the VM got.
    pub seed: String,
    /// Serial console.
    pub serial: SerialSummary,
    /// Where the serial log is kept.
    pub serial_log: String,
    /// DHCP as captured on the VM's network.
    pub network: NetObs,
    /// SSH identification string on port 22.
    pub banner: Option<String>,
    /// Seconds from QEMU start to a working SSH login.
    pub ssh_ready_after_s: Option<f64>,
    /// Why SSH login never worked.
    pub ssh_error: Option<String>,
    /// What was read inside the guest (None: never logged in).
    pub guest: Option<GuestObs>,
    /// The app's health after this boot.
    pub health: Option<HealthObs>,
}

impl BootObs {
    /// A short description of the VM: `1 vCPU, 1024 MiB, 2.0 GiB disk, MAC fa:16:3e:..`.
    pub fn describe(&self) -> String {
        format!(
            "{} vCPU, {} MiB, {:.1} GiB disk, MAC {}, {} seed",
            self.vcpus,
            self.memory_mib,
            self.disk_bytes as f64 / (1u64 << 30) as f64,
            self.mac,
            self.seed
        )
    }
}

/// DHCP seen in the packet capture of the VM's NIC.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NetObs {
    /// Frames sent by the guest's MAC.
    pub frames_from_guest: usize,
    /// DHCP DISCOVER/REQUEST from the guest's MAC.
    pub dhcp_requests: usize,
    /// Address acknowledged to the guest's MAC.
    pub dhcp_ack: Option<String>,
    /// Seconds from QEMU start to the ACK.
    pub dhcp_ack_after_s: Option<f64>,
    /// Capture could not be read.
    pub error: Option<String>,
}

/// What was read inside a guest over SSH.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GuestObs {
    /// `/proc/cmdline`.
    pub cmdline: Option<String>,
    /// `cloud-init status` and `/run/cloud-init/result.json`.
    pub cloud_init: Option<CloudInitObs>,
    /// `ssh.service`/`ssh.socket`/`sshd.service`: (unit, active, enabled).
    pub sshd_units: Vec<UnitState>,
    /// Auth methods sshd offers to root.
    pub auth_methods: Option<Vec<String>>,
    /// Password logins tried over SSH.
    pub password_attempts: Vec<PasswordAttempt>,
    /// `/etc/shadow` judged in place (hashes never stored).
    pub shadow: Option<ShadowSummary>,
    /// Why `/etc/shadow` could not be read.
    pub shadow_error: Option<String>,
    /// `ss -Hltunp`.
    pub listeners: Option<Vec<Listener>>,
    /// `ss` lines that did not parse.
    pub listeners_unparsed: Vec<String>,
    /// Why `ss` failed.
    pub listeners_error: Option<String>,
    /// Driver of the root disk (`virtio_blk`).
    pub block_driver: Option<String>,
    /// Drivers of the NICs (`virtio_net`).
    pub net_drivers: Vec<String>,
    /// The virtiofs share.
    pub share: ShareObs,
    /// `nproc`.
    pub nproc: Option<u32>,
    /// `MemTotal` in KiB.
    pub mem_total_kib: Option<u64>,
    /// Size of the root filesystem in bytes (`df -B1 /`).
    pub root_size: Option<u64>,
    /// MACs of the guest's NICs.
    pub macs: Vec<String>,
    /// IPv4 addresses (`ip -4 -o addr`), loopback excluded.
    pub addresses: Vec<String>,
    /// The app's units: (unit, active, enabled).
    pub app_units: Vec<UnitState>,
    /// Commands that failed while gathering (for the report's notes).
    pub errors: Vec<String>,
}

/// `systemctl is-active` / `is-enabled` of one unit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitState {
    /// Unit name.
    pub unit: String,
    /// `active`, `inactive`, `failed`...
    pub active: String,
    /// `enabled`, `disabled`, `static`, `not-found`...
    pub enabled: String,
}

/// One SSH password attempt.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PasswordAttempt {
    /// Account.
    pub user: String,
    /// The password tried, redacted.
    pub password: String,
    /// `accepted`, `rejected`, `not-offered` or an error.
    pub outcome: String,
}

/// cloud-init's own account of the boot.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CloudInitObs {
    /// `cloud-init status --long` output.
    pub status_text: String,
    /// Its exit status (0 done, 1 error, 2 done with recoverable errors).
    pub exit_status: Option<u32>,
    /// `status:` value (`done`, `error`, `running`, `disabled`...).
    pub status: Option<String>,
    /// `v1.errors` of result.json.
    pub errors: Vec<String>,
    /// Recoverable errors (cloud-init 23.4+), by level.
    pub recoverable: Vec<String>,
    /// `v1.datasource` of result.json.
    pub datasource: Option<String>,
    /// result.json was read.
    pub result_found: bool,
}

/// The virtiofs share test.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ShareObs {
    /// Why the host could not offer the share (virtiofsd missing...).
    pub unavailable: Option<String>,
    /// The guest mounted it and read the host's marker back.
    pub mounted: bool,
    /// Why mounting or reading failed.
    pub error: Option<String>,
}

/// The app's health check after a boot.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HealthObs {
    /// All probes passed.
    pub passed: bool,
    /// Seconds from the start of probing to the pass (or to giving up).
    pub after_s: f64,
    /// Probe rounds.
    pub attempts: u32,
    /// The last failure.
    pub last_error: Option<String>,
}

/// A restart of the first VM and what came back.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RestartObs {
    /// `systemctl reboot` or `QMP system_reset`.
    pub how: String,
    /// boot_id before.
    pub boot_id_before: Option<String>,
    /// boot_id after (differs when the VM really restarted).
    pub boot_id_after: Option<String>,
    /// Seconds from the restart to SSH answering again.
    pub back_after_s: Option<f64>,
    /// Why the VM did not come back.
    pub error: Option<String>,
    /// The app's health afterwards.
    pub health: Option<HealthObs>,
    /// The app's units afterwards.
    pub app_units: Vec<UnitState>,
}

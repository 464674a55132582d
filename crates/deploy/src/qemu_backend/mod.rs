//! The local QEMU [`ComputeBackend`]: detached VMs on a private bridge.
//!
//! Everything lives in a state directory, so a new `QemuBackend` (after
//! `ibkit deploy` restarted) finds the VMs again from files, `/proc` and
//! the QMP sockets; nothing is kept only in memory:
//!
//! ```text
//! STATE/vms/<instance>/<host>-a<attempt>/   one VM; its id is "<instance>.<host>-a<attempt>"
//!     overlay.qcow2    copy-on-write over the image (absolute backing path, format decided
//!                      by ibkit: the image passes [`ibkit_vm::approve_image`] first)
//!     seed.img         NoCloud `cidata`: user-data (the request's bytes), meta-data
//!                      (instance-id = the VM id, local-hostname = the host)
//!     serial.log       the serial console
//!     qmp.sock         QMP
//!     qemu.pid         the daemonised QEMU (`-daemonize -pidfile`)
//!     qemu.log         QEMU's stderr until it daemonised
//!     vm.json          the request without user data, MAC, IP, tap, creation time
//! STATE/evidence/<instance>/<host>-a<attempt>-<UTC time>/   what delete_vm kept
//! STATE/addresses.json   fixed IP per (instance id, host): a recreated VM keeps its IP
//! STATE/dnsmasq.hosts    MAC,IP per VM directory (dnsmasq --dhcp-hostsfile, SIGHUP)
//! STATE/dnsmasq.leases, dnsmasq.pid, dnsmasq.log
//! STATE/firewall.nft, firewall.ports   the bridge's nftables table and its service ports
//! ```
//!
//! Network (`network.rs`): a Linux bridge ([`NetworkConfig`], default `ibkbr0` with
//! 10.77.0.1/24) holding the host's address, a persistent tap per VM
//! enslaved to it, and dnsmasq (DHCP only, `--port=0`, static leases) bound
//! to the bridge. VMs reach each other and, on the host, DHCP and the
//! service's port only (`firewall.rs`, nftables); nothing is routed out
//! of the bridge. A recreated VM gets a new MAC
//! (`fa:16:3e` + a hash of instance, host and attempt) and the host's fixed
//! IP: the hosts file is rewritten and the old MAC's lease dropped (dnsmasq
//! restarted) so dnsmasq does not refuse the address as "leased to"
//! the old MAC.
//!
//! The state holds secrets (the seed's pairing key, the guest's disk): every
//! directory ibkit writes here is 0700 and every file 0600, set explicitly
//! whatever the umask.
//!
//! Needs root (bridge, taps, dnsmasq). Calls within one process are
//! serialised by a lock; two processes on one state directory are not
//! supported.

mod firewall;
mod network;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ibkit_support::clock::{format_utc, unix_secs};
use ibkit_support::fs::write_atomic;
use ibkit_vm::qmp::Qmp;
use ibkit_vm::{Accel, LaunchOptions, MacAddr, PreparedDisk, Vm, VmConfig, VmError, seed};
use serde::{Deserialize, Serialize};

use crate::backend::{
    BackendError, ComputeBackend, Evidence, InstanceRef, VmHandle, VmInfo, VmRequest, VmState,
};
use crate::manifest::Flavor;

pub use network::{NetworkConfig, vm_mac};
use network::{ip_binary, ip_cmd, ip_del_link, link_exists, tap_name};

/// What `vm.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub id: String,
    pub instance_id: uuid::Uuid,
    pub instance_name: String,
    pub host: String,
    /// Absolute path of the image.
    pub image: PathBuf,
    pub flavor: Flavor,
    pub config_hash: String,
    pub attempt: u32,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub tap: String,
    pub bridge: String,
    pub accel: String,
    pub created_unix: u64,
    pub created: String,
    /// QEMU's command line as started.
    pub qemu_argv: Vec<String>,
}

/// The local QEMU backend (see the module docs).
#[derive(Debug)]
pub struct QemuBackend {
    state_dir: PathBuf,
    network: NetworkConfig,
    accel: Accel,
    stop_grace: Duration,
    lock: tokio::sync::Mutex<()>,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> BackendError {
    BackendError::Io(std::io::Error::new(
        e.kind(),
        format!("{what} {}: {e}", path.display()),
    ))
}

/// Create or truncate `path` with mode 0600 (set explicitly).
fn private_file(path: &Path) -> Result<std::fs::File, BackendError> {
    ibkit_vm::qemu::private_file(path).map_err(|e| io_err("cannot create", path, e))
}

/// Write `bytes` to `path`, mode 0600.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), BackendError> {
    use std::io::Write;
    private_file(path)?
        .write_all(bytes)
        .map_err(|e| io_err("cannot write", path, e))
}

/// Create `dir` if missing and make it 0700 (set explicitly).
fn private_dir(dir: &Path) -> Result<(), BackendError> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("cannot create", dir, e)),
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io_err("cannot make private", dir, e))
}

/// The VM runner's name of a request's VM.
fn vm_name(r: &VmRequest) -> String {
    format!("deploy-{}-{}-a{}", r.instance.name, r.host, r.attempt)
}

/// A refused image, or another failure of the VM runner.
fn vm_err(r: &VmRequest, id: &str, e: VmError) -> BackendError {
    match e {
        VmError::Image { reason, .. } => BackendError::Image {
            image: r.image.clone(),
            why: reason,
        },
        e => BackendError::Other(format!("VM {id}: {e}")),
    }
}

/// "20260101T120000Z" for directory names.
fn compact_utc(unix: u64) -> String {
    format_utc(unix).replace(['-', ':'], "")
}

impl QemuBackend {
    /// A backend keeping its state in `state_dir` (created if missing).
    /// Nothing is started until the first VM is created.
    pub fn new(
        state_dir: impl Into<PathBuf>,
        network: NetworkConfig,
    ) -> Result<Self, BackendError> {
        network.validate()?;
        let state_dir = state_dir.into();
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| io_err("cannot create state directory", &state_dir, e))?;
        let state_dir = std::fs::canonicalize(&state_dir)
            .map_err(|e| io_err("cannot resolve state directory", &state_dir, e))?;
        private_dir(&state_dir)?;
        Ok(QemuBackend {
            state_dir,
            network,
            accel: Accel::Tcg,
            stop_grace: Duration::from_secs(5),
            lock: tokio::sync::Mutex::new(()),
        })
    }

    /// KVM or TCG (default TCG; `ibkit boot-test`'s probe tells which works).
    pub fn with_accel(mut self, accel: Accel) -> Self {
        self.accel = accel;
        self
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn network(&self) -> &NetworkConfig {
        &self.network
    }

    /// The directory of a VM id (`<instance>.<host>-a<attempt>`).
    pub fn vm_dir(&self, id: &str) -> Result<PathBuf, BackendError> {
        let (instance, rest) = id
            .split_once('.')
            .ok_or_else(|| BackendError::NotFound(format!("{id} (not <instance>.<host>-a<N>)")))?;
        let ok = |s: &str| ibkit_api::is_valid_name(s);
        let valid_rest = rest
            .rsplit_once("-a")
            .is_some_and(|(h, n)| ok(h) && n.parse::<u32>().is_ok());
        if !ok(instance) || !valid_rest {
            return Err(BackendError::NotFound(format!(
                "{id} (not <instance>.<host>-a<N>)"
            )));
        }
        Ok(self.state_dir.join("vms").join(instance).join(rest))
    }

    /// `vm.json` of a VM.
    pub fn record(&self, id: &str) -> Result<VmRecord, BackendError> {
        let path = self.vm_dir(id)?.join("vm.json");
        read_record(&path)
    }

    /// Every VM directory's record (any instance).
    fn all_records(&self) -> Vec<(PathBuf, VmRecord)> {
        let mut out = Vec::new();
        let Ok(instances) = std::fs::read_dir(self.state_dir.join("vms")) else {
            return out;
        };
        for inst in instances.flatten() {
            let Ok(vms) = std::fs::read_dir(inst.path()) else {
                continue;
            };
            for vm in vms.flatten() {
                let dir = vm.path();
                match read_record(&dir.join("vm.json")) {
                    Ok(r) => out.push((dir, r)),
                    Err(e) => tracing::warn!(dir = %dir.display(), "skipping VM directory: {e}"),
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// VM directories (with or without a readable vm.json).
    fn vm_dir_count(&self) -> usize {
        let Ok(instances) = std::fs::read_dir(self.state_dir.join("vms")) else {
            return 0;
        };
        instances
            .flatten()
            .filter_map(|i| std::fs::read_dir(i.path()).ok())
            .map(|d| d.flatten().count())
            .sum()
    }

    async fn state_of(&self, dir: &Path) -> VmState {
        if !dir.is_dir() {
            return VmState::Missing;
        }
        if ibkit_vm::detached_qemu_pid(dir).is_none() {
            return VmState::Stopped;
        }
        let sock = dir.join("qmp.sock");
        let status = tokio::time::timeout(Duration::from_secs(15), async {
            let mut q = Qmp::connect(&sock, Duration::from_secs(10)).await?;
            q.execute("query-status", None).await
        })
        .await;
        match status {
            Ok(Ok(v)) if v["running"].as_bool() == Some(true) => VmState::Running,
            Ok(Ok(v)) => {
                tracing::info!(dir = %dir.display(), "QEMU runs but the guest does not: {v}");
                VmState::Stopped
            }
            other => {
                tracing::warn!(dir = %dir.display(), "QEMU runs but QMP does not answer: {other:?}");
                VmState::Stopped
            }
        }
    }

    /// The VM id, its directory and the canonical image path of a request.
    fn request_paths(&self, r: &VmRequest) -> Result<(String, PathBuf, PathBuf), BackendError> {
        let bad = |why: String| Err(BackendError::Other(why));
        if !ibkit_api::is_valid_name(&r.instance.name) {
            return bad(format!("instance name {:?} is not valid", r.instance.name));
        }
        if !ibkit_api::is_valid_name(&r.host) {
            return bad(format!("host name {:?} is not valid", r.host));
        }
        if r.attempt == 0 {
            return bad("attempt must be at least 1".into());
        }
        let id = format!("{}.{}-a{}", r.instance.name, r.host, r.attempt);
        let dir = self.vm_dir(&id)?;
        let image = std::fs::canonicalize(&r.image).map_err(|e| BackendError::Image {
            image: r.image.clone(),
            why: e.to_string(),
        })?;
        if !image.is_file() {
            return Err(BackendError::Image {
                image: r.image.clone(),
                why: "not a file".into(),
            });
        }
        Ok((id, dir, image))
    }

    async fn create(&self, r: VmRequest) -> Result<VmHandle, BackendError> {
        let (id, dir, image) = self.request_paths(&r)?;
        let service_port = self.service_port(&r.service_url)?;
        // The image gate first: a refused image touches neither the network
        // nor the state directory.
        ibkit_vm::approve_image(&vm_name(&r), &image)
            .await
            .map_err(|e| vm_err(&r, &id, e))?;
        let _guard = self.lock.lock().await;
        if dir.exists() {
            return Err(BackendError::Other(format!(
                "VM {id} exists already ({}): delete it first",
                dir.display()
            )));
        }
        self.ensure_network().await?;
        self.open_service_port(service_port).await?;
        let ip = self.address_for(&r.instance.id, &r.host)?;
        let others = self.all_records();
        let mut salt = 0;
        let mac = loop {
            let m = vm_mac(&r.instance.id, &r.host, r.attempt, salt);
            if !others.iter().any(|(_, o)| o.mac == m) {
                break m;
            }
            salt += 1;
        };
        let mut salt = 0;
        let tap = loop {
            let t = tap_name(&id, salt);
            if !link_exists(&t) && !others.iter().any(|(_, o)| o.tap == t) {
                break t;
            }
            salt += 1;
        };
        self.make_vm_dir(&dir)?;
        let result = self.create_in(&r, &id, &dir, &image, ip, mac, &tap).await;
        if result.is_err() {
            if link_exists(&tap) {
                let _ = ip_del_link(&tap).await;
            }
            let _ = std::fs::remove_dir_all(&dir);
            let _ = self.sync_dhcp().await;
        }
        result
    }

    /// A VM's disks as [`ComputeBackend::create_vm`] writes them, with no
    /// network and nothing started: the VM directory (0700), `seed.img`
    /// (0600: the user data holds the pairing key) and `overlay.qcow2`
    /// (0600) over the image, which passes [`ibkit_vm::approve_image`]
    /// first. Returns the VM directory (without `vm.json`: delete it with
    /// [`ComputeBackend::delete_vm`] or by hand). For checks of the state
    /// directory without root or a boot.
    pub async fn write_disks(&self, r: &VmRequest) -> Result<PathBuf, BackendError> {
        let (id, dir, image) = self.request_paths(r)?;
        let _guard = self.lock.lock().await;
        if dir.exists() {
            return Err(BackendError::Other(format!(
                "VM {id} exists already ({}): delete it first",
                dir.display()
            )));
        }
        self.make_vm_dir(&dir)?;
        match self.disks(r, &id, &dir, &image).await {
            Ok(_) => Ok(dir),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// `STATE/vms/<instance>/<host>-a<N>`, each level 0700.
    fn make_vm_dir(&self, dir: &Path) -> Result<(), BackendError> {
        let vms = self.state_dir.join("vms");
        private_dir(&vms)?;
        if let Some(instance) = dir.parent() {
            private_dir(instance)?;
        }
        private_dir(dir)
    }

    /// The seed (user data as given, a fresh instance-id) and the overlay
    /// over the approved image; the VM's configuration but its MAC.
    async fn disks(
        &self,
        r: &VmRequest,
        id: &str,
        dir: &Path,
        image: &Path,
    ) -> Result<(VmConfig, PreparedDisk), BackendError> {
        let seed_img = dir.join("seed.img");
        let mut files = seed::nocloud_files(id, &r.host, "", None);
        for f in &mut files {
            if f.path == "user-data" {
                f.contents = r.user_data.clone();
            }
        }
        // 0600 before the key is written (the writer keeps the mode).
        private_file(&seed_img)?;
        seed::write_vfat("cidata", &files, &seed_img)
            .map_err(|e| BackendError::Other(format!("VM {id}: {e}")))?;
        ibkit_vm::qemu::set_private(&seed_img)
            .map_err(|e| io_err("cannot make private", &seed_img, e))?;
        let mut config = VmConfig::new(vm_name(r), image, dir);
        config.accel = self.accel;
        config.vcpus = r.flavor.vcpus;
        config.memory_mib = u64::from(r.flavor.memory_mib);
        config.disk_size = Some(u64::from(r.flavor.disk_gib) << 30);
        config.drives = vec![seed_img];
        config.forwards = Vec::new();
        let disk = Vm::prepare_disk(&config)
            .await
            .map_err(|e| vm_err(r, id, e))?;
        Ok((config, disk))
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_in(
        &self,
        r: &VmRequest,
        id: &str,
        dir: &Path,
        image: &Path,
        ip: Ipv4Addr,
        mac: MacAddr,
        tap: &str,
    ) -> Result<VmHandle, BackendError> {
        let (mut config, disk) = self.disks(r, id, dir, image).await?;
        let created_unix = unix_secs();
        let mut record = VmRecord {
            id: id.to_string(),
            instance_id: r.instance.id,
            instance_name: r.instance.name.clone(),
            host: r.host.clone(),
            image: image.to_path_buf(),
            flavor: r.flavor,
            config_hash: r.config_hash.clone(),
            attempt: r.attempt,
            mac,
            ip,
            tap: tap.to_string(),
            bridge: self.network.bridge.clone(),
            accel: self.accel.to_string(),
            created_unix,
            created: format_utc(created_unix),
            qemu_argv: Vec::new(),
        };
        write_record(dir, &record)?;
        self.sync_dhcp().await?;

        ip_cmd(&["tuntap", "add", "dev", tap, "mode", "tap"]).await?;
        ip_cmd(&["link", "set", "dev", tap, "master", &self.network.bridge]).await?;
        ip_cmd(&["link", "set", "dev", tap, "up"]).await?;

        config.mac = mac;
        let vm = Vm::start_prepared(config, LaunchOptions::detached_on_tap(tap), disk)
            .await
            .map_err(|e| vm_err(r, id, e))?;
        record.qemu_argv = vm.command_line();
        tracing::info!(vm = id, pid = vm.qemu_pid(), %ip, %mac, tap, "VM started");
        // Dropping a detached VM closes QMP and leaves QEMU running.
        drop(vm);
        write_record(dir, &record)?;
        Ok(VmHandle {
            id: id.to_string(),
            host: r.host.clone(),
            addresses: vec![IpAddr::V4(ip)],
        })
    }

    async fn delete(&self, id: &str, keep_evidence: bool) -> Result<Evidence, BackendError> {
        let dir = self.vm_dir(id)?;
        let _guard = self.lock.lock().await;
        if !dir.exists() {
            return Ok(Evidence::default());
        }
        let record = read_record(&dir.join("vm.json")).ok();
        let how = ibkit_vm::stop_detached(&dir, self.stop_grace).await;
        tracing::info!(vm = id, "QEMU stopped: {how}");
        if let Some(r) = &record
            && link_exists(&r.tap)
        {
            ip_del_link(&r.tap).await?;
        }
        let mut evidence = Evidence::default();
        if keep_evidence {
            let (instance, rest) = id.split_once('.').unwrap_or((id, id));
            let parent = self.state_dir.join("evidence").join(instance);
            private_dir(&self.state_dir.join("evidence"))?;
            private_dir(&parent)?;
            let stamp = compact_utc(unix_secs());
            let mut target = parent.join(format!("{rest}-{stamp}"));
            let mut n = 1;
            while target.exists() {
                n += 1;
                target = parent.join(format!("{rest}-{stamp}-{n}"));
            }
            // The seed holds the pairing key; sockets and pid files are dead.
            for f in ["seed.img", "qmp.sock", "qemu.pid"] {
                let _ = std::fs::remove_file(dir.join(f));
            }
            std::fs::rename(&dir, &target).map_err(|e| io_err("cannot move", &dir, e))?;
            for f in ["serial.log", "overlay.qcow2", "vm.json", "qemu.log"] {
                let p = target.join(f);
                if p.exists() {
                    evidence.paths.push(p);
                }
            }
        } else {
            std::fs::remove_dir_all(&dir).map_err(|e| io_err("cannot remove", &dir, e))?;
        }
        if let Some(parent) = dir.parent() {
            let _ = std::fs::remove_dir(parent); // only when empty
        }
        self.sync_dhcp().await?;
        Ok(evidence)
    }

    async fn list_instance(&self, instance: &InstanceRef) -> Result<Vec<VmInfo>, BackendError> {
        let root = self.state_dir.join("vms").join(&instance.name);
        let Ok(entries) = std::fs::read_dir(&root) else {
            return Ok(Vec::new());
        };
        let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        dirs.sort();
        let mut out = Vec::new();
        for dir in dirs {
            let r = match read_record(&dir.join("vm.json")) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), "skipping VM directory: {e}");
                    continue;
                }
            };
            if r.instance_id != instance.id {
                continue;
            }
            let state = self.state_of(&dir).await;
            out.push(VmInfo {
                handle: VmHandle {
                    id: r.id.clone(),
                    host: r.host.clone(),
                    addresses: vec![IpAddr::V4(r.ip)],
                },
                state,
                config_hash: r.config_hash,
                attempt: r.attempt,
            });
        }
        Ok(out)
    }
}

/// Removes what the VMs under `state_dir` left on the host, without a
/// backend value: kills every process naming `state_dir` (QEMU, dnsmasq),
/// deletes the taps named in the VM records (live VMs and evidence) and
/// the bridge. For tests and for cleaning up after a crash; best effort,
/// errors are ignored.
pub fn force_cleanup(state_dir: &Path, bridge: &str) {
    for pid in ibkit_vm::procs::pids_naming(&state_dir.display().to_string()) {
        ibkit_vm::procs::sigkill(pid);
    }
    let mut links = Vec::new();
    for sub in ["vms", "evidence"] {
        let instances = std::fs::read_dir(state_dir.join(sub)).into_iter().flatten();
        for inst in instances.flatten() {
            for vm in std::fs::read_dir(inst.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Ok(r) = read_record(&vm.path().join("vm.json")) {
                    links.push(r.tap);
                }
            }
        }
    }
    links.push(bridge.to_string());
    for link in links.iter().filter(|l| link_exists(l)) {
        let _ = std::process::Command::new(ip_binary())
            .args(["link", "del", "dev", link])
            .status();
    }
    firewall::force_remove(bridge);
}

/// Console output as plain text: colour and cursor escape sequences
/// (`ESC [ … final`) and other control characters removed.
fn console_text(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters and intermediates, then one final byte.
                for p in chars.by_ref() {
                    if ('@'..='~').contains(&p) {
                        break;
                    }
                }
            }
            continue;
        }
        if c == '\n' || c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

fn read_record(path: &Path) -> Result<VmRecord, BackendError> {
    let b = std::fs::read(path).map_err(|e| io_err("cannot read", path, e))?;
    serde_json::from_slice(&b).map_err(|e| BackendError::Other(format!("{}: {e}", path.display())))
}

fn write_record(dir: &Path, r: &VmRecord) -> Result<(), BackendError> {
    let path = dir.join("vm.json");
    let text = serde_json::to_vec_pretty(r).map_err(|e| BackendError::Other(e.to_string()))?;
    write_atomic(&path, &text, 0o600).map_err(|e| io_err("cannot write", &path, e))
}

impl ComputeBackend for QemuBackend {
    fn spec(&self) -> crate::store::BackendSpec {
        crate::store::BackendSpec::Qemu
    }

    async fn create_vm(&self, request: VmRequest) -> Result<VmHandle, BackendError> {
        self.create(request).await
    }

    async fn delete_vm(&self, id: &str, keep_evidence: bool) -> Result<Evidence, BackendError> {
        self.delete(id, keep_evidence).await
    }

    async fn vm_state(&self, id: &str) -> Result<VmState, BackendError> {
        let dir = match self.vm_dir(id) {
            Ok(d) => d,
            Err(BackendError::NotFound(_)) => return Ok(VmState::Missing),
            Err(e) => return Err(e),
        };
        Ok(self.state_of(&dir).await)
    }

    async fn list(&self, instance: &InstanceRef) -> Result<Vec<VmInfo>, BackendError> {
        self.list_instance(instance).await
    }

    async fn console_tail(&self, id: &str, max_bytes: usize) -> Result<String, BackendError> {
        let path = self.vm_dir(id)?.join("serial.log");
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
            Err(e) => return Err(io_err("cannot read", &path, e)),
        };
        let start = data.len().saturating_sub(max_bytes);
        Ok(console_text(&String::from_utf8_lossy(&data[start..])))
    }

    async fn release_instance(&self, instance: &InstanceRef) -> Result<(), BackendError> {
        self.release_addresses(instance).await?;
        if self.vm_dir_count() == 0 {
            // The last instance is gone: no bridge or dnsmasq left behind.
            self.teardown_network().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_text_drops_escape_sequences() {
        assert_eq!(
            console_text("[\u{1b}[0;32m  OK  \u{1b}[0m] Started x.\r\nlogin: \u{7}"),
            "[  OK  ] Started x.\nlogin: "
        );
        assert_eq!(console_text("cut \u{1b}[0;3"), "cut ");
    }

    #[test]
    fn evidence_stamps() {
        assert_eq!(compact_utc(0), "19700101T000000Z");
    }

    #[test]
    fn vm_ids_map_to_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = QemuBackend::new(dir.path(), NetworkConfig::default()).expect("backend");
        let d = b.vm_dir("demo.primary-a2").expect("dir");
        assert!(d.ends_with("vms/demo/primary-a2"), "{}", d.display());
        let d = b.vm_dir("demo.my-host-a12").expect("dir");
        assert!(d.ends_with("vms/demo/my-host-a12"), "{}", d.display());
        for bad in [
            "demo",
            "demo.primary",
            "../x.a-a1",
            "demo./-a1",
            "demo.a-ax",
            "demo.a/b-a1",
        ] {
            assert!(b.vm_dir(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn unknown_vms_are_missing_and_deleting_them_is_fine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = QemuBackend::new(dir.path(), NetworkConfig::default()).expect("backend");
        assert_eq!(b.vm_state("demo.a-a1").await.ok(), Some(VmState::Missing));
        assert_eq!(b.vm_state("nonsense").await.ok(), Some(VmState::Missing));
        let ev = b.delete_vm("demo.a-a1", true).await.expect("delete");
        assert!(ev.paths.is_empty());
        let inst = InstanceRef {
            id: uuid::Uuid::nil(),
            name: "demo".into(),
        };
        assert!(b.list(&inst).await.expect("list").is_empty());
    }
}

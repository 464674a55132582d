//! The QEMU backend's network: the bridge holding the host's address, a
//! tap per VM, dnsmasq (DHCP with static leases) and the fixed address of
//! every (instance, host).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ibkit_support::fs::write_atomic;
use ibkit_vm::MacAddr;
use ibkit_vm::command::CommandError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{QemuBackend, io_err, private_file, write_private};
use crate::backend::{BackendError, InstanceRef};

/// The private network of the QEMU backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// Linux bridge name (at most 15 bytes).
    pub bridge: String,
    /// The host's address on the bridge (where the service listens) and
    /// the DHCP server's.
    pub host_addr: Ipv4Addr,
    /// Prefix length of the subnet (8..=30).
    pub prefix_len: u8,
    /// VMs get addresses from the subnet's `first_host_offset`-th address on.
    pub first_host_offset: u32,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            bridge: "ibkbr0".into(),
            host_addr: Ipv4Addr::new(10, 77, 0, 1),
            prefix_len: 24,
            first_host_offset: 10,
        }
    }
}

impl NetworkConfig {
    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix_len))
    }

    /// The subnet's network address (10.77.0.0).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.host_addr) & self.mask())
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }

    /// Addresses VMs may get, in order (host address and broadcast excluded).
    pub fn vm_addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let net = u32::from(self.network());
        let broadcast = net | !self.mask();
        let host = u32::from(self.host_addr);
        (net.saturating_add(self.first_host_offset.max(1))..broadcast)
            .filter(move |a| *a != host)
            .map(Ipv4Addr::from)
    }

    pub(super) fn validate(&self) -> Result<(), BackendError> {
        let bad = |why: String| Err(BackendError::Other(format!("network config: {why}")));
        if self.bridge.is_empty()
            || self.bridge.len() > 15
            || !self
                .bridge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad(format!("bridge {:?}: 1-15 of [A-Za-z0-9_-]", self.bridge));
        }
        if !(8..=30).contains(&self.prefix_len) {
            return bad(format!("prefix_len {} not in 8..=30", self.prefix_len));
        }
        if self.vm_addresses().next().is_none() {
            return bad("no addresses left for VMs".into());
        }
        Ok(())
    }
}

/// `ip`: `$IBKIT_IP` or `ip`.
pub(super) fn ip_binary() -> String {
    std::env::var("IBKIT_IP").unwrap_or_else(|_| "ip".into())
}

/// `dnsmasq`: `$IBKIT_DNSMASQ` or `dnsmasq`.
fn dnsmasq_binary() -> String {
    std::env::var("IBKIT_DNSMASQ").unwrap_or_else(|_| "dnsmasq".into())
}

/// A failed host command as the backend's error.
pub(super) fn command_err(e: CommandError) -> BackendError {
    let command = e.command();
    match e {
        CommandError::Spawn { source, .. } => BackendError::Command {
            command,
            status: "could not start".into(),
            stderr: source.to_string(),
        },
        CommandError::Failed { status, stderr, .. } => BackendError::Command {
            command,
            status: status.to_string(),
            stderr,
        },
    }
}

/// Runs `ip ARGS`; its stdout.
pub(super) async fn ip_cmd(args: &[&str]) -> Result<String, BackendError> {
    let out = ibkit_vm::command::run(ip_binary(), args)
        .await
        .map_err(command_err)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(super) fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn hash_hex(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().into()
}

/// `fa:16:3e` + three bytes of a hash of (instance, host, attempt, salt).
pub fn vm_mac(instance: &uuid::Uuid, host: &str, attempt: u32, salt: u32) -> MacAddr {
    let h = hash_hex(&[
        &instance.to_string(),
        host,
        &attempt.to_string(),
        &salt.to_string(),
    ]);
    MacAddr([0xfa, 0x16, 0x3e, h[0], h[1], h[2]])
}

/// `ibkt` + 8 hex digits of a hash of the VM id (12 bytes < IFNAMSIZ).
pub(super) fn tap_name(id: &str, salt: u32) -> String {
    let h = hash_hex(&[id, &salt.to_string()]);
    format!("ibkt{:02x}{:02x}{:02x}{:02x}", h[0], h[1], h[2], h[3])
}

/// Whether `pid` is alive and a dnsmasq started with `--pid-file=PIDFILE`.
fn is_our_dnsmasq(pid: u32, pidfile: &Path) -> bool {
    if !ibkit_vm::procs::is_alive(pid) {
        return false;
    }
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let want = format!("--pid-file={}", pidfile.display());
    raw.split(|b| *b == 0).any(|a| a == want.as_bytes())
}

fn signal_pid(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), sig);
    }
}

async fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while ibkit_vm::procs::is_alive(pid) {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

pub(super) async fn ip_del_link(name: &str) -> Result<String, BackendError> {
    ip_cmd(&["link", "del", "dev", name]).await
}

impl QemuBackend {
    fn pidfile(&self) -> PathBuf {
        self.state_dir.join("dnsmasq.pid")
    }

    fn hosts_file(&self) -> PathBuf {
        self.state_dir.join("dnsmasq.hosts")
    }

    fn leases_file(&self) -> PathBuf {
        self.state_dir.join("dnsmasq.leases")
    }

    fn addresses_file(&self) -> PathBuf {
        self.state_dir.join("addresses.json")
    }

    /// The running dnsmasq's pid, if it is ours.
    pub fn dnsmasq_pid(&self) -> Option<u32> {
        let pidfile = self.pidfile();
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        is_our_dnsmasq(pid, &pidfile).then_some(pid)
    }

    /// Bridge with the host address, up; dnsmasq running.
    pub async fn ensure_network(&self) -> Result<(), BackendError> {
        let n = &self.network;
        let br = n.bridge.as_str();
        if !link_exists(br) {
            ip_cmd(&["link", "add", "name", br, "type", "bridge"]).await?;
            tracing::info!(bridge = br, "bridge created");
        }
        let cidr = format!("{}/{}", n.host_addr, n.prefix_len);
        let addrs = ip_cmd(&["-4", "-o", "addr", "show", "dev", br]).await?;
        if !addrs.split_whitespace().any(|w| w == cidr.as_str()) {
            ip_cmd(&["addr", "add", &cidr, "dev", br]).await?;
        }
        ip_cmd(&["link", "set", "dev", br, "up"]).await?;
        if !self.hosts_file().exists() {
            self.write_hosts_file()?;
        }
        if self.dnsmasq_pid().is_none() {
            self.start_dnsmasq().await?;
        }
        Ok(())
    }

    async fn start_dnsmasq(&self) -> Result<(), BackendError> {
        let n = &self.network;
        let start_log = self.state_dir.join("dnsmasq.start.log");
        let pidfile = self.pidfile();
        let _ = std::fs::remove_file(&pidfile);
        let args = vec![
            "--conf-file=/dev/null".to_string(),
            format!("--interface={}", n.bridge),
            "--except-interface=lo".into(),
            "--bind-interfaces".into(),
            "--port=0".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--user=root".into(),
            "--group=root".into(),
            "--dhcp-authoritative".into(),
            format!("--dhcp-range={},static,{},1h", n.network(), n.netmask()),
            format!("--dhcp-hostsfile={}", self.hosts_file().display()),
            format!("--dhcp-leasefile={}", self.leases_file().display()),
            format!("--pid-file={}", pidfile.display()),
            format!(
                "--log-facility={}",
                self.state_dir.join("dnsmasq.log").display()
            ),
            "--log-dhcp".into(),
        ];
        let program = dnsmasq_binary();
        let command = format!("{program} {}", args.join(" "));
        let log = private_file(&start_log)?;
        // dnsmasq appends to its log and keeps an existing file's mode.
        let dns_log = self.state_dir.join("dnsmasq.log");
        if !dns_log.exists() {
            private_file(&dns_log)?;
        }
        let log2 = log
            .try_clone()
            .map_err(|e| io_err("cannot reopen", &start_log, e))?;
        // dnsmasq daemonises: the foreground process exits once it runs.
        let status = tokio::process::Command::new(&program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .status()
            .await
            .map_err(|e| BackendError::Command {
                command: command.clone(),
                status: "could not start".into(),
                stderr: e.to_string(),
            })?;
        let stderr = || {
            std::fs::read_to_string(&start_log)
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        if !status.success() {
            return Err(BackendError::Command {
                command,
                status: status.to_string(),
                stderr: stderr(),
            });
        }
        for _ in 0..100 {
            if let Some(pid) = self.dnsmasq_pid() {
                tracing::info!(pid, bridge = %n.bridge, "dnsmasq started");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(BackendError::Command {
            command,
            status: format!("no live dnsmasq in {} after 5 s", pidfile.display()),
            stderr: stderr(),
        })
    }

    async fn stop_dnsmasq(&self) -> Result<(), BackendError> {
        if let Some(pid) = self.dnsmasq_pid() {
            signal_pid(pid, nix::sys::signal::Signal::SIGTERM);
            if !wait_gone(pid, Duration::from_secs(5)).await {
                signal_pid(pid, nix::sys::signal::Signal::SIGKILL);
                wait_gone(pid, Duration::from_secs(2)).await;
            }
        }
        let _ = std::fs::remove_file(self.pidfile());
        Ok(())
    }

    /// `MAC,IP` for every VM directory.
    fn write_hosts_file(&self) -> Result<BTreeMap<MacAddr, Ipv4Addr>, BackendError> {
        let hosts: BTreeMap<MacAddr, Ipv4Addr> = self
            .all_records()
            .into_iter()
            .map(|(_, r)| (r.mac, r.ip))
            .collect();
        let mut text = String::from("# written by ibkit deploy (QEMU backend)\n");
        for (mac, ip) in &hosts {
            text.push_str(&format!("{mac},{ip}\n"));
        }
        let path = self.hosts_file();
        write_atomic(&path, text.as_bytes(), 0o600)
            .map_err(|e| io_err("cannot write", &path, e))?;
        Ok(hosts)
    }

    /// Rewrites the hosts file and makes dnsmasq use it: SIGHUP, or a
    /// restart without the leases of MACs that are gone (dnsmasq would
    /// otherwise refuse a fixed address "leased to" an old MAC).
    pub(super) async fn sync_dhcp(&self) -> Result<(), BackendError> {
        let hosts = self.write_hosts_file()?;
        let Some(pid) = self.dnsmasq_pid() else {
            return Ok(());
        };
        let leases = std::fs::read_to_string(self.leases_file()).unwrap_or_default();
        let stale = |line: &str| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() >= 3
                && f[1]
                    .parse::<MacAddr>()
                    .is_ok_and(|m| !hosts.contains_key(&m))
        };
        if leases.lines().any(stale) {
            self.stop_dnsmasq().await?;
            let kept: String = leases
                .lines()
                .filter(|l| !stale(l))
                .map(|l| format!("{l}\n"))
                .collect();
            let path = self.leases_file();
            write_private(&path, kept.as_bytes())?;
            self.start_dnsmasq().await?;
        } else {
            signal_pid(pid, nix::sys::signal::Signal::SIGHUP);
        }
        Ok(())
    }

    /// The fixed address of (instance, host), allocated on first use.
    pub(super) fn address_for(
        &self,
        instance: &uuid::Uuid,
        host: &str,
    ) -> Result<Ipv4Addr, BackendError> {
        let path = self.addresses_file();
        let mut map: BTreeMap<String, Ipv4Addr> = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| BackendError::Other(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(io_err("cannot read", &path, e)),
        };
        let key = format!("{instance}/{host}");
        if let Some(a) = map.get(&key) {
            return Ok(*a);
        }
        let used: BTreeSet<Ipv4Addr> = map.values().copied().collect();
        let a = self
            .network
            .vm_addresses()
            .find(|a| !used.contains(a))
            .ok_or_else(|| {
                BackendError::Capacity(format!(
                    "no free address left on {}/{}",
                    self.network.network(),
                    self.network.prefix_len
                ))
            })?;
        map.insert(key, a);
        let text =
            serde_json::to_vec_pretty(&map).map_err(|e| BackendError::Other(e.to_string()))?;
        write_atomic(&path, &text, 0o600).map_err(|e| io_err("cannot write", &path, e))?;
        Ok(a)
    }

    /// Forgets the fixed addresses of an instance's hosts (after `down`).
    pub async fn release_addresses(&self, instance: &InstanceRef) -> Result<(), BackendError> {
        let _guard = self.lock.lock().await;
        let path = self.addresses_file();
        let Ok(b) = std::fs::read(&path) else {
            return Ok(());
        };
        let mut map: BTreeMap<String, Ipv4Addr> = serde_json::from_slice(&b)
            .map_err(|e| BackendError::Other(format!("{}: {e}", path.display())))?;
        let prefix = format!("{}/", instance.id);
        map.retain(|k, _| !k.starts_with(&prefix));
        let text =
            serde_json::to_vec_pretty(&map).map_err(|e| BackendError::Other(e.to_string()))?;
        write_atomic(&path, &text, 0o600).map_err(|e| io_err("cannot write", &path, e))
    }

    /// Removes dnsmasq, the bridge and the DHCP files once no VM directory
    /// is left; refuses while VMs exist.
    pub async fn teardown_network(&self) -> Result<(), BackendError> {
        let _guard = self.lock.lock().await;
        let left = self.vm_dir_count();
        if left > 0 {
            return Err(BackendError::Other(format!(
                "{left} VM(s) left in {}: delete them first",
                self.state_dir.join("vms").display()
            )));
        }
        self.stop_dnsmasq().await?;
        self.remove_firewall().await?;
        if link_exists(&self.network.bridge) {
            ip_cmd(&["link", "del", "dev", &self.network.bridge]).await?;
        }
        for f in [self.hosts_file(), self.leases_file(), self.addresses_file()] {
            let _ = std::fs::remove_file(f);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_the_default_network() {
        let n = NetworkConfig::default();
        assert_eq!(n.network(), Ipv4Addr::new(10, 77, 0, 0));
        assert_eq!(n.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        let all: Vec<Ipv4Addr> = n.vm_addresses().collect();
        assert_eq!(all.first(), Some(&Ipv4Addr::new(10, 77, 0, 10)));
        assert_eq!(all.last(), Some(&Ipv4Addr::new(10, 77, 0, 254)));
        assert!(n.validate().is_ok());
        let bad = NetworkConfig {
            bridge: "a-name-far-too-long".into(),
            ..NetworkConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn macs_and_taps() {
        let id = uuid::Uuid::nil();
        let a1 = vm_mac(&id, "a", 1, 0);
        assert_eq!(&a1.0[..3], &[0xfa, 0x16, 0x3e]);
        assert_eq!(a1, vm_mac(&id, "a", 1, 0));
        assert_ne!(a1, vm_mac(&id, "a", 2, 0));
        assert_ne!(a1, vm_mac(&id, "b", 1, 0));
        let t = tap_name("demo.a-a1", 0);
        assert_eq!(t.len(), 12);
        assert!(t.starts_with("ibkt"));
    }
}

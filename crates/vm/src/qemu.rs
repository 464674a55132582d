//! Starting, watching and stopping one QEMU VM (and its virtiofsd).
//!
//! The image is never modified: QEMU runs on a qcow2 overlay in the work
//! directory whose backing file is the image's absolute path. The work
//! directory keeps everything for the report afterwards: `overlay.qcow2`,
//! `serial.log`, `qemu.log` (QEMU's stderr), `net.pcap` (all guest traffic),
//! `qmp.sock`, `virtiofsd.sock` and `virtiofsd.log`.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::accel::Accel;
use crate::procs::{self, ChildProc};
use crate::qmp::{Qmp, QmpError};

/// Longest path a unix socket address can hold (sun_path minus the NUL).
const MAX_SOCKET_PATH: usize = 107;
const VIRTIOFSD_VERSION: &str = "1.14.0";

/// The QEMU system emulator: `$IBKIT_QEMU_SYSTEM` or `qemu-system-x86_64`.
pub fn qemu_binary() -> PathBuf {
    std::env::var_os("IBKIT_QEMU_SYSTEM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"))
}

/// `qemu-img`: `$IBKIT_QEMU_IMG` or `qemu-img`.
pub fn qemu_img_binary() -> PathBuf {
    std::env::var_os("IBKIT_QEMU_IMG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("qemu-img"))
}

// ---------------------------------------------------------------- MacAddr

/// An Ethernet MAC address; displays as "fa:16:3e:12:ab:cd".
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// OpenStack Neutron's prefix fa:16:3e plus three random bytes.
    pub fn random() -> MacAddr {
        let r: [u8; 3] = rand::random();
        MacAddr([0xfa, 0x16, 0x3e, r[0], r[1], r[2]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?} (expected six hex pairs like fa:16:3e:12:ab:cd)")]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<MacAddr, MacParseError> {
        let err = || MacParseError(s.to_string());
        let parts: Vec<&str> = s.trim().split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(err());
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(err());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<MacAddr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------- config

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A guest port reachable from the host on 127.0.0.1 (a free port is chosen).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Forward {
    pub proto: Proto,
    pub guest_port: u16,
}

impl Forward {
    pub fn tcp(guest_port: u16) -> Forward {
        Forward {
            proto: Proto::Tcp,
            guest_port,
        }
    }
    pub fn udp(guest_port: u16) -> Forward {
        Forward {
            proto: Proto::Udp,
            guest_port,
        }
    }
}

#[derive(Clone, Debug)]
pub struct VmConfig {
    /// For logs and process titles.
    pub name: String,
    /// qcow2 or raw (anything qemu-img knows); never modified.
    pub image: PathBuf,
    /// Created if missing; holds overlay, logs, sockets and the capture.
    pub work_dir: PathBuf,
    pub accel: Accel,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Bytes; the overlay gets this virtual size when larger than the image's.
    pub disk_size: Option<u64>,
    pub mac: MacAddr,
    /// virtio-net `host_mtu` when set.
    pub mtu: Option<u16>,
    /// Extra read-only raw drives after the root disk (seed images).
    pub drives: Vec<PathBuf>,
    /// Shared with the guest over virtiofs, tag "ibkit".
    pub share_dir: Option<PathBuf>,
    pub forwards: Vec<Forward>,
    /// QEMU machine type, default "pc".
    pub machine: Option<String>,
}

impl VmConfig {
    /// TCG, 1 vCPU, 1024 MiB, a random MAC, SSH (22/tcp) forwarded.
    pub fn new(
        name: impl Into<String>,
        image: impl Into<PathBuf>,
        work_dir: impl Into<PathBuf>,
    ) -> VmConfig {
        VmConfig {
            name: name.into(),
            image: image.into(),
            work_dir: work_dir.into(),
            accel: Accel::Tcg,
            vcpus: 1,
            memory_mib: 1024,
            disk_size: None,
            mac: MacAddr::random(),
            mtu: None,
            drives: Vec::new(),
            share_dir: None,
            forwards: vec![Forward::tcp(22)],
            machine: None,
        }
    }
}

/// How the VM's NIC reaches a network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum NetBackend {
    /// QEMU user-mode networking with [`VmConfig::forwards`] (the default).
    #[default]
    User,
    /// An existing tap device (created and bridged by the caller):
    /// `-netdev tap,ifname=...,script=no,downscript=no`. Forwards are not
    /// used: the guest is reached on its own address.
    Tap { ifname: String },
}

/// Launch options beyond [`VmConfig`] (kept apart so that `VmConfig`
/// literals elsewhere keep compiling). The default is what [`Vm::start`]
/// does: an attached child, user-mode networking, a packet capture and a
/// `cache=unsafe` throw-away overlay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchOptions {
    /// QEMU outlives this process: it is started with `-daemonize -pidfile
    /// WORK/qemu.pid`, without `PR_SET_PDEATHSIG`, is not registered for
    /// [`procs::kill_all`], and dropping the [`Vm`] leaves it running
    /// ([`Vm::shutdown`] and [`Vm::quit`] still stop it). Find it again with
    /// [`Vm::attach`] or [`detached_qemu_pid`]. A virtiofs share is refused
    /// (virtiofsd would not outlive the process).
    pub detached: bool,
    pub net: NetBackend,
    /// Capture the NIC's traffic to `net.pcap` (`filter-dump`).
    pub capture: bool,
    /// `cache=` of the root disk: `unsafe` for throw-away overlays,
    /// `writeback` for disks that must survive a host crash.
    pub disk_cache: String,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        LaunchOptions {
            detached: false,
            net: NetBackend::User,
            capture: true,
            disk_cache: "unsafe".into(),
        }
    }
}

impl LaunchOptions {
    /// A long-lived VM: detached, on a tap device, no capture, `writeback`.
    pub fn detached_on_tap(ifname: impl Into<String>) -> LaunchOptions {
        LaunchOptions {
            detached: true,
            net: NetBackend::Tap {
                ifname: ifname.into(),
            },
            capture: false,
            disk_cache: "writeback".into(),
        }
    }
}

/// Whether the virtiofs share is attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShareState {
    NotRequested,
    Ready,
    /// The VM runs without the share; the reason says why.
    Unavailable(String),
}

// ---------------------------------------------------------------- errors

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("vm {name}: bad configuration: {message}")]
    Config { name: String, message: String },
    #[error("vm {name}: {what} {}", path.display())]
    Io {
        name: String,
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vm {name}: cannot run {program}")]
    Spawn {
        name: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("vm {name}: `{command}` failed ({status}): {stderr}")]
    Command {
        name: String,
        command: String,
        status: String,
        stderr: String,
    },
    #[error("vm {name}: QEMU exited during start-up ({status}); {}:\n{log}", log_path.display())]
    QemuExited {
        name: String,
        status: String,
        log_path: PathBuf,
        log: String,
    },
    #[error("vm {name}: QEMU is not running any more ({status}); {}:\n{log}", log_path.display())]
    NotRunning {
        name: String,
        status: String,
        log_path: PathBuf,
        log: String,
    },
    #[error("vm {name}: QMP")]
    Qmp {
        name: String,
        #[source]
        source: QmpError,
    },
    #[error("vm {name}: QMP socket {} did not answer within {timeout:?} (QEMU log {}: {log})", socket.display(), log_path.display())]
    QmpStart {
        name: String,
        socket: PathBuf,
        timeout: Duration,
        log_path: PathBuf,
        log: String,
    },
    #[error("vm {name}: {needle:?} did not appear in {} within {timeout:?} (last console line: {last_line})", path.display())]
    SerialTimeout {
        name: String,
        needle: String,
        timeout: Duration,
        path: PathBuf,
        last_line: String,
    },
}

// ---------------------------------------------------------------- helpers

/// Escape a value for QEMU's option syntax (',' is doubled).
fn q(s: impl AsRef<str>) -> String {
    s.as_ref().replace(',', ",,")
}

fn qp(p: &Path) -> String {
    q(p.to_string_lossy())
}

fn tail_lines(text: &str, n: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

fn last_console_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(|l| format!("'{}'", l.chars().take(200).collect::<String>()))
        .unwrap_or_else(|| "(no console output)".into())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Find virtiofsd: `$IBKIT_VIRTIOFSD`, `PATH`, `/usr/libexec/virtiofsd`,
/// `/usr/lib/qemu/virtiofsd`, the ibkit tool cache
/// (`${IBKIT_CACHE_DIR:-/var/cache/ibkit}/tools/virtiofsd-1.14.0/bin/virtiofsd`,
/// where `scripts/install-virtiofsd.sh` puts it), `~/.cargo/bin/virtiofsd`.
pub fn find_virtiofsd() -> Result<PathBuf, String> {
    if let Some(v) = std::env::var_os("IBKIT_VIRTIOFSD") {
        let p = PathBuf::from(&v);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(format!(
                "virtiofsd not found: IBKIT_VIRTIOFSD={} is not an executable file",
                p.display()
            ))
        };
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("virtiofsd")));
    }
    candidates.push("/usr/libexec/virtiofsd".into());
    candidates.push("/usr/lib/qemu/virtiofsd".into());
    let cache = std::env::var_os("IBKIT_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/ibkit"));
    candidates.push(
        cache
            .join("tools")
            .join(format!("virtiofsd-{VIRTIOFSD_VERSION}"))
            .join("bin/virtiofsd"),
    );
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/virtiofsd"));
    }
    if let Some(found) = candidates.iter().find(|p| is_executable(p)) {
        return Ok(found.clone());
    }
    let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    Err(format!(
        "virtiofsd not found (looked in {}); run scripts/install-virtiofsd.sh",
        looked.join(", ")
    ))
}

struct ImageInfo {
    format: String,
    virtual_size: u64,
}

async fn run_tool(
    name: &str,
    program: &Path,
    args: &[String],
) -> Result<std::process::Output, VmError> {
    let command = format!("{} {}", program.display(), args.join(" "));
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| VmError::Spawn {
            name: name.to_string(),
            program: program.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(VmError::Command {
            name: name.to_string(),
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

async fn image_info(name: &str, image: &Path) -> Result<ImageInfo, VmError> {
    let args = vec![
        "info".to_string(),
        "--output".into(),
        "json".into(),
        image.display().to_string(),
    ];
    let out = run_tool(name, &qemu_img_binary(), &args).await?;
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| VmError::Command {
        name: name.to_string(),
        command: format!("qemu-img {}", args.join(" ")),
        status: "unparsable output".into(),
        stderr: e.to_string(),
    })?;
    let format = v["format"].as_str().unwrap_or("").to_string();
    let virtual_size = v["virtual-size"].as_u64().unwrap_or(0);
    if format.is_empty() || virtual_size == 0 {
        return Err(VmError::Command {
            name: name.to_string(),
            command: format!("qemu-img {}", args.join(" ")),
            status: "no format or virtual-size".into(),
            stderr: v.to_string(),
        });
    }
    Ok(ImageInfo {
        format,
        virtual_size,
    })
}

/// A free port on 127.0.0.1 (bound by the OS, then released just before
/// QEMU binds it).
#[allow(dead_code)] // the sockets are only held, to keep the ports bound
enum Reserved {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

fn reserve_port(proto: Proto) -> std::io::Result<(u16, Reserved)> {
    match proto {
        Proto::Tcp => {
            let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            Ok((l.local_addr()?.port(), Reserved::Tcp(l)))
        }
        Proto::Udp => {
            let s = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            Ok((s.local_addr()?.port(), Reserved::Udp(s)))
        }
    }
}

fn check_socket_path(name: &str, p: &Path) -> Result<(), VmError> {
    let len = p.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(VmError::Config {
            name: name.to_string(),
            message: format!(
                "socket path {} is {len} bytes, more than unix sockets allow ({MAX_SOCKET_PATH}); use a shorter work_dir",
                p.display()
            ),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------- Vm

/// The QEMU process: our child (killed with us) or a detached daemon.
#[derive(Debug)]
enum QemuProc {
    Child(ChildProc),
    /// Started with `-daemonize`; `pidfile` is what its command line names.
    Detached {
        pid: u32,
        pidfile: PathBuf,
    },
}

impl QemuProc {
    fn pid(&self) -> u32 {
        match self {
            QemuProc::Child(c) => c.pid(),
            QemuProc::Detached { pid, .. } => *pid,
        }
    }

    /// `Some(status)` once QEMU has exited.
    fn exit_status(&mut self) -> Option<String> {
        match self {
            QemuProc::Child(c) => c.try_wait().ok().flatten().map(|s| s.to_string()),
            QemuProc::Detached { pid, pidfile } => {
                if is_our_qemu(*pid, pidfile) {
                    None
                } else {
                    Some(format!("detached QEMU pid {pid} is gone"))
                }
            }
        }
    }

    fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    fn signal(&mut self, signal: Signal) {
        match self {
            QemuProc::Child(c) => c.signal(signal),
            QemuProc::Detached { pid, pidfile } => {
                if is_our_qemu(*pid, pidfile)
                    && let Ok(raw) = i32::try_from(*pid)
                {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), signal);
                }
            }
        }
    }

    /// Wait (polling every 50 ms) up to `timeout`; true once it exited.
    async fn wait_timeout(&mut self, timeout: Duration) -> bool {
        match self {
            QemuProc::Child(c) => c.wait_timeout(timeout).await.is_some(),
            QemuProc::Detached { .. } => {
                let deadline = Instant::now() + timeout;
                loop {
                    if !self.is_running() {
                        return true;
                    }
                    if Instant::now() >= deadline {
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// SIGKILL (a child is also reaped; a detached QEMU is reaped by init).
    fn kill_and_reap(&mut self) {
        match self {
            QemuProc::Child(c) => c.kill_and_reap(),
            QemuProc::Detached { .. } => {
                self.signal(Signal::SIGKILL);
                let deadline = Instant::now() + Duration::from_secs(2);
                while self.is_running() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

/// The pid file of a detached VM in `work_dir`.
pub fn pidfile_path(work_dir: &Path) -> PathBuf {
    work_dir.join("qemu.pid")
}

/// Whether `pid` is alive (not a zombie) and a QEMU whose command line has
/// `-pidfile PIDFILE` (so a reused pid never passes).
fn is_our_qemu(pid: u32, pidfile: &Path) -> bool {
    if !procs::is_alive(pid) {
        return false;
    }
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    let want = pidfile.as_os_str().as_encoded_bytes();
    args.windows(2)
        .any(|w| w[0] == b"-pidfile".as_slice() && w[1] == want)
}

/// The pid of the detached QEMU of `work_dir`, if one runs: the pid in
/// `WORK/qemu.pid` is alive and is a QEMU started with that pid file.
pub fn detached_qemu_pid(work_dir: &Path) -> Option<u32> {
    let dir = std::fs::canonicalize(work_dir).ok()?;
    let pidfile = pidfile_path(&dir);
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    is_our_qemu(pid, &pidfile).then_some(pid)
}

/// Stop the detached QEMU of `work_dir` without a [`Vm`]: QMP `quit`, then
/// SIGTERM, then SIGKILL, allowing `grace` for each. Returns how it ended
/// (`"not running"`, `"quit"`, `"terminated"`, `"killed"`).
pub async fn stop_detached(work_dir: &Path, grace: Duration) -> &'static str {
    let Some(pid) = detached_qemu_pid(work_dir) else {
        return "not running";
    };
    let pidfile =
        pidfile_path(&std::fs::canonicalize(work_dir).unwrap_or_else(|_| work_dir.to_path_buf()));
    let mut p = QemuProc::Detached { pid, pidfile };
    let sock = work_dir.join("qmp.sock");
    let quit = tokio::time::timeout(grace.max(Duration::from_secs(1)), async {
        let mut q = Qmp::connect(&sock, Duration::from_secs(5)).await?;
        q.execute("quit", None).await
    })
    .await;
    if !matches!(quit, Ok(Ok(_))) {
        tracing::debug!(pid, socket = %sock.display(), "QMP quit did not work: {quit:?}");
    }
    if p.wait_timeout(grace).await {
        return "quit";
    }
    p.signal(Signal::SIGTERM);
    if p.wait_timeout(grace).await {
        return "terminated";
    }
    p.kill_and_reap();
    "killed"
}

/// A running QEMU VM. Dropping it SIGKILLs QEMU and virtiofsd.
pub struct Vm {
    config: VmConfig,
    work_dir: PathBuf,
    argv: Vec<String>,
    qemu: Mutex<QemuProc>,
    qemu_pid: u32,
    detached: bool,
    virtiofsd: Option<ChildProc>,
    virtiofsd_sandbox: Option<String>,
    share: ShareState,
    qmp: tokio::sync::Mutex<Qmp>,
    ports: Vec<(Forward, u16)>,
    started: Instant,
}

impl fmt::Debug for Vm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm")
            .field("name", &self.config.name)
            .field("qemu_pid", &self.qemu_pid)
            .field("work_dir", &self.work_dir)
            .field("share", &self.share)
            .field("ports", &self.ports)
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// Create the overlay, start virtiofsd (if a share is asked for) and
    /// QEMU, and return once QMP answers. If virtiofsd is missing or fails,
    /// the VM starts without the share ([`ShareState::Unavailable`]).
    pub async fn start(config: VmConfig) -> Result<Vm, VmError> {
        Vm::start_with(config, LaunchOptions::default()).await
    }

    /// [`Vm::start`] with [`LaunchOptions`]: e.g. a detached QEMU on a tap
    /// device that outlives this process.
    pub async fn start_with(config: VmConfig, opts: LaunchOptions) -> Result<Vm, VmError> {
        let name = config.name.clone();
        let cfg_err = |message: String| VmError::Config {
            name: name.clone(),
            message,
        };
        if config.vcpus == 0 {
            return Err(cfg_err("vcpus must be at least 1".into()));
        }
        if config.memory_mib < 64 {
            return Err(cfg_err(format!(
                "memory_mib {} is below 64",
                config.memory_mib
            )));
        }
        let io = |what: &str, path: &Path| {
            let (name, what, path) = (name.clone(), what.to_string(), path.to_path_buf());
            move |source| VmError::Io {
                name,
                what,
                path,
                source,
            }
        };
        std::fs::create_dir_all(&config.work_dir)
            .map_err(io("cannot create work directory", &config.work_dir))?;
        let work_dir = std::fs::canonicalize(&config.work_dir)
            .map_err(io("cannot resolve work directory", &config.work_dir))?;
        let image =
            std::fs::canonicalize(&config.image).map_err(io("image not found:", &config.image))?;
        for d in &config.drives {
            if !d.is_file() {
                return Err(cfg_err(format!("extra drive {} not found", d.display())));
            }
        }
        if opts.detached && config.share_dir.is_some() {
            return Err(cfg_err(
                "a detached VM cannot have a virtiofs share (virtiofsd would not outlive this process)".into(),
            ));
        }
        if let NetBackend::Tap { ifname } = &opts.net
            && (ifname.is_empty() || ifname.len() > 15 || ifname.contains([',', '/', ' ']))
        {
            return Err(cfg_err(format!("bad tap device name {ifname:?}")));
        }
        if !opts
            .disk_cache
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'.')
            || opts.disk_cache.is_empty()
        {
            return Err(cfg_err(format!(
                "bad disk cache mode {:?}",
                opts.disk_cache
            )));
        }
        if let Some(s) = &config.share_dir
            && !s.is_dir()
        {
            return Err(cfg_err(format!(
                "share_dir {} is not a directory",
                s.display()
            )));
        }

        let overlay = work_dir.join("overlay.qcow2");
        let serial = work_dir.join("serial.log");
        let qemu_log = work_dir.join("qemu.log");
        let qmp_sock = work_dir.join("qmp.sock");
        let pcap = work_dir.join("net.pcap");
        let vfs_sock = work_dir.join("virtiofsd.sock");
        let vfs_log = work_dir.join("virtiofsd.log");
        let pidfile = pidfile_path(&work_dir);
        check_socket_path(&name, &qmp_sock)?;
        check_socket_path(&name, &vfs_sock)?;
        if let Some(pid) = detached_qemu_pid(&work_dir) {
            return Err(cfg_err(format!(
                "a detached QEMU (pid {pid}) still runs in {}",
                work_dir.display()
            )));
        }
        for stale in [&overlay, &qmp_sock, &pcap, &vfs_sock, &serial, &pidfile] {
            match std::fs::remove_file(stale) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("cannot remove stale", stale)(e)),
            }
        }

        // Overlay over the untouched image.
        let info = image_info(&name, &image).await?;
        let mut args = vec![
            "create".to_string(),
            "-q".into(),
            "-f".into(),
            "qcow2".into(),
            "-F".into(),
            info.format.clone(),
            "-b".into(),
            image.display().to_string(),
            overlay.display().to_string(),
        ];
        if let Some(size) = config.disk_size
            && size > info.virtual_size
        {
            args.push(size.to_string());
        }
        run_tool(&name, &qemu_img_binary(), &args).await?;
        tracing::debug!(vm = %name, image = %image.display(), format = %info.format, "overlay created");

        // virtiofsd first: QEMU connects to its socket at start-up.
        let mut virtiofsd = None;
        let mut virtiofsd_sandbox = None;
        let share = match &config.share_dir {
            None => ShareState::NotRequested,
            Some(dir) => match find_virtiofsd() {
                Err(reason) => ShareState::Unavailable(reason),
                Ok(bin) => match start_virtiofsd(&name, &bin, dir, &vfs_sock, &vfs_log).await {
                    Ok((child, sandbox)) => {
                        virtiofsd = Some(child);
                        virtiofsd_sandbox = Some(sandbox);
                        ShareState::Ready
                    }
                    Err(reason) => ShareState::Unavailable(reason),
                },
            },
        };
        if let ShareState::Unavailable(r) = &share {
            tracing::warn!(vm = %name, "virtiofs share unavailable: {r}");
        }

        // Host ports for the forwards.
        let mut reserved = Vec::new();
        let mut ports = Vec::new();
        let forwards: &[Forward] = match opts.net {
            NetBackend::User => &config.forwards,
            NetBackend::Tap { .. } => &[],
        };
        for f in forwards {
            let (port, r) = reserve_port(f.proto).map_err(|source| VmError::Io {
                name: name.clone(),
                what: format!("cannot find a free {} port on", f.proto),
                path: PathBuf::from("127.0.0.1"),
                source,
            })?;
            reserved.push(r);
            ports.push((*f, port));
        }

        let argv = build_argv(
            &config,
            &opts,
            &ports,
            &overlay,
            &serial,
            &qmp_sock,
            &pcap,
            &vfs_sock,
            &pidfile,
            share == ShareState::Ready,
        );
        let log_file = std::fs::File::create(&qemu_log).map_err(io("cannot create", &qemu_log))?;
        let log_err = log_file
            .try_clone()
            .map_err(io("cannot reopen", &qemu_log))?;
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(&work_dir)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err);
        drop(reserved);
        let spawn_err = |source| VmError::Spawn {
            name: name.clone(),
            program: argv[0].clone(),
            source,
        };
        let t0 = Instant::now();
        let mut qemu = if opts.detached {
            // The foreground QEMU exits once the daemon is initialised (or
            // failed); the daemon is reparented to init and never ours.
            let mut fg = cmd.spawn().map_err(spawn_err)?;
            let started = Instant::now();
            let status = loop {
                if let Ok(Some(status)) = fg.try_wait() {
                    break status;
                }
                if started.elapsed() > Duration::from_secs(60) {
                    let _ = fg.kill();
                    let _ = fg.wait();
                    return Err(VmError::QemuExited {
                        name,
                        status: "did not daemonize within 60 s".into(),
                        log: read_log(&qemu_log),
                        log_path: qemu_log,
                    });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let pid = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok());
            match pid {
                Some(pid) if status.success() && is_our_qemu(pid, &pidfile) => QemuProc::Detached {
                    pid,
                    pidfile: pidfile.clone(),
                },
                _ => {
                    return Err(VmError::QemuExited {
                        name,
                        status: format!("{status}, pid file {} says {pid:?}", pidfile.display()),
                        log: read_log(&qemu_log),
                        log_path: qemu_log,
                    });
                }
            }
        } else {
            QemuProc::Child(ChildProc::spawn(&mut cmd, &format!("qemu:{name}")).map_err(spawn_err)?)
        };
        let qemu_pid = qemu.pid();
        tracing::info!(vm = %name, pid = qemu_pid, accel = %config.accel, "QEMU started: {}", argv.join(" "));

        // Wait for QMP (or an early exit).
        // A detached QEMU's wait includes daemonizing (up to 60 s).
        let qmp_timeout = Duration::from_secs(if opts.detached { 90 } else { 30 });
        let qmp = loop {
            if let Some(status) = qemu.exit_status() {
                return Err(VmError::QemuExited {
                    name,
                    status,
                    log: read_log(&qemu_log),
                    log_path: qemu_log,
                });
            }
            if qmp_sock.exists()
                && let Ok(q) = Qmp::connect(&qmp_sock, Duration::from_secs(5)).await
            {
                break q;
            }
            if t0.elapsed() > qmp_timeout {
                qemu.kill_and_reap();
                return Err(VmError::QmpStart {
                    name,
                    socket: qmp_sock,
                    timeout: qmp_timeout,
                    log: read_log(&qemu_log),
                    log_path: qemu_log,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };

        Ok(Vm {
            config,
            work_dir,
            argv,
            qemu: Mutex::new(qemu),
            qemu_pid,
            detached: opts.detached,
            virtiofsd,
            virtiofsd_sandbox,
            share,
            qmp: tokio::sync::Mutex::new(qmp),
            ports,
            started: t0,
        })
    }

    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// The (absolute) work directory.
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// The host port (on 127.0.0.1) forwarded to `guest_port`.
    pub fn host_port(&self, proto: Proto, guest_port: u16) -> Option<u16> {
        self.ports
            .iter()
            .find(|(f, _)| f.proto == proto && f.guest_port == guest_port)
            .map(|(_, p)| *p)
    }

    /// 127.0.0.1:<port> forwarded to the guest's 22/tcp.
    pub fn ssh_addr(&self) -> Option<SocketAddr> {
        self.host_port(Proto::Tcp, 22)
            .map(|p| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, p)))
    }

    pub fn share(&self) -> &ShareState {
        &self.share
    }

    /// The virtiofsd sandbox mode in use ("namespace" or "none").
    pub fn share_sandbox(&self) -> Option<&str> {
        self.virtiofsd_sandbox.as_deref()
    }

    pub fn virtiofsd_pid(&self) -> Option<u32> {
        self.virtiofsd.as_ref().map(ChildProc::pid)
    }

    pub fn serial_log_path(&self) -> PathBuf {
        self.work_dir.join("serial.log")
    }

    /// The whole serial console so far (lossy UTF-8).
    pub fn serial_log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.serial_log_path()).unwrap_or_default())
            .into_owned()
    }

    pub fn pcap_path(&self) -> PathBuf {
        self.work_dir.join("net.pcap")
    }

    /// QEMU's stderr.
    pub fn qemu_log_path(&self) -> PathBuf {
        self.work_dir.join("qemu.log")
    }

    pub fn qemu_pid(&self) -> u32 {
        self.qemu_pid
    }

    /// The exact QEMU argv used (argv[0] first).
    pub fn command_line(&self) -> Vec<String> {
        self.argv.clone()
    }

    /// Time since QEMU was started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn exit_status(&self) -> Option<String> {
        self.qemu
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .exit_status()
    }

    fn not_running(&self, status: String) -> VmError {
        VmError::NotRunning {
            name: self.config.name.clone(),
            status,
            log: read_log(&self.qemu_log_path()),
            log_path: self.qemu_log_path(),
        }
    }

    /// Wait until `needle` appears on the serial console. Fails at once if
    /// QEMU exits.
    pub async fn wait_serial(&self, needle: &str, timeout: Duration) -> Result<(), VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.serial_log();
            if text.contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.exit_status() {
                return Err(self.not_running(status));
            }
            if Instant::now() >= deadline {
                return Err(VmError::SerialTimeout {
                    name: self.config.name.clone(),
                    needle: needle.to_string(),
                    timeout,
                    path: self.serial_log_path(),
                    last_line: last_console_line(&text),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Run a QMP command; returns its "return" value.
    pub async fn qmp(&self, command: &str, arguments: Option<Value>) -> Result<Value, VmError> {
        let mut q = self.qmp.lock().await;
        q.execute(command, arguments)
            .await
            .map_err(|source| VmError::Qmp {
                name: self.config.name.clone(),
                source,
            })
    }

    /// Every QMP event received so far (RESET, POWERDOWN, SHUTDOWN...).
    pub async fn qmp_events(&self) -> Vec<Value> {
        self.qmp.lock().await.events().to_vec()
    }

    /// Hard reset (like pressing the reset button).
    pub async fn system_reset(&self) -> Result<(), VmError> {
        self.qmp("system_reset", None).await.map(|_| ())
    }

    /// Whether the QEMU process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.qemu
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .is_running()
    }

    /// Whether QEMU was started (or attached) detached: dropping this value
    /// leaves it running.
    pub fn is_detached(&self) -> bool {
        self.detached
    }

    /// Find the detached QEMU of `config.work_dir` again (after a restart
    /// of this program): its pid file names a live QEMU started with that
    /// pid file, and its QMP socket answers. Nothing is created or
    /// started; `config` supplies the name and is returned by
    /// [`Vm::config`]. Dropping the result leaves QEMU running.
    pub async fn attach(config: VmConfig) -> Result<Vm, VmError> {
        let name = config.name.clone();
        let work_dir = std::fs::canonicalize(&config.work_dir).map_err(|source| VmError::Io {
            name: name.clone(),
            what: "cannot resolve work directory".into(),
            path: config.work_dir.clone(),
            source,
        })?;
        let pidfile = pidfile_path(&work_dir);
        let qemu_log = work_dir.join("qemu.log");
        let Some(pid) = detached_qemu_pid(&work_dir) else {
            return Err(VmError::NotRunning {
                name,
                status: format!("no live QEMU named by {}", pidfile.display()),
                log: read_log(&qemu_log),
                log_path: qemu_log,
            });
        };
        let qmp_sock = work_dir.join("qmp.sock");
        let qmp = Qmp::connect(&qmp_sock, Duration::from_secs(10))
            .await
            .map_err(|source| VmError::Qmp {
                name: name.clone(),
                source,
            })?;
        let argv = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|raw| {
                raw.split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        Ok(Vm {
            config,
            work_dir,
            argv,
            qemu: Mutex::new(QemuProc::Detached { pid, pidfile }),
            qemu_pid: pid,
            detached: true,
            virtiofsd: None,
            virtiofsd_sandbox: None,
            share: ShareState::NotRequested,
            qmp: tokio::sync::Mutex::new(qmp),
            ports: Vec::new(),
            started: Instant::now(),
        })
    }

    /// Stop QEMU at once (no guest shutdown): QMP `quit`, then SIGTERM, then
    /// SIGKILL, allowing `grace` for each. Works for attached and detached
    /// VMs; virtiofsd is stopped too.
    pub async fn quit(mut self, grace: Duration) -> Result<(), VmError> {
        let _ = tokio::time::timeout(grace.max(Duration::from_secs(1)), async {
            let mut q = self.qmp.lock().await;
            let _ = q.execute("quit", None).await;
        })
        .await;
        let qemu = self.qemu.get_mut().unwrap_or_else(|p| p.into_inner());
        if !qemu.wait_timeout(grace).await {
            qemu.signal(Signal::SIGTERM);
            if !qemu.wait_timeout(grace).await {
                qemu.kill_and_reap();
            }
        }
        // An attached child is reaped here.
        qemu.kill_and_reap();
        if let Some(v) = self.virtiofsd.as_mut() {
            kill_tree(v);
        }
        Ok(())
    }

    /// ACPI power-down, wait up to `grace`, then QMP `quit`, then SIGKILL.
    /// virtiofsd is stopped too. Files in the work directory are kept.
    pub async fn shutdown(mut self, grace: Duration) -> Result<(), VmError> {
        let name = self.config.name.clone();
        let t0 = Instant::now();
        let mut how = "killed";
        if self.is_running() {
            let pd =
                tokio::time::timeout(Duration::from_secs(5), self.qmp("system_powerdown", None))
                    .await;
            if let Ok(Err(e)) = pd {
                tracing::debug!(vm = %name, "system_powerdown: {e}");
            }
            let qemu = self.qemu.get_mut().unwrap_or_else(|p| p.into_inner());
            if qemu.wait_timeout(grace).await {
                how = "powered off";
            } else {
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    let mut q = self.qmp.lock().await;
                    let _ = q.execute("quit", None).await;
                })
                .await;
                let qemu = self.qemu.get_mut().unwrap_or_else(|p| p.into_inner());
                if qemu.wait_timeout(Duration::from_secs(5)).await {
                    how = "quit";
                }
            }
        } else {
            how = "already exited";
        }
        self.qemu
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .kill_and_reap();
        if let Some(v) = self.virtiofsd.as_mut() {
            v.signal(Signal::SIGTERM);
            if v.wait_timeout(Duration::from_secs(3)).await.is_none() {
                kill_tree(v);
            }
        }
        tracing::info!(vm = %name, "VM {how} after {:.1} s", t0.elapsed().as_secs_f64());
        Ok(())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let qemu = self.qemu.get_mut().unwrap_or_else(|p| p.into_inner());
        if let QemuProc::Detached { pid, .. } = qemu {
            tracing::debug!(vm = %self.config.name, pid = *pid, "leaving detached QEMU running");
            return;
        }
        if qemu.is_running() {
            tracing::debug!(vm = %self.config.name, pid = self.qemu_pid, "killing QEMU");
        }
        qemu.kill_and_reap();
        if let Some(v) = self.virtiofsd.as_mut() {
            kill_tree(v);
        }
    }
}

/// SIGKILL virtiofsd and its sandboxed child (which would otherwise get only
/// a SIGTERM through its parent-death signal), reap, and wait up to 1 s for
/// the child to be gone.
fn kill_tree(v: &mut ChildProc) {
    let kids = if v.is_running() {
        procs::child_pids(v.pid())
    } else {
        Vec::new()
    };
    v.kill_and_reap();
    for k in &kids {
        if let Ok(raw) = i32::try_from(*k) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), Signal::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while kids.iter().any(|k| procs::is_alive(*k)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read_log(p: &Path) -> String {
    let text = String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    let t = tail_lines(text.trim(), 20);
    if t.is_empty() { "(empty)".into() } else { t }
}

/// Start virtiofsd; `Err` is the reason the share is unavailable. As root the
/// `namespace` sandbox is tried first (the guest is untrusted), then `none`.
async fn start_virtiofsd(
    name: &str,
    bin: &Path,
    dir: &Path,
    sock: &Path,
    log: &Path,
) -> Result<(ChildProc, String), String> {
    let modes: &[&str] = if nix::unistd::geteuid().is_root() {
        &["namespace", "none"]
    } else {
        &["none"]
    };
    let mut reasons = Vec::new();
    for mode in modes {
        let _ = std::fs::remove_file(sock);
        let f = std::fs::File::create(log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let f2 = f
            .try_clone()
            .map_err(|e| format!("cannot reopen {}: {e}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--socket-path={}", sock.display()))
            .arg(format!("--shared-dir={}", dir.display()))
            .arg(format!("--sandbox={mode}"))
            .arg("--cache=auto")
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2);
        let mut child = ChildProc::spawn(&mut cmd, &format!("virtiofsd:{name}"))
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let t0 = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                reasons.push(format!(
                    "virtiofsd --sandbox={mode} exited ({status}): {}",
                    read_log(log).replace('\n', " | ")
                ));
                break;
            }
            if sock.exists() {
                tracing::debug!(vm = %name, sandbox = mode, "virtiofsd ready");
                return Ok((child, (*mode).to_string()));
            }
            if t0.elapsed() > Duration::from_secs(10) {
                child.kill_and_reap();
                reasons.push(format!(
                    "virtiofsd --sandbox={mode} created no socket {} within 10 s",
                    sock.display()
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Err(reasons.join("; "))
}

#[allow(clippy::too_many_arguments)]
fn build_argv(
    c: &VmConfig,
    opts: &LaunchOptions,
    ports: &[(Forward, u16)],
    overlay: &Path,
    serial: &Path,
    qmp: &Path,
    pcap: &Path,
    vfs_sock: &Path,
    pidfile: &Path,
    share: bool,
) -> Vec<String> {
    let mut a: Vec<String> = vec![qemu_binary().display().to_string()];
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    let title: String = c
        .name
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' {
                ch
            } else {
                '_'
            }
        })
        .collect();
    push(&["-name", &format!("{},process=ibkit-{title}", q(&c.name))]);
    push(&["-nodefaults", "-no-user-config"]);
    let machine = c.machine.clone().unwrap_or_else(|| "pc".into());
    push(&["-machine", &q(&machine)]);
    // `-accel` rather than `-machine accel=`: the two cannot be combined, and
    // thread=multi (MTTCG) is only reachable through `-accel`.
    let accel = match c.accel {
        Accel::Tcg if c.vcpus > 1 => "tcg,thread=multi".to_string(),
        other => other.as_str().to_string(),
    };
    push(&["-accel", &accel]);
    push(&[
        "-smp",
        &c.vcpus.to_string(),
        "-m",
        &format!("{}M", c.memory_mib),
    ]);
    push(&["-display", "none", "-vga", "none"]);
    push(&[
        "-chardev",
        &format!("file,id=ser0,path={}", qp(serial)),
        "-serial",
        "chardev:ser0",
    ]);
    push(&["-qmp", &format!("unix:{},server=on,wait=off", qp(qmp))]);
    push(&[
        "-drive",
        &format!(
            "file={},if=virtio,format=qcow2,cache={}",
            qp(overlay),
            q(&opts.disk_cache)
        ),
    ]);
    for d in &c.drives {
        let abs = std::fs::canonicalize(d).unwrap_or_else(|_| d.clone());
        push(&[
            "-drive",
            &format!("file={},if=virtio,format=raw,readonly=on", qp(&abs)),
        ]);
    }
    let mut netdev = match &opts.net {
        NetBackend::User => "user,id=n0".to_string(),
        NetBackend::Tap { ifname } => {
            format!("tap,id=n0,ifname={},script=no,downscript=no", q(ifname))
        }
    };
    for (f, host) in ports {
        netdev.push_str(&format!(
            ",hostfwd={}:127.0.0.1:{host}-:{}",
            f.proto, f.guest_port
        ));
    }
    push(&["-netdev", &netdev]);
    let mut nic = format!("virtio-net-pci,netdev=n0,mac={}", c.mac);
    if let Some(mtu) = c.mtu {
        nic.push_str(&format!(",host_mtu={mtu}"));
    }
    push(&["-device", &nic]);
    if opts.capture {
        push(&[
            "-object",
            &format!("filter-dump,id=dump0,netdev=n0,file={}", qp(pcap)),
        ]);
    }
    if share {
        push(&[
            "-object",
            &format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                c.memory_mib
            ),
            "-numa",
            "node,memdev=mem",
            "-chardev",
            &format!("socket,id=vfs,path={}", qp(vfs_sock)),
            "-device",
            "vhost-user-fs-pci,chardev=vfs,tag=ibkit",
        ]);
    }
    push(&["-device", "virtio-rng-pci"]);
    if opts.detached {
        push(&["-daemonize", "-pidfile", &pidfile.display().to_string()]);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parse_display_random() {
        let m: MacAddr = "FA:16:3E:12:AB:CD".parse().expect("parse");
        assert_eq!(m, MacAddr([0xfa, 0x16, 0x3e, 0x12, 0xab, 0xcd]));
        assert_eq!(m.to_string(), "fa:16:3e:12:ab:cd");
        assert_eq!("fa-16-3e-12-ab-cd".parse::<MacAddr>(), Ok(m));
        for bad in [
            "",
            "fa:16:3e:12:ab",
            "fa:16:3e:12:ab:cd:ef",
            "fa:16:3e:12:ab:zz",
            "fa:16:3e:12:ab:c",
            "fa:16:3e:12:ab:+cd",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        let r = MacAddr::random();
        assert_eq!(&r.0[..3], &[0xfa, 0x16, 0x3e]);
        assert_eq!(r.to_string().parse::<MacAddr>(), Ok(r));
        let distinct: std::collections::HashSet<MacAddr> =
            (0..50).map(|_| MacAddr::random()).collect();
        assert!(distinct.len() > 40);
        let j = serde_json::to_string(&m).expect("json");
        assert_eq!(j, "\"fa:16:3e:12:ab:cd\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&j).expect("back"), m);
    }

    #[test]
    fn argv_shape() {
        let mut c = VmConfig::new("t,1", "/img.qcow2", "/w");
        c.vcpus = 2;
        c.mtu = Some(1400);
        c.mac = "fa:16:3e:00:00:01".parse().expect("mac");
        c.forwards = vec![Forward::tcp(22), Forward::udp(53)];
        let ports = vec![(Forward::tcp(22), 40022), (Forward::udp(53), 40053)];
        let a = build_argv(
            &c,
            &LaunchOptions::default(),
            &ports,
            Path::new("/w/overlay.qcow2"),
            Path::new("/w/serial.log"),
            Path::new("/w/qmp.sock"),
            Path::new("/w/net.pcap"),
            Path::new("/w/virtiofsd.sock"),
            Path::new("/w/qemu.pid"),
            true,
        );
        let s = a.join(" ");
        assert!(s.contains("-name t,,1,process=ibkit-t_1"), "{s}");
        assert!(s.contains("-accel tcg,thread=multi"), "{s}");
        assert!(
            s.contains("hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=udp:127.0.0.1:40053-:53"),
            "{s}"
        );
        assert!(s.contains("mac=fa:16:3e:00:00:01,host_mtu=1400"), "{s}");
        assert!(
            s.contains("memory-backend-memfd,id=mem,size=1024M,share=on"),
            "{s}"
        );
        assert!(s.contains("vhost-user-fs-pci,chardev=vfs,tag=ibkit"), "{s}");
        assert!(!s.contains("-cpu"), "never -cpu host/max here: {s}");
    }

    #[test]
    fn find_virtiofsd_reports_where_it_looked() {
        // Only the message format is checked; the result depends on the host.
        match find_virtiofsd() {
            Ok(p) => assert!(is_executable(&p)),
            Err(m) => assert!(m.contains("install-virtiofsd.sh"), "{m}"),
        }
    }

    #[tokio::test]
    async fn early_exit_quotes_the_qemu_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("disk.raw");
        std::fs::write(&img, vec![0u8; 1 << 20]).expect("image");
        let mut c = VmConfig::new("bad-machine", &img, dir.path().join("w"));
        c.machine = Some("no-such-machine-type".into());
        let err = Vm::start(c)
            .await
            .expect_err("QEMU must refuse the machine");
        let msg = err.to_string();
        assert!(matches!(err, VmError::QemuExited { .. }), "{msg}");
        assert!(msg.contains("qemu.log"), "{msg}");
        assert!(msg.to_lowercase().contains("machine"), "{msg}");
        // The image is untouched and an overlay exists.
        assert_eq!(std::fs::read(&img).expect("read").len(), 1 << 20);
        assert!(dir.path().join("w/overlay.qcow2").exists());
    }

    #[test]
    fn argv_detached_on_tap() {
        let c = VmConfig::new("d", "/img.qcow2", "/w");
        let a = build_argv(
            &c,
            &LaunchOptions::detached_on_tap("ibkt0"),
            &[],
            Path::new("/w/overlay.qcow2"),
            Path::new("/w/serial.log"),
            Path::new("/w/qmp.sock"),
            Path::new("/w/net.pcap"),
            Path::new("/w/virtiofsd.sock"),
            Path::new("/w/qemu.pid"),
            false,
        );
        let s = a.join(" ");
        assert!(
            s.contains("-netdev tap,id=n0,ifname=ibkt0,script=no,downscript=no "),
            "{s}"
        );
        assert!(s.ends_with("-daemonize -pidfile /w/qemu.pid"), "{s}");
        assert!(s.contains("cache=writeback"), "{s}");
        assert!(!s.contains("filter-dump"), "{s}");
        assert!(!s.contains("hostfwd"), "{s}");
    }

    #[tokio::test]
    async fn detached_vm_outlives_its_handle_and_is_attached_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("disk.raw");
        std::fs::write(&img, vec![0u8; 1 << 20]).expect("image");
        let work = dir.path().join("w");
        let mut c = VmConfig::new("detached", &img, &work);
        c.memory_mib = 128;
        let opts = LaunchOptions {
            detached: true,
            ..LaunchOptions::default()
        };
        let mut shared = c.clone();
        shared.share_dir = Some(dir.path().to_path_buf());
        let err = Vm::start_with(shared, opts.clone())
            .await
            .expect_err("no share when detached");
        assert!(err.to_string().contains("virtiofs"), "{err}");

        let vm = Vm::start_with(c.clone(), opts.clone())
            .await
            .expect("start");
        let pid = vm.qemu_pid();
        assert!(vm.is_detached());
        assert!(!procs::registered().iter().any(|(p, _)| *p == pid));
        drop(vm);
        assert!(procs::is_alive(pid), "a detached QEMU survives the drop");
        assert_eq!(detached_qemu_pid(&work), Some(pid));
        // A second start in the same directory is refused while it runs.
        let err = Vm::start_with(c.clone(), opts).await.expect_err("busy");
        assert!(err.to_string().contains("still runs"), "{err}");

        let mut vm = Vm::attach(c.clone()).await.expect("attach");
        assert_eq!(vm.qemu_pid(), pid);
        assert!(vm.is_running());
        let st = vm.qmp("query-status", None).await.expect("query-status");
        assert!(st["status"].is_string());
        assert!(vm.command_line().iter().any(|a| a == "-daemonize"));
        vm.quit(Duration::from_secs(5)).await.expect("quit");
        assert!(!procs::is_alive(pid));
        assert_eq!(detached_qemu_pid(&work), None);
        assert!(Vm::attach(c).await.is_err());
        assert_eq!(
            stop_detached(&work, Duration::from_secs(1)).await,
            "not running"
        );
    }

    #[tokio::test]
    async fn start_qmp_and_drop_without_a_bootable_disk() {
        // QEMU runs (SeaBIOS finds nothing to boot), QMP answers, drop kills it.
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("disk.raw");
        std::fs::write(&img, vec![0u8; 1 << 20]).expect("image");
        let share = dir.path().join("share");
        std::fs::create_dir(&share).expect("share");
        let mut c = VmConfig::new("empty", &img, dir.path().join("w"));
        c.memory_mib = 128;
        c.disk_size = Some(64 << 20);
        c.share_dir = Some(share);
        let mut vm = Vm::start(c).await.expect("start");
        assert!(vm.is_running());
        let st = vm.qmp("query-status", None).await.expect("query-status");
        assert!(st["status"].is_string());
        let err = vm
            .qmp("no-such-command", None)
            .await
            .expect_err("unknown command");
        assert!(err.to_string().contains("QMP"), "{err}");
        assert!(vm.ssh_addr().is_some());
        assert!(vm.command_line().iter().any(|a| a == "-nodefaults"));
        // The overlay has the larger virtual size (QEMU holds the write lock: -U).
        let out = Command::new(qemu_img_binary())
            .args(["info", "-U", "--output", "json"])
            .arg(vm.work_dir().join("overlay.qcow2"))
            .output()
            .expect("qemu-img info");
        let info: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(info["virtual-size"], 64u64 << 20);
        assert_eq!(info["format"], "qcow2");
        assert_eq!(info["backing-filename-format"], "raw");
        match vm.share() {
            ShareState::Ready => assert!(vm.virtiofsd_pid().is_some()),
            ShareState::Unavailable(r) => eprintln!("share unavailable: {r}"),
            ShareState::NotRequested => panic!("share was requested"),
        }
        let pid = vm.qemu_pid();
        let vpid = vm.virtiofsd_pid();
        let err = vm
            .wait_serial("never printed", Duration::from_millis(300))
            .await
            .expect_err("timeout");
        assert!(matches!(err, VmError::SerialTimeout { .. }), "{err}");
        drop(vm);
        assert!(!procs::is_alive(pid));
        if let Some(v) = vpid {
            assert!(!procs::is_alive(v));
        }
    }
}

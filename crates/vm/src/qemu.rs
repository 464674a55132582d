//! Starting, watching and stopping one QEMU VM (and its virtiofsd).
//!
//! The image is never modified: QEMU runs on a qcow2 overlay in the work
//! directory over the image. The image is untrusted: before anything opens
//! it, [`approve_image`] decides its format and whole backing chain with
//! ibkit's policy and checks `qemu-img info` agrees; QEMU then gets every
//! layer as an explicit `-blockdev` node ([`disk_args`]), so it never
//! probes a format or follows a file name written in an image. The work
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

use ibkit_image::chain::{ApprovedChain, approve};
use ibkit_image::container::{BackingPolicy, Format};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

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
    /// qcow2 or raw; never modified. Its backing files must lie beside it
    /// and be declared with their format ([`approve_image`]).
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
    /// The disk image failed the gate ([`approve_image`]).
    #[error("vm {name}: disk image {} refused: {reason}", image.display())]
    Image {
        name: String,
        image: PathBuf,
        reason: String,
    },
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

// ---------------------------------------------------------------- the image gate

/// An error with its causes, one line: `cannot read X: is a FIFO, …`.
fn error_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// The gate every VM disk passes before QEMU or qemu-img opens it
/// (`ibkit boot-test`, `ibkit deploy`): ibkit decides the format (raw or
/// qcow2) and the whole backing chain ([`ibkit_image::chain::approve`]:
/// regular files only, backing files beside the image with their format
/// declared, no data file, no VMDK or other format QEMU would probe), then
/// runs `qemu-img info` with ibkit's format ([`qemu_img_info_args`]) and
/// refuses when QEMU sees anything else. QEMU is then given exactly the
/// approved files ([`disk_args`], [`overlay_create_args`]).
pub async fn approve_image(name: &str, image: &Path) -> Result<ApprovedChain, VmError> {
    let refused = |reason: String| VmError::Image {
        name: name.to_string(),
        image: image.to_path_buf(),
        reason,
    };
    let path = image.to_path_buf();
    // Blocking reads of headers (never of a FIFO: those are refused unopened).
    let chain = tokio::task::spawn_blocking(move || approve(&path, &BackingPolicy::default()))
        .await
        .map_err(|e| refused(format!("image reader task: {e}")))?
        .map_err(|e| refused(error_text(&e)))?;
    let args = qemu_img_info_args(&chain);
    let out = run_tool(name, &qemu_img_binary(), &args).await?;
    let info: Value = serde_json::from_slice(&out.stdout).map_err(|e| VmError::Command {
        name: name.to_string(),
        command: format!("qemu-img {}", args.join(" ")),
        status: "unparsable output".into(),
        stderr: e.to_string(),
    })?;
    chain
        .check_qemu_info(&info)
        .map_err(|e| refused(error_text(&e)))?;
    tracing::debug!(vm = %name, image = %image.display(), layers = chain.layers().len(), "image approved");
    Ok(chain)
}

/// `qemu-img info` of an approved chain: ibkit's format for the top layer
/// (`-f`), the backing chain (whose formats [`approve`] required the
/// headers to declare, so nothing is probed), JSON, without taking locks
/// (`-U`: a running VM may use the image).
pub fn qemu_img_info_args(chain: &ApprovedChain) -> Vec<String> {
    let top = chain.top();
    vec![
        "info".into(),
        "-U".into(),
        "--output=json".into(),
        "--backing-chain".into(),
        "-f".into(),
        top.format.name().into(),
        top.path.display().to_string(),
    ]
}

/// `qemu-img create` of a qcow2 overlay over an approved chain: the top
/// layer's format given (`-F`), and `-u` so that qemu-img does not open
/// the chain (it would follow the names in the headers) — the size is
/// given instead: the image's, or `disk_size` when larger, in whole sectors.
pub fn overlay_create_args(
    chain: &ApprovedChain,
    overlay: &Path,
    disk_size: Option<u64>,
) -> Vec<String> {
    let top = chain.top();
    let size = disk_size
        .unwrap_or(0)
        .max(chain.virtual_size())
        .div_ceil(512)
        * 512;
    vec![
        "create".into(),
        "-q".into(),
        "-u".into(),
        "-f".into(),
        "qcow2".into(),
        "-F".into(),
        top.format.name().into(),
        "-b".into(),
        top.path.display().to_string(),
        overlay.display().to_string(),
        size.to_string(),
    ]
}

/// Create the overlay `overlay` (mode 0600: the guest's writes) over an
/// approved chain.
pub async fn create_overlay(
    name: &str,
    chain: &ApprovedChain,
    overlay: &Path,
    disk_size: Option<u64>,
) -> Result<(), VmError> {
    let args = overlay_create_args(chain, overlay, disk_size);
    run_tool(name, &qemu_img_binary(), &args).await?;
    set_private(overlay).map_err(|source| VmError::Io {
        name: name.to_string(),
        what: "cannot make private".into(),
        path: overlay.to_path_buf(),
        source,
    })?;
    tracing::debug!(vm = %name, image = %chain.top().path.display(), format = chain.top().format.name(), "overlay created");
    Ok(())
}

/// `chmod 0600`, whatever the umask made of it.
pub fn set_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Create (or truncate) `path` with mode 0600 before QEMU or virtiofsd
/// writes it: they keep the mode of an existing file.
pub fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    set_private(path)?;
    Ok(f)
}

/// `-blockdev` cache options and whether the guest sees a volatile write
/// cache, for a `-drive cache=` mode.
fn cache_mode(mode: &str) -> Option<(Value, bool)> {
    let (direct, no_flush, write_cache) = match mode {
        "writeback" => (false, false, true),
        "writethrough" => (false, false, false),
        "none" => (true, false, true),
        "directsync" => (true, false, false),
        "unsafe" => (false, true, true),
        _ => return None,
    };
    Some((json!({"direct": direct, "no-flush": no_flush}), write_cache))
}

fn utf8_path(p: &Path) -> Result<&str, String> {
    p.to_str()
        .ok_or_else(|| format!("{} is not UTF-8; QEMU cannot be given it", p.display()))
}

/// QEMU's disks: the approved `chain` under the writable `overlay` (the
/// root disk), then read-only raw `drives` (seeds). Every node is a
/// `-blockdev` with its driver and file named, the bottom layer first, and
/// each qcow2 node is given its backing node (the last one `null`), so
/// QEMU reads neither a format nor a file name from an image. The
/// `virtio-blk-pci` devices come last (after the NIC and the RNG, where
/// `-drive if=virtio` put them: the guest's PCI slots stay the same).
pub fn disk_args(
    chain: &ApprovedChain,
    overlay: &Path,
    cache: &str,
    drives: &[PathBuf],
) -> Result<Vec<String>, String> {
    let (cache_opts, write_cache) =
        cache_mode(cache).ok_or_else(|| format!("unknown disk cache mode {cache:?}"))?;
    let mut nodes: Vec<Value> = Vec::new();
    let layers = chain.layers();
    for (i, l) in layers.iter().enumerate().rev() {
        let file = format!("disk{i}-file");
        nodes.push(json!({
            "driver": "file",
            "filename": utf8_path(&l.path)?,
            "node-name": file,
            "read-only": true,
            "cache": cache_opts,
        }));
        let mut node = json!({
            "driver": l.format.name(),
            "file": file,
            "node-name": format!("disk{i}"),
            "read-only": true,
            "cache": cache_opts,
        });
        if l.format == Format::Qcow2 {
            node["backing"] = match layers.get(i + 1) {
                Some(_) => Value::String(format!("disk{}", i + 1)),
                None => Value::Null,
            };
        }
        nodes.push(node);
    }
    nodes.push(json!({
        "driver": "file",
        "filename": utf8_path(overlay)?,
        "node-name": "root-file",
        "cache": cache_opts,
    }));
    nodes.push(json!({
        "driver": "qcow2",
        "file": "root-file",
        "node-name": "root",
        "backing": "disk0",
        "cache": cache_opts,
    }));
    let mut devices = vec![format!(
        "virtio-blk-pci,drive=root{}",
        if write_cache { "" } else { ",write-cache=off" }
    )];
    for (i, d) in drives.iter().enumerate() {
        nodes.push(json!({
            "driver": "file",
            "filename": utf8_path(d)?,
            "node-name": format!("seed{i}-file"),
            "read-only": true,
        }));
        nodes.push(json!({
            "driver": "raw",
            "file": format!("seed{i}-file"),
            "node-name": format!("seed{i}"),
            "read-only": true,
        }));
        devices.push(format!("virtio-blk-pci,drive=seed{i}"));
    }
    let mut args = Vec::new();
    for n in nodes {
        args.push("-blockdev".to_string());
        args.push(n.to_string());
    }
    for d in devices {
        args.push("-device".to_string());
        args.push(d);
    }
    Ok(args)
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
    /// Pass the image through the gate ([`approve_image`]), create the
    /// overlay, start virtiofsd (if a share is asked for) and QEMU, and
    /// return once QMP answers. If virtiofsd is missing or fails,
    /// the VM starts without the share ([`ShareState::Unavailable`]).
    pub async fn start(config: VmConfig) -> Result<Vm, VmError> {
        Vm::start_with(config, LaunchOptions::default()).await
    }

    /// [`Vm::start`] with [`LaunchOptions`]: e.g. a detached QEMU on a tap
    /// device that outlives this process.
    pub async fn start_with(config: VmConfig, opts: LaunchOptions) -> Result<Vm, VmError> {
        validate(&config, &opts)?;
        let disk = Vm::prepare_disk(&config).await?;
        Vm::launch(config, opts, disk).await
    }

    /// [`Vm::start_with`] on a disk made by [`Vm::prepare_disk`] for the
    /// same `config` (the caller wrote other files of the VM in between).
    pub async fn start_prepared(
        config: VmConfig,
        opts: LaunchOptions,
        disk: PreparedDisk,
    ) -> Result<Vm, VmError> {
        validate(&config, &opts)?;
        let work_dir = std::fs::canonicalize(&config.work_dir).ok();
        if work_dir.as_deref() != Some(disk.work_dir.as_path()) {
            return Err(VmError::Config {
                name: config.name.clone(),
                message: format!(
                    "the prepared disk is in {}, not in the work directory {}",
                    disk.work_dir.display(),
                    config.work_dir.display()
                ),
            });
        }
        Vm::launch(config, opts, disk).await
    }

    /// The VM's disk, nothing started: the work directory, the image
    /// through the gate ([`approve_image`]) and `overlay.qcow2` (0600) over
    /// it. Stale files of an earlier run are removed; a detached QEMU still
    /// running in the work directory is refused.
    pub async fn prepare_disk(config: &VmConfig) -> Result<PreparedDisk, VmError> {
        let name = config.name.clone();
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
        let overlay = work_dir.join("overlay.qcow2");
        if let Some(pid) = detached_qemu_pid(&work_dir) {
            return Err(VmError::Config {
                name,
                message: format!(
                    "a detached QEMU (pid {pid}) still runs in {}",
                    work_dir.display()
                ),
            });
        }
        for stale in [
            "overlay.qcow2",
            "qmp.sock",
            "net.pcap",
            "virtiofsd.sock",
            "serial.log",
            "qemu.pid",
        ] {
            let stale = work_dir.join(stale);
            match std::fs::remove_file(&stale) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("cannot remove stale", &stale)(e)),
            }
        }
        // Overlay over the untouched image, which QEMU opens only as approved.
        let chain = approve_image(&name, &image).await?;
        create_overlay(&name, &chain, &overlay, config.disk_size).await?;
        Ok(PreparedDisk {
            work_dir,
            overlay,
            chain,
        })
    }

    /// Start virtiofsd and QEMU on a prepared disk.
    async fn launch(
        config: VmConfig,
        opts: LaunchOptions,
        disk: PreparedDisk,
    ) -> Result<Vm, VmError> {
        let name = config.name.clone();
        let cfg_err = |message: String| VmError::Config {
            name: name.clone(),
            message,
        };
        let io = |what: &str, path: &Path| {
            let (name, what, path) = (name.clone(), what.to_string(), path.to_path_buf());
            move |source| VmError::Io {
                name,
                what,
                path,
                source,
            }
        };
        let work_dir = disk.work_dir.clone();
        let serial = work_dir.join("serial.log");
        let qemu_log = work_dir.join("qemu.log");
        let qmp_sock = work_dir.join("qmp.sock");
        let pcap = work_dir.join("net.pcap");
        let vfs_sock = work_dir.join("virtiofsd.sock");
        let vfs_log = work_dir.join("virtiofsd.log");
        let pidfile = pidfile_path(&work_dir);
        check_socket_path(&name, &qmp_sock)?;
        check_socket_path(&name, &vfs_sock)?;
        let drives: Vec<PathBuf> = config
            .drives
            .iter()
            .map(|d| std::fs::canonicalize(d).map_err(io("extra drive not found:", d)))
            .collect::<Result<_, _>>()?;
        let disks =
            disk_args(&disk.chain, &disk.overlay, &opts.disk_cache, &drives).map_err(&cfg_err)?;
        // What the guest prints and sends stays private to the owner:
        // QEMU keeps the mode of files that exist.
        for f in [&serial, &pcap] {
            private_file(f).map_err(io("cannot create", f))?;
        }

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
            &disks,
            &serial,
            &qmp_sock,
            &pcap,
            &vfs_sock,
            &pidfile,
            share == ShareState::Ready,
        );
        let log_file = private_file(&qemu_log).map_err(io("cannot create", &qemu_log))?;
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

/// Checks of a configuration and launch options made before anything is
/// created.
fn validate(config: &VmConfig, opts: &LaunchOptions) -> Result<(), VmError> {
    let cfg_err = |message: String| VmError::Config {
        name: config.name.clone(),
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
    for d in &config.drives {
        if !d.is_file() {
            return Err(cfg_err(format!("extra drive {} not found", d.display())));
        }
    }
    if opts.detached && config.share_dir.is_some() {
        return Err(cfg_err(
            "a detached VM cannot have a virtiofs share (virtiofsd would not outlive this process)"
                .into(),
        ));
    }
    if let NetBackend::Tap { ifname } = &opts.net
        && (ifname.is_empty() || ifname.len() > 15 || ifname.contains([',', '/', ' ']))
    {
        return Err(cfg_err(format!("bad tap device name {ifname:?}")));
    }
    if cache_mode(&opts.disk_cache).is_none() {
        return Err(cfg_err(format!(
            "bad disk cache mode {:?} (writeback, writethrough, none, directsync or unsafe)",
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
    Ok(())
}

/// A VM's disk made by [`Vm::prepare_disk`]: the image's approved chain
/// and the overlay over it.
#[derive(Clone, Debug)]
pub struct PreparedDisk {
    work_dir: PathBuf,
    overlay: PathBuf,
    chain: ApprovedChain,
}

impl PreparedDisk {
    /// The canonical work directory.
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }
    /// `WORK/overlay.qcow2`.
    pub fn overlay(&self) -> &Path {
        &self.overlay
    }
    /// The image's files and formats, as QEMU is given them.
    pub fn chain(&self) -> &ApprovedChain {
        &self.chain
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
        let f = private_file(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
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
    disks: &[String],
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
    // Disks last: their PCI slots follow the NIC's and the RNG's.
    push(&disks.iter().map(String::as_str).collect::<Vec<_>>());
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
            &[],
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
            &[],
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
        // The disks' cache is in their -blockdev nodes (disk_args): a
        // long-lived VM's root disk flushes.
        assert_eq!(
            cache_mode(&LaunchOptions::detached_on_tap("ibkt0").disk_cache),
            Some((json!({"direct": false, "no-flush": false}), true))
        );
        assert_eq!(
            cache_mode(&LaunchOptions::default().disk_cache),
            Some((json!({"direct": false, "no-flush": true}), true))
        );
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

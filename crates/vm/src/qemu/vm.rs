//! One VM's life: its disk prepared, virtiofsd and QEMU started, QMP,
//! the serial console, shutdown.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ibkit_image::chain::ApprovedChain;
use nix::sys::signal::Signal;
use serde_json::Value;

use super::argv::build_argv;
use super::config::{Forward, LaunchOptions, NetBackend, Proto, ShareState, VmConfig};
use super::detached::{QemuProc, detached_qemu_pid, is_our_qemu, pidfile_path};
use super::disk::{approve_image, cache_mode, create_overlay, disk_args};
use super::virtiofsd::{find_virtiofsd, kill_tree, start_virtiofsd};
use super::{VmError, private_file, read_log};
use crate::binary::socat_binary;
use crate::procs::ChildProc;
use crate::qmp::Qmp;

/// Longest path a unix socket address can hold (sun_path minus the NUL).
const MAX_SOCKET_PATH: usize = 107;

fn last_console_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(|l| format!("'{}'", l.chars().take(200).collect::<String>()))
        .unwrap_or_else(|| "(no console output)".into())
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
        let relay = guest_forward_relay(&config).map_err(&cfg_err)?;
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
            relay.as_deref(),
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

    /// `127.0.0.1:<port>` forwarded to the guest's 22/tcp.
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

    /// The exact QEMU argv used (`argv[0]` first).
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

/// The relay guest forwards run, when there are any ([`validate`] has
/// refused them off the user network).
fn guest_forward_relay(config: &VmConfig) -> Result<Option<PathBuf>, String> {
    if config.guest_forwards.is_empty() {
        return Ok(None);
    }
    let relay = socat_binary()?;
    // QEMU splits the command with shell rules and its option syntax.
    let plain = relay.to_str().is_some_and(|s| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._+-".contains(&b))
    });
    if !plain {
        return Err(format!(
            "the relay's path {} has characters QEMU's guestfwd cannot carry",
            relay.display()
        ));
    }
    Ok(Some(relay))
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
    if !config.guest_forwards.is_empty() && opts.net != NetBackend::User {
        return Err(cfg_err(
            "guest forwards exist on the user network only (a tap guest reaches the host's address)"
                .into(),
        ));
    }
    for g in &config.guest_forwards {
        let [a, b, c, d] = g.guest_addr.octets();
        // .2 gateway, .3 DNS (QEMU refuses both), .15.. the DHCP pool.
        if [a, b, c] != [10, 0, 2] || matches!(d, 0..=3 | 15..=30 | 255) {
            return Err(cfg_err(format!(
                "guest forward address {} must be 10.0.2.4-14 or 10.0.2.31-254",
                g.guest_addr
            )));
        }
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

#[cfg(test)]
mod tests {
    use super::super::stop_detached;
    use super::*;
    use crate::binary::qemu_img_binary;
    use crate::procs;
    use crate::qemu::GuestForward;

    #[test]
    fn guest_forwards_are_checked_before_qemu_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = VmConfig::new("fwd", dir.path().join("img"), dir.path().join("w"));
        let fwd = |last: u8| GuestForward {
            guest_addr: std::net::Ipv4Addr::new(10, 0, 2, last),
            guest_port: 443,
            host_port: 40443,
        };
        for bad in [2, 3, 15, 255] {
            c.guest_forwards = vec![fwd(bad)];
            let e = validate(&c, &LaunchOptions::default()).expect_err("refused");
            assert!(
                e.to_string().contains("10.0.2.4-14 or 10.0.2.31-254"),
                "{e}"
            );
        }
        c.guest_forwards = vec![GuestForward {
            guest_addr: std::net::Ipv4Addr::new(192, 168, 0, 100),
            ..fwd(100)
        }];
        assert!(validate(&c, &LaunchOptions::default()).is_err());
        c.guest_forwards = vec![fwd(100)];
        validate(&c, &LaunchOptions::default()).expect("10.0.2.100 is fine");
        let e = validate(&c, &LaunchOptions::detached_on_tap("ibkt0")).expect_err("tap");
        assert!(e.to_string().contains("user network only"), "{e}");
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

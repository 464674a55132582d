//! The QEMU process, our child or a detached daemon found by its pid file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::procs::{self, ChildProc};
use crate::qmp::Qmp;

/// The QEMU process: our child (killed with us) or a detached daemon.
#[derive(Debug)]
pub(super) enum QemuProc {
    Child(ChildProc),
    /// Started with `-daemonize`; `pidfile` is what its command line names.
    Detached {
        pid: u32,
        pidfile: PathBuf,
    },
}

impl QemuProc {
    pub(super) fn pid(&self) -> u32 {
        match self {
            QemuProc::Child(c) => c.pid(),
            QemuProc::Detached { pid, .. } => *pid,
        }
    }

    /// `Some(status)` once QEMU has exited.
    pub(super) fn exit_status(&mut self) -> Option<String> {
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

    pub(super) fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    pub(super) fn signal(&mut self, signal: Signal) {
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
    pub(super) async fn wait_timeout(&mut self, timeout: Duration) -> bool {
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
    pub(super) fn kill_and_reap(&mut self) {
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
pub(super) fn is_our_qemu(pid: u32, pidfile: &Path) -> bool {
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

/// Stop the detached QEMU of `work_dir` without a [`Vm`](super::Vm): QMP `quit`, then
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

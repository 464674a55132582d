//! virtiofsd, the host side of the virtiofs share: found, started and
//! stopped with its sandboxed child.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::{private_file, read_log};
use crate::binary::{is_executable, path_candidates};
use crate::procs::{self, ChildProc};

const VIRTIOFSD_VERSION: &str = "1.14.0";

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
    let mut candidates = path_candidates("virtiofsd");
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

/// Start virtiofsd; `Err` is the reason the share is unavailable. As root the
/// `namespace` sandbox is tried first (the guest is untrusted), then `none`.
pub(super) async fn start_virtiofsd(
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

/// SIGKILL virtiofsd and its sandboxed child (which would otherwise get only
/// a SIGTERM through its parent-death signal), reap, and wait up to 1 s for
/// the child to be gone.
pub(super) fn kill_tree(v: &mut ChildProc) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_virtiofsd_reports_where_it_looked() {
        // Only the message format is checked; the result depends on the host.
        match find_virtiofsd() {
            Ok(p) => assert!(is_executable(&p)),
            Err(m) => assert!(m.contains("install-virtiofsd.sh"), "{m}"),
        }
    }
}

//! Child processes that can not outlive the program.
//!
//! Every QEMU and virtiofsd is started through [`ChildProc::spawn`], which
//!
//! * asks the kernel to SIGKILL the child when its parent dies
//!   (`PR_SET_PDEATHSIG`), so even a SIGKILL of ibkit takes its VMs along;
//! * puts the child in its own process group, so a terminal's Ctrl-C reaches
//!   only ibkit, which then decides (see [`kill_all`]);
//! * records the child in a process-wide registry until it has been reaped,
//!   so [`kill_all`] (called from the CLI's Ctrl-C handler and panic hook)
//!   can SIGKILL whatever is still running.
//!
//! A registered pid is always our live child or our unreaped zombie, so it can
//! never name an unrelated process that reused the pid.
//!
//! Caveat: Linux delivers the parent-death signal when the *thread* that
//! forked the child exits. Spawn from a thread that lives as long as the VM
//! (tokio worker threads and the main thread do; `spawn_blocking` threads
//! may not).

use std::collections::HashMap;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn registry() -> MutexGuard<'static, HashMap<u32, String>> {
    static REGISTRY: OnceLock<Mutex<HashMap<u32, String>>> = OnceLock::new();
    REGISTRY
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// SIGKILL every registered child that has not been reaped yet.
///
/// Safe to call from a signal-handling task or a panic hook; it does not wait
/// for the children (their [`ChildProc`] owners reap them).
pub fn kill_all() {
    let live: Vec<(u32, String)> = registry()
        .iter()
        .map(|(pid, name)| (*pid, name.clone()))
        .collect();
    for (pid, name) in live {
        if let Ok(raw) = i32::try_from(pid) {
            tracing::warn!(pid, name = %name, "killing child process");
            let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
        }
    }
}

/// Pids and names of the children currently registered (live or not yet reaped).
pub fn registered() -> Vec<(u32, String)> {
    let mut v: Vec<(u32, String)> = registry()
        .iter()
        .map(|(pid, name)| (*pid, name.clone()))
        .collect();
    v.sort();
    v
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and ')'; fields after it are plain.
    let after = stat.rsplit_once(')')?.1;
    Some(after.split_whitespace().map(str::to_string).collect())
}

/// Whether a process with this pid exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().map(String::as_str) != Some("Z"))
}

/// Live processes other than this one whose command line contains
/// `needle` (from /proc): what a state directory's daemons left behind.
pub fn pids_naming(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .filter(|pid| is_alive(*pid))
        .collect()
}

/// SIGKILL to a pid that is not our child (a daemon); a process that is
/// already gone is not an error.
pub fn sigkill(pid: u32) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
    }
}

/// Pids of the processes whose parent is `pid` (from /proc).
pub fn child_pids(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            stat_fields(*p)
                .and_then(|f| f.get(1)?.parse::<u32>().ok())
                .is_some_and(|ppid| ppid == pid)
        })
        .collect()
}

/// A registered child process; dropping it SIGKILLs and reaps the child.
#[derive(Debug)]
pub struct ChildProc {
    child: Child,
    name: String,
    status: Option<ExitStatus>,
}

impl ChildProc {
    /// Spawn `cmd` with `PR_SET_PDEATHSIG=SIGKILL`, in its own process group,
    /// and register it under `name` (used in logs).
    pub fn spawn(cmd: &mut Command, name: &str) -> io::Result<ChildProc> {
        let parent = std::process::id();
        cmd.process_group(0);
        // SAFETY-relevant: the closure runs between fork and exec, so it only
        // calls async-signal-safe functions (prctl, getppid) and does not allocate
        // on the success path.
        #[allow(unsafe_code)]
        // the one unsafe block of the crate: pre_exec for prctl(PR_SET_PDEATHSIG)
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
                // The parent may have died before prctl took effect.
                if nix::unistd::getppid().as_raw() as u32 != parent {
                    return Err(io::Error::other("parent exited before the child started"));
                }
                Ok(())
            });
        }
        let mut reg = registry();
        let child = cmd.spawn()?;
        reg.insert(child.id(), name.to_string());
        drop(reg);
        tracing::debug!(pid = child.id(), name, "spawned child process");
        Ok(ChildProc {
            child,
            name: name.to_string(),
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The exit status once the child has exited (and been reaped).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let r = self.child.try_wait()?;
        if let Some(s) = r {
            self.reaped(s);
        }
        Ok(r)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Send `signal` if the child still runs.
    pub fn signal(&mut self, signal: Signal) {
        if self.is_running()
            && let Ok(raw) = i32::try_from(self.pid())
        {
            let _ = kill(Pid::from_raw(raw), signal);
        }
    }

    /// Wait (polling every 50 ms) up to `timeout` for the child to exit.
    pub async fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) => {}
                Err(_) => return None,
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL the child if it runs and reap it (blocking, but a killed
    /// process is reaped within milliseconds).
    pub fn kill_and_reap(&mut self) {
        if self.status.is_some() {
            return;
        }
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(s) => self.reaped(s),
            Err(e) => {
                tracing::warn!(pid = self.pid(), name = %self.name, "could not reap child: {e}");
                registry().remove(&self.child.id());
            }
        }
    }

    fn reaped(&mut self, status: ExitStatus) {
        self.status = Some(status);
        registry().remove(&self.child.id());
        tracing::debug!(pid = self.pid(), name = %self.name, %status, "child process exited");
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs alone in a child process (see `kill_all_in_a_separate_process`):
    /// `kill_all` would also kill the children of tests running in parallel.
    #[tokio::test]
    #[ignore = "helper process for kill_all_in_a_separate_process"]
    async fn kill_all_helper() {
        if std::env::var_os("IBKIT_KILL_ALL_HELPER").is_none() {
            return;
        }
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut p = ChildProc::spawn(&mut cmd, "test-sleep").expect("spawn sleep");
        let pid = p.pid();
        assert!(
            registered()
                .iter()
                .any(|(q, n)| *q == pid && n == "test-sleep")
        );
        assert!(p.is_running());
        let fields = stat_fields(pid).expect("stat");
        assert_eq!(
            fields[2],
            pid.to_string(),
            "child leads its own process group"
        );
        kill_all();
        let st = p.wait_timeout(Duration::from_secs(5)).await;
        assert!(st.is_some(), "killed child exited");
        assert!(!registered().iter().any(|(q, _)| *q == pid));
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn kill_all_in_a_separate_process() {
        let exe = std::env::current_exe().expect("test binary");
        let out = Command::new(exe)
            .args(["--exact", "procs::tests::kill_all_helper", "--ignored"])
            .env("IBKIT_KILL_ALL_HELPER", "1")
            .output()
            .expect("helper");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "{text}");
    }

    /// Helper run in a separate process by `pdeathsig_kills_children_of_a_killed_parent`:
    /// spawns `sleep`, writes its pid to the file named by the env variable, waits.
    #[test]
    #[ignore = "helper process for pdeathsig_kills_children_of_a_killed_parent"]
    fn pdeathsig_helper() {
        let Some(out) = std::env::var_os("IBKIT_PDEATHSIG_PIDFILE") else {
            return;
        };
        let mut cmd = Command::new("sleep");
        cmd.arg("60");
        let p = ChildProc::spawn(&mut cmd, "helper-sleep").expect("spawn");
        std::fs::write(&out, p.pid().to_string()).expect("pid file");
        std::thread::sleep(Duration::from_secs(60));
    }

    #[test]
    fn pdeathsig_kills_children_of_a_killed_parent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("pid");
        let exe = std::env::current_exe().expect("test binary");
        let mut helper = Command::new(exe)
            .args([
                "--exact",
                "procs::tests::pdeathsig_helper",
                "--ignored",
                "--nocapture",
            ])
            .env("IBKIT_PDEATHSIG_PIDFILE", &pidfile)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("helper");
        let deadline = Instant::now() + Duration::from_secs(20);
        let pid: u32 = loop {
            if let Some(p) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break p;
            }
            assert!(Instant::now() < deadline, "helper wrote no pid");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(is_alive(pid));
        helper.kill().expect("SIGKILL helper");
        helper.wait().expect("reap helper");
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !is_alive(pid),
            "grandchild {pid} survived its parent's SIGKILL"
        );
    }

    #[test]
    fn drop_kills() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let p = ChildProc::spawn(&mut cmd, "test-sleep-drop").expect("spawn sleep");
        let pid = p.pid();
        drop(p);
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
        assert!(!registered().iter().any(|(q, _)| *q == pid));
    }
}

//! The step runner: `ibkit-agent __step-runner ATTEMPT_DIR`.
//!
//! One runner process runs one attempt of a step. The agent starts it; the
//! runner leaves the agent's session at once, so it (and the script) keeps
//! running when the agent is killed or restarted, and the next agent
//! collects `exit.json`. Files in `ATTEMPT_DIR`:
//!
//! - `spec.json` ([`RunnerSpec`], written by the agent),
//! - `runner.json` ([`RunnerId`]: pid, start time and boot id of the runner),
//! - `stdout` (the script's stdout) and `log` (stdout and stderr
//!   interleaved in arrival order), each capped with an explicit marker;
//!   a cut `log` ends with the last 4 KiB of stderr, so the error is never
//!   the part left out,
//! - `exit.json` ([`ExitRecord`], written atomically last).

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Group, Pid, User};
use serde::{Deserialize, Serialize};

use crate::journal::{now_ms, read_json, write_json};

/// How long the pipes are drained after the script exited: a background
/// process that keeps stdout open must not hang the step.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// What the runner runs, written by the agent to `spec.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunnerSpec {
    /// `bash` or `python3`.
    pub interpreter: String,
    pub script: PathBuf,
    pub cwd: String,
    pub user: String,
    pub group: String,
    /// Variables added to the minimal base environment, in order.
    pub env: Vec<(String, String)>,
    pub timeout_ms: u64,
    pub stop_signal: i32,
    pub stop_timeout_ms: u64,
    pub max_output_bytes: u64,
}

/// Identity of a runner process, to tell after an agent restart whether
/// it still runs (a pid alone may be reused, especially after a reboot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerId {
    pub pid: i32,
    /// Field 22 of `/proc/PID/stat`: start time in clock ticks since boot.
    pub start_time: u64,
    pub boot_id: String,
}

impl RunnerId {
    pub fn current() -> io::Result<RunnerId> {
        RunnerId::of(i32::try_from(std::process::id()).map_err(io::Error::other)?)
    }

    pub fn of(pid: i32) -> io::Result<RunnerId> {
        Ok(RunnerId {
            pid,
            start_time: proc_start_time(pid)?,
            boot_id: boot_id(),
        })
    }

    /// The process still runs (same boot, same pid, same start time).
    pub fn is_alive(&self) -> bool {
        self.boot_id == boot_id()
            && proc_start_time(self.pid).is_ok_and(|t| t == self.start_time)
            && !proc_is_zombie(self.pid)
    }
}

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn proc_stat_fields(pid: i32) -> io::Result<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| io::Error::other("malformed /proc stat"))?;
    Ok(after.split_whitespace().map(str::to_string).collect())
}

/// Field 22 of `/proc/PID/stat`.
pub fn proc_start_time(pid: i32) -> io::Result<u64> {
    // Fields after the name start at field 3.
    proc_stat_fields(pid)?
        .get(22 - 3)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("malformed /proc stat"))
}

fn proc_is_zombie(pid: i32) -> bool {
    proc_stat_fields(pid).is_ok_and(|f| f.first().is_some_and(|s| s == "Z"))
}

/// How an attempt ended, written atomically to `exit.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// SIGKILL was needed (the process group outlived `stop_timeout`).
    pub killed: bool,
    /// The attempt never finished: its runner disappeared (agent or VM
    /// restart). Written by the agent, not the runner.
    #[serde(default)]
    pub interrupted: bool,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub stdout_truncated_bytes: u64,
    pub log_truncated_bytes: u64,
    /// The script could not be started at all, or the runner failed.
    pub error: Option<String>,
}

/// How much of the end of stderr is repeated after a cut log.
const STDERR_TAIL: usize = 4096;

/// A file capped at `cap` bytes that keeps the head (written through) and
/// the tail (kept in memory, appended at the end after a marker that says
/// how many bytes were left out).
struct CappedFile {
    file: File,
    head_left: u64,
    tail: VecDeque<u8>,
    tail_cap: usize,
    dropped: u64,
    cap: u64,
}

impl CappedFile {
    fn create(path: &Path, cap: u64) -> io::Result<Self> {
        let head = cap / 2;
        Ok(CappedFile {
            file: File::create(path)?,
            head_left: head,
            tail: VecDeque::new(),
            tail_cap: usize::try_from(cap - head).unwrap_or(usize::MAX),
            dropped: 0,
            cap,
        })
    }

    fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        if self.head_left > 0 {
            let n = data
                .len()
                .min(usize::try_from(self.head_left).unwrap_or(usize::MAX));
            self.file.write_all(&data[..n])?;
            self.head_left -= n as u64;
            data = &data[n..];
        }
        if data.is_empty() {
            return Ok(());
        }
        self.tail.extend(data);
        let excess = self.tail.len().saturating_sub(self.tail_cap);
        if excess > 0 {
            self.tail.drain(..excess);
            self.dropped += excess as u64;
        }
        Ok(())
    }

    fn note(&mut self, text: &str) -> io::Result<()> {
        self.write(text.as_bytes())
    }

    /// Writes the marker and tail; returns the bytes left out.
    fn finish(self) -> io::Result<u64> {
        self.finish_with_stderr(&[])
    }

    /// Like [`CappedFile::finish`], and when bytes were left out, appends
    /// `stderr_tail`: stdout and stderr arrive through separate pipes, so the
    /// script's last error line can land in the dropped middle of the log
    /// when stdout was still draining. The end of stderr is where the error
    /// usually is: it must never be the part that is lost.
    fn finish_with_stderr(mut self, stderr_tail: &[u8]) -> io::Result<u64> {
        if self.dropped > 0 {
            let marker = format!(
                "\n--- ibkit: {} bytes left out here (output over the cap of {} bytes; head and tail kept) ---\n",
                self.dropped, self.cap
            );
            self.file.write_all(marker.as_bytes())?;
        }
        let (a, b) = self.tail.as_slices();
        self.file.write_all(a)?;
        self.file.write_all(b)?;
        if self.dropped > 0 && !stderr_tail.is_empty() {
            let marker = format!(
                "\n--- ibkit: the last {} bytes of stderr (the log above was cut) ---\n",
                stderr_tail.len()
            );
            self.file.write_all(marker.as_bytes())?;
            self.file.write_all(stderr_tail)?;
        }
        self.file.sync_all()?;
        Ok(self.dropped)
    }
}

/// Entry point of `ibkit-agent __step-runner DIR`; always writes
/// `exit.json` unless the process itself is killed.
pub fn runner_main(dir: &Path) -> i32 {
    // Leave the agent's session and process group: an agent restart (or
    // systemd stopping only the agent, KillMode=process) must not kill us.
    let _ = nix::unistd::setsid();
    let started_at_ms = now_ms();
    let record = match run(dir, started_at_ms) {
        Ok(r) => r,
        Err(e) => ExitRecord {
            started_at_ms,
            finished_at_ms: now_ms(),
            error: Some(format!("step runner: {e}")),
            ..ExitRecord::default()
        },
    };
    match write_json(&dir.join("exit.json"), &record) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ibkit step runner: cannot write exit.json: {e}");
            1
        }
    }
}

fn run(dir: &Path, started_at_ms: i64) -> io::Result<ExitRecord> {
    write_json(&dir.join("runner.json"), &RunnerId::current()?)?;
    let spec: RunnerSpec = read_json(&dir.join("spec.json"))?
        .ok_or_else(|| io::Error::other("spec.json is missing"))?;
    let cap = spec.max_output_bytes.max(1024);
    let log = Arc::new(Mutex::new(CappedFile::create(&dir.join("log"), cap)?));
    let mut stdout_file = CappedFile::create(&dir.join("stdout"), cap)?;
    let note = |text: String| {
        if let Ok(mut l) = log.lock() {
            let _ = l.note(&format!("--- ibkit: {text} ---\n"));
        }
    };

    let mut cmd = Command::new(&spec.interpreter);
    cmd.arg(&spec.script)
        .current_dir(&spec.cwd)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let (uid, gid, home, name) = resolve_identity(&spec, &note);
    if let Some(uid) = uid {
        cmd.uid(uid);
    }
    if let Some(gid) = gid {
        cmd.gid(gid);
    }
    cmd.env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    )
    .env("HOME", &home)
    .env("LANG", "C.UTF-8")
    .env("USER", &name)
    .env("LOGNAME", &name);
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    if !Path::new(&spec.cwd).is_dir() {
        let msg = format!("cwd {} does not exist or is not a directory", spec.cwd);
        note(msg.clone());
        return finish_without_start(log, stdout_file, started_at_ms, msg);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let msg = format!(
                "cannot start {} {}: {e}",
                spec.interpreter,
                spec.script.display()
            );
            note(msg.clone());
            return finish_without_start(log, stdout_file, started_at_ms, msg);
        }
    };
    let pgid = Pid::from_raw(i32::try_from(child.id()).map_err(io::Error::other)?);
    // The script's process group, so an agent that finds this runner gone
    // can stop what is left of the script before retrying it.
    if let Ok(id) = RunnerId::of(pgid.as_raw()) {
        let _ = write_json(&dir.join("script.json"), &id);
    }

    // Readers: stdout goes to `stdout` and `log`, stderr to `log`.
    let (done_tx, done_rx) = mpsc::channel::<&'static str>();
    let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>();
    if let Some(mut out) = child.stdout.take() {
        let log = Arc::clone(&log);
        let done = done_tx.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut l) = log.lock() {
                    let _ = l.write(&buf[..n]);
                }
                if out_tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
            let _ = done.send("stdout");
        });
    }
    let stderr_tail = Arc::new(Mutex::new(VecDeque::<u8>::new()));
    if let Some(mut err) = child.stderr.take() {
        let log = Arc::clone(&log);
        let done = done_tx.clone();
        let stderr_tail = Arc::clone(&stderr_tail);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut l) = log.lock() {
                    let _ = l.write(&buf[..n]);
                }
                if let Ok(mut t) = stderr_tail.lock() {
                    t.extend(&buf[..n]);
                    let excess = t.len().saturating_sub(STDERR_TAIL);
                    t.drain(..excess);
                }
            }
            let _ = done.send("stderr");
        });
    }
    drop(done_tx);
    // The stdout file is written on this thread (it owns it); chunks come
    // through `out_rx` and are drained whenever we wake up.
    let (wait_tx, wait_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = wait_tx.send(child.wait());
    });

    let timeout = Duration::from_millis(spec.timeout_ms);
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let mut killed = false;
    let status = loop {
        let now = Instant::now();
        if now >= deadline {
            break None;
        }
        // Wake at least every 200 ms to move stdout chunks to the file.
        match wait_rx.recv_timeout((deadline - now).min(Duration::from_millis(200))) {
            Ok(s) => break Some(s?),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                for chunk in out_rx.try_iter() {
                    stdout_file.write(&chunk)?;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(io::Error::other("waiter thread vanished"));
            }
        }
    };
    let status = match status {
        Some(s) => s,
        None => {
            timed_out = true;
            let sig = Signal::try_from(spec.stop_signal).unwrap_or(Signal::SIGTERM);
            note(format!(
                "timeout after {} ms: sending {sig} to the process group",
                spec.timeout_ms
            ));
            let _ = killpg(pgid, sig);
            let stop = Duration::from_millis(spec.stop_timeout_ms);
            let stop_deadline = Instant::now() + stop;
            let mut status = wait_rx.recv_timeout(stop).ok();
            // The main process ended; give the rest of its group what is
            // left of stop_timeout before SIGKILL.
            while status.is_some() && group_alive(pgid) && Instant::now() < stop_deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if status.is_none() || group_alive(pgid) {
                note(format!(
                    "still running {} ms after {sig}: sending SIGKILL to the process group",
                    spec.stop_timeout_ms
                ));
                let _ = killpg(pgid, Signal::SIGKILL);
                killed = true;
            }
            if status.is_none() {
                status = wait_rx.recv().ok();
            }
            status
                .ok_or_else(|| io::Error::other("waiter thread vanished"))?
                .map_err(io::Error::other)?
        }
    };

    // Drain the pipes, but not forever: a background process started by
    // the script may hold them open.
    let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut open_streams = 2;
    while open_streams > 0 {
        let left = drain_deadline.saturating_duration_since(Instant::now());
        match done_rx.recv_timeout(left) {
            Ok(_) => open_streams -= 1,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                note(
                    "the script exited but a background process still holds its stdout/stderr; \
                     output after this point is not captured"
                        .to_string(),
                );
                break;
            }
        }
    }
    for chunk in out_rx.try_iter() {
        stdout_file.write(&chunk)?;
    }
    let (exit_code, signal) = (status.code(), status.signal());
    if let Some(sig) = signal {
        note(format!("the script was ended by signal {sig}"));
    }
    let log = take_log(log)?;
    let stderr_tail: Vec<u8> = stderr_tail
        .lock()
        .map(|t| t.iter().copied().collect())
        .unwrap_or_default();
    Ok(ExitRecord {
        exit_code,
        signal,
        timed_out,
        killed,
        interrupted: false,
        started_at_ms,
        finished_at_ms: now_ms(),
        stdout_truncated_bytes: stdout_file.finish()?,
        log_truncated_bytes: log.finish_with_stderr(&stderr_tail)?,
        error: None,
    })
}

fn group_alive(pgid: Pid) -> bool {
    killpg(pgid, None).is_ok()
}

fn take_log(log: Arc<Mutex<CappedFile>>) -> io::Result<CappedFile> {
    // Reader threads still holding the Arc (a daemon keeps the pipe open)
    // get a fresh handle: swap the capped file out from under them.
    let mut guard = log
        .lock()
        .map_err(|_| io::Error::other("log lock poisoned"))?;
    let placeholder = CappedFile {
        file: File::open("/dev/null")?,
        head_left: 0,
        tail: VecDeque::new(),
        tail_cap: 0,
        dropped: 0,
        cap: 0,
    };
    Ok(std::mem::replace(&mut *guard, placeholder))
}

fn finish_without_start(
    log: Arc<Mutex<CappedFile>>,
    stdout: CappedFile,
    started_at_ms: i64,
    error: String,
) -> io::Result<ExitRecord> {
    stdout.finish()?;
    take_log(log)?.finish()?;
    Ok(ExitRecord {
        started_at_ms,
        finished_at_ms: now_ms(),
        error: Some(error),
        ..ExitRecord::default()
    })
}

/// uid, gid and HOME for the step. Missing users and groups fall back to
/// root (the platform's rule); a runner that is not root cannot switch.
fn resolve_identity(
    spec: &RunnerSpec,
    note: &dyn Fn(String),
) -> (Option<u32>, Option<u32>, String, String) {
    let user = match User::from_name(&spec.user) {
        Ok(Some(u)) => Some(u),
        Ok(None) => {
            note(format!(
                "user {:?} does not exist: running as root",
                spec.user
            ));
            None
        }
        Err(e) => {
            note(format!(
                "cannot look up user {:?} ({e}): running as root",
                spec.user
            ));
            None
        }
    };
    let group = match Group::from_name(&spec.group) {
        Ok(Some(g)) => Some(g.gid.as_raw()),
        Ok(None) => {
            note(format!(
                "group {:?} does not exist: running as root's group",
                spec.group
            ));
            None
        }
        Err(e) => {
            note(format!(
                "cannot look up group {:?} ({e}): running as root's group",
                spec.group
            ));
            None
        }
    };
    let home = user
        .as_ref()
        .map(|u| u.dir.display().to_string())
        .unwrap_or_else(|| "/root".into());
    let name = user
        .as_ref()
        .map(|u| u.name.clone())
        .unwrap_or_else(|| "root".into());
    let uid = user.map(|u| u.uid.as_raw()).unwrap_or(0);
    let gid = group.unwrap_or(0);
    if !nix::unistd::geteuid().is_root() {
        if uid != nix::unistd::geteuid().as_raw() || gid != nix::unistd::getegid().as_raw() {
            note(format!(
                "the agent does not run as root: running as uid {} instead of {}:{} ",
                nix::unistd::geteuid(),
                spec.user,
                spec.group
            ));
        }
        return (None, None, home, name);
    }
    (Some(uid), Some(gid), home, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The order the pipes are read in decides where stderr lands in the
    /// log; a cut log must show the end of stderr anyway.
    #[test]
    fn cut_log_ends_with_the_stderr_tail() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("log");
        let mut log = CappedFile::create(&path, 1024)?;
        log.write(b"HEAD\n")?;
        log.write(b"ERR-LAST\n")?; // stderr read before stdout drained
        log.write(&[b'a'; 4096])?;
        let dropped = log.finish_with_stderr(b"ERR-LAST\n")?;
        assert!(dropped > 0);
        let text = fs::read_to_string(&path)?;
        assert!(text.starts_with("HEAD\n"));
        assert!(text.ends_with(
            "--- ibkit: the last 9 bytes of stderr (the log above was cut) ---\nERR-LAST\n"
        ));
        // Not cut: nothing is repeated.
        let path = dir.path().join("small");
        let mut log = CappedFile::create(&path, 1024)?;
        log.write(b"out\nERR\n")?;
        assert_eq!(log.finish_with_stderr(b"ERR\n")?, 0);
        assert_eq!(fs::read_to_string(&path)?, "out\nERR\n");
        Ok(())
    }
}

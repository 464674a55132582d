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
//! - `structured` (the `structured_result_file` as read by the step's
//!   user, see [`read_structured_main`]),
//! - `exit.json` ([`ExitRecord`], written atomically last).
//!
//! The script runs as the step's user with its primary and supplementary
//! groups, umask 022, and reads its script through file descriptor 3
//! (`bash /dev/fd/3`): the state directory stays 0700.

use std::collections::VecDeque;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ibkit_support::clock::now_ms;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Group, Pid, User};
use serde::{Deserialize, Serialize};

use crate::journal::{read_json, write_json};

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
    /// Read after the script exited, as the step's user.
    #[serde(default)]
    pub structured_result_file: Option<String>,
    #[serde(default = "default_max_structured")]
    pub max_structured_bytes: u64,
    /// Resolved result references (`NAME`, value): exported to the script
    /// and written to `results_dir/NAME`.
    #[serde(default)]
    pub references: Vec<(String, String)>,
    /// `IBKIT_RESULTS_DIR`, created by the runner, owned by the step's user.
    #[serde(default)]
    pub results_dir: Option<PathBuf>,
}

fn default_max_structured() -> u64 {
    crate::config::DEFAULT_MAX_STRUCTURED_RESULT_BYTES
}

/// A reference value larger than this is only in its file: the kernel
/// refuses an environment string over 128 KiB (and the whole environment
/// shares the argument space), so exporting it could stop the script from
/// starting at all.
pub const MAX_REFERENCE_ENV_BYTES: usize = 64 * 1024;
/// All references together in the environment.
const MAX_REFERENCES_ENV_TOTAL: usize = 512 * 1024;
/// How long reading the structured result file may take.
const STRUCTURED_READ_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// `structured_result_file`, when the step has one and the script exited.
    #[serde(default)]
    pub structured: Option<StructuredFile>,
}

/// What reading `structured_result_file` as the step's user gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StructuredFile {
    /// Its bytes are in `ATTEMPT_DIR/structured`.
    Read { bytes: u64 },
    /// Why it could not be read (missing, a symlink, not a regular file,
    /// too large, not readable by the step's user…).
    Error(String),
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
            // 0600: the output may hold secrets the script printed.
            file: OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)?,
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

    let id = resolve_identity(&spec.user, &spec.group, &mut |t| note(t));
    // The script is handed over open (fd 3), so the step's user needs no
    // path through the state directory; it still must be able to read the
    // file itself, as bash reopens /dev/fd/3.
    let script = File::open(&spec.script)?;
    if id.switch {
        nix::unistd::fchown(
            &script,
            Some(nix::unistd::Uid::from_raw(id.uid)),
            Some(nix::unistd::Gid::from_raw(id.gid)),
        )
        .map_err(io::Error::from)?;
    }
    let mut cmd = Command::new(&spec.interpreter);
    cmd.arg("/dev/fd/3")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    cmd.env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    )
    .env("HOME", &id.home)
    .env("LANG", "C.UTF-8")
    .env("USER", &id.name)
    .env("LOGNAME", &id.name);
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    if let Some(rdir) = &spec.results_dir {
        match write_references(rdir, &spec.references, &id) {
            Ok(()) => {
                cmd.env("IBKIT_RESULTS_DIR", rdir);
            }
            Err(e) => {
                let msg = format!("cannot write the references to {}: {e}", rdir.display());
                note(msg.clone());
                return finish_without_start(log, stdout_file, started_at_ms, msg);
            }
        }
        let mut total = 0;
        for (name, value) in &spec.references {
            if !is_reference_name(name) {
                note(format!(
                    "reference name {name:?} is not a valid variable name: not passed to the script"
                ));
                continue;
            }
            if value.contains('\0') {
                note(format!(
                    "{name} holds a NUL byte, which the environment cannot carry: read $IBKIT_RESULTS_DIR/{name}"
                ));
            } else if value.len() > MAX_REFERENCE_ENV_BYTES
                || total + value.len() > MAX_REFERENCES_ENV_TOTAL
            {
                note(format!(
                    "{name} is {} bytes, too large for the environment: read $IBKIT_RESULTS_DIR/{name}",
                    value.len()
                ));
            } else {
                total += value.len();
                cmd.env(name, value);
            }
        }
    }
    if !Path::new(&spec.cwd).is_dir() {
        let msg = format!("cwd {} does not exist or is not a directory", spec.cwd);
        note(msg.clone());
        return finish_without_start(log, stdout_file, started_at_ms, msg);
    }
    let cwd = CString::new(spec.cwd.as_bytes()).map_err(io::Error::other)?;
    child_setup(&mut cmd, &id, Some(cwd), Some(script.as_raw_fd()));
    let spawned = cmd.spawn();
    drop(script);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let msg = format!(
                "cannot start {} {} as user {} in {}: {e}",
                spec.interpreter,
                spec.script.display(),
                id.name,
                spec.cwd
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
    let structured = match &spec.structured_result_file {
        Some(file) if exit_code.is_some() && !timed_out => {
            Some(collect_structured(dir, &spec, file, &id))
        }
        _ => None,
    };
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
        structured,
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

/// Who a step (or a `script_health` check) runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: the user's groups (`getgrouplist`) and `gid`.
    pub groups: Vec<u32>,
    pub home: String,
    pub name: String,
    /// Switch to it; false when the runner is not root (it runs scripts as
    /// itself).
    pub switch: bool,
}

/// The identity of `user`/`group` on this system. An unknown user falls back
/// to root (the platform's rule) and `note` says so; a user whose group is
/// left at its default (`root`) gets the user's own primary group, never
/// gid 0; an unknown group falls back to the user's primary group.
pub fn resolve_identity(user: &str, group: &str, note: &mut dyn FnMut(String)) -> Identity {
    let found = match User::from_name(user) {
        Ok(Some(u)) => Some(u),
        Ok(None) => {
            note(format!(
                "user {user:?} does not exist: running as root (the platform's fallback)"
            ));
            None
        }
        Err(e) => {
            note(format!(
                "cannot look up user {user:?} ({e}): running as root (the platform's fallback)"
            ));
            None
        }
    };
    let (uid, primary, home, name) = match &found {
        Some(u) => (
            u.uid.as_raw(),
            u.gid.as_raw(),
            u.dir.display().to_string(),
            u.name.clone(),
        ),
        None => (0, 0, "/root".to_string(), "root".to_string()),
    };
    let gid = if uid != 0 && group == "root" {
        primary
    } else {
        match Group::from_name(group) {
            Ok(Some(g)) => g.gid.as_raw(),
            Ok(None) => {
                note(format!(
                    "group {group:?} does not exist: running with {name}'s primary group ({primary})"
                ));
                primary
            }
            Err(e) => {
                note(format!(
                    "cannot look up group {group:?} ({e}): running with {name}'s primary group ({primary})"
                ));
                primary
            }
        }
    };
    let groups = CString::new(name.as_bytes())
        .ok()
        .and_then(|n| nix::unistd::getgrouplist(&n, nix::unistd::Gid::from_raw(gid)).ok())
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|| vec![gid]);
    let me = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    if me.0 != 0 {
        if (uid, gid) != me {
            note(format!(
                "the agent does not run as root: running as uid {} instead of {user}:{group}",
                me.0
            ));
        }
        return Identity {
            uid: me.0,
            gid: me.1,
            groups: Vec::new(),
            home,
            name,
            switch: false,
        };
    }
    Identity {
        uid,
        gid,
        groups,
        home,
        name,
        switch: true,
    }
}

/// What the child does between fork and exec: take `script_fd` as fd 3,
/// switch to `id` (supplementary groups, group, user: std's own `uid`/`gid`
/// would drop the supplementary groups instead of setting them), enter
/// `cwd` as that user, and reset the umask the agent keeps at 077 to the
/// usual 022 (files a vendor script creates for a service must stay
/// readable by it).
#[allow(unsafe_code)]
fn child_setup(cmd: &mut Command, id: &Identity, cwd: Option<CString>, script_fd: Option<RawFd>) {
    let groups: Vec<libc::gid_t> = id.groups.clone();
    let (uid, gid, switch) = (id.uid, id.gid, id.switch);
    let hook = move || -> io::Result<()> {
        // Only async-signal-safe calls here: this runs in the forked child
        // of a multi-threaded process. io::Error::last_os_error does not
        // allocate.
        // SAFETY: plain syscalls on values prepared before the fork.
        unsafe {
            if let Some(fd) = script_fd {
                let r = if fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, 3)
                };
                if r < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if switch
                && (libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0)
            {
                return Err(io::Error::last_os_error());
            }
            if let Some(dir) = &cwd
                && libc::chdir(dir.as_ptr()) != 0
            {
                return Err(io::Error::last_os_error());
            }
            libc::umask(0o022);
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// A reference's name is an environment variable name and a file name,
/// `IBKIT_RESULT_…` (so it can never replace `PATH`, `HOME` or the step's
/// own variables).
pub fn is_reference_name(name: &str) -> bool {
    name.len() <= 200
        && name.strip_prefix("IBKIT_RESULT_").is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// `rdir` (0700) with one file per reference (0400), all owned by the step's
/// user, so only that user (and root) can read the values.
fn write_references(rdir: &Path, refs: &[(String, String)], id: &Identity) -> io::Result<()> {
    match fs::remove_dir_all(rdir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::DirBuilder::new().mode(0o700).create(rdir)?;
    let owner = |f: &File| -> io::Result<()> {
        if id.switch {
            nix::unistd::fchown(
                f,
                Some(nix::unistd::Uid::from_raw(id.uid)),
                Some(nix::unistd::Gid::from_raw(id.gid)),
            )
            .map_err(io::Error::from)?;
        }
        Ok(())
    };
    owner(&File::open(rdir)?)?;
    for (name, value) in refs {
        if !is_reference_name(name) {
            continue;
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .custom_flags(libc::O_NOFOLLOW)
            .open(rdir.join(name))?;
        f.write_all(value.as_bytes())?;
        owner(&f)?;
    }
    Ok(())
}

/// Reads the structured result file as the step's user, in a child process
/// (`ibkit-agent __read-structured`) so the kernel checks that user's
/// permissions on every directory and the file: a symlink or hard link to
/// a file only root can read is refused like any other unreadable file.
/// The child never follows a final symlink, refuses anything but a regular
/// file (a FIFO cannot block it: the open is non-blocking) and anything over
/// the cap; it is killed after 30 s.
fn collect_structured(dir: &Path, spec: &RunnerSpec, file: &str, id: &Identity) -> StructuredFile {
    let path = Path::new(&spec.cwd).join(file);
    let max = spec.max_structured_bytes;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("__read-structured")
        .arg(&path)
        .arg(max.to_string())
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    child_setup(&mut cmd, id, None, None);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return StructuredFile::Error(format!("cannot start its reader: {e}")),
    };
    let out = child.stdout.take();
    let err = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut data = Vec::new();
        if let Some(out) = out {
            let _ = out.take(max.saturating_add(1)).read_to_end(&mut data);
        }
        data
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        if let Some(err) = err {
            let _ = err.take(2048).read_to_end(&mut text);
        }
        String::from_utf8_lossy(&text).trim().to_string()
    });
    let deadline = Instant::now() + STRUCTURED_READ_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let data = reader.join().unwrap_or_default();
    let why = err_reader.join().unwrap_or_default();
    match status {
        None => StructuredFile::Error(format!(
            "reading it took longer than {STRUCTURED_READ_TIMEOUT:?}"
        )),
        Some(s) if s.success() && data.len() as u64 <= max => {
            match ibkit_support::fs::write_atomic(&dir.join("structured"), &data, 0o600) {
                Ok(()) => StructuredFile::Read {
                    bytes: data.len() as u64,
                },
                Err(e) => StructuredFile::Error(format!("cannot keep it: {e}")),
            }
        }
        Some(_) if why.is_empty() => StructuredFile::Error("its reader failed".into()),
        Some(_) if id.switch && id.uid != 0 => {
            StructuredFile::Error(format!("{why} (read as user {})", id.name))
        }
        Some(_) => StructuredFile::Error(why),
    }
}

/// Entry point of `ibkit-agent __read-structured PATH MAX`, run as the
/// step's user: writes the file to stdout, or one line on stderr and exit 1.
pub fn read_structured_main(path: &Path, max: u64) -> i32 {
    match read_structured_file(path, max) {
        Ok(data) => {
            let mut out = io::stdout().lock();
            if out.write_all(&data).and_then(|()| out.flush()).is_err() {
                return 1;
            }
            0
        }
        Err(why) => {
            eprintln!("{why}");
            1
        }
    }
}

fn read_structured_file(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => "missing (the script did not write it)".to_string(),
            Some(libc::ELOOP) => "is a symbolic link, which is not followed".to_string(),
            _ => format!("cannot read it: {e}"),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat it: {e}"))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let what = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_dir() {
            "a directory"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else {
            "not a plain file"
        };
        return Err(format!("is {what}, not a regular file"));
    }
    let too_large = |n: u64| {
        format!(
            "structured result of {n} bytes exceeds the {max}-byte limit (max_structured_result_bytes)"
        )
    };
    if meta.len() > max {
        return Err(too_large(meta.len()));
    }
    let mut data = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if data.len() as u64 > max {
        return Err(too_large(data.len() as u64));
    }
    Ok(data)
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

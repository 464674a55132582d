//! Runs a step: attempts, pauses, timeouts, judging exit codes and the
//! structured result, and the reports. Every decision is derived from the
//! state directory, so an agent restart continues exactly where the last
//! agent stopped (see [`Executor::recover`]).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ibkit_api::wire::{FinalStatus, ReportEvent, StepOutcome, Work};
use ibkit_api::{ScriptType, StepOptions};
use serde::{Deserialize, Serialize};

use crate::journal::{StateDir, create_dir, now_ms, read_json, write_atomic, write_json};
use crate::outbox::Outbox;
use crate::runner::{ExitRecord, RunnerId, RunnerSpec};

/// How often a runner that is not our child is checked after a restart.
const ORPHAN_POLL: Duration = Duration::from_millis(200);

/// `exec.json`: the work as received.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecRecord {
    pub work: Work,
    pub received_at_ms: i64,
}

/// What the agent knows about an execution id.
#[derive(Debug, Clone, PartialEq)]
pub enum Known {
    /// Never seen: run it.
    New,
    /// Received, not finished (running now or to be recovered).
    Unfinished,
    /// Finished; the outcome was queued for delivery.
    Done(Box<StepOutcome>),
}

#[derive(Debug, Clone)]
pub struct Executor {
    state: StateDir,
    outbox: Outbox,
    runner_exe: PathBuf,
    host: String,
    max_output_bytes: u64,
    running: Arc<Mutex<Option<String>>>,
}

/// The verdict on one attempt.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Ok(Option<serde_json::Value>),
    /// A halt code: no further attempts.
    Halt(String),
    Fail(String),
}

impl Executor {
    pub fn new(
        state: StateDir,
        outbox: Outbox,
        runner_exe: PathBuf,
        host: String,
        max_output_bytes: u64,
    ) -> Executor {
        Executor {
            state,
            outbox,
            runner_exe,
            host,
            max_output_bytes,
            running: Arc::default(),
        }
    }

    /// The execution running now.
    pub fn running(&self) -> Option<String> {
        self.running.lock().ok().and_then(|r| r.clone())
    }

    pub fn known(&self, exec_id: &str) -> io::Result<Known> {
        let dir = self.state.exec_dir(exec_id);
        if let Some(done) = read_json::<StepOutcome>(&dir.join("done.json"))? {
            return Ok(Known::Done(Box::new(done)));
        }
        if dir.join("exec.json").exists() {
            return Ok(Known::Unfinished);
        }
        Ok(Known::New)
    }

    /// Runs `work` to its end (or returns the outcome it already had).
    /// The work is journalled first, so the same exec is never run twice.
    pub async fn execute(&self, work: &Work) -> io::Result<StepOutcome> {
        let dir = self.state.exec_dir(&work.exec_id);
        if let Some(done) = read_json::<StepOutcome>(&dir.join("done.json"))? {
            return Ok(done);
        }
        let rec = match read_json::<ExecRecord>(&dir.join("exec.json"))? {
            Some(rec) => rec,
            None => {
                create_dir(&dir, 0o711)?;
                let rec = ExecRecord {
                    work: work.clone(),
                    received_at_ms: now_ms(),
                };
                write_json(&dir.join("exec.json"), &rec)?;
                rec
            }
        };
        self.drive(&dir, &rec).await
    }

    /// Finishes every execution a previous agent left unfinished: a runner
    /// still alive is waited for, a finished one is judged, a vanished one
    /// is an interrupted attempt (retried while attempts remain).
    pub async fn recover(&self) -> io::Result<Vec<StepOutcome>> {
        let mut dirs: Vec<(i64, PathBuf, ExecRecord)> = Vec::new();
        for entry in fs::read_dir(self.state.executions_dir())? {
            let dir = entry?.path();
            if dir.join("done.json").exists() {
                continue;
            }
            match read_json::<ExecRecord>(&dir.join("exec.json")) {
                Ok(Some(rec)) => dirs.push((rec.received_at_ms, dir, rec)),
                Ok(None) => {}
                Err(e) => tracing::error!("skipping unreadable execution: {e}"),
            }
        }
        dirs.sort_by_key(|(t, _, _)| *t);
        let mut out = Vec::new();
        for (_, dir, rec) in dirs {
            tracing::info!(exec = %rec.work.exec_id, "recovering an unfinished step");
            out.push(self.drive(&dir, &rec).await?);
        }
        Ok(out)
    }

    async fn drive(&self, dir: &Path, rec: &ExecRecord) -> io::Result<StepOutcome> {
        let work = &rec.work;
        if let Ok(mut r) = self.running.lock() {
            *r = Some(work.exec_id.clone());
        }
        let result = self.drive_inner(dir, rec).await;
        if let Ok(mut r) = self.running.lock() {
            *r = None;
        }
        let outcome = result?;
        // Queue the report first: a crash before done.json re-judges the
        // last attempt and queues it again (the service drops the copy).
        self.outbox.push(
            &work.exec_id,
            ReportEvent::Finished(Box::new(outcome.clone())),
        )?;
        if work.options.store_result && outcome.status == FinalStatus::Ok {
            self.store_result(work, &outcome)?;
        }
        let mut kept = outcome.clone();
        if !work.options.store_result {
            kept.result.clear();
            kept.log.clear();
            kept.structured_result = None;
        }
        write_json(&dir.join("done.json"), &kept)?;
        let _ = fs::remove_dir_all(dir.join("attempts"));
        Ok(outcome)
    }

    async fn drive_inner(&self, dir: &Path, rec: &ExecRecord) -> io::Result<StepOutcome> {
        let work = &rec.work;
        let o = &work.options;
        if let Err(why) = o.validate() {
            return Ok(failed_without_attempts(
                rec,
                format!("invalid step options: {why}"),
            ));
        }
        let attempts_dir = dir.join("attempts");
        create_dir(&attempts_dir, 0o711)?;
        let mut n = existing_attempts(&attempts_dir)?;
        let mut resume = n > 0;
        if n == 0 {
            tokio::time::sleep(o.pause_before.to_std()).await;
            n = 1;
        }
        let verdict = loop {
            let adir = attempts_dir.join(n.to_string());
            if resume && !adir.join("spec.json").exists() {
                // Crashed while preparing: the attempt never started.
                resume = false;
            }
            let child = if resume {
                None
            } else {
                let env = vec![
                    ("IBKIT_INSTANCE".to_string(), work.instance.clone()),
                    ("IBKIT_HOST".to_string(), self.host.clone()),
                    ("IBKIT_GROUP".to_string(), work.group.clone()),
                    ("IBKIT_STEP_INDEX".to_string(), work.index.to_string()),
                    ("IBKIT_ATTEMPT".to_string(), n.to_string()),
                    ("IBKIT_EXEC_ID".to_string(), work.exec_id.clone()),
                ];
                prepare_attempt(
                    &adir,
                    work.kind,
                    &work.content,
                    o,
                    env,
                    self.max_output_bytes,
                )?;
                self.outbox.push(
                    &work.exec_id,
                    ReportEvent::Running {
                        attempt: n,
                        started_at_ms: now_ms(),
                    },
                )?;
                Some(spawn_runner(&self.runner_exe, &adir)?)
            };
            resume = false;
            let exit = wait_attempt(&adir, child).await?;
            match judge(&exit, o) {
                Verdict::Fail(why) if n < o.attempts => {
                    tracing::info!(exec = %work.exec_id, attempt = n, "attempt failed: {why}");
                    tokio::time::sleep(o.attempt_pause.to_std()).await;
                    n += 1;
                }
                v => break v,
            }
        };
        tokio::time::sleep(o.pause_after.to_std()).await;
        build_outcome(rec, &attempts_dir, n, verdict, self.max_output_bytes)
    }

    fn store_result(&self, work: &Work, outcome: &StepOutcome) -> io::Result<()> {
        let dir = self
            .state
            .result_dir(&work.instance, &work.group, work.index);
        let _ = fs::remove_dir_all(&dir);
        create_dir(&dir, 0o700)?;
        write_atomic(&dir.join("result"), outcome.result.as_bytes(), 0o600)?;
        if let Some(s) = &outcome.structured_result {
            write_atomic(&dir.join("structured.json"), s.as_str().as_bytes(), 0o600)?;
        }
        write_atomic(&dir.join("hash"), work.hash.as_bytes(), 0o600)
    }
}

/// Runs a step without a service: the state directory, outbox and runner
/// are real; reports are left queued in `STATE/outbox`.
pub async fn run_local(
    work: &Work,
    state_dir: &Path,
    runner_exe: &Path,
) -> io::Result<StepOutcome> {
    local_executor(state_dir, runner_exe)?.execute(work).await
}

/// [`Executor::recover`] on a state directory, without a service.
pub async fn recover_local(state_dir: &Path, runner_exe: &Path) -> io::Result<Vec<StepOutcome>> {
    local_executor(state_dir, runner_exe)?.recover().await
}

fn local_executor(state_dir: &Path, runner_exe: &Path) -> io::Result<Executor> {
    let state = StateDir::open(state_dir)?;
    let outbox = Outbox::open(state.outbox_dir())?;
    Ok(Executor::new(
        state,
        outbox,
        runner_exe.to_path_buf(),
        "local".into(),
        crate::config::DEFAULT_MAX_OUTPUT_BYTES,
    ))
}

fn existing_attempts(dir: &Path) -> io::Result<u32> {
    let mut max = 0;
    for entry in fs::read_dir(dir)? {
        if let Ok(n) = entry?.file_name().to_string_lossy().parse::<u32>() {
            max = max.max(n);
        }
    }
    Ok(max)
}

/// Writes the script (owned by the step's user, so it can read it) and
/// `spec.json` of one attempt.
pub fn prepare_attempt(
    adir: &Path,
    kind: ScriptType,
    content: &str,
    o: &StepOptions,
    mut env: Vec<(String, String)>,
    max_output_bytes: u64,
) -> io::Result<()> {
    let _ = fs::remove_dir_all(adir);
    create_dir(adir, 0o711)?;
    let script = adir.join("script");
    write_atomic(&script, content.as_bytes(), 0o400)?;
    if nix::unistd::geteuid().is_root() {
        let uid = nix::unistd::User::from_name(&o.user)
            .ok()
            .flatten()
            .map(|u| u.uid);
        let gid = nix::unistd::Group::from_name(&o.group)
            .ok()
            .flatten()
            .map(|g| g.gid);
        nix::unistd::chown(&script, uid, gid).map_err(io::Error::from)?;
    }
    let mut all: Vec<(String, String)> = o
        .env_pairs()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    all.append(&mut env);
    let spec = RunnerSpec {
        interpreter: match kind {
            ScriptType::Bash => "bash".into(),
            ScriptType::Python => "python3".into(),
        },
        script,
        cwd: o.cwd.clone(),
        user: o.user.clone(),
        group: o.group.clone(),
        env: all,
        timeout_ms: o.timeout.as_millis(),
        stop_signal: o.stop_signal,
        stop_timeout_ms: o.stop_timeout.as_millis(),
        max_output_bytes,
    };
    write_json(&adir.join("spec.json"), &spec)
}

/// Starts `ibkit-agent __step-runner ADIR`; it detaches into its own
/// session and is not killed when this handle is dropped.
pub fn spawn_runner(runner_exe: &Path, adir: &Path) -> io::Result<tokio::process::Child> {
    let err = fs::File::create(adir.join("runner.err"))?;
    fs::set_permissions(adir.join("runner.err"), fs::Permissions::from_mode(0o600))?;
    tokio::process::Command::new(runner_exe)
        .arg("__step-runner")
        .arg(adir)
        .stdin(Stdio::null())
        .stdout(err.try_clone()?)
        .stderr(err)
        .kill_on_drop(false)
        .spawn()
}

/// Waits for an attempt's `exit.json`: awaits our own child, or polls a
/// runner left by a previous agent. A runner that vanished without
/// `exit.json` makes the attempt interrupted (recorded in `exit.json`).
pub async fn wait_attempt(
    adir: &Path,
    child: Option<tokio::process::Child>,
) -> io::Result<ExitRecord> {
    let exit_path = adir.join("exit.json");
    let mut runner_status = None;
    if let Some(mut child) = child {
        runner_status = Some(child.wait().await?);
    } else {
        loop {
            if exit_path.exists() {
                break;
            }
            match read_json::<RunnerId>(&adir.join("runner.json")) {
                Ok(Some(id)) if id.is_alive() => {}
                Ok(None) if recently_written(&adir.join("spec.json")) => {}
                _ => break,
            }
            tokio::time::sleep(ORPHAN_POLL).await;
        }
    }
    if let Some(exit) = read_json::<ExitRecord>(&exit_path)? {
        return Ok(exit);
    }
    let runner_err = fs::read_to_string(adir.join("runner.err")).unwrap_or_default();
    let error = match runner_status {
        Some(status) => format!(
            "the step runner died without a result ({status}){}",
            if runner_err.trim().is_empty() {
                String::new()
            } else {
                format!(": {}", runner_err.trim())
            }
        ),
        None => "interrupted by an agent/VM restart (the step runner is gone)".to_string(),
    };
    // The runner is gone but its script may not be: stop it before any
    // retry, so two copies never run at once.
    let error = match read_json::<RunnerId>(&adir.join("script.json")) {
        Ok(Some(script)) if script.is_alive() => {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(script.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            format!(
                "{error}; its leftover process group {} was killed",
                script.pid
            )
        }
        _ => error,
    };
    // The attempt started about when its spec was written.
    let started = fs::metadata(adir.join("spec.json"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(0))
        .unwrap_or_else(now_ms);
    let exit = ExitRecord {
        interrupted: true,
        started_at_ms: started,
        finished_at_ms: now_ms(),
        error: Some(error),
        ..ExitRecord::default()
    };
    write_json(&exit_path, &exit)?;
    Ok(exit)
}

fn recently_written(path: &Path) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < Duration::from_secs(3))
}

/// Whether one attempt succeeded, per the step's options.
fn judge(exit: &ExitRecord, o: &StepOptions) -> Verdict {
    if exit.interrupted || exit.error.is_some() {
        return Verdict::Fail(exit.error.clone().unwrap_or_else(|| "interrupted".into()));
    }
    if exit.timed_out {
        return Verdict::Fail(describe_exit(exit, o));
    }
    match exit.exit_code {
        Some(code) if o.exit_codes.contains(&code) => match &o.structured_result_file {
            None => Verdict::Ok(None),
            Some(file) => match read_structured(&o.cwd, file) {
                Ok(v) => Verdict::Ok(Some(v)),
                Err(why) => Verdict::Fail(why),
            },
        },
        Some(code) if o.halt_codes.contains(&code) => Verdict::Halt(format!(
            "exit code {code} is a halt code: no further attempts"
        )),
        _ => Verdict::Fail(describe_exit(exit, o)),
    }
}

/// One line on how an attempt ended.
pub fn describe_exit(exit: &ExitRecord, o: &StepOptions) -> String {
    if let Some(e) = &exit.error {
        return e.clone();
    }
    let how = match (exit.exit_code, exit.signal) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "no exit status".to_string(),
    };
    if exit.timed_out {
        let kill = if exit.killed {
            format!(", SIGKILL after stop_timeout {}", o.stop_timeout)
        } else {
            String::new()
        };
        return format!(
            "timed out after {} (signal {} sent{kill}; then {how})",
            o.timeout, o.stop_signal
        );
    }
    if exit.exit_code.is_some() && !o.exit_codes.contains(&exit.exit_code.unwrap_or_default()) {
        return format!("{how} (success codes: {:?})", o.exit_codes);
    }
    how
}

/// Reads the structured result: a JSON object, or a clear error.
fn read_structured(cwd: &str, file: &str) -> Result<serde_json::Value, String> {
    let path = Path::new(cwd).join(file);
    let shown = path.display();
    let data = match fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!(
                "structured_result_file {shown}: missing (the script did not write it)"
            ));
        }
        Err(e) => return Err(format!("structured_result_file {shown}: cannot read: {e}")),
    };
    let value: serde_json::Value = serde_json::from_slice(&data).map_err(|e| {
        format!(
            "structured_result_file {shown}: invalid JSON at line {} column {}: {e}",
            e.line(),
            e.column()
        )
    })?;
    if value.is_object() {
        return Ok(value);
    }
    let found = match value {
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Null => "null",
        serde_json::Value::Object(_) => "an object",
    };
    Err(format!(
        "structured_result_file {shown}: not a JSON object (found {found})"
    ))
}

fn failed_without_attempts(rec: &ExecRecord, error: String) -> StepOutcome {
    StepOutcome {
        status: FinalStatus::Failed,
        attempts: 0,
        exit_code: None,
        signal: None,
        timed_out: false,
        halted: true,
        started_at_ms: rec.received_at_ms,
        finished_at_ms: now_ms(),
        log: format!("--- ibkit: {error} ---\n"),
        log_truncated_bytes: 0,
        result: String::new(),
        result_truncated_bytes: 0,
        structured_result: None,
        error: Some(error),
    }
}

fn build_outcome(
    rec: &ExecRecord,
    attempts_dir: &Path,
    last: u32,
    verdict: Verdict,
    max_output_bytes: u64,
) -> io::Result<StepOutcome> {
    let o = &rec.work.options;
    let mut log: Vec<u8> = Vec::new();
    let mut log_truncated = 0;
    let mut last_exit = ExitRecord::default();
    for i in 1..=last {
        let adir = attempts_dir.join(i.to_string());
        let exit = read_json::<ExitRecord>(&adir.join("exit.json"))?.unwrap_or_default();
        log.extend_from_slice(format!("--- ibkit: attempt {i}/{} ---\n", o.attempts).as_bytes());
        let text = fs::read(adir.join("log")).unwrap_or_default();
        log.extend_from_slice(&text);
        if !text.is_empty() && !text.ends_with(b"\n") {
            log.push(b'\n');
        }
        let ended = match judge(&exit, o) {
            Verdict::Ok(_) => format!("succeeded ({})", describe_exit(&exit, o)),
            Verdict::Halt(why) | Verdict::Fail(why) => format!("failed: {why}"),
        };
        log.extend_from_slice(format!("--- ibkit: attempt {i} {ended} ---\n").as_bytes());
        log_truncated += exit.log_truncated_bytes;
        last_exit = exit;
    }
    // Several attempts can together exceed the cap: cut the middle.
    let cap = usize::try_from(max_output_bytes).unwrap_or(usize::MAX);
    if log.len() > cap + 4096 {
        let cut = log.len() - cap;
        let head = cap / 2;
        let marker = format!(
            "\n--- ibkit: {cut} bytes of earlier attempts left out here (log over {cap} bytes) ---\n"
        );
        let mut out = log[..head].to_vec();
        out.extend_from_slice(marker.as_bytes());
        out.extend_from_slice(&log[head + cut..]);
        log = out;
        log_truncated += cut as u64;
    }
    let result = fs::read(attempts_dir.join(last.to_string()).join("stdout")).unwrap_or_default();
    let (status, halted, structured, error) = match verdict {
        Verdict::Ok(s) => (FinalStatus::Ok, false, s, None),
        Verdict::Halt(why) => (FinalStatus::Failed, true, None, Some(why)),
        Verdict::Fail(why) => (
            FinalStatus::Failed,
            false,
            None,
            Some(if last > 1 {
                format!("{why} (after {last} attempts)")
            } else {
                why
            }),
        ),
    };
    Ok(StepOutcome {
        status,
        attempts: last,
        exit_code: last_exit.exit_code,
        signal: last_exit.signal,
        timed_out: last_exit.timed_out,
        halted,
        started_at_ms: rec.received_at_ms,
        finished_at_ms: now_ms(),
        log: String::from_utf8_lossy(&log).into_owned(),
        log_truncated_bytes: log_truncated,
        result: String::from_utf8_lossy(&result).into_owned(),
        result_truncated_bytes: last_exit.stdout_truncated_bytes,
        structured_result: structured
            .as_ref()
            .map(ibkit_api::StructuredJson::from_value),
        error,
    })
}

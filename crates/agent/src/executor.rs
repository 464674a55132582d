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
use ibkit_api::{ScriptType, StepOptions, StructuredJson};
use ibkit_support::clock::now_ms;
use ibkit_support::fs::write_atomic;
use serde::{Deserialize, Serialize};

use crate::journal::{StateDir, create_dir, read_json, write_json};
use crate::outbox::Outbox;
use crate::runner::{ExitRecord, RunnerId, RunnerSpec, StructuredFile};
use ibkit_api::report_fit::{Piece, fit_outcome};

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
    max_structured_bytes: u64,
    running: Arc<Mutex<Option<String>>>,
}

/// The verdict on one attempt.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Ok(Option<StructuredJson>),
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
            max_structured_bytes: crate::config::DEFAULT_MAX_STRUCTURED_RESULT_BYTES,
            running: Arc::default(),
        }
    }

    /// Sets the cap of a structured result file (`max_structured_result_bytes`).
    pub fn with_max_structured_bytes(mut self, max: u64) -> Executor {
        self.max_structured_bytes = max;
        self
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
                create_dir(&dir, 0o700)?;
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
        // The references' values may be secrets: gone with the step.
        let _ = fs::remove_dir_all(self.state.refs_dir(&work.exec_id));
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
        create_dir(&attempts_dir, 0o700)?;
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
                    AttemptInput {
                        kind: work.kind,
                        content: &work.content,
                        options: o,
                        env,
                        max_output_bytes: self.max_output_bytes,
                        max_structured_bytes: self.max_structured_bytes,
                        references: work
                            .references
                            .iter()
                            .map(|r| (r.name.clone(), r.value.clone()))
                            .collect(),
                        results_dir: Some(self.state.refs_dir(&work.exec_id)),
                    },
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
            let verdict = {
                let (o, adir, max) = (o.clone(), adir.clone(), self.max_structured_bytes);
                let exit = exit.clone();
                // Parsing a structured result of up to a few MiB: off the
                // async thread, so heartbeats keep going.
                tokio::task::spawn_blocking(move || judge(&exit, &o, &adir, max))
                    .await
                    .map_err(io::Error::other)?
            };
            match verdict {
                Verdict::Fail(why) if n < o.attempts => {
                    tracing::info!(exec = %work.exec_id, attempt = n, "attempt failed: {why}");
                    tokio::time::sleep(o.attempt_pause.to_std()).await;
                    n += 1;
                }
                v => break v,
            }
        };
        tokio::time::sleep(o.pause_after.to_std()).await;
        let limits = Limits {
            max_output_bytes: self.max_output_bytes,
            max_structured_bytes: self.max_structured_bytes,
            report_budget: self.outbox.report_budget(),
        };
        let rec = rec.clone();
        tokio::task::spawn_blocking(move || build_outcome(&rec, &attempts_dir, n, verdict, limits))
            .await
            .map_err(io::Error::other)?
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

/// What one attempt runs (see [`prepare_attempt`]).
#[derive(Debug, Clone)]
pub struct AttemptInput<'a> {
    pub kind: ScriptType,
    pub content: &'a str,
    pub options: &'a StepOptions,
    /// `IBKIT_*` variables, added after the step's own.
    pub env: Vec<(String, String)>,
    pub max_output_bytes: u64,
    pub max_structured_bytes: u64,
    /// Resolved references (`NAME`, value), see [`RunnerSpec::references`].
    pub references: Vec<(String, String)>,
    pub results_dir: Option<PathBuf>,
}

/// Writes the script and `spec.json` of one attempt (a 0700 directory;
/// the runner hands the script to the step's user as an open file).
pub fn prepare_attempt(adir: &Path, input: AttemptInput) -> io::Result<()> {
    let _ = fs::remove_dir_all(adir);
    create_dir(adir, 0o700)?;
    let o = input.options;
    let script = adir.join("script");
    write_atomic(&script, input.content.as_bytes(), 0o400)?;
    let mut all: Vec<(String, String)> = o
        .env_pairs()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    all.extend(input.env);
    let spec = RunnerSpec {
        interpreter: match input.kind {
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
        max_output_bytes: input.max_output_bytes,
        structured_result_file: o.structured_result_file.clone(),
        max_structured_bytes: input.max_structured_bytes,
        references: input.references,
        results_dir: input.results_dir,
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

/// Whether one attempt (in `adir`) succeeded, per the step's options.
fn judge(exit: &ExitRecord, o: &StepOptions, adir: &Path, max_structured: u64) -> Verdict {
    if exit.interrupted || exit.error.is_some() {
        return Verdict::Fail(exit.error.clone().unwrap_or_else(|| "interrupted".into()));
    }
    if exit.timed_out {
        return Verdict::Fail(describe_exit(exit, o));
    }
    match exit.exit_code {
        Some(code) if o.exit_codes.contains(&code) => match &o.structured_result_file {
            None => Verdict::Ok(None),
            Some(file) => match structured_of(exit, adir, &o.cwd, file, max_structured) {
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

/// The structured result the runner read (as the step's user, capped): a
/// JSON object within the cap, or a clear error naming the file.
fn structured_of(
    exit: &ExitRecord,
    adir: &Path,
    cwd: &str,
    file: &str,
    max: u64,
) -> Result<StructuredJson, String> {
    let path = Path::new(cwd).join(file);
    let shown = path.display();
    let data = match &exit.structured {
        None => {
            return Err(format!(
                "structured_result_file {shown}: not collected (the attempt ran under an older step runner)"
            ));
        }
        Some(StructuredFile::Error(why)) => {
            return Err(format!("structured_result_file {shown}: {why}"));
        }
        Some(StructuredFile::Read { .. }) => fs::read(adir.join("structured"))
            .map_err(|e| format!("structured_result_file {shown}: the copy read is gone: {e}"))?,
    };
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    if data.len() > limit {
        return Err(format!(
            "structured_result_file {shown}: structured result of {} bytes exceeds the {limit}-byte limit (max_structured_result_bytes)",
            data.len()
        ));
    }
    let text = String::from_utf8(data)
        .map_err(|e| format!("structured_result_file {shown}: not UTF-8 text: {e}"))?;
    StructuredJson::from_text(&text, limit).map_err(|e| {
        use ibkit_api::structured::StructuredError as E;
        let why = match e {
            E::TooLarge { size, limit } => format!(
                "structured result of {size} bytes exceeds the {limit}-byte limit (max_structured_result_bytes)"
            ),
            E::NotAnObject(found) => format!("not a JSON object (found {found})"),
            E::Invalid(msg) => match serde_json::from_str::<serde::de::IgnoredAny>(&text) {
                Err(e) => format!(
                    "invalid JSON at line {} column {}: {e}",
                    e.line(),
                    e.column()
                ),
                Ok(_) => format!("invalid JSON: {msg}"),
            },
            other => other.to_string(),
        };
        format!("structured_result_file {shown}: {why}")
    })
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

/// Caps that shape an outcome.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_output_bytes: u64,
    max_structured_bytes: u64,
    /// The serialized Finished report stays within this.
    report_budget: usize,
}

/// The outcome of the step from its attempts' files, fitted so its
/// Finished report stays within the budget (see [`ibkit_api::report_fit`]).
fn build_outcome(
    rec: &ExecRecord,
    attempts_dir: &Path,
    last: u32,
    verdict: Verdict,
    limits: Limits,
) -> io::Result<StepOutcome> {
    let o = &rec.work.options;
    let mut log: Vec<Piece> = Vec::new();
    let mut log_truncated = 0u64;
    let mut last_exit = ExitRecord::default();
    for i in 1..=last {
        let adir = attempts_dir.join(i.to_string());
        let exit = read_json::<ExitRecord>(&adir.join("exit.json"))?.unwrap_or_default();
        log.push(Piece::Text(
            format!("--- ibkit: attempt {i}/{} ---\n", o.attempts).into(),
        ));
        log.push(Piece::FileLine(adir.join("log")));
        let v = if i == last {
            verdict.clone()
        } else {
            judge(&exit, o, &adir, limits.max_structured_bytes)
        };
        let ended = match v {
            Verdict::Ok(_) => format!("succeeded ({})", describe_exit(&exit, o)),
            Verdict::Halt(why) | Verdict::Fail(why) => format!("failed: {why}"),
        };
        log.push(Piece::Text(
            format!("--- ibkit: attempt {i} {ended} ---\n").into(),
        ));
        log_truncated += exit.log_truncated_bytes;
        last_exit = exit;
    }
    let result = [Piece::File(
        attempts_dir.join(last.to_string()).join("stdout"),
    )];
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
    let base = StepOutcome {
        status,
        attempts: last,
        exit_code: last_exit.exit_code,
        signal: last_exit.signal,
        timed_out: last_exit.timed_out,
        halted,
        started_at_ms: rec.received_at_ms,
        finished_at_ms: now_ms(),
        log: String::new(),
        log_truncated_bytes: log_truncated,
        result: String::new(),
        result_truncated_bytes: last_exit.stdout_truncated_bytes,
        structured_result: structured,
        error,
    };
    // Several attempts can together exceed the per-attempt cap: the log as
    // a whole keeps to it too (head and tail, like one attempt's).
    let log_cap = usize::try_from(limits.max_output_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(4096);
    fit_outcome(
        &rec.work.exec_id,
        base,
        &log,
        &result,
        limits.report_budget,
        log_cap,
    )
}

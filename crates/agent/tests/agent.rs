//! ibkit-agent integration tests: real scripts through the real
//! `ibkit-agent __step-runner`, real processes and signals, a real HTTP
//! server standing in for the service.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ibkit_agent::client::Api;
use ibkit_agent::executor::Executor;
use ibkit_agent::journal::StateDir;
use ibkit_agent::outbox::Outbox;
use ibkit_api::wire::{FinalStatus, Report, ReportEvent, StepOutcome, Work};
use serde_json::json;

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ibkit-agent"))
}

fn work(kind: &str, content: &str, options: serde_json::Value) -> Work {
    serde_json::from_value(json!({
        "exec_id": uuid::Uuid::new_v4().to_string(),
        "instance": "inst1",
        "group": "grp",
        "index": 3,
        "hash": "h",
        "type": kind,
        "content": content,
        "options": options,
    }))
    .expect("valid work")
}

fn executor(state: &Path, cap: u64) -> Executor {
    let state = StateDir::open(state).unwrap();
    let outbox = Outbox::open(state.outbox_dir()).unwrap();
    Executor::new(state, outbox, exe(), "web1".into(), cap)
}

async fn run(w: &Work) -> (StepOutcome, tempfile::TempDir, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let out = ibkit_agent::run_local(w, dir.path(), &exe()).await.unwrap();
    (out, dir, start.elapsed())
}

fn queued(state: &Path) -> Vec<Report> {
    Outbox::open(state.join("outbox"))
        .unwrap()
        .pending()
        .unwrap()
}

fn pid_alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.contains(") Z ")
}

#[tokio::test]
async fn success_result_log_and_reports() {
    // Separate pipes: order is arrival order, so space the writes out.
    let w = work(
        "bash",
        "echo out1; sleep 0.1; echo err1 >&2; sleep 0.1; echo out2\n",
        json!({}),
    );
    let (o, dir, _) = run(&w).await;
    assert_eq!(o.status, FinalStatus::Ok, "{o:?}");
    assert_eq!(o.attempts, 1);
    assert_eq!(o.exit_code, Some(0));
    assert_eq!(o.result, "out1\nout2\n");
    assert!(o.log.contains("--- ibkit: attempt 1/3 ---"), "{}", o.log);
    assert!(o.log.contains("out1\nerr1\nout2\n"), "{}", o.log);
    assert_eq!(o.error, None);
    let reports = queued(dir.path());
    assert_eq!(reports.len(), 2);
    assert!(matches!(
        reports[0].event,
        ReportEvent::Running { attempt: 1, .. }
    ));
    assert!(matches!(&reports[1].event, ReportEvent::Finished(f) if f.status == FinalStatus::Ok));
    // store_result keeps the result on disk.
    let rdir = dir.path().join("results/inst1/grp/3");
    assert_eq!(
        std::fs::read_to_string(rdir.join("result")).unwrap(),
        "out1\nout2\n"
    );
    assert_eq!(std::fs::read_to_string(rdir.join("hash")).unwrap(), "h");
    // Running the same exec again does not run it again.
    let again = ibkit_agent::run_local(&w, dir.path(), &exe())
        .await
        .unwrap();
    assert_eq!(again.finished_at_ms, o.finished_at_ms);
    assert_eq!(queued(dir.path()).len(), 2);
}

#[tokio::test]
async fn exit_codes_decide_success() {
    let w = work("bash", "exit 3", json!({"exit_codes": [0, 3]}));
    let (o, _d, _) = run(&w).await;
    assert_eq!((o.status, o.exit_code), (FinalStatus::Ok, Some(3)));

    let w = work("bash", "exit 0", json!({"exit_codes": [3], "attempts": 1}));
    let (o, _d, _) = run(&w).await;
    assert_eq!(o.status, FinalStatus::Failed);
    let err = o.error.unwrap();
    assert!(err.contains("exit code 0") && err.contains("[3]"), "{err}");
}

#[tokio::test]
async fn halt_code_is_not_retried() {
    let w = work(
        "bash",
        "echo x; exit 125",
        json!({"attempts": 3, "attempt_pause": "100ms"}),
    );
    let (o, _d, _) = run(&w).await;
    assert_eq!(o.status, FinalStatus::Failed);
    assert_eq!(o.attempts, 1);
    assert!(o.halted);
    assert!(o.error.unwrap().contains("halt code"));
}

#[tokio::test]
async fn failures_are_retried_with_pauses() {
    let w = work(
        "bash",
        "echo attempt=$IBKIT_ATTEMPT; exit 4",
        json!({"attempts": 3, "attempt_pause": "400ms"}),
    );
    let (o, dir, elapsed) = run(&w).await;
    assert_eq!(o.status, FinalStatus::Failed);
    assert_eq!(o.attempts, 3);
    assert!(!o.halted);
    assert!(elapsed >= Duration::from_millis(800), "{elapsed:?}");
    for i in 1..=3 {
        assert!(
            o.log
                .contains(&format!("--- ibkit: attempt {i}/3 ---\nattempt={i}\n")),
            "{}",
            o.log
        );
    }
    assert_eq!(o.result, "attempt=3\n");
    assert!(o.error.unwrap().contains("exit code 4"));
    let reports = queued(dir.path());
    let attempts: Vec<u32> = reports
        .iter()
        .filter_map(|r| match r.event {
            ReportEvent::Running { attempt, .. } => Some(attempt),
            _ => None,
        })
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert!(matches!(
        reports.last().unwrap().event,
        ReportEvent::Finished(_)
    ));
}

#[tokio::test]
async fn retry_until_success() {
    let marker = tempfile::tempdir().unwrap();
    let script = format!(
        "f={}/n; n=$(cat $f 2>/dev/null || echo 0); n=$((n+1)); echo $n > $f; echo try$n; [ $n -ge 2 ]",
        marker.path().display()
    );
    let w = work("bash", &script, json!({"attempt_pause": "50ms"}));
    let (o, _d, _) = run(&w).await;
    assert_eq!((o.status, o.attempts), (FinalStatus::Ok, 2));
    assert_eq!(o.result, "try2\n");
}

#[tokio::test]
async fn timeout_sends_stop_signal_to_the_group() {
    let m = tempfile::tempdir().unwrap();
    let mark = m.path().join("term");
    let script = format!(
        "trap 'echo got-term > {}; exit 7' TERM\nsleep 30 &\nwait\n",
        mark.display()
    );
    let w = work("bash", &script, json!({"timeout": "500ms", "attempts": 1}));
    let (o, _d, elapsed) = run(&w).await;
    assert_eq!(o.status, FinalStatus::Failed);
    assert!(o.timed_out);
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    assert_eq!(std::fs::read_to_string(&mark).unwrap(), "got-term\n");
    let err = o.error.unwrap();
    assert!(err.contains("timed out after 500ms"), "{err}");
    assert!(o.log.contains("timeout after 500 ms"), "{}", o.log);
}

#[tokio::test]
async fn sigterm_ignored_means_sigkill_for_the_whole_group() {
    let m = tempfile::tempdir().unwrap();
    let pidfile = m.path().join("bg");
    let script = format!(
        "trap '' TERM\nsleep 60 &\necho $! > {}\nwhile true; do sleep 0.1; done\n",
        pidfile.display()
    );
    let w = work(
        "bash",
        &script,
        json!({"timeout": "400ms", "stop_timeout": "600ms", "attempts": 1}),
    );
    let (o, _d, elapsed) = run(&w).await;
    assert!(o.timed_out);
    assert_eq!(o.signal, Some(9), "{o:?}");
    assert!(
        elapsed >= Duration::from_millis(1000) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    assert!(
        o.error.as_deref().unwrap().contains("SIGKILL"),
        "{:?}",
        o.error
    );
    let bg: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!pid_alive(bg), "background child {bg} survived");
}

#[tokio::test]
async fn custom_stop_signal() {
    let m = tempfile::tempdir().unwrap();
    let mark = m.path().join("sig");
    let script = format!(
        "trap 'echo usr1 > {}; exit 0' USR1\nwhile true; do sleep 0.1; done\n",
        mark.display()
    );
    let w = work(
        "bash",
        &script,
        json!({"timeout": "300ms", "stop_signal": "SIGUSR1", "attempts": 1}),
    );
    let (o, _d, _) = run(&w).await;
    assert!(o.timed_out);
    assert_eq!(
        o.status,
        FinalStatus::Failed,
        "a timed-out step never succeeds"
    );
    assert_eq!(std::fs::read_to_string(&mark).unwrap(), "usr1\n");
}

#[tokio::test]
async fn cwd_and_environment() {
    let cwd = tempfile::tempdir().unwrap();
    let w = work(
        "bash",
        "pwd; echo \"$FOO|$EMPTY|$IBKIT_INSTANCE|$IBKIT_HOST|$IBKIT_GROUP|$IBKIT_STEP_INDEX|$IBKIT_ATTEMPT|$LANG\"",
        json!({"cwd": cwd.path(), "environment_variables": ["FOO=bar baz=1", "EMPTY="]}),
    );
    let dir = tempfile::tempdir().unwrap();
    let o = executor(dir.path(), 1 << 20).execute(&w).await.unwrap();
    assert_eq!(
        o.result,
        format!(
            "{}\nbar baz=1||inst1|web1|grp|3|1|C.UTF-8\n",
            cwd.path().display()
        )
    );

    let w = work(
        "bash",
        "true",
        json!({"cwd": "/nonexistent/dir", "attempts": 1}),
    );
    let (o, _d, _) = run(&w).await;
    assert_eq!(o.status, FinalStatus::Failed);
    assert!(
        o.error
            .unwrap()
            .contains("cwd /nonexistent/dir does not exist")
    );
}

#[tokio::test]
async fn missing_user_falls_back_to_root() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let w = work(
        "bash",
        "id -u; id -g",
        json!({"user": "no-such-user-ibkit", "group": "no-such-group-ibkit"}),
    );
    let (o, _d, _) = run(&w).await;
    assert_eq!(o.status, FinalStatus::Ok);
    assert_eq!(o.result, "0\n0\n");
    assert!(
        o.log
            .contains("user \"no-such-user-ibkit\" does not exist: running as root"),
        "{}",
        o.log
    );
    assert!(
        o.log
            .contains("group \"no-such-group-ibkit\" does not exist"),
        "{}",
        o.log
    );
    // An existing user is switched to.
    let w = work(
        "bash",
        "id -un",
        json!({"user": "nobody", "group": "nogroup"}),
    );
    let (o, _d, _) = run(&w).await;
    if o.status == FinalStatus::Ok {
        assert_eq!(o.result, "nobody\n");
    } else {
        panic!("{o:?}");
    }
}

#[tokio::test]
async fn structured_results() {
    let cwd = tempfile::tempdir().unwrap();
    let c = cwd.path();
    let ok = work(
        "bash",
        "echo '{\"ip\": \"10.0.0.5\", \"n\": 2}' > res.json",
        json!({"cwd": c, "structured_result_file": "res.json"}),
    );
    let (o, dir, _) = run(&ok).await;
    assert_eq!(o.status, FinalStatus::Ok);
    assert_eq!(
        o.structured_result.as_ref().map(|s| s.as_str()),
        Some(r#"{"ip":"10.0.0.5","n":2}"#)
    );
    let stored =
        std::fs::read_to_string(dir.path().join("results/inst1/grp/3/structured.json")).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stored).unwrap()["ip"],
        "10.0.0.5"
    );

    let abs = c.join("arr.json");
    let arr = work(
        "bash",
        &format!("echo '[1,2]' > {}", abs.display()),
        json!({"structured_result_file": abs, "attempts": 1}),
    );
    let (o, _d, _) = run(&arr).await;
    assert_eq!(o.status, FinalStatus::Failed);
    assert_eq!(
        o.error.unwrap(),
        format!(
            "structured_result_file {}: not a JSON object (found an array)",
            abs.display()
        )
    );

    let missing = work(
        "bash",
        "true",
        json!({"cwd": c, "structured_result_file": "none.json", "attempts": 1}),
    );
    let (o, _d, _) = run(&missing).await;
    assert!(o.error.unwrap().contains("none.json: missing"));

    let bad = work(
        "bash",
        "printf '{\\n  \"a\": }' > bad.json",
        json!({"cwd": c, "structured_result_file": "bad.json", "attempts": 1}),
    );
    let (o, _d, _) = run(&bad).await;
    let err = o.error.unwrap();
    assert!(
        err.contains("bad.json: invalid JSON at line 2 column"),
        "{err}"
    );
}

#[tokio::test]
async fn large_output_is_truncated_explicitly() {
    let w = work(
        "bash",
        "echo FIRST-LINE; head -c 300000 /dev/zero | tr '\\0' a; echo; echo LAST-LINE; echo ERR-LAST >&2",
        json!({"attempts": 1}),
    );
    let dir = tempfile::tempdir().unwrap();
    let o = executor(dir.path(), 64 * 1024).execute(&w).await.unwrap();
    assert_eq!(o.status, FinalStatus::Ok);
    assert!(o.result.starts_with("FIRST-LINE\n"));
    assert!(
        o.result.ends_with("LAST-LINE\n"),
        "{}",
        &o.result[o.result.len() - 100..]
    );
    assert!(
        o.result_truncated_bytes > 200_000,
        "{}",
        o.result_truncated_bytes
    );
    assert!(o.result.len() < 70 * 1024);
    assert!(o.result.contains(&format!(
        "--- ibkit: {} bytes left out here",
        o.result_truncated_bytes
    )));
    assert!(o.log_truncated_bytes > 200_000);
    assert!(o.log.contains("ERR-LAST"), "the tail of the log is kept");
    assert!(o.log.contains("bytes left out here"));
}

#[tokio::test]
async fn python_steps() {
    let w = work(
        "python",
        "import os, sys\nprint('py', os.environ['IBKIT_STEP_INDEX'])\nsys.exit(int(os.environ.get('CODE', '0')))\n",
        json!({"environment_variables": ["CODE=5"], "exit_codes": [5]}),
    );
    let (o, _d, _) = run(&w).await;
    assert_eq!(o.status, FinalStatus::Ok, "{o:?}");
    assert_eq!(o.result, "py 3\n");
}

#[tokio::test]
async fn pauses_before_and_after() {
    let w = work(
        "bash",
        "true",
        json!({"pause_before": "400ms", "pause_after": "400ms"}),
    );
    let (o, _d, elapsed) = run(&w).await;
    assert_eq!(o.status, FinalStatus::Ok);
    assert!(elapsed >= Duration::from_millis(800), "{elapsed:?}");
    assert!(o.finished_at_ms - o.started_at_ms >= 800);
}

#[tokio::test]
async fn background_daemon_holding_stdout_does_not_hang() {
    let w = work("bash", "sleep 20 &\necho started\n", json!({"attempts": 1}));
    let (o, _d, elapsed) = run(&w).await;
    assert_eq!(o.status, FinalStatus::Ok);
    assert_eq!(o.result, "started\n");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert!(
        o.log.contains("background process still holds its stdout"),
        "{}",
        o.log
    );
}

#[tokio::test]
async fn invalid_options_fail_clearly() {
    let w = work("bash", "true", json!({"attempts": 0}));
    let (o, _d, _) = run(&w).await;
    assert_eq!(o.status, FinalStatus::Failed);
    assert!(o.error.unwrap().contains("attempts"));
}

/// Starts `ibkit-agent __exec-local`, waits until attempt `n`'s runner
/// runs, then kills the agent with SIGKILL. Returns the runner's pid.
fn start_and_kill_agent(state: &Path, w: &Work, attempt: u32) -> i32 {
    let wf = state.with_extension("work.json");
    std::fs::write(&wf, serde_json::to_vec(w).unwrap()).unwrap();
    let mut agent = std::process::Command::new(exe())
        .arg("__exec-local")
        .arg(state)
        .arg(&wf)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let rj = state
        .join("executions")
        .join(&w.exec_id)
        .join(format!("attempts/{attempt}/runner.json"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rj.exists() {
        assert!(Instant::now() < deadline, "runner never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    agent.kill().unwrap();
    agent.wait().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&rj).unwrap()).unwrap();
    i32::try_from(v["pid"].as_i64().unwrap()).unwrap()
}

#[tokio::test]
async fn restart_collects_a_still_running_step() {
    let base = tempfile::tempdir().unwrap();
    let state = base.path().join("state");
    let w = work("bash", "sleep 1.5; echo finished; exit 0", json!({}));
    let runner = start_and_kill_agent(&state, &w, 1);
    assert!(pid_alive(runner), "the runner must survive the agent");
    let outs = ibkit_agent::recover_local(&state, &exe()).await.unwrap();
    assert_eq!(outs.len(), 1);
    let o = &outs[0];
    assert_eq!((o.status, o.attempts), (FinalStatus::Ok, 1), "{o:?}");
    assert_eq!(o.result, "finished\n");
    let reports = queued(&state);
    assert!(matches!(
        reports[0].event,
        ReportEvent::Running { attempt: 1, .. }
    ));
    assert!(
        matches!(&reports.last().unwrap().event, ReportEvent::Finished(f) if f.status == FinalStatus::Ok)
    );
    // Nothing left to recover.
    assert!(
        ibkit_agent::recover_local(&state, &exe())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn restart_after_a_lost_runner_retries_or_fails() {
    for (attempts, expect) in [(2, FinalStatus::Ok), (1, FinalStatus::Failed)] {
        let base = tempfile::tempdir().unwrap();
        let state = base.path().join("state");
        let w = work(
            "bash",
            "echo try$IBKIT_ATTEMPT; if [ $IBKIT_ATTEMPT = 1 ]; then exec sleep 30; fi",
            json!({"attempts": attempts, "attempt_pause": "100ms"}),
        );
        let runner = start_and_kill_agent(&state, &w, 1);
        // The VM "reboots": the runner and its script die.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(runner),
            nix::sys::signal::Signal::SIGKILL,
        );
        let adir = state.join("executions").join(&w.exec_id).join("attempts/1");
        let spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(adir.join("spec.json")).unwrap()).unwrap();
        assert_eq!(spec["interpreter"], "bash");
        std::thread::sleep(Duration::from_millis(100));
        let script: serde_json::Value =
            serde_json::from_slice(&std::fs::read(adir.join("script.json")).unwrap()).unwrap();
        let script_pid = i32::try_from(script["pid"].as_i64().unwrap()).unwrap();
        assert!(pid_alive(script_pid), "the script outlives its runner");
        let outs = ibkit_agent::recover_local(&state, &exe()).await.unwrap();
        let o = &outs[0];
        assert_eq!(o.status, expect, "{o:?}");
        assert!(
            o.log.contains("interrupted by an agent/VM restart"),
            "{}",
            o.log
        );
        assert!(o.log.contains("leftover process group"), "{}", o.log);
        assert!(!pid_alive(script_pid), "the leftover script was stopped");
        if expect == FinalStatus::Ok {
            assert_eq!((o.attempts, o.result.as_str()), (2, "try2\n"));
        } else {
            assert_eq!(o.attempts, 1);
            assert!(
                o.error
                    .as_deref()
                    .unwrap()
                    .contains("interrupted by an agent/VM restart")
            );
        }
    }
}

#[derive(Clone, Default)]
struct Fake {
    reports: Arc<Mutex<Vec<Report>>>,
    heartbeats: Arc<Mutex<u32>>,
}

fn fake_service(fake: Fake) -> axum::Router {
    use axum::routing::post;
    axum::Router::new()
        .route(
            "/v1/agent/reports",
            post(
                |axum::extract::State(f): axum::extract::State<Fake>,
                 axum::Json(r): axum::Json<Report>| async move {
                    let mut all = f.reports.lock().unwrap();
                    let applied = !all.iter().any(|x| x.report_id == r.report_id);
                    if applied {
                        all.push(r);
                    }
                    axum::Json(json!({"applied": applied}))
                },
            ),
        )
        .route(
            "/v1/agent/heartbeat",
            post(
                |axum::extract::State(f): axum::extract::State<Fake>| async move {
                    *f.heartbeats.lock().unwrap() += 1;
                    axum::http::StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(fake)
}

#[tokio::test]
async fn outbox_delivers_in_order_once_the_service_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path().join("outbox")).unwrap();
    let mut ids = Vec::new();
    for attempt in 1..=5 {
        let r = outbox
            .push(
                "e1",
                ReportEvent::Running {
                    attempt,
                    started_at_ms: 1,
                },
            )
            .unwrap();
        ids.push(r.report_id);
    }
    // The service is down: nothing is lost.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let api = Api::new(&format!("http://{addr}"), None)
        .unwrap()
        .with_credential("c".into());
    assert!(outbox.deliver(&api).await.is_err());
    assert_eq!(outbox.len(), 5);
    // A restarted agent sees the same queue.
    let outbox = Outbox::open(dir.path().join("outbox")).unwrap();
    assert_eq!(
        outbox
            .pending()
            .unwrap()
            .iter()
            .map(|r| r.report_id.clone())
            .collect::<Vec<_>>(),
        ids
    );

    let fake = Fake::default();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let app = fake_service(fake.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    outbox.deliver(&api).await.unwrap();
    assert!(outbox.is_empty());
    outbox.deliver(&api).await.unwrap();
    let got: Vec<String> = fake
        .reports
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.report_id.clone())
        .collect();
    assert_eq!(got, ids, "in order, exactly once");
}

fn tls_server(cert: &rcgen::CertifiedKey<rcgen::KeyPair>, fake: Fake) -> std::net::SocketAddr {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let der = cert.cert.der().to_vec();
    let key = cert.signing_key.serialize_der();
    tokio::spawn(async move {
        let config = axum_server::tls_rustls::RustlsConfig::from_der(vec![der], key)
            .await
            .unwrap();
        axum_server::from_tcp_rustls(listener, config)
            .unwrap()
            .serve(fake_service(fake).into_make_service())
            .await
    });
    addr
}

#[tokio::test]
async fn pinned_certificate_is_accepted_and_others_refused() {
    let cert = rcgen::generate_simple_self_signed(vec!["some-other-name".into()]).unwrap();
    let fake = Fake::default();
    let addr = tls_server(&cert, fake.clone());
    let pin: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(cert.cert.der().as_ref()).into()
    };
    let hb = ibkit_api::wire::Heartbeat {
        agent_version: "t".into(),
        uptime_s: 1,
        running_exec: None,
        queued_reports: 0,
    };
    // The server may need a moment to start listening.
    let api = Api::new(&format!("https://{addr}"), Some(pin))
        .unwrap()
        .with_credential("c".into());
    let mut ok = false;
    for _ in 0..50 {
        if api.heartbeat(&hb).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "pinned certificate refused");
    assert_eq!(*fake.heartbeats.lock().unwrap(), 1);

    let wrong = Api::new(&format!("https://{addr}"), Some([7u8; 32])).unwrap();
    let err = wrong.heartbeat(&hb).await.unwrap_err().to_string();
    assert!(err.contains("not the pinned one"), "{err}");
    // Without a pin, the system roots do not trust a self-signed cert.
    let unpinned = Api::new(&format!("https://{addr}"), None).unwrap();
    assert!(unpinned.heartbeat(&hb).await.is_err());
    assert_eq!(*fake.heartbeats.lock().unwrap(), 1);
}

/// A fake service for the agent's main loop: pairs, hands out one step
/// until its Finished report arrives, collects everything.
#[derive(Clone, Default)]
struct Svc {
    work: Arc<Mutex<Option<Work>>>,
    reports: Arc<Mutex<Vec<Report>>>,
    heartbeats: Arc<Mutex<Vec<ibkit_api::wire::Heartbeat>>>,
    health: Arc<Mutex<Vec<ibkit_api::wire::HealthReport>>>,
    auth: Arc<Mutex<Vec<String>>>,
    health_port: u16,
}

fn svc_router(svc: Svc) -> axum::Router {
    use axum::extract::State;
    use axum::http::HeaderMap;
    use axum::routing::{get, post};
    fn bearer(h: &HeaderMap) -> String {
        h.get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }
    axum::Router::new()
        .route(
            "/v1/agent/pair",
            post(|axum::Json(req): axum::Json<ibkit_api::wire::PairRequest>| async move {
                assert_eq!(req.pairing_key, "key1");
                axum::Json(json!({"credential": "cred-1", "instance": req.instance, "host": req.host, "heartbeat_interval": "1s"}))
            }),
        )
        .route(
            "/v1/agent/work",
            get(|State(s): State<Svc>, h: HeaderMap| async move {
                s.auth.lock().unwrap().push(bearer(&h));
                let work = s.work.lock().unwrap().clone();
                if work.is_none() {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                axum::Json(json!({
                    "work": work,
                    "health_checks": [{"name": "port", "kind": "port_health", "port": s.health_port, "period": "1s"}],
                    "heartbeat_interval": "1s",
                    "config_rev": "r1",
                }))
            }),
        )
        .route(
            "/v1/agent/reports",
            post(|State(s): State<Svc>, axum::Json(r): axum::Json<Report>| async move {
                if matches!(r.event, ReportEvent::Finished(_)) {
                    *s.work.lock().unwrap() = None;
                }
                s.reports.lock().unwrap().push(r);
                axum::Json(json!({"applied": true}))
            }),
        )
        .route(
            "/v1/agent/heartbeat",
            post(|State(s): State<Svc>, axum::Json(hb): axum::Json<ibkit_api::wire::Heartbeat>| async move {
                s.heartbeats.lock().unwrap().push(hb);
                axum::http::StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/v1/agent/health",
            post(|State(s): State<Svc>, axum::Json(r): axum::Json<ibkit_api::wire::HealthReport>| async move {
                s.health.lock().unwrap().push(r);
                axum::http::StatusCode::NO_CONTENT
            }),
        )
        .with_state(svc)
}

struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_pairs_runs_work_once_and_reports() {
    let base = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let runs = base.path().join("runs");
    let mut w = work(
        "bash",
        &format!("echo ran >> {}; echo hello", runs.display()),
        json!({}),
    );
    w.exec_id = "exec-1".into();
    let svc = Svc {
        work: Arc::new(Mutex::new(Some(w))),
        health_port: addr.port(),
        ..Svc::default()
    };
    let app = svc_router(svc.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let cfg = base.path().join("agent.toml");
    let state = base.path().join("state");
    std::fs::write(
        &cfg,
        format!(
            "server_url = \"http://{addr}\"\nserver_cert_sha256 = \"\"\ninstance = \"inst1\"\nhost = \"web1\"\npairing_key = \"key1\"\nstate_dir = \"{}\"\n",
            state.display()
        ),
    )
    .unwrap();
    let paired = std::process::Command::new(exe())
        .args(["pair", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        paired.status.success(),
        "{}",
        String::from_utf8_lossy(&paired.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(state.join("credential")).unwrap(),
        "cred-1"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(state.join("credential"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    let _agent = KillOnDrop(
        std::process::Command::new(exe())
            .args(["run", "--config"])
            .arg(&cfg)
            .stderr(std::fs::File::create(base.path().join("agent.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for("the Finished report", || {
        svc.reports
            .lock()
            .unwrap()
            .iter()
            .any(|r| matches!(r.event, ReportEvent::Finished(_)))
    })
    .await;
    wait_for("a heartbeat and a health result", || {
        !svc.heartbeats.lock().unwrap().is_empty() && !svc.health.lock().unwrap().is_empty()
    })
    .await;
    let reports = svc.reports.lock().unwrap().clone();
    assert!(matches!(
        reports[0].event,
        ReportEvent::Running { attempt: 1, .. }
    ));
    let ReportEvent::Finished(o) = &reports[1].event else {
        panic!("{reports:?}")
    };
    assert_eq!((o.status, o.result.as_str()), (FinalStatus::Ok, "hello\n"));
    let h = svc.health.lock().unwrap()[0].clone();
    assert!(h.ok && h.check == "port", "{h:?}");
    assert!(
        svc.auth
            .lock()
            .unwrap()
            .iter()
            .all(|a| a == "Bearer cred-1")
    );
    assert_eq!(
        std::fs::read_to_string(&runs).unwrap(),
        "ran\n",
        "ran exactly once"
    );

    // The service hands the finished exec out again (its report was lost):
    // the agent reports the outcome again but does not rerun the script.
    let mut again = work("bash", "true", json!({}));
    again.exec_id = "exec-1".into();
    *svc.work.lock().unwrap() = Some(again);
    wait_for("the repeated Finished report", || {
        svc.reports
            .lock()
            .unwrap()
            .iter()
            .filter(|r| matches!(r.event, ReportEvent::Finished(_)))
            .count()
            >= 2
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(&runs).unwrap(),
        "ran\n",
        "not rerun"
    );
}

#[test]
fn pair_fails_clearly_when_the_service_is_unreachable() {
    let base = tempfile::tempdir().unwrap();
    let cfg = base.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "server_url = \"http://127.0.0.1:1\"\ninstance = \"i\"\nhost = \"h\"\npairing_key = \"k\"\nstate_dir = \"{}\"\n",
            base.path().join("state").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(exe())
        .args(["pair", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pairing host h of instance i") && err.contains("unreachable"),
        "{err}"
    );
    let bad = std::process::Command::new(exe())
        .args(["pair", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("cannot read /nonexistent.toml"));
}

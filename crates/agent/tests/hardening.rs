//! Issue 12, agent side: each test reproduces an attack or fault by a
//! hostile step, VM user or service answer, and asserts the safe outcome.
//! Tests that switch users need root (they skip otherwise).
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ibkit_agent::client::Api;
use ibkit_agent::executor::Executor;
use ibkit_agent::journal::StateDir;
use ibkit_agent::outbox::{DeliverError, Outbox};
use ibkit_api::wire::{
    FinalStatus, MAX_REPORT_BYTES, Report, ReportEvent, ResolvedReference, StepOutcome, Work,
};
use serde_json::json;

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ibkit-agent"))
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn work(content: &str, options: serde_json::Value) -> Work {
    serde_json::from_value(json!({
        "exec_id": uuid::Uuid::new_v4().to_string(),
        "instance": "inst1",
        "group": "grp",
        "index": 1,
        "hash": "h",
        "type": "bash",
        "content": content,
        "options": options,
    }))
    .unwrap()
}

fn executor(state: &Path) -> Executor {
    let state = StateDir::open(state).unwrap();
    let outbox = Outbox::open(state.outbox_dir()).unwrap();
    Executor::new(state, outbox, exe(), "web1".into(), 16 << 20)
}

/// A directory every user may write in (a step running as `nobody`).
fn shared_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

fn outcome_text(o: &StepOutcome) -> String {
    format!("{o:?}")
}

// ---------------------------------------------------------------- item 3

/// A step running as `nobody` points its structured_result_file at a file
/// only root can read, by a final symlink and through a symlinked
/// directory. The agent used to read it as root and put it in the result.
#[tokio::test]
async fn structured_result_file_is_read_as_the_steps_user_and_never_leaks() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let secret_dir = tempfile::tempdir().unwrap(); // 0700 root
    let secret = secret_dir.path().join("secret.json");
    std::fs::write(&secret, r#"{"secret":"TOPSECRET-1234"}"#).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cwd = shared_dir();
    let state = tempfile::tempdir().unwrap();
    let ex = executor(state.path());

    let link = work(
        &format!("ln -s {} res.json", secret.display()),
        json!({"user": "nobody", "cwd": cwd.path(), "structured_result_file": "res.json", "attempts": 1}),
    );
    let o = ex.execute(&link).await.unwrap();
    assert_eq!(o.status, FinalStatus::Failed);
    let err = o.error.clone().unwrap();
    assert!(
        err.contains("res.json: is a symbolic link, which is not followed"),
        "{err}"
    );
    assert!(!outcome_text(&o).contains("TOPSECRET"), "{o:?}");

    // O_NOFOLLOW alone would not stop this one: the symlink is a directory
    // on the way. Read as nobody, the root-only directory is closed.
    let dir_link = work(
        &format!("ln -s {} d", secret_dir.path().display()),
        json!({"user": "nobody", "cwd": cwd.path(), "structured_result_file": "d/secret.json", "attempts": 1}),
    );
    let o = ex.execute(&dir_link).await.unwrap();
    assert_eq!(o.status, FinalStatus::Failed);
    let err = o.error.clone().unwrap();
    assert!(
        err.contains("d/secret.json: cannot read it: Permission denied")
            && err.contains("(read as user nobody)"),
        "{err}"
    );
    assert!(!outcome_text(&o).contains("TOPSECRET"), "{o:?}");

    // The same user's own file is read.
    let ok = work(
        "echo '{\"mine\": true}' > mine.json",
        json!({"user": "nobody", "cwd": cwd.path(), "structured_result_file": "mine.json"}),
    );
    let o = ex.execute(&ok).await.unwrap();
    assert_eq!(o.status, FinalStatus::Ok, "{o:?}");
    assert_eq!(
        o.structured_result.as_ref().map(|s| s.as_str()),
        Some(r#"{"mine":true}"#)
    );
}

/// A FIFO as the structured result file froze the agent (a blocking open
/// on its async thread: heartbeats stopped). Now: a clear error, at once.
#[tokio::test]
async fn a_fifo_as_structured_result_file_fails_fast() {
    let cwd = shared_dir();
    let state = tempfile::tempdir().unwrap();
    let w = work(
        "mkfifo res.json",
        json!({"user": "nobody", "cwd": cwd.path(), "structured_result_file": "res.json", "attempts": 1}),
    );
    let start = Instant::now();
    let o = tokio::time::timeout(Duration::from_secs(20), executor(state.path()).execute(&w))
        .await
        .expect("the agent must not hang on a FIFO")
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(o.status, FinalStatus::Failed);
    let err = o.error.unwrap();
    assert!(
        err.contains("res.json: is a FIFO, not a regular file"),
        "{err}"
    );
}

/// An oversized structured result (1 MiB default, configurable) fails the
/// step with the size named instead of growing the report without bound.
#[tokio::test]
async fn an_oversized_structured_result_fails_the_step_clearly() {
    let cwd = shared_dir();
    let state = tempfile::tempdir().unwrap();
    let w = work(
        "printf '{\"a\":\"' > big.json; head -c 2000000 /dev/zero | tr '\\0' x >> big.json; printf '\"}' >> big.json",
        json!({"cwd": cwd.path(), "structured_result_file": "big.json", "attempts": 1}),
    );
    let o = executor(state.path()).execute(&w).await.unwrap();
    assert_eq!(o.status, FinalStatus::Failed);
    let err = o.error.unwrap();
    assert!(
        err.contains("structured result of 2000008 bytes exceeds the 1048576-byte limit"),
        "{err}"
    );
    assert!(o.structured_result.is_none());

    let small = work(
        "echo '{\"a\": \"0123456789012345678901234567890123456789\"}' > s.json",
        json!({"cwd": cwd.path(), "structured_result_file": "s.json", "attempts": 1}),
    );
    let o = executor(state.path())
        .with_max_structured_bytes(32)
        .execute(&small)
        .await
        .unwrap();
    let err = o.error.unwrap();
    assert!(err.contains("exceeds the 32-byte limit"), "{err}");
}

// ---------------------------------------------------------------- item 9a

/// A step with `user` but no `group` ran with gid 0 (root's group). Now:
/// the user's primary group and its supplementary groups.
#[tokio::test]
async fn a_user_without_group_gets_its_own_groups_not_gid_0() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let ex = executor(state.path());
    let o = ex
        .execute(&work("id -u; id -g; id -G", json!({"user": "nobody"})))
        .await
        .unwrap();
    assert_eq!(o.status, FinalStatus::Ok, "{o:?}");
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let lines: Vec<&str> = o.result.lines().collect();
    assert_eq!(lines[0], nobody.uid.to_string());
    assert_eq!(lines[1], nobody.gid.to_string(), "nobody's primary group");
    assert!(
        !lines[2].split(' ').any(|g| g == "0"),
        "no root group: {}",
        lines[2]
    );

    // Supplementary groups come from the group database (initgroups):
    // any non-root user listed as a member of a group on this system.
    let member = std::fs::read_to_string("/etc/group")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let user = f
                .get(3)?
                .split(',')
                .find(|u| !u.is_empty() && *u != "root")?;
            nix::unistd::User::from_name(user).ok()??;
            Some((user.to_string(), f.get(2)?.to_string()))
        });
    match member {
        Some((user, gid)) => {
            let o = ex
                .execute(&work("id -G", json!({"user": user})))
                .await
                .unwrap();
            assert!(
                o.result.split_whitespace().any(|g| g == gid),
                "{user} is a member of group {gid}: {}",
                o.result
            );
        }
        None => eprintln!("no user with supplementary groups here: that part is skipped"),
    }

    // An unknown user keeps the platform's fallback to root, and says so.
    let o = ex
        .execute(&work("id -u", json!({"user": "no-such-user-ibkit"})))
        .await
        .unwrap();
    assert_eq!((o.status, o.result.as_str()), (FinalStatus::Ok, "0\n"));
    assert!(
        o.log.contains(
            "--- ibkit: user \"no-such-user-ibkit\" does not exist: running as root (the platform's fallback) ---"
        ),
        "{}",
        o.log
    );
}

// ---------------------------------------------------------------- item 6

/// A script_health check with a non-root `user` could never pass: its
/// script sat in STATE/health (0700), so bash exited 126.
#[tokio::test]
async fn a_script_health_check_as_nobody_passes() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let state_dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(state_dir.path()).unwrap();
    let check: ibkit_api::HealthCheck = serde_json::from_value(json!({
        "name": "as-nobody",
        "kind": "script_health",
        "script": "id -un",
        "options": {"user": "nobody"},
    }))
    .unwrap();
    let (ok, detail) = ibkit_agent::health::run_check(&check, &state, &exe()).await;
    assert!(ok, "{detail}");
    assert!(detail.contains("nobody"), "{detail}");
}

// ---------------------------------------------------------------- item 9e

/// Result references are pasted verbatim into script text (the platform's
/// semantics), so a value like `$(touch …)` runs when pasted. The same
/// value read from `$IBKIT_RESULT_…` or `$IBKIT_RESULTS_DIR/…` is data.
#[tokio::test]
async fn references_reach_the_step_as_env_and_files_without_running() {
    let marks = shared_dir();
    let pwned = marks.path().join("pwned");
    let value = format!(
        "x$(touch {p})`touch {p}`;touch {p}\n'\"",
        p = pwned.display()
    );
    let big = "b".repeat(100_000);
    let state = tempfile::tempdir().unwrap();
    let user = if is_root() { "nobody" } else { "root" };
    let mut w = work(
        r#"printf '%s|' "$IBKIT_RESULT_DB_INIT_0_RAW"
cat "$IBKIT_RESULTS_DIR/IBKIT_RESULT_DB_INIT_0_RAW"; echo '|'
printf '%s|' "${IBKIT_RESULT_BIG_0_RAW-unset}"
wc -c < "$IBKIT_RESULTS_DIR/IBKIT_RESULT_BIG_0_RAW"
stat -c '%U %a' "$IBKIT_RESULTS_DIR" "$IBKIT_RESULTS_DIR/IBKIT_RESULT_DB_INIT_0_RAW"
ls "$IBKIT_RESULTS_DIR"
"#,
        json!({"user": user}),
    );
    w.references = vec![
        ResolvedReference {
            reference: "{{ibkit.results.db.init.0.raw}}".into(),
            name: "IBKIT_RESULT_DB_INIT_0_RAW".into(),
            value: value.clone(),
        },
        ResolvedReference {
            reference: "{{ibkit.results.big.0.raw}}".into(),
            name: "IBKIT_RESULT_BIG_0_RAW".into(),
            value: big,
        },
        ResolvedReference {
            reference: "{{ibkit.results.evil}}".into(),
            name: "../../etc/evil".into(),
            value: "no".into(),
        },
        ResolvedReference {
            reference: "{{ibkit.results.evil}}".into(),
            name: "PATH".into(),
            value: "/evil".into(),
        },
    ];
    let o = executor(state.path()).execute(&w).await.unwrap();
    assert_eq!(o.status, FinalStatus::Ok, "{o:?}");
    let expected_owner = if is_root() {
        "nobody".to_string()
    } else {
        nix::unistd::User::from_uid(nix::unistd::geteuid())
            .unwrap()
            .unwrap()
            .name
    };
    assert_eq!(
        o.result,
        format!(
            "{value}|{value}|\nunset|100000\n{expected_owner} 700\n{expected_owner} 400\nIBKIT_RESULT_BIG_0_RAW\nIBKIT_RESULT_DB_INIT_0_RAW\n"
        )
    );
    assert!(!pwned.exists(), "a reference value was executed");
    assert!(
        o.log
            .contains("reference name \"PATH\" is not a valid variable name"),
        "{}",
        o.log
    );
    assert!(
        o.log
            .contains("IBKIT_RESULT_BIG_0_RAW is 100000 bytes, too large for the environment"),
        "{}",
        o.log
    );
    // The values go with the step.
    assert!(
        !state.path().join("refs").join(&w.exec_id).exists(),
        "the references are removed once the step is done"
    );
}

// ---------------------------------------------------------------- item 5

/// Walks the state tree: directories 0700 (STATE and STATE/refs 0711, no
/// read), files without group/other bits. Used to be 0711 directories on
/// the way to 0644 `log` and `stdout` files whose paths are in the
/// runner's argv.
fn assert_private_tree(root: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            n += 1;
            if meta.is_dir() {
                let traverse_only = path == root.join("refs");
                let want = if traverse_only { 0o711 } else { 0o700 };
                assert_eq!(mode, want, "{} is {mode:o}", path.display());
                stack.push(path);
            } else {
                assert!(!meta.file_type().is_symlink(), "{}", path.display());
                assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
            }
        }
    }
    let root_mode = std::fs::metadata(root).unwrap().permissions().mode() & 0o7777;
    assert_eq!(root_mode, 0o711, "the state root is {root_mode:o}");
    n
}

#[tokio::test]
async fn state_tree_has_no_group_or_other_access() {
    let flags = shared_dir();
    let state = tempfile::tempdir().unwrap();
    let user = if is_root() { "nobody" } else { "root" };
    let mut w = work(
        &format!(
            "touch {f}/started; while [ ! -e {f}/go ]; do sleep 0.05; done\necho out; echo err >&2; echo '{{\"k\": 1}}' > {f}/res.json; umask",
            f = flags.path().display()
        ),
        json!({"user": user, "structured_result_file": flags.path().join("res.json"), "timeout": "60s"}),
    );
    w.references = vec![ResolvedReference {
        reference: "{{ibkit.results.a.1.raw}}".into(),
        name: "IBKIT_RESULT_A_1_RAW".into(),
        value: "secret".into(),
    }];
    // Through the agent binary, so its umask (077) and the runner's reset
    // for the script (022) are the real ones.
    let wf = flags.path().join("work.json");
    std::fs::write(&wf, serde_json::to_vec(&w).unwrap()).unwrap();
    let child = std::process::Command::new(exe())
        .arg("__exec-local")
        .arg(state.path())
        .arg(&wf)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !flags.path().join("started").exists() {
        assert!(Instant::now() < deadline, "the step never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Mid-step: attempt files, spec, script, log, stdout, references.
    let adir = state
        .path()
        .join("executions")
        .join(&w.exec_id)
        .join("attempts/1");
    for f in ["spec.json", "script", "log", "stdout", "runner.json"] {
        assert!(adir.join(f).exists(), "{f}");
    }
    let rdir = state.path().join("refs").join(&w.exec_id);
    let rmeta = std::fs::metadata(&rdir).unwrap();
    assert_eq!(rmeta.permissions().mode() & 0o777, 0o700);
    if is_root() {
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        assert_eq!(rmeta.uid(), nobody.uid.as_raw(), "the step's user owns it");
    }
    let n = assert_private_tree(state.path());
    assert!(n > 10, "walked {n} entries");
    std::fs::write(flags.path().join("go"), "").unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success());
    let o: StepOutcome = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(o.status, FinalStatus::Ok, "{o:?}");
    assert_eq!(o.result, "out\n0022\n", "scripts get umask 022");
    assert_private_tree(state.path());
    // In-process too (this test's umask, not the agent's): the modes are
    // explicit, kept results included.
    let mut again = work("echo kept", json!({"user": user}));
    again.instance = "inst2".into();
    let o = executor(state.path()).execute(&again).await.unwrap();
    assert_eq!(o.status, FinalStatus::Ok);
    assert!(state.path().join("results/inst2/grp/1/result").exists());
    assert_private_tree(state.path());
}

// ---------------------------------------------------------------- item 2

#[derive(Clone, Default)]
struct Fake {
    reports: Arc<Mutex<Vec<(usize, Report)>>>,
    work: Arc<Mutex<Option<Work>>>,
    /// Status answered to every report instead of taking it (0: take it).
    refuse: Arc<Mutex<u16>>,
}

/// The service's report route with a body limit, as `ibkit serve` has it.
fn fake_service(fake: Fake, limit: usize) -> axum::Router {
    use axum::extract::{DefaultBodyLimit, State};
    use axum::routing::{get, post};
    axum::Router::new()
        .route(
            "/v1/agent/reports",
            post(|State(f): State<Fake>, body: axum::body::Bytes| async move {
                let refuse = *f.refuse.lock().unwrap();
                if refuse != 0 {
                    return (
                        axum::http::StatusCode::from_u16(refuse).unwrap(),
                        axum::Json(json!({"error": "refused by the test"})),
                    );
                }
                let r: Report = serde_json::from_slice(&body).unwrap();
                if matches!(r.event, ReportEvent::Finished(_)) {
                    *f.work.lock().unwrap() = None;
                }
                f.reports.lock().unwrap().push((body.len(), r));
                (axum::http::StatusCode::OK, axum::Json(json!({"applied": true})))
            })
            .layer(DefaultBodyLimit::max(limit)),
        )
        .route(
            "/v1/agent/pair",
            post(|| async {
                axum::Json(json!({"credential": "cred", "instance": "inst1", "host": "web1", "heartbeat_interval": "1s"}))
            }),
        )
        .route(
            "/v1/agent/work",
            get(|State(f): State<Fake>| async move {
                let work = f.work.lock().unwrap().clone();
                if work.is_none() {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                axum::Json(json!({"work": work, "health_checks": [], "heartbeat_interval": "1s", "config_rev": "r"}))
            }),
        )
        .route("/v1/agent/heartbeat", post(|| async { axum::http::StatusCode::NO_CONTENT }))
        .with_state(fake)
}

async fn serve(fake: Fake, limit: usize) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = fake_service(fake, limit);
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn finished(outcome: StepOutcome) -> ReportEvent {
    ReportEvent::Finished(Box::new(outcome))
}

fn big_outcome(log: String) -> StepOutcome {
    StepOutcome {
        status: FinalStatus::Ok,
        attempts: 1,
        exit_code: Some(0),
        signal: None,
        timed_out: false,
        halted: false,
        started_at_ms: 1,
        finished_at_ms: 2,
        log,
        log_truncated_bytes: 0,
        result: "r".repeat(100_000),
        result_truncated_bytes: 0,
        structured_result: None,
        error: None,
    }
}

/// The service over TLS, as `ibkit serve` runs (HTTP/2 when both ends
/// offer it); returns the URL and the certificate pin.
async fn serve_tls(fake: Fake, limit: usize) -> (String, [u8; 32]) {
    use sha2::Digest;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let pin: [u8; 32] = sha2::Sha256::digest(ck.cert.der().as_ref()).into();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let config = axum_server::tls_rustls::RustlsConfig::from_der(
        vec![ck.cert.der().to_vec()],
        ck.signing_key.serialize_der(),
    )
    .await
    .unwrap();
    let app = fake_service(fake, limit);
    tokio::spawn(async move {
        axum_server::from_tcp_rustls(listener, config)
            .unwrap()
            .serve(app.into_make_service())
            .await
    });
    (url, pin)
}

/// The service refused an oversized final report with 413 and the agent
/// dropped it for good: the step stayed `running` forever. Now the agent
/// rebuilds it at half the size until the service takes it (over plain
/// HTTP and over TLS, where the 413 may come on an HTTP/2 stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_gets_a_smaller_final_report_not_a_dropped_one() {
    for tls in [false, true] {
        a_413_round(tls).await;
    }
}

async fn a_413_round(tls: bool) {
    let fake = Fake::default();
    let limit = 1 << 20;
    let (url, pin) = if tls {
        let (u, p) = serve_tls(fake.clone(), limit).await;
        (u, Some(p))
    } else {
        (serve(fake.clone(), limit).await, None)
    };
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path().join("outbox")).unwrap();
    // 2 MB of NUL bytes: 12 MB once escaped, within the agent's budget but
    // over this service's 1 MiB.
    outbox
        .push("e1", finished(big_outcome("\0".repeat(2_000_000))))
        .unwrap();
    let api = Api::new(&url, pin).unwrap().with_credential("c".into());
    // One delivery round: a 413 (or the connection the service cut while
    // refusing the body) is answered with a smaller report at once.
    outbox.deliver(&api).await.unwrap();
    assert!(outbox.is_empty());
    let got = fake.reports.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "one final report, taken once");
    let (size, report) = &got[0];
    assert!(*size <= limit, "{size}");
    let ReportEvent::Finished(o) = &report.event else {
        panic!("{report:?}")
    };
    assert_eq!(o.status, FinalStatus::Ok);
    assert!(
        o.log_truncated_bytes > 1_000_000,
        "{}",
        o.log_truncated_bytes
    );
    // One marker per rebuild, each with what that rebuild left out (a later
    // rebuild may cut an earlier marker out with the middle); the counter
    // has the whole.
    let counted: u64 = o
        .log
        .split("--- ibkit: ")
        .skip(1)
        .filter_map(|m| m.split(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(counted > 0 && counted <= o.log_truncated_bytes, "{counted}");
    assert!(
        o.log
            .contains("bytes left out here (the report must stay under")
    );
}

/// A final report refused for another reason stays queued (the work loop
/// backs off a minute); one the service no longer knows (409) is set
/// aside, kept on disk. Progress reports are still dropped on a 4xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_final_report_is_kept() {
    let fake = Fake::default();
    let url = serve(fake.clone(), MAX_REPORT_BYTES).await;
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path().join("outbox")).unwrap();
    let api = Api::new(&url, None).unwrap().with_credential("c".into());
    *fake.refuse.lock().unwrap() = 400;
    outbox
        .push(
            "e1",
            ReportEvent::Running {
                attempt: 1,
                started_at_ms: 1,
            },
        )
        .unwrap();
    outbox
        .push("e1", finished(big_outcome("log".into())))
        .unwrap();
    let err = outbox.deliver(&api).await.unwrap_err();
    assert!(matches!(err, DeliverError::Refused { .. }), "{err}");
    assert_eq!(
        outbox.len(),
        1,
        "the progress report went, the final one stays"
    );
    assert!(matches!(
        outbox.pending().unwrap()[0].event,
        ReportEvent::Finished(_)
    ));
    *fake.refuse.lock().unwrap() = 409;
    outbox.deliver(&api).await.unwrap();
    assert!(outbox.is_empty());
    let kept: Vec<_> = std::fs::read_dir(dir.path().join("outbox/refused"))
        .unwrap()
        .collect();
    assert_eq!(kept.len(), 1, "set aside, not deleted");
    *fake.refuse.lock().unwrap() = 0;
    outbox
        .push("e2", finished(big_outcome("log".into())))
        .unwrap();
    outbox.deliver(&api).await.unwrap();
    assert_eq!(fake.reports.lock().unwrap().len(), 1);
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The reproduction of issue 12 item 2: a step printing 12 MB of NUL bytes
/// and 6 MiB of \x01 (6x larger once JSON-escaped). The report used to
/// exceed the service's body limit, be dropped on the 413, and the step
/// stayed `running`. Against a service with the real 16 MiB limit, the
/// real agent delivers one final report, cut with counters, and its
/// memory stays modest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_output_reaches_the_service_and_agent_memory_stays_modest() {
    let base = tempfile::tempdir().unwrap();
    let mut w = work(
        "echo FIRST; head -c 12000000 /dev/zero; head -c 6291456 /dev/zero | tr '\\0' '\\1'; echo; echo LAST-LINE",
        json!({"attempts": 1, "timeout": "5m"}),
    );
    w.exec_id = "exec-big".into();
    let fake = Fake {
        work: Arc::new(Mutex::new(Some(w))),
        ..Fake::default()
    };
    let url = serve(fake.clone(), MAX_REPORT_BYTES).await;
    let cfg = base.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "server_url = \"{url}\"\ninstance = \"inst1\"\nhost = \"web1\"\npairing_key = \"k\"\nstate_dir = \"{}\"\n",
            base.path().join("state").display()
        ),
    )
    .unwrap();
    let agent = KillOnDrop(
        std::process::Command::new(exe())
            .args(["run", "--config"])
            .arg(&cfg)
            .stderr(std::fs::File::create(base.path().join("agent.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let done = fake
            .reports
            .lock()
            .unwrap()
            .iter()
            .any(|(_, r)| matches!(r.event, ReportEvent::Finished(_)));
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no final report; agent log:\n{}",
            std::fs::read_to_string(base.path().join("agent.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hwm = vm_hwm_kib(agent.0.id()).unwrap();
    drop(agent);
    let reports = fake.reports.lock().unwrap().clone();
    let (size, report) = reports
        .iter()
        .find(|(_, r)| matches!(r.event, ReportEvent::Finished(_)))
        .unwrap();
    let ReportEvent::Finished(o) = &report.event else {
        unreachable!()
    };
    eprintln!(
        "final report: {size} bytes (limit {MAX_REPORT_BYTES}); log cut {} bytes, result cut {} bytes; agent VmHWM {} KiB",
        o.log_truncated_bytes, o.result_truncated_bytes, hwm
    );
    assert!(*size <= MAX_REPORT_BYTES);
    assert_eq!(
        o.status,
        FinalStatus::Ok,
        "{}",
        o.error.clone().unwrap_or_default()
    );
    assert!(o.result.starts_with("FIRST\n") && o.result.ends_with("LAST-LINE\n"));
    assert!(
        o.result_truncated_bytes > 12_000_000,
        "{}",
        o.result_truncated_bytes
    );
    assert!(
        o.log_truncated_bytes > 12_000_000,
        "{}",
        o.log_truncated_bytes
    );
    assert!(o.log.contains("once JSON-escaped; head and tail kept"));
    assert!(
        hwm < 160 * 1024,
        "agent peak RSS {hwm} KiB with a maximal report"
    );
}

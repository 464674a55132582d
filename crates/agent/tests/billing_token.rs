//! The billing token task against a service stand-in on loopback (real
//! HTTP, the agent's own client): the request's shape, retries through
//! 404 and 5xx without touching the file, rotation after
//! `refresh_after_ms`, `rotate = false`, and the real `ibkit-agent run`
//! keeping the file of its `[billing_token]` config. The stand-in only
//! answers with scripted bodies; the service's own route is tested with
//! the service.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ibkit_agent::billing_token::{Timing, Trust, run_with};
use ibkit_agent::client::Api;
use ibkit_agent::config::BillingTokenConfig;
use serde_json::{Value, json};

/// One scripted answer: a status and a body.
type Answer = (u16, Value);

#[derive(Clone, Default)]
struct Svc {
    /// Answers in order; the last one repeats.
    script: Arc<Mutex<VecDeque<Answer>>>,
    /// Each billing-token request: when, and its Authorization header.
    seen: Arc<Mutex<Vec<(Instant, String)>>>,
}

fn key(k: &str, refresh_ms: u64) -> Answer {
    (
        200,
        json!({"instance_uuid": "6f1c2a9e-3b1d-4c55-9a0e-2f4b8e7d1c00", "key": k,
               "secondary_key": "old-key-not-for-the-file", "refresh_after_ms": refresh_ms}),
    )
}

fn status(code: u16) -> Answer {
    (code, json!({"error": format!("scripted {code}")}))
}

fn router(svc: Svc) -> axum::Router {
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{get, post};
    axum::Router::new()
        .route(
            "/v1/agent/billing-token",
            get(|State(s): State<Svc>, h: HeaderMap| async move {
                let auth = h
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                s.seen.lock().unwrap().push((Instant::now(), auth));
                let (code, body) = {
                    let mut q = s.script.lock().unwrap();
                    if q.len() > 1 {
                        q.pop_front().unwrap()
                    } else {
                        q.front().cloned().unwrap()
                    }
                };
                (StatusCode::from_u16(code).unwrap(), axum::Json(body))
            }),
        )
        // What `ibkit-agent run` needs besides.
        .route(
            "/v1/agent/pair",
            post(|axum::Json(req): axum::Json<ibkit_api::wire::PairRequest>| async move {
                axum::Json(json!({"credential": "cred-1", "instance": req.instance, "host": req.host, "heartbeat_interval": "1s"}))
            }),
        )
        .route(
            "/v1/agent/work",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                axum::Json(json!({"work": null, "health_checks": [], "heartbeat_interval": "1s", "config_rev": "r1"}))
            }),
        )
        .route("/v1/agent/heartbeat", post(|| async { StatusCode::NO_CONTENT }))
        .route("/v1/agent/reports", post(|| async { axum::Json(json!({"applied": true})) }))
        .with_state(svc)
}

async fn serve(script: Vec<Answer>) -> (String, Svc) {
    let svc = Svc {
        script: Arc::new(Mutex::new(script.into())),
        ..Svc::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(svc.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), svc)
}

/// root/root when the test runs as root (the defaults), else the test's
/// own user and group (the only ones it may give a file to).
fn owner() -> (String, String, u32, u32) {
    let t = Trust::current();
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(t.uid))
        .unwrap()
        .unwrap()
        .name;
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(t.gid))
        .unwrap()
        .unwrap()
        .name;
    (user, group, t.uid, t.gid)
}

fn config(path: &Path, rotate: bool) -> BillingTokenConfig {
    let (user, group, _, _) = owner();
    BillingTokenConfig {
        path: path.to_path_buf(),
        owner: user,
        group,
        mode: None,
        rotate,
    }
}

const FAST: Timing = Timing {
    not_enabled_retry: Duration::from_millis(300),
    max_backoff: Duration::from_millis(400),
};

async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_keep_the_file_and_rotation_replaces_it() {
    let (url, svc) = serve(vec![
        status(404),
        status(500),
        key("key-A", 1000),
        status(503),
        status(502),
        key("key-A", 1000),
        key("key-B", 1000),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("opt/agent/token.key");
    let api = Api::new(&url, None)
        .unwrap()
        .with_credential("cred-1".into());
    let task = tokio::spawn(run_with(config(&path, true), api, Trust::current(), FAST));

    // 404 and 500: asked again, no file yet.
    wait_for("three requests", 10, || svc.seen.lock().unwrap().len() >= 3).await;
    wait_for("key-A", 10, || read(&path).as_deref() == Some("key-A")).await;
    // From now on the file only ever holds a whole key, through the 5xx.
    let mut reads = 0;
    wait_for("key-B", 20, || {
        let got = read(&path).expect("the file stays");
        assert!(got == "key-A" || got == "key-B", "{got:?}");
        reads += 1;
        got == "key-B"
    })
    .await;
    assert!(reads > 10);
    task.abort();

    let (_, _, uid, gid) = owner();
    let m = std::fs::symlink_metadata(&path).unwrap();
    let mode = if owner().1 == "root" { 0o600 } else { 0o640 };
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (uid, gid, mode));
    let seen = svc.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 7, "one request per scripted answer");
    assert!(seen.iter().all(|(_, a)| a == "Bearer cred-1"), "{seen:?}");
    // After a key, the next request waits refresh_after_ms (1 s ±10%,
    // at least 1 s); after a failure, only the backoff.
    let gap = |i: usize| seen[i + 1].0 - seen[i].0;
    assert!(gap(2) >= Duration::from_millis(990), "{:?}", gap(2));
    assert!(gap(5) >= Duration::from_millis(990), "{:?}", gap(5));
    assert!(gap(3) < Duration::from_millis(900), "{:?}", gap(3));
    // 404: the slow retry.
    assert!(gap(0) >= Duration::from_millis(290), "{:?}", gap(0));
    // Only the newest key is in the file.
    assert_eq!(read(&path).unwrap(), "key-B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_rotation_the_first_key_is_kept() {
    let (url, svc) = serve(vec![status(503), key("key-A", 1000), key("key-B", 1000)]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.key");
    let api = Api::new(&url, None)
        .unwrap()
        .with_credential("cred-1".into());
    let task = tokio::spawn(run_with(config(&path, false), api, Trust::current(), FAST));
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the task ends once the key is written")
        .unwrap();
    assert_eq!(read(&path).unwrap(), "key-A");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(svc.seen.lock().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_path_is_retried_and_never_written() {
    let (url, svc) = serve(vec![key("key-A", 1000)]).await;
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = open.join("token.key");
    let api = Api::new(&url, None)
        .unwrap()
        .with_credential("cred-1".into());
    let task = tokio::spawn(run_with(config(&path, true), api, Trust::current(), FAST));
    // Fetched again and again (the backoff), never written.
    wait_for("retries", 10, || svc.seen.lock().unwrap().len() >= 4).await;
    assert!(!path.exists());
    // Fixed by the administrator: written on the next round.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    wait_for("key-A", 10, || read(&path).as_deref() == Some("key-A")).await;
    task.abort();
}

struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ibkit-agent"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_keeps_the_file_of_its_config() {
    let (url, svc) = serve(vec![key("vk-key-1", 1000), key("vk-key-2", 3_600_000)]).await;
    let base = tempfile::tempdir().unwrap();
    let path = base.path().join("opt/agent/xaas-secret-auth-token.key");
    let (user, group, uid, gid) = owner();
    let cfg = base.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "server_url = \"{url}\"\ninstance = \"inst1\"\nhost = \"web1\"\npairing_key = \"key1\"\nstate_dir = \"{}\"\n\n[billing_token]\npath = \"{}\"\nowner = \"{user}\"\ngroup = \"{group}\"\nrotate = true\n",
            base.path().join("state").display(),
            path.display()
        ),
    )
    .unwrap();
    let log = base.path().join("agent.log");
    let _agent = KillOnDrop(
        std::process::Command::new(exe())
            .args(["run", "--config"])
            .arg(&cfg)
            .env("IBKIT_LOG", "debug")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for("vk-key-1", 20, || {
        read(&path).as_deref() == Some("vk-key-1")
    })
    .await;
    wait_for("vk-key-2", 20, || {
        read(&path).as_deref() == Some("vk-key-2")
    })
    .await;
    let m = std::fs::metadata(&path).unwrap();
    let mode = if group == "root" { 0o600 } else { 0o640 };
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (uid, gid, mode));
    // The agent's umask is 077: the directories it made are 0755 anyway,
    // so the file's owner can reach it.
    for d in [
        path.parent().unwrap(),
        path.parent().unwrap().parent().unwrap(),
    ] {
        assert_eq!(
            std::fs::metadata(d).unwrap().mode() & 0o7777,
            0o755,
            "{}",
            d.display()
        );
    }
    assert!(
        svc.seen
            .lock()
            .unwrap()
            .iter()
            .all(|(_, a)| a == "Bearer cred-1")
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("billing token file written"), "{text}");
    for secret in ["vk-key-1", "vk-key-2", "old-key-not-for-the-file"] {
        assert!(!text.contains(secret), "{secret} in the log:\n{text}");
    }
}

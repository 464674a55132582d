//! Issue 12, service side: each test reproduces an attack or fault on the
//! real service (HTTPS on loopback, SQLite on disk) and asserts the safe
//! outcome.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use common::{Svc, config, finished, tmp};
use ibkit_api::PROTOCOL_VERSION;
use serde_json::{Value, json};

fn one_host_spec(name: &str) -> Value {
    json!({
        "name": name,
        "hosts": [{"name": "a"}],
        "groups": [{"name": "g", "hosts": ["a"], "steps": [{"index": 1, "content": "true"}]}],
    })
}

async fn pair(svc: &Svc, id: &str, host: &str, key: &str, protocol: u32) -> (u16, Value) {
    svc.req(
        "POST",
        "/v1/agent/pair",
        None,
        Some(&json!({"instance": id, "host": host, "pairing_key": key,
            "agent_version": "t", "protocol": protocol})),
    )
    .await
}

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or("")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Reproduces: pairing a second time with a host's key succeeded and
/// revoked the real agent's credential. Now the key is single-use: the
/// second pairing is refused (403, saying how to get a new key), the real
/// agent keeps working, and the operator sees the refusal on the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_pairing_key_is_refused_and_shown_to_the_operator() {
    let dir = tmp();
    let svc = Svc::start(config(dir.path())).await;
    let (id, keys) = svc.create(&one_host_spec("reuse")).await;
    let real = svc.pair(&id, &keys, "a").await;

    let (st, body) = pair(&svc, &id, "a", &keys[0].1, PROTOCOL_VERSION).await;
    assert_eq!(st, 403, "{body}");
    let e = error_of(&body);
    assert!(
        e.contains("pairing key already used at 20")
            && e.contains(&format!(
                "issue a new one (POST /v1/instances/{id}/hosts/a/pairing-key)"
            )),
        "{e}"
    );
    assert_eq!(
        real.work(&svc, 0, None).await.0,
        200,
        "the real agent keeps its credential"
    );
    let host = svc.instance(&id).await["hosts"][0].clone();
    assert!(
        host["last_pairing_refusal"]
            .as_str()
            .is_some_and(|r| r.contains("already used")),
        "{host}"
    );
    assert!(host["last_pairing_refusal_at"].as_i64().is_some(), "{host}");
    assert!(host["pairing_key_used_at"].as_i64().is_some(), "{host}");
    assert_eq!(host["paired"], true);

    // A wrong key gets the same answer as an unknown host (no oracle), and
    // the operator sees the attempt.
    let (st, wrong) = pair(&svc, &id, "a", "pk_guess", PROTOCOL_VERSION).await;
    let (st2, unknown) = pair(&svc, &id, "zz", "pk_guess", PROTOCOL_VERSION).await;
    assert_eq!((st, st2), (401, 401));
    assert_eq!(wrong, unknown);
    let host = svc.instance(&id).await["hosts"][0].clone();
    assert_eq!(
        host["last_pairing_refusal"], "pairing refused: wrong pairing key",
        "{host}"
    );

    // A re-issued key pairs once, and the old one stays refused.
    let before = now_ms();
    let (st, fresh) = svc
        .op(
            "POST",
            &format!("/v1/instances/{id}/hosts/a/pairing-key"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{fresh}");
    let expires = fresh["pairing_key_expires_at"].as_i64().expect("expiry");
    assert!(
        (before + 3_500_000..=now_ms() + 3_600_000).contains(&expires),
        "a fresh hour: {fresh}"
    );
    let key = fresh["pairing_key"].as_str().expect("key");
    assert_eq!(pair(&svc, &id, "a", key, PROTOCOL_VERSION).await.0, 200);
    assert_eq!(pair(&svc, &id, "a", key, PROTOCOL_VERSION).await.0, 403);
    assert_eq!(
        pair(&svc, &id, "a", &keys[0].1, PROTOCOL_VERSION).await.0,
        401
    );
}

/// Reproduces: pairing keys never expired. Now a key past its lifetime is
/// refused with the time and the way out; an instance can ask for another
/// lifetime; a re-issued key gets a fresh expiry; an agent speaking an old
/// protocol is told to reinstall (and its key is not consumed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_pairing_key_is_refused_with_the_way_out() {
    let dir = tmp();
    let mut cfg = config(dir.path());
    cfg.pairing_key_ttl = Duration::from_secs(1);
    let svc = Svc::start(cfg).await;
    let (id, keys) = svc.create(&one_host_spec("short")).await;
    let (st, long) = svc
        .op(
            "POST",
            "/v1/instances?pairing_key_ttl=1h",
            Some(&one_host_spec("long")),
        )
        .await;
    assert_eq!(st, 201, "{long}");
    let long_id = long["id"].as_str().expect("id").to_string();
    let long_key = long["hosts"][0]["pairing_key"]
        .as_str()
        .expect("key")
        .to_string();
    assert!(
        long["hosts"][0]["pairing_key_expires_at"]
            .as_i64()
            .expect("expiry")
            > now_ms() + 3_500_000,
        "{long}"
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;

    let (st, body) = pair(&svc, &id, "a", &keys[0].1, PROTOCOL_VERSION).await;
    assert_eq!(st, 403, "{body}");
    let e = error_of(&body);
    assert!(
        e.contains("pairing key expired at 20")
            && e.contains(&format!(
                "issue a new one (POST /v1/instances/{id}/hosts/a/pairing-key)"
            )),
        "{e}"
    );
    let host = svc.instance(&id).await["hosts"][0].clone();
    assert!(
        host["last_pairing_refusal"]
            .as_str()
            .is_some_and(|r| r.contains("expired at")),
        "{host}"
    );
    assert_eq!(host["paired"], false);
    // The instance's own lifetime holds.
    assert_eq!(
        pair(&svc, &long_id, "a", &long_key, PROTOCOL_VERSION)
            .await
            .0,
        200
    );
    // A re-issued key (as `ibkit deploy` asks for a recreated VM) is fresh.
    let (st, fresh) = svc
        .op(
            "POST",
            &format!("/v1/instances/{id}/hosts/a/pairing-key"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{fresh}");
    let key = fresh["pairing_key"].as_str().expect("key");
    assert_eq!(pair(&svc, &id, "a", key, PROTOCOL_VERSION).await.0, 200);

    // Lifetimes out of range are refused, naming the parameter.
    for q in ["0s", "800h", "forever"] {
        let (st, body) = svc
            .op(
                "POST",
                &format!("/v1/instances?pairing_key_ttl={q}"),
                Some(&one_host_spec("bad")),
            )
            .await;
        assert_eq!(st, 400, "{q}: {body}");
        assert!(error_of(&body).contains("pairing_key_ttl"), "{body}");
    }

    // An agent of protocol 1 is refused before its key is used.
    let (old, old_keys) = svc.create(&one_host_spec("old")).await;
    let (st, body) = pair(&svc, &old, "a", &old_keys[0].1, 1).await;
    assert_eq!(st, 400, "{body}");
    assert_eq!(
        error_of(&body),
        "agent protocol 1 is older than this service's minimum 2: reinstall the agent"
    );
    assert_eq!(
        svc.instance(&old).await["hosts"][0]["last_pairing_refusal"],
        "agent protocol 1 is older than this service's minimum 2: reinstall the agent"
    );
    assert_eq!(
        pair(&svc, &old, "a", &old_keys[0].1, PROTOCOL_VERSION)
            .await
            .0,
        200
    );
}

/// Reproduces: the install command carried the pairing key as an argument
/// of `sh`, visible in `ps` to every local user, and `curl … | sh` exited 0
/// when the download failed (a wrong pin). Runs the printed command with a
/// stand-in `curl` serving a script that records what it got: the key
/// arrives in the environment only; a failing `curl` fails the command. A
/// public URL the command could not carry unquoted is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_install_command_keeps_the_key_off_command_lines() {
    let dir = tmp();
    let mut cfg = config(&dir.path().join("state"));
    cfg.public_url = Some("https://svc.example:8443/ibkit/".into());
    let mut svc = Svc::start(cfg.clone()).await;
    // The public URL is for the VMs; this test reaches the bound port.
    svc.url = svc.server.as_ref().expect("server").local_url();
    let (st, created) = svc
        .op("POST", "/v1/instances", Some(&one_host_spec("cmd")))
        .await;
    assert_eq!(st, 201, "{created}");
    let id = created["id"].as_str().expect("id");
    let key = created["hosts"][0]["pairing_key"].as_str().expect("key");
    let cmd = created["hosts"][0]["install_command"]
        .as_str()
        .expect("command");
    let bin = dir.path().join("fakebin");
    std::fs::create_dir(&bin).expect("mkdir");
    let curl = bin.join("curl");
    let run = |fake_curl: &str| {
        std::fs::write(&curl, fake_curl).expect("fake curl");
        std::fs::set_permissions(&curl, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        std::process::Command::new("sh")
            .args(["-c", cmd])
            .env("PATH", path)
            .env("OUT", dir.path())
            .output()
            .expect("sh runs")
    };
    let out = run("#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$OUT/curl-args\"\n\
         echo 'printf \"%s\\n\" \"$@\" > \"$OUT/sh-args\"; printf \"%s\" \"$IBKIT_PAIRING_KEY\" > \"$OUT/sh-env\"'\n");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).expect(name);
    let pin = svc
        .server
        .as_ref()
        .expect("server")
        .state
        .curl_pin
        .clone()
        .expect("pin");
    let curl_args = read("curl-args");
    assert!(
        curl_args.ends_with(&format!(
            "-k\n--pinnedpubkey\n{pin}\nhttps://svc.example:8443/ibkit/v1/agent/install.sh\n"
        )),
        "{curl_args}"
    );
    assert_eq!(read("sh-args"), format!("--instance\n{id}\n--host\na\n"));
    assert_eq!(read("sh-env"), key);
    assert!(!curl_args.contains(key) && !cmd.contains(&format!(" {key}")));
    // A download that fails (e.g. the pin does not match) fails the command.
    let out = run(
        "#!/bin/sh\necho 'curl: (90) SSL: public key does not match pinned public key' >&2\nexit 90\n",
    );
    assert!(
        !out.status.success(),
        "a failed download must fail the command"
    );

    if let Some(s) = svc.server.take() {
        s.shutdown().await;
    }
    for bad in [
        "https://svc.example/it's",
        "https://a$(id)",
        "svc.example:8443",
    ] {
        cfg.public_url = Some(bad.into());
        let e = match ibkit_server::Server::start(cfg.clone()).await {
            Ok(_) => panic!("{bad} was accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(e.contains("--public-url"), "{e}");
    }
}

/// Walks `root` and lists everything group or others may access.
fn loose_modes(root: &Path) -> Vec<String> {
    let mut loose = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).expect("stat");
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            loose.push(format!("{} {mode:04o}", p.display()));
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).expect("read_dir") {
                stack.push(e.expect("entry").path());
            }
        }
    }
    loose
}

/// Drives the service so that every state file exists (the WAL and the
/// shared-memory file appear on the first write).
async fn exercise(svc: &Svc) {
    let (id, keys) = svc.create(&one_host_spec("modes")).await;
    let a = svc.pair(&id, &keys, "a").await;
    let w = a.take(svc).await;
    a.run(
        svc,
        w["exec_id"].as_str().expect("exec"),
        true,
        "secret output",
        Some(json!({"password": "hunter2"})),
    )
    .await;
}

/// Reproduces: `ibkit.db`, `-wal`, `-shm` (every script, variable and
/// result) were 0644 in a 0755 state directory. The test process keeps the
/// usual umask 022, so the modes come from the service itself: a fresh
/// state, then one an older ibkit left open (0755/0644) that a restart
/// narrows; a world-writable directory is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_files_are_private_to_the_service_user() {
    let dir = tmp();
    let state = dir.path().join("state");
    let mut svc = Svc::start(config(&state)).await;
    exercise(&svc).await;
    for f in [
        "ibkit.db",
        "ibkit.db-wal",
        "ibkit.db-shm",
        "tls/key.pem",
        "operator-token",
    ] {
        assert!(state.join(f).exists(), "{f} missing");
    }
    let loose = loose_modes(&state);
    assert!(loose.is_empty(), "readable by others: {loose:?}");

    // What an older ibkit left behind.
    if let Some(s) = svc.server.take() {
        s.shutdown().await;
    }
    let mut stack = vec![state.clone()];
    while let Some(p) = stack.pop() {
        let dir = p.is_dir();
        let mode = if dir { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        if dir {
            for e in std::fs::read_dir(&p).expect("read_dir") {
                stack.push(e.expect("entry").path());
            }
        }
    }
    assert!(!loose_modes(&state).is_empty());
    svc.restart().await;
    exercise(&svc).await;
    let loose = loose_modes(&state);
    assert!(loose.is_empty(), "left readable by others: {loose:?}");

    let open = dir.path().join("open");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let e = match ibkit_server::Server::start(config(&open)).await {
        Ok(_) => panic!("a world-writable state directory was used"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("writable by other users"), "{e}");
}

/// Reproduces: with `--tls-cert/--tls-key` (a certificate the operator
/// renews) the installer and `GET /v1/service` still handed out the
/// certificate's hash, so every agent pinned it and broke at renewal. Only
/// the generated certificate is pinned; local clients still get the hash
/// in `endpoint.json`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_certificate_is_not_pinned_by_agents_or_installers() {
    let dir = tmp();
    let pki = dir.path().join("pki");
    std::fs::create_dir(&pki).expect("mkdir");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("certificate");
    let (cert_pem, key_pem) = (ck.cert.pem(), ck.signing_key.serialize_pem());
    std::fs::write(pki.join("cert.pem"), &cert_pem).expect("cert");
    std::fs::write(pki.join("key.pem"), &key_pem).expect("key");
    let state = dir.path().join("state");
    let mut cfg = config(&state);
    cfg.tls = ibkit_server::TlsMode::Provided {
        cert: pki.join("cert.pem"),
        key: pki.join("key.pem"),
    };
    let server = ibkit_server::Server::start(cfg).await.expect("starts");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).expect("pem"))
        .build()
        .expect("client");
    let token = std::fs::read_to_string(state.join("operator-token")).expect("token");
    let url = server.url.clone();

    let script = client
        .get(format!("{url}/v1/agent/install.sh"))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert!(script.contains("CERT_SHA256=''\n"), "{script}");
    assert!(script.contains("CURL_PIN=''\n"), "{script}");
    let info: ibkit_api::wire::ServiceInfo = client
        .get(format!("{url}/v1/service"))
        .bearer_auth(token.trim())
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("a ServiceInfo");
    assert_eq!((info.cert_sha256, info.curl_pin), (None, None));
    let created: Value = client
        .post(format!("{url}/v1/instances"))
        .bearer_auth(token.trim())
        .json(&one_host_spec("ca"))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    let cmd = created["hosts"][0]["install_command"]
        .as_str()
        .expect("cmd");
    assert!(
        cmd.contains(&format!("$(curl -fsS -g {url}/v1/agent/install.sh ")),
        "{cmd}"
    );
    assert!(!cmd.contains("pinnedpubkey"), "{cmd}");
    let endpoint: Value =
        serde_json::from_slice(&std::fs::read(state.join("endpoint.json")).expect("endpoint"))
            .expect("JSON");
    assert_eq!(
        endpoint["cert_sha256"].as_str(),
        server.cert_sha256.as_deref()
    );
    assert!(server.cert_sha256.is_some());
    server.shutdown().await;
}

fn two_host_spec() -> Value {
    json!({
        "name": "dedup",
        "hosts": [{"name": "a"}, {"name": "b"}],
        "groups": [{"name": "g", "hosts": ["a", "b"], "steps": [{"index": 1, "content": "true"}]}],
    })
}

/// Reproduces: report ids were de-duplicated globally, before the
/// ownership check, so host b, reporting on its own step with the id host
/// a would use, made a's final report a "duplicate" that was never applied
/// (and a report on another host's execution could answer "duplicate"
/// instead of 403).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_ids_are_deduplicated_per_host_after_the_ownership_check() {
    let dir = tmp();
    let svc = Svc::start(config(dir.path())).await;
    let (id, keys) = svc.create(&two_host_spec()).await;
    let a = svc.pair(&id, &keys, "a").await;
    let b = svc.pair(&id, &keys, "b").await;
    let ea = a.take(&svc).await["exec_id"]
        .as_str()
        .expect("a")
        .to_string();
    let eb = b.take(&svc).await["exec_id"]
        .as_str()
        .expect("b")
        .to_string();

    // b squats on the id a is about to use.
    let (st, body) = b
        .report(&svc, finished("a-final-1", &eb, true, "b", None))
        .await;
    assert_eq!((st, &body["applied"]), (200, &json!(true)), "{body}");
    let (st, body) = a
        .report(&svc, finished("a-final-1", &ea, true, "a", None))
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body, json!({"applied": true}), "a's report is applied");
    assert_eq!(svc.step(&id, "a", "g", 1).await["result"], "a");
    // A duplicate of a's own report is still recognised.
    let (st, body) = a
        .report(&svc, finished("a-final-1", &ea, true, "a", None))
        .await;
    assert_eq!(
        (st, body),
        (200, json!({"applied": false, "duplicate": true}))
    );
    // Another host's execution is refused even with a known id.
    let (st, body) = a
        .report(&svc, finished("a-final-1", &eb, false, "x", None))
        .await;
    assert_eq!(st, 403, "{body}");
}

/// Reproduces: unknown query parameters were ignored, so a misspelt filter
/// (`?stauts=open`) silently returned everything. Operator routes refuse
/// them, naming the parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_query_parameters_are_refused_on_operator_routes() {
    let dir = tmp();
    let svc = Svc::start(config(dir.path())).await;
    let (id, _) = svc.create(&one_host_spec("q")).await;
    let (st, body) = svc
        .op("GET", "/v1/recovery-requests?stauts=open", None)
        .await;
    assert_eq!(st, 400, "{body}");
    assert!(
        error_of(&body).starts_with("unknown query parameter `stauts`"),
        "{body}"
    );
    for path in [
        "/v1/instances?limit=1".to_string(),
        format!("/v1/instances/{id}?verbose=1"),
        format!("/v1/instances/{id}/hosts/a/steps?group=g"),
        format!("/v1/instances/{id}/hosts/a/health?all"),
        format!("/v1/instances/{id}/results/a/g/1?pretty=1"),
        "/v1/service?x=1".to_string(),
    ] {
        let (st, body) = svc.op("GET", &path, None).await;
        assert_eq!(st, 400, "{path}: {body}");
        assert!(
            error_of(&body).starts_with("unknown query parameter `"),
            "{path}: {body}"
        );
    }
    for (method, path) in [
        ("POST", "/v1/instances?pairing_key_tll=1h".to_string()),
        (
            "POST",
            format!("/v1/instances/{id}/hosts/a/pairing-key?ttl=1h"),
        ),
        ("POST", format!("/v1/instances/{id}/redeploy?force=1")),
        ("DELETE", format!("/v1/instances/{id}?cascade=1")),
    ] {
        let (st, body) = svc.op(method, &path, Some(&one_host_spec("q2"))).await;
        assert_eq!(st, 400, "{method} {path}: {body}");
        assert!(
            error_of(&body).starts_with("unknown query parameter `"),
            "{body}"
        );
    }
    // Known parameters still work, and nothing was changed above.
    let (st, body) = svc
        .op(
            "GET",
            &format!("/v1/recovery-requests?status=open&instance={id}"),
            None,
        )
        .await;
    assert_eq!((st, body), (200, json!([])));
    assert_ne!(svc.instance(&id).await["status"], "deleted");
}

/// A finished report carrying `structured` as the agent would send it.
fn with_structured(report_id: &str, exec: &str, structured: &str, log: String) -> Value {
    let mut r = finished(report_id, exec, true, "raw", None);
    r["structured_result"] = Value::String(structured.to_string());
    r["log"] = Value::String(log);
    r
}

/// Reproduces: a structured result of any size (or a non-object) was kept
/// as the step's result, and a report over the body limit was refused with
/// a 4xx the agent treated as permanent (the step stayed `running`). Now a
/// structured result over `--max-structured-bytes`, or not an object, fails
/// the step with the reason (sizes and limit named), the report is applied
/// once, and only a body over 16 MiB is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_or_non_object_structured_result_fails_the_step() {
    let dir = tmp();
    let svc = Svc::start(config(dir.path())).await;
    let spec = json!({
        "name": "big",
        "hosts": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
        "groups": [{"name": "g", "hosts": ["a", "b", "c"], "steps": [{"index": 1, "content": "true"}]}],
    });
    let (id, keys) = svc.create(&spec).await;
    let (a, b, c) = (
        svc.pair(&id, &keys, "a").await,
        svc.pair(&id, &keys, "b").await,
        svc.pair(&id, &keys, "c").await,
    );
    let exec = |w: Value| w["exec_id"].as_str().expect("exec").to_string();
    let (ea, eb, ec) = (
        exec(a.take(&svc).await),
        exec(b.take(&svc).await),
        exec(c.take(&svc).await),
    );

    // 14 MiB of `[0,0,…]` in a 15 MiB report: under the body limit.
    let zeros = format!("{{\"a\":[0{}]}}", ",0".repeat(7 << 20));
    let report = with_structured("big-1", &ea, &zeros, "x".repeat(1 << 20));
    let (st, body) = a.report(&svc, report.clone()).await;
    assert_eq!((st, &body), (200, &json!({"applied": true})), "{body}");
    let step = svc.step(&id, "a", "g", 1).await;
    assert_eq!(step["status"], "failed");
    assert_eq!(step["structured_result"], Value::Null);
    let e = step["error"].as_str().expect("error");
    assert!(
        e.contains(&format!(
            "the service refused the structured result: the structured result is {} bytes, \
             over the 1048576-byte limit (ibkit serve --max-structured-bytes)",
            zeros.len()
        )),
        "{e}"
    );
    assert_eq!(step["ever_ok"], false);
    // Sent again (a lost answer): applied once.
    let (st, body) = a.report(&svc, report).await;
    assert_eq!((st, body["duplicate"].clone()), (200, json!(true)));

    // Not an object.
    let (st, body) = b
        .report(&svc, with_structured("arr-1", &eb, "[1,2]", String::new()))
        .await;
    assert_eq!((st, &body["applied"]), (200, &json!(true)), "{body}");
    let step = svc.step(&id, "b", "g", 1).await;
    assert_eq!(step["status"], "failed");
    assert!(
        step["error"]
            .as_str()
            .is_some_and(|e| e.contains("must be a JSON object, not an array")),
        "{step}"
    );

    // Over 16 MiB: 413 (the server may close before the client has sent
    // it all: then the request fails), nothing applied.
    let huge = with_structured("huge-1", &ec, "{}", "y".repeat(17 << 20));
    let r = svc
        .client
        .post(format!("{}/v1/agent/reports", svc.url))
        .bearer_auth(&c.credential)
        .json(&huge)
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status().as_u16(), 413);
        let body: Value = r.json().await.expect("JSON error");
        assert!(body["error"].is_string(), "{body}");
    }
    assert_eq!(svc.step(&id, "c", "g", 1).await["status"], "pending");
    // A result at the limit is kept.
    let ok = format!("{{\"k\":\"{}\"}}", "v".repeat((1 << 20) - 8));
    assert_eq!(ok.len(), 1 << 20);
    let (st, body) = c
        .report(&svc, with_structured("ok-1", &ec, &ok, String::new()))
        .await;
    assert_eq!((st, &body["applied"]), (200, &json!(true)), "{body}");
    let step = svc.step(&id, "c", "g", 1).await;
    assert_eq!(step["status"], "ok", "{}", step["error"]);
    assert_eq!(step["structured_result_bytes"], 1 << 20);
    let (st, r) = svc
        .op("GET", &format!("/v1/instances/{id}/results/c/g/1"), None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        r["structured"]["k"].as_str().map(str::len),
        Some((1 << 20) - 8)
    );
}

/// The schema of version 1 (before issue 12), as an older ibkit wrote it.
const SCHEMA_V1: &str = include_str!("data/schema-v1.sql");

/// Reproduces the upgrade of a state an older ibkit wrote (schema 1):
/// nothing is lost, report ids it processed are still duplicates, a used
/// pairing key stays used and an unused one pairs, and a structured result
/// stored before the size limit is parsed only with the cap (a dependent
/// step fails saying why; the result route answers 422).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_1_database_is_migrated_without_losing_data() {
    let dir = tmp();
    let id = "6f1c5a3e-0000-4000-8000-000000000001";
    let spec: ibkit_api::InstanceSpec = serde_json::from_value(json!({
        "name": "old",
        "hosts": [{"name": "a"}, {"name": "b"}],
        "groups": [
            {"name": "g", "hosts": ["a"], "steps": [
                {"index": 1, "content": "true"}, {"index": 2, "content": "true"}]},
            {"name": "use", "hosts": ["b"], "steps": [
                {"index": 1, "content": "echo {{ibkit.results.a.g.1.structured.x}}"}]},
        ],
    }))
    .expect("spec");
    let hash = |g: usize, i: usize| spec.groups[g].steps[i].hash();
    let sha = |s: &str| ibkit_api::step::sha256_hex(s.as_bytes());
    let big = format!("{{\"x\":\"{}\"}}", "a".repeat(2 << 20));
    {
        let c = rusqlite::Connection::open(dir.path().join("ibkit.db")).expect("db");
        c.execute_batch(SCHEMA_V1).expect("schema 1");
        c.pragma_update(None, "user_version", 1).expect("version");
        c.execute(
            "INSERT INTO instances (id, name, spec_json, status, generation, created_at, updated_at)
             VALUES (?1, 'old', ?2, 'applying', 1, 1000, 1000)",
            rusqlite::params![id, serde_json::to_string(&spec).expect("json")],
        )
        .expect("instance");
        c.execute(
            "INSERT INTO hosts (instance, name, pairing_key_hash, credential_hash, paired_at)
             VALUES (?1, 'a', ?2, ?3, 1000), (?1, 'b', ?4, NULL, NULL)",
            rusqlite::params![id, sha("pk_a"), sha("ibk_a"), sha("pk_b")],
        )
        .expect("hosts");
        c.execute(
            "INSERT INTO steps (instance, host, grp, idx, hash, status, structured_result, result, ever_ok)
             VALUES (?1, 'a', 'g', 1, ?2, 'ok', ?3, 'kept', 1)",
            rusqlite::params![id, hash(0, 0), big],
        )
        .expect("step a/g/1");
        c.execute(
            "INSERT INTO steps (instance, host, grp, idx, hash, status, exec_id, attempts)
             VALUES (?1, 'a', 'g', 2, ?2, 'running', 'exec-a2', 1)",
            rusqlite::params![id, hash(0, 1)],
        )
        .expect("step a/g/2");
        c.execute(
            "INSERT INTO steps (instance, host, grp, idx, hash, status)
             VALUES (?1, 'b', 'use', 1, ?2, 'pending')",
            rusqlite::params![id, hash(1, 0)],
        )
        .expect("step b/use/1");
        c.execute(
            "INSERT INTO processed_reports (report_id, at) VALUES ('old-report', 1000)",
            [],
        )
        .expect("report");
    }

    let mut svc = Svc::start(config(dir.path())).await;
    let inst = svc.instance(id).await;
    assert_eq!(inst["name"], "old");
    let host = |n: usize| inst["hosts"][n].clone();
    assert_eq!(host(0)["pairing_key_used_at"], 1000, "{inst}");
    assert!(
        host(1)["pairing_key_expires_at"]
            .as_i64()
            .is_some_and(|t| t > now_ms()),
        "{inst}"
    );
    // Data kept; the big legacy structured result is left to the result
    // route, which refuses to build a tree of it.
    let s = svc.step(id, "a", "g", 1).await;
    assert_eq!(
        (s["status"].clone(), s["result"].clone()),
        (json!("ok"), json!("kept"))
    );
    assert_eq!(s["structured_result"], Value::Null);
    assert_eq!(s["structured_result_bytes"], big.len());
    let (st, body) = svc
        .op("GET", &format!("/v1/instances/{id}/results/a/g/1"), None)
        .await;
    assert_eq!(st, 422, "{body}");
    assert!(
        error_of(&body).contains("over the 1048576-byte limit"),
        "{body}"
    );

    // The old report id is still a duplicate; new ones apply.
    let a = common::Agent::with_credential("ibk_a", "a");
    let (st, body) = a
        .report(&svc, finished("old-report", "exec-a2", true, "", None))
        .await;
    assert_eq!(
        (st, body),
        (200, json!({"applied": false, "duplicate": true}))
    );
    let (st, body) = a
        .report(&svc, finished("new-report", "exec-a2", true, "", None))
        .await;
    assert_eq!((st, body), (200, json!({"applied": true})));

    // Keys: a's was used before the upgrade, b's pairs once.
    assert_eq!(pair(&svc, id, "a", "pk_a", PROTOCOL_VERSION).await.0, 403);
    let b = svc.pair(id, &[("b".into(), "pk_b".into())], "b").await;
    let (st, w) = b.work(&svc, 0, None).await;
    assert_eq!((st, &w["work"]), (200, &Value::Null), "{w}");
    let s = svc.step(id, "b", "use", 1).await;
    assert_eq!(s["status"], "failed");
    assert!(
        s["error"].as_str().is_some_and(|e| e
            .contains("step a/g/1's structured result cannot be used: the structured result is")
            && e.contains("over the 1048576-byte limit")),
        "{s}"
    );
    if let Some(s) = svc.server.take() {
        s.shutdown().await;
    }

    let c = rusqlite::Connection::open(dir.path().join("ibkit.db")).expect("db");
    let version: i64 = c
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("version");
    assert_eq!(version, ibkit_server::db::SCHEMA_VERSION);
    let rows: Vec<(String, String, String)> = c
        .prepare("SELECT instance, host, report_id FROM processed_reports ORDER BY report_id")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(
        rows,
        vec![
            (id.to_string(), "a".to_string(), "new-report".to_string()),
            (String::new(), String::new(), "old-report".to_string()),
        ]
    );
}

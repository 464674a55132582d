//! `ibkit serve` with several real `ibkit-agent` processes on loopback:
//! pairing, script groups across hosts with result passing, the step options
//! as the platform defines them, crashes of either side, the monitor's
//! recovery requests, and hostile requests.

mod serve;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use serve::{Service, group, start_agents, wait_for};

const MINUTE: Duration = Duration::from_secs(60);

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[test]
fn host_b_consumes_host_a_structured_result() {
    let dir = tmp();
    let svc = Service::start(&dir.path().join("svc"), &[]);
    let spec = json!({
        "name": "cluster",
        "hosts": [{"name": "primary"}, {"name": "replica"}],
        "groups": [
            group("init", &["primary"], json!([
                {"index": 1, "content": "set -e\ntoken=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \\n')\nprintf '{\"token\":\"%s\",\"port\":5432}' \"$token\" > init.json\necho primary-ready",
                 "options": {"structured_result_file": "init.json", "cwd": dir.path().join("wa").to_str()}},
            ])),
            {"name": "join", "hosts": ["replica"], "depends_on": ["init"], "steps": [
                {"index": 1, "content": "echo \"joining with $JOIN_TOKEN on port {{ibkit.results.primary.init.1.structured.port}}\"",
                 "options": {"environment_variables": ["JOIN_TOKEN={{ ibkit.results.primary.init.1.structured.token }}"]}},
                {"index": 2, "content": "echo 'earlier: {{ibkit.results.self.join.1.raw}}'"},
            ]},
        ],
    });
    std::fs::create_dir_all(dir.path().join("wa")).expect("cwd");
    let (id, keys) = svc.create(&spec);
    let _a = start_agents(&svc, dir.path(), &id, &keys, &["primary"]).remove(0);
    let _b = start_agents(&svc, dir.path(), &id, &keys, &["replica"]).remove(0);
    svc.wait_status(&id, "running", MINUTE);

    let init = svc.step(&id, "primary", "init", 1);
    let token = init["structured_result"]["token"]
        .as_str()
        .expect("token")
        .to_string();
    assert_eq!(token.len(), 24, "{init:#}");
    assert_eq!(
        init["result"].as_str().map(str::trim),
        Some("primary-ready")
    );
    let join = svc.step(&id, "replica", "join", 1);
    assert_eq!(
        join["result"].as_str().map(str::trim),
        Some(format!("joining with {token} on port 5432").as_str()),
        "{join:#}"
    );
    let second = svc.step(&id, "replica", "join", 2);
    assert!(
        second["result"]
            .as_str()
            .expect("raw")
            .contains(&format!("joining with {token}")),
        "{second:#}"
    );
    // The hash the service reports is the documented step hash of the spec.
    let spec_step: ibkit_api::StepSpec =
        serde_json::from_value(spec["groups"][1]["steps"][0].clone()).expect("step");
    assert_eq!(join["hash"], spec_step.hash());
    // Results can be read back by the operator.
    let (status, r) = svc.get(&format!("/v1/instances/{id}/results/primary/init/1"));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["structured"]["token"], token.as_str());
}

/// Every step option through the real service and agents; each scenario
/// that fails a step gets its own host (a failed step stops its host).
#[test]
fn step_options_have_the_platform_semantics() {
    let dir = tmp();
    let svc = Service::start(&dir.path().join("svc"), &[]);
    let marks = dir.path().join("marks");
    std::fs::create_dir_all(&marks).expect("marks");
    let m = |name: &str| marks.join(name).display().to_string();
    let spec = json!({
        "name": "options",
        "hosts": [{"name": "timeout"}, {"name": "halt"}, {"name": "retry"}, {"name": "misc"}],
        "groups": [
            group("t", &["timeout"], json!([{"index": 1,
                "content": format!("trap 'echo term >> {}; sleep 30' TERM\nsleep 30 & child=$!\necho $child > {}\nwait $child\nsleep 30", m("term"), m("child")),
                "options": {"timeout": "1s", "stop_timeout": "1s", "attempts": 1}}])),
            group("h", &["halt"], json!([{"index": 1,
                "content": format!("echo run >> {}; exit 125", m("halt")),
                "options": {"attempts": 3, "attempt_pause": "0s"}}])),
            group("r", &["retry"], json!([{"index": 1,
                "content": format!("echo run >> {f}; [ $(wc -l < {f}) -ge 3 ] && exit 0; echo not yet >&2; exit 4", f = m("retry")),
                "options": {"attempts": 3, "attempt_pause": "300ms"}}])),
            group("m", &["misc"], json!([
                {"index": 1, "content": "pwd; echo \"$GREETING\"; id -un; echo to-stderr >&2",
                 "options": {"cwd": "/", "environment_variables": ["GREETING=hello world"], "user": "no-such-user-ibkit", "group": "no-such-group-ibkit"}},
                {"index": 2, "type": "python", "content": "import sys\nprint('py', sys.version_info[0])\nsys.exit(3)",
                 "options": {"exit_codes": [3]}},
                {"index": 3, "content": "echo '[1,2]' > /tmp/ibkit-e2e-array.json",
                 "options": {"structured_result_file": "/tmp/ibkit-e2e-array.json", "attempts": 1}},
            ])),
        ],
    });
    let (id, keys) = svc.create(&spec);
    let agents = start_agents(
        &svc,
        dir.path(),
        &id,
        &keys,
        &["timeout", "halt", "retry", "misc"],
    );
    svc.wait_status(&id, "failed", MINUTE);
    for (host, g) in [("timeout", "t"), ("halt", "h"), ("retry", "r")] {
        wait_for(&format!("{host} done"), MINUTE, || {
            let s = svc.step(&id, host, g, 1);
            matches!(s["status"].as_str(), Some("ok" | "failed")).then_some(())
        });
    }
    wait_for("misc step 3 done", MINUTE, || {
        let s = svc.step(&id, "misc", "m", 3);
        (s["status"] == "failed").then_some(())
    });

    // timeout: SIGTERM to the whole group at 1 s, SIGKILL 1 s later.
    let t = svc.step(&id, "timeout", "t", 1);
    assert_eq!(t["status"], "failed", "{t:#}");
    assert_eq!(t["timed_out"], true, "{t:#}");
    assert_eq!(
        t["signal"], 9,
        "the trap ignores TERM, so KILL ends it: {t:#}"
    );
    assert_eq!(t["attempts"], 1);
    let term = std::fs::read_to_string(marks.join("term")).expect("TERM trap ran");
    assert_eq!(term.trim(), "term");
    let child: i32 = std::fs::read_to_string(marks.join("child"))
        .expect("child pid")
        .trim()
        .parse()
        .expect("pid");
    wait_for(
        "background child killed with its group",
        Duration::from_secs(5),
        || (!std::path::Path::new(&format!("/proc/{child}")).exists()).then_some(()),
    );
    let took =
        t["finished_at_ms"].as_i64().expect("end") - t["started_at_ms"].as_i64().expect("start");
    assert!(
        (1_900..10_000).contains(&took),
        "timeout 1s + stop_timeout 1s, took {took} ms"
    );

    // halt code 125: failed at once, never retried.
    let h = svc.step(&id, "halt", "h", 1);
    assert_eq!(
        (
            h["status"].as_str(),
            h["attempts"].as_u64(),
            h["exit_code"].as_i64()
        ),
        (Some("failed"), Some(1), Some(125)),
        "{h:#}"
    );
    assert_eq!(
        std::fs::read_to_string(marks.join("halt"))
            .expect("ran")
            .lines()
            .count(),
        1
    );

    // attempts: two failures, then success on the third attempt; the log keeps all three.
    let r = svc.step(&id, "retry", "r", 1);
    assert_eq!(
        (
            r["status"].as_str(),
            r["attempts"].as_u64(),
            r["exit_code"].as_i64()
        ),
        (Some("ok"), Some(3), Some(0)),
        "{r:#}"
    );
    assert_eq!(
        r["log"].as_str().expect("log").matches("not yet").count(),
        2,
        "{r:#}"
    );

    // cwd, environment, user/group fallback to root, stdout = result, log = both.
    let m1 = svc.step(&id, "misc", "m", 1);
    assert_eq!(m1["status"], "ok", "{m1:#}");
    assert_eq!(
        m1["result"].as_str().expect("result"),
        "/\nhello world\nroot\n"
    );
    let log = m1["log"].as_str().expect("log");
    assert!(
        log.contains("to-stderr") && log.contains("hello world"),
        "{log}"
    );
    assert!(!m1["result"].as_str().expect("r").contains("to-stderr"));
    // python step, exit 3 declared a success code.
    let m2 = svc.step(&id, "misc", "m", 2);
    assert_eq!(
        (m2["status"].as_str(), m2["exit_code"].as_i64()),
        (Some("ok"), Some(3)),
        "{m2:#}"
    );
    assert_eq!(m2["result"].as_str().map(str::trim), Some("py 3"));
    // a structured result that is not a JSON object is a clear step error.
    let m3 = svc.step(&id, "misc", "m", 3);
    assert_eq!(m3["status"], "failed", "{m3:#}");
    let err = m3["error"].as_str().expect("error");
    assert!(
        err.contains("/tmp/ibkit-e2e-array.json") && err.contains("object"),
        "{err}"
    );
    // the failed instance names a failed step in its reason.
    let inst = svc.instance(&id);
    assert!(
        inst["status_reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{inst:#}"
    );
    drop(agents);
}

#[test]
fn once_steps_are_skipped_on_redeploy_and_updates_rerun_changed_steps_only() {
    let dir = tmp();
    let svc = Service::start(&dir.path().join("svc"), &[]);
    let f = |n: &str| dir.path().join(n).display().to_string();
    let spec = |v: &str| {
        json!({"name": "once", "hosts": [{"name": "h"}], "groups": [group("g", &["h"], json!([
            {"index": 1, "content": format!("echo once >> {}", f("once")), "options": {"once": true}},
            {"index": 2, "content": format!("echo always >> {}", f("always"))},
            {"index": 3, "content": format!("echo {v} >> {}", f("versioned"))},
        ]))]})
    };
    let (id, keys) = svc.create(&spec("v1"));
    let _a = start_agents(&svc, dir.path(), &id, &keys, &["h"]).remove(0);
    svc.wait_status(&id, "running", MINUTE);
    let count = |n: &str| {
        std::fs::read_to_string(f(n))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    assert_eq!(
        (count("once"), count("always"), count("versioned")),
        (1, 1, 1)
    );

    let (status, body) = svc.send("POST", &format!("/v1/instances/{id}/redeploy"), &json!({}));
    assert!(status < 300, "{body}");
    wait_for("redeploy ran", MINUTE, || {
        (count("always") == 2).then_some(())
    });
    svc.wait_status(&id, "running", MINUTE);
    assert_eq!(svc.step(&id, "h", "g", 1)["status"], "skipped");
    assert_eq!(
        (count("once"), count("always"), count("versioned")),
        (1, 2, 2)
    );

    // An update changing only step 3 reruns only step 3.
    let (status, body) = svc.send("PUT", &format!("/v1/instances/{id}"), &spec("v2"));
    assert!(status < 300, "{body}");
    wait_for("update ran", MINUTE, || {
        (count("versioned") == 3).then_some(())
    });
    svc.wait_status(&id, "running", MINUTE);
    assert_eq!((count("once"), count("always")), (1, 2));
    let versioned = std::fs::read_to_string(f("versioned")).expect("file");
    assert_eq!(versioned.lines().last(), Some("v2"));
}

#[test]
fn agent_killed_mid_step_collects_the_outcome_after_restart() {
    let dir = tmp();
    let svc = Service::start(&dir.path().join("svc"), &[]);
    let runs = dir.path().join("runs");
    let spec = json!({"name": "crash", "hosts": [{"name": "h"}], "groups": [group("g", &["h"], json!([
        {"index": 1, "content": format!("echo run >> {}; sleep 3; echo finished", runs.display())},
    ]))]});
    let (id, keys) = svc.create(&spec);
    let mut agent = start_agents(&svc, dir.path(), &id, &keys, &["h"]).remove(0);
    svc.wait_step(&id, "h", "g", 1, "running");
    agent.kill9();
    std::thread::sleep(Duration::from_millis(500));
    agent.spawn();
    let step = svc.wait_step(&id, "h", "g", 1, "ok");
    assert_eq!(
        step["result"].as_str().map(str::trim),
        Some("finished"),
        "{step:#}"
    );
    assert_eq!(
        step["attempts"], 1,
        "the running script was collected, not rerun: {step:#}"
    );
    assert_eq!(
        std::fs::read_to_string(&runs)
            .expect("runs")
            .lines()
            .count(),
        1
    );
    svc.wait_status(&id, "running", MINUTE);
}

#[test]
fn service_killed_mid_run_loses_nothing_and_queued_reports_arrive() {
    let dir = tmp();
    let mut svc = Service::start(&dir.path().join("svc"), &[]);
    let spec = json!({"name": "svc-crash", "hosts": [{"name": "h"}], "groups": [group("g", &["h"], json!([
        {"index": 1, "content": "echo first"},
        {"index": 2, "content": "sleep 2; echo second"},
        {"index": 3, "content": "echo third"},
    ]))]});
    let (id, keys) = svc.create(&spec);
    let _agent = start_agents(&svc, dir.path(), &id, &keys, &["h"]).remove(0);
    svc.wait_step(&id, "h", "g", 2, "running");
    svc.kill9();
    // Step 2 finishes while the service is down: its report waits on disk.
    std::thread::sleep(Duration::from_secs(3));
    svc.restart();
    svc.wait_status(&id, "running", MINUTE);
    let steps = svc.steps(&id, "h");
    let results: Vec<&str> = steps
        .iter()
        .map(|s| s["result"].as_str().unwrap_or("").trim())
        .collect();
    assert_eq!(results, ["first", "second", "third"], "{steps:#?}");
    assert!(steps.iter().all(|s| s["attempts"] == 1), "{steps:#?}");
}

#[test]
fn silent_host_and_failed_step_get_one_recovery_request_each() {
    let dir = tmp();
    let svc = Service::start(&dir.path().join("svc"), &[]);
    let spec = json!({"name": "monitor", "hosts": [{"name": "quiet"}, {"name": "broken"}], "groups": [
        group("q", &["quiet"], json!([{"index": 1, "content": "true"}])),
        group("b", &["broken"], json!([{"index": 1, "content": "echo boom >&2; exit 7", "options": {"attempts": 1}}])),
    ]});
    let (id, keys) = svc.create(&spec);
    let mut quiet = start_agents(&svc, dir.path(), &id, &keys, &["quiet"]).remove(0);
    let _broken = start_agents(&svc, dir.path(), &id, &keys, &["broken"]).remove(0);
    svc.wait_step(&id, "quiet", "q", 1, "ok");
    let failed = svc.wait_step(&id, "broken", "b", 1, "failed");
    assert!(failed["log"].as_str().expect("log").contains("boom"));
    quiet.kill9();
    let silent_since = Instant::now();
    let requests = wait_for("two recovery requests", Duration::from_secs(30), || {
        let list = svc.recovery_requests(&id);
        (list.len() >= 2).then_some(list)
    });
    assert!(
        silent_since.elapsed() >= Duration::from_secs(2),
        "not before the 3 s agent timeout"
    );
    // Still exactly one per host after more monitor rounds.
    std::thread::sleep(Duration::from_secs(1));
    let list = svc.recovery_requests(&id);
    assert_eq!(list.len(), 2, "{list:#?}");
    let by_host = |h: &str| {
        requests
            .iter()
            .find(|r| r["host"] == h)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(by_host("quiet")["kind"], "agent_silent", "{requests:#?}");
    assert_eq!(by_host("broken")["kind"], "agent_failed", "{requests:#?}");
    let inst = svc.instance(&id);
    let host = |h: &str| {
        inst["hosts"]
            .as_array()
            .expect("hosts")
            .iter()
            .find(|x| x["name"] == h)
            .cloned()
            .expect("host")
    };
    assert_eq!(host("quiet")["health"], "unhealthy", "{inst:#}");
    assert!(
        host("quiet")["unhealthy_reason"]
            .as_str()
            .expect("reason")
            .contains("silent"),
        "{inst:#}"
    );
}

#[test]
fn health_checks_gate_running_and_a_missing_health_result_requests_recovery() {
    let dir = tmp();
    let svc = Service::start(&dir.path().join("svc"), &[]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let spec = json!({"name": "health", "hosts": [{"name": "h"}],
        "groups": [group("g", &["h"], json!([{"index": 1, "content": "true"}]))],
        "health_checks": [{"name": "app", "kind": "port_health", "port": port, "period": "300ms"}]});
    let (id, keys) = svc.create(&spec);
    let _a = start_agents(&svc, dir.path(), &id, &keys, &["h"]).remove(0);
    svc.wait_status(&id, "running", MINUTE);
    drop(listener);
    let req = wait_for("health recovery request", Duration::from_secs(30), || {
        let list = svc.recovery_requests(&id);
        list.into_iter().find(|r| r["host"] == "h")
    });
    assert_eq!(req["kind"], "health_missing", "{req:#}");
    assert!(
        req["reason"].as_str().expect("reason").contains("app"),
        "{req:#}"
    );
}

#[test]
fn forged_and_malformed_requests_are_refused() {
    let dir = tmp();
    let svc = Service::start(&dir.path().join("svc"), &[]);
    let spec = json!({"name": "sec", "hosts": [{"name": "a"}, {"name": "b"}], "groups": [
        group("ga", &["a"], json!([{"index": 1, "content": "sleep 5"}])),
        group("gb", &["b"], json!([{"index": 1, "content": "sleep 5"}])),
    ]});
    let (id, keys) = svc.create(&spec);
    let a = start_agents(&svc, dir.path(), &id, &keys, &["a"]).remove(0);
    let _b = start_agents(&svc, dir.path(), &id, &keys, &["b"]).remove(0);
    let b_exec = svc.wait_step(&id, "b", "gb", 1, "running")["exec_id"]
        .as_str()
        .expect("exec")
        .to_string();
    let c = &svc.client;
    let url = |p: &str| format!("{}{p}", svc.url);
    let code = |r: reqwest::blocking::Response| {
        let status = r.status().as_u16();
        let body: Value = r.json().unwrap_or(Value::Null);
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "status {status} without a JSON error: {body}"
        );
        status
    };
    // No operator token, a wrong one, an agent credential as operator token.
    assert_eq!(code(c.get(url("/v1/instances")).send().expect("send")), 401);
    assert_eq!(
        code(
            c.get(url("/v1/instances"))
                .bearer_auth("nope")
                .send()
                .expect("send")
        ),
        401
    );
    assert_eq!(
        code(
            c.get(url("/v1/instances"))
                .bearer_auth(a.credential())
                .send()
                .expect("send")
        ),
        401
    );
    // Forged agent credential.
    assert_eq!(
        code(
            c.get(url("/v1/agent/work?wait_ms=0"))
                .bearer_auth("ibk_forged")
                .send()
                .expect("send")
        ),
        401
    );
    // Host a reporting for host b's execution.
    let forged = json!({"report_id": "r-forged", "exec_id": b_exec, "status": "running", "attempt": 9, "started_at_ms": 0});
    assert_eq!(
        code(
            c.post(url("/v1/agent/reports"))
                .bearer_auth(a.credential())
                .json(&forged)
                .send()
                .expect("send")
        ),
        403
    );
    // Wrong pairing key.
    let pair = json!({"instance": id, "host": "a", "pairing_key": "wrong", "agent_version": "x"});
    assert_eq!(
        code(
            c.post(url("/v1/agent/pair"))
                .json(&pair)
                .send()
                .expect("send")
        ),
        401
    );
    // Garbage bodies and parameters.
    for (path, body) in [
        ("/v1/agent/reports", "{not json"),
        ("/v1/agent/heartbeat", "[]"),
        ("/v1/agent/health", "\u{0}\u{1}"),
    ] {
        let r = c
            .post(url(path))
            .bearer_auth(a.credential())
            .header("content-type", "application/json")
            .body(body)
            .send()
            .expect("send");
        let s = code(r);
        assert!((400..500).contains(&s), "{path}: {s}");
    }
    let r = c
        .post(url("/v1/instances"))
        .bearer_auth(&svc.token)
        .header("content-type", "application/json")
        .body(r#"{"name":"x","hosts":[{"name":"a b"}]}"#)
        .send()
        .expect("send");
    assert_eq!(code(r), 400);
    assert_eq!(
        code(
            c.get(url("/v1/instances/not-a-uuid"))
                .bearer_auth(&svc.token)
                .send()
                .expect("send")
        ) / 100,
        4
    );
    assert_eq!(
        code(
            c.get(url("/v1/agent/work?wait_ms=abc"))
                .bearer_auth(a.credential())
                .send()
                .expect("send")
        ),
        400
    );
    let big = "x".repeat(80 << 20);
    let r = c
        .post(url("/v1/agent/heartbeat"))
        .bearer_auth(a.credential())
        .header("content-type", "application/json")
        .body(big)
        .send();
    if let Ok(r) = r {
        assert_eq!(r.status().as_u16() / 100, 4);
    }
    // The service is still fine, and b's step was untouched by the forgery.
    let b = svc.wait_step(&id, "b", "gb", 1, "ok");
    assert_eq!(b["attempts"], 1, "{b:#}");
}

#[test]
fn installer_downloads_pairs_and_the_installed_agent_runs_work() {
    let dir = tmp();
    let svc = Service::start(&dir.path().join("svc"), &[]);
    let spec = json!({"name": "install", "hosts": [{"name": "vm"}], "groups": [group("g", &["vm"], json!([
        {"index": 1, "content": "echo installed-agent-ran"}]))]});
    let (status, created) = svc.send("POST", "/v1/instances", &spec);
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id");
    let cmd = created["hosts"][0]["install_command"]
        .as_str()
        .expect("install command")
        .to_string();
    assert!(cmd.contains("--pinnedpubkey") && cmd.contains(id), "{cmd}");
    let root = dir.path().join("root");
    let out = std::process::Command::new("sh")
        .args(["-c", &cmd])
        .env("IBKIT_ROOT", &root)
        .env("IBKIT_NO_SYSTEMD", "1")
        .output()
        .expect("sh runs");
    assert!(
        out.status.success(),
        "install failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = root.join("usr/local/bin/ibkit-agent");
    assert_eq!(
        std::fs::read(&installed).expect("installed agent"),
        std::fs::read(serve::agent_bin()).expect("agent"),
        "the served binary is the configured agent"
    );
    assert!(
        root.join("var/lib/ibkit-agent/credential").exists(),
        "paired"
    );
    let mut child = std::process::Command::new(&installed)
        .args(["run", "--config"])
        .arg(root.join("etc/ibkit/agent.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("installed agent starts");
    let step = svc.wait_step(id, "vm", "g", 1, "ok");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        step["result"].as_str().map(str::trim),
        Some("installed-agent-ran")
    );
    // A second pairing with a wrong key from the script fails loudly.
    let bad = cmd.replace(
        created["hosts"][0]["pairing_key"].as_str().expect("key"),
        "wrongkey",
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &bad])
        .env("IBKIT_ROOT", dir.path().join("root2"))
        .env("IBKIT_NO_SYSTEMD", "1")
        .output()
        .expect("sh runs");
    assert!(!out.status.success());
}

#[test]
fn openapi_document_lists_the_api() {
    let dir = tmp();
    let svc = Service::start(&dir.path().join("svc"), &[]);
    let r = svc
        .client
        .get(format!("{}/v1/openapi.json", svc.url))
        .send()
        .expect("GET");
    assert_eq!(r.status().as_u16(), 200);
    let doc: Value = r.json().expect("json");
    assert!(doc["openapi"].as_str().expect("version").starts_with("3."));
    for path in [
        "/v1/instances",
        "/v1/agent/work",
        "/v1/agent/reports",
        "/v1/agent/pair",
        "/v1/recovery-requests",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} not documented");
    }
}

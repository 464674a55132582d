//! The configuration service over real HTTPS on loopback with SQLite on
//! disk; agents are simulated with raw HTTP requests.

mod common;

use std::time::{Duration, Instant};

use common::{Svc, config, finished, tmp};
use serde_json::{Value, json};

fn two_host_spec() -> Value {
    json!({
        "name": "order",
        "hosts": [{"name": "a"}, {"name": "b"}],
        "groups": [
            {"name": "base", "hosts": ["a", "b"], "steps": [
                {"index": 2, "content": "echo second"},
                {"index": 1, "content": "echo first"},
            ]},
            {"name": "after", "hosts": ["b"], "depends_on": ["base"], "steps": [
                {"index": 1, "content": "echo after"},
            ]},
        ],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_follows_groups_dependencies_and_step_order() {
    let dir = tmp();
    let svc = Svc::start(config(dir.path())).await;
    let spec = two_host_spec();
    let (id, keys) = svc.create(&spec).await;
    assert_eq!(svc.instance(&id).await["status"], "applying");
    let a = svc.pair(&id, &keys, "a").await;
    let b = svc.pair(&id, &keys, "b").await;

    let w = a.take(&svc).await;
    assert_eq!(
        (w["group"].as_str(), w["index"].as_u64()),
        (Some("base"), Some(1))
    );
    let step: ibkit_api::StepSpec =
        serde_json::from_value(spec["groups"][0]["steps"][1].clone()).expect("step");
    assert_eq!(w["hash"], step.hash());
    // Handed out again (same exec) until it finishes; dispatch is not "running".
    assert_eq!(a.take(&svc).await["exec_id"], w["exec_id"]);
    let s = svc.step(&id, "a", "base", 1).await;
    assert_eq!(s["status"], "pending", "{s:#}");
    let exec = w["exec_id"].as_str().expect("exec");
    let (st, _) = a
        .report(&svc, json!({"report_id": a.report_id(), "exec_id": exec, "status": "running", "attempt": 1, "started_at_ms": 5}))
        .await;
    assert_eq!(st, 200);
    assert_eq!(svc.step(&id, "a", "base", 1).await["status"], "running");
    let (st, body) = a
        .report(&svc, finished(&a.report_id(), exec, true, "first\n", None))
        .await;
    assert_eq!((st, &body["applied"]), (200, &json!(true)));
    let s = svc.step(&id, "a", "base", 1).await;
    assert_eq!(
        (s["status"].as_str(), s["result"].as_str()),
        (Some("ok"), Some("first\n"))
    );
    assert_eq!(a.take(&svc).await["index"], 2);

    // b: base 1, base 2, then `after` waits for a's base 2.
    for idx in [1, 2] {
        let w = b.take(&svc).await;
        assert_eq!(
            (w["group"].as_str(), w["index"].as_u64()),
            (Some("base"), Some(idx))
        );
        b.run(&svc, w["exec_id"].as_str().expect("exec"), true, "x", None)
            .await;
    }
    let (_, resp) = b.work(&svc, 0, None).await;
    assert!(
        resp["work"].is_null(),
        "after must wait for base on a: {resp}"
    );
    assert_eq!(resp["health_checks"], json!([]));
    let w = a.take(&svc).await;
    a.run(
        &svc,
        w["exec_id"].as_str().expect("exec"),
        true,
        "second",
        None,
    )
    .await;
    let w = b.take(&svc).await;
    assert_eq!(w["group"], "after");
    b.run(
        &svc,
        w["exec_id"].as_str().expect("exec"),
        true,
        "after",
        None,
    )
    .await;
    let inst = svc.instance(&id).await;
    assert_eq!(inst["status"], "running", "{inst:#}");
    assert_eq!(inst["steps"]["ok"], 5, "{inst:#}");
    let (st, r) = svc
        .op("GET", &format!("/v1/instances/{id}/results/a/base/1"), None)
        .await;
    assert_eq!((st, r["raw"].as_str()), (200, Some("first\n")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_when_another_host_finishes() {
    let dir = tmp();
    let svc = Svc::start(config(dir.path())).await;
    let (id, keys) = svc.create(&two_host_spec()).await;
    let a = svc.pair(&id, &keys, "a").await;
    let b = svc.pair(&id, &keys, "b").await;
    for _ in 0..2 {
        let w = b.take(&svc).await;
        b.run(&svc, w["exec_id"].as_str().expect("exec"), true, "", None)
            .await;
    }
    let w = a.take(&svc).await;
    a.run(&svc, w["exec_id"].as_str().expect("exec"), true, "", None)
        .await;
    let last = a.take(&svc).await;
    let (_, idle) = b.work(&svc, 0, None).await;
    let rev = idle["config_rev"].as_str().expect("rev").to_string();
    let poll = async {
        let t = Instant::now();
        let r = b.work(&svc, 20_000, Some(&rev)).await;
        (t.elapsed(), r)
    };
    let finish = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        a.run(
            &svc,
            last["exec_id"].as_str().expect("exec"),
            true,
            "",
            None,
        )
        .await;
        Instant::now()
    };
    let ((took, (st, resp)), _) = tokio::join!(poll, finish);
    assert_eq!(st, 200);
    assert_eq!(resp["work"]["group"], "after", "{resp}");
    assert!(took < Duration::from_millis(1300), "woke after {took:?}");
    // Without changes the poll waits its full time.
    let t = Instant::now();
    let (_, resp) = a.work(&svc, 400, Some(&rev)).await;
    assert!(resp["work"].is_null());
    assert!(
        t.elapsed() >= Duration::from_millis(380),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_flow_across_hosts_and_a_failed_reference_fails_the_step() {
    let dir = tmp();
    let svc = Svc::start(config(dir.path())).await;
    let spec = json!({
        "name": "refs",
        "hosts": [{"name": "primary"}, {"name": "replica"}, {"name": "other"}],
        "groups": [
            {"name": "init", "hosts": ["primary"], "steps": [
                {"index": 1, "content": "init", "options": {"structured_result_file": "r.json"}}]},
            {"name": "join", "hosts": ["replica"], "steps": [
                {"index": 1, "content": "join {{ibkit.results.primary.init.1.structured.token}} port {{ ibkit.results.primary.init.1.structured.port }}",
                 "options": {"environment_variables": ["RAW={{ibkit.results.primary.init.1.raw}}"]}}]},
            {"name": "bad", "hosts": ["primary"], "steps": [{"index": 1, "content": "exit 1"}]},
            {"name": "uses-bad", "hosts": ["other"], "steps": [
                {"index": 1, "content": "echo {{ibkit.results.primary.bad.1.raw}}"}]},
        ],
    });
    let (id, keys) = svc.create(&spec).await;
    let p = svc.pair(&id, &keys, "primary").await;
    let r = svc.pair(&id, &keys, "replica").await;
    let o = svc.pair(&id, &keys, "other").await;
    // The replica's step waits for the primary's result.
    assert!(r.work(&svc, 0, None).await.1["work"].is_null());
    let w = p.take(&svc).await;
    p.run(
        &svc,
        w["exec_id"].as_str().expect("exec"),
        true,
        "primary-ready\n",
        Some(json!({"token": "s3cret", "port": 5432})),
    )
    .await;
    let w = r.take(&svc).await;
    assert_eq!(w["content"], "join s3cret port 5432", "{w:#}");
    assert_eq!(
        w["options"]["environment_variables"],
        json!(["RAW=primary-ready\n"])
    );
    // The hash is of the step as written, not resolved.
    let step: ibkit_api::StepSpec =
        serde_json::from_value(spec["groups"][1]["steps"][0].clone()).expect("step");
    assert_eq!(w["hash"], step.hash());

    let w = p.take(&svc).await;
    assert_eq!(w["group"], "bad");
    p.run(&svc, w["exec_id"].as_str().expect("exec"), false, "", None)
        .await;
    let (_, resp) = o.work(&svc, 0, None).await;
    assert!(resp["work"].is_null(), "{resp}");
    let s = svc.step(&id, "other", "uses-bad", 1).await;
    assert_eq!(s["status"], "failed", "{s:#}");
    let err = s["error"].as_str().expect("error");
    assert!(
        err.contains("ibkit.results.primary.bad.1.raw") && err.contains("failed"),
        "{err}"
    );
    let inst = svc.instance(&id).await;
    assert_eq!(inst["status"], "failed");
    assert!(
        inst["status_reason"]
            .as_str()
            .expect("reason")
            .contains("bad"),
        "{inst:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_redeploy_and_update_semantics() {
    let dir = tmp();
    let svc = Svc::start(config(dir.path())).await;
    let spec = |v: &str| {
        json!({"name": "once", "hosts": [{"name": "h"}], "groups": [{"name": "g", "hosts": ["h"], "steps": [
            {"index": 1, "content": "init", "options": {"once": true}},
            {"index": 2, "content": "always"},
            {"index": 3, "content": format!("echo {v}")},
        ]}]})
    };
    let (id, keys) = svc.create(&spec("v1")).await;
    let h = svc.pair(&id, &keys, "h").await;
    let run_all = |n: usize| {
        let (svc, h) = (&svc, &h);
        async move {
            let mut ran = Vec::new();
            for _ in 0..n {
                let w = h.take(svc).await;
                ran.push(w["index"].as_u64().expect("index"));
                h.run(svc, w["exec_id"].as_str().expect("exec"), true, "r", None)
                    .await;
            }
            assert!(h.work(svc, 0, None).await.1["work"].is_null());
            ran
        }
    };
    assert_eq!(run_all(3).await, [1, 2, 3]);
    assert_eq!(svc.instance(&id).await["status"], "running");

    let (st, body) = svc
        .op("POST", &format!("/v1/instances/{id}/redeploy"), None)
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["generation"], 2);
    assert_eq!(svc.instance(&id).await["status"], "applying");
    assert_eq!(svc.step(&id, "h", "g", 1).await["status"], "skipped");
    assert_eq!(run_all(2).await, [2, 3]);
    assert_eq!(svc.instance(&id).await["status"], "running");

    // An in-flight exec of a changed step is superseded: its report gets 409.
    let (st, _) = svc
        .op("PUT", &format!("/v1/instances/{id}"), Some(&spec("v2")))
        .await;
    assert_eq!(st, 200);
    let w = h.take(&svc).await;
    assert_eq!(
        (w["index"].as_u64(), w["content"].as_str()),
        (Some(3), Some("echo v2"))
    );
    let (st, _) = svc
        .op("PUT", &format!("/v1/instances/{id}"), Some(&spec("v3")))
        .await;
    assert_eq!(st, 200);
    let (st, body) = h
        .report(
            &svc,
            finished(
                &h.report_id(),
                w["exec_id"].as_str().expect("e"),
                true,
                "",
                None,
            ),
        )
        .await;
    assert_eq!(st, 409, "{body}");
    assert_eq!(run_all(1).await, [3]);
    assert_eq!(svc.step(&id, "h", "g", 2).await["attempts"], 1);
    // Removing a step deletes it; other hosts are refused.
    let mut fewer = spec("v3");
    fewer["groups"][0]["steps"]
        .as_array_mut()
        .expect("steps")
        .pop();
    let (st, _) = svc
        .op("PUT", &format!("/v1/instances/{id}"), Some(&fewer))
        .await;
    assert_eq!(st, 200);
    let (_, steps) = svc
        .op("GET", &format!("/v1/instances/{id}/hosts/h/steps"), None)
        .await;
    assert_eq!(steps.as_array().expect("steps").len(), 2);
    assert_eq!(svc.instance(&id).await["status"], "running");
    let mut other = spec("v3");
    other["hosts"] = json!([{"name": "x"}]);
    other["groups"][0]["hosts"] = json!(["x"]);
    let (st, body) = svc
        .op("PUT", &format!("/v1/instances/{id}"), Some(&other))
        .await;
    assert_eq!(st, 400, "{body}");
}

/// An update reruns a changed step and every step that uses its result
/// (on any host, transitively), and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_reruns_the_steps_that_use_a_changed_result() {
    let dir = tmp();
    let svc = Svc::start(config(dir.path())).await;
    let spec = |a: &str, c: &str| {
        json!({"name": "deps", "hosts": [{"name": "p"}, {"name": "r"}], "groups": [
            {"name": "a", "hosts": ["p"], "steps": [
                {"index": 1, "content": format!("echo {a}")},
                {"index": 2, "content": "echo {{ibkit.results.self.a.1.raw}}"},
                {"index": 3, "content": format!("echo {c}")},
            ]},
            {"name": "b", "hosts": ["r"], "depends_on": ["a"], "steps": [
                {"index": 1, "content": "true", "options": {
                    "environment_variables": ["X={{ibkit.results.p.a.2.raw}}"]}},
                {"index": 2, "content": "echo {{ibkit.results.p.a.3.raw}}"},
            ]},
        ]})
    };
    let (id, keys) = svc.create(&spec("v1", "c1")).await;
    let p = svc.pair(&id, &keys, "p").await;
    let r = svc.pair(&id, &keys, "r").await;
    let run_all = |h: &'static str| {
        let (svc, agent) = (&svc, if h == "p" { &p } else { &r });
        async move {
            let mut ran = Vec::new();
            loop {
                let (_, w) = agent.work(svc, 0, None).await;
                if w["work"].is_null() {
                    return ran;
                }
                let w = &w["work"];
                ran.push(w["index"].as_u64().expect("index"));
                agent
                    .run(svc, w["exec_id"].as_str().expect("exec"), true, "out", None)
                    .await;
            }
        }
    };
    assert_eq!(run_all("p").await, [1, 2, 3]);
    assert_eq!(run_all("r").await, [1, 2]);
    assert_eq!(svc.instance(&id).await["status"], "running");

    // a/1 changes: a/2 uses it (self), b/1 uses a/2 (another host): all
    // three run again; a/3 and b/2 do not.
    let (st, body) = svc
        .op(
            "PUT",
            &format!("/v1/instances/{id}"),
            Some(&spec("v2", "c1")),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(run_all("p").await, [1, 2]);
    assert_eq!(run_all("r").await, [1]);
    assert_eq!(svc.step(&id, "r", "b", 2).await["attempts"], 1);
    assert_eq!(svc.instance(&id).await["status"], "running");

    // a/3 changes: only b/2 follows.
    let (st, _) = svc
        .op(
            "PUT",
            &format!("/v1/instances/{id}"),
            Some(&spec("v2", "c2")),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(run_all("p").await, [3]);
    assert_eq!(run_all("r").await, [2]);
    assert_eq!(svc.step(&id, "p", "a", 1).await["attempts"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_apply_once_and_hostile_requests_are_refused() {
    let dir = tmp();
    let svc = Svc::start(config(dir.path())).await;
    let (id, keys) = svc.create(&two_host_spec()).await;
    let a = svc.pair(&id, &keys, "a").await;
    let b = svc.pair(&id, &keys, "b").await;
    let wa = a.take(&svc).await;
    let wb = b.take(&svc).await;
    let (ea, eb) = (
        wa["exec_id"].as_str().expect("a"),
        wb["exec_id"].as_str().expect("b"),
    );

    // Duplicate report id: applied once.
    let rep = finished("dup-1", ea, true, "once", None);
    let (st, body) = a.report(&svc, rep.clone()).await;
    assert_eq!((st, &body["applied"]), (200, &json!(true)));
    let (st, body) = a.report(&svc, rep).await;
    assert_eq!((st, &body["applied"]), (200, &json!(false)));

    // Another host's exec → 403; unknown exec → 409.
    let (st, body) = a.report(&svc, finished("x-1", eb, false, "", None)).await;
    assert_eq!(st, 403, "{body}");
    assert_eq!(svc.step(&id, "b", "base", 1).await["status"], "pending");
    let (st, body) = a
        .report(&svc, finished("x-2", "no-such-exec", true, "", None))
        .await;
    assert_eq!(st, 409, "{body}");
    assert!(body["error"].is_string());

    // Credentials.
    let (st, body) = svc
        .req("GET", "/v1/agent/work?wait_ms=0", Some("ibk_forged"), None)
        .await;
    assert_eq!(st, 401, "{body}");
    let (st, _) = svc.req("GET", "/v1/agent/work?wait_ms=0", None, None).await;
    assert_eq!(st, 401);
    let (st, _) = svc
        .req("GET", "/v1/instances", Some(&a.credential), None)
        .await;
    assert_eq!(st, 401);
    let (st, _) = svc.req("GET", "/v1/instances", None, None).await;
    assert_eq!(st, 401);
    let (st, b1) = svc
        .req(
            "POST",
            "/v1/agent/pair",
            None,
            Some(
                &json!({"instance": id, "host": "a", "pairing_key": "wrong", "agent_version": "x"}),
            ),
        )
        .await;
    let (st2, b2) = svc.req("POST", "/v1/agent/pair", None, Some(&json!({"instance": id, "host": "zz", "pairing_key": "wrong", "agent_version": "x"}))).await;
    assert_eq!((st, st2), (401, 401));
    assert_eq!(b1, b2, "no oracle");
    // A new key (a recreated VM) re-pairs and revokes the old credential.
    let (st, fresh) = svc
        .op(
            "POST",
            &format!("/v1/instances/{id}/hosts/a/pairing-key"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{fresh}");
    let fresh_key = fresh["pairing_key"].as_str().expect("key").to_string();
    let a2 = svc.pair(&id, &[("a".into(), fresh_key)], "a").await;
    let (st, _) = a.work(&svc, 0, None).await;
    assert_eq!(st, 401);
    assert_eq!(a2.work(&svc, 0, None).await.0, 200);

    // Garbage: every error is JSON with a 4xx.
    let raw = |path: &str, body: Vec<u8>| {
        svc.client
            .post(format!("{}{path}", svc.url))
            .bearer_auth(&b.credential)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for (path, body) in [
        ("/v1/agent/reports", b"{not json".to_vec()),
        ("/v1/agent/heartbeat", b"[]".to_vec()),
        ("/v1/agent/health", vec![0, 1, 2]),
        (
            "/v1/agent/reports",
            br#"{"report_id":"r","exec_id":"e","status":"bogus"}"#.to_vec(),
        ),
    ] {
        let r = raw(path, body).await.expect("send");
        let st = r.status().as_u16();
        let v: Value = r.json().await.expect("json error body");
        assert!(
            (400..500).contains(&st) && v["error"].is_string(),
            "{path}: {st} {v}"
        );
    }
    let r = raw("/v1/agent/heartbeat", vec![b'x'; 2 << 20]).await;
    if let Ok(r) = r {
        assert_eq!(r.status().as_u16(), 413);
    }
    for (method, path) in [
        ("GET", "/v1/instances/not-a-uuid"),
        ("GET", "/v1/nope"),
        ("DELETE", "/healthz"),
        ("GET", "/v1/agent/work?wait_ms=abc"),
        ("GET", "/v1/instances/00000000-0000-4000-8000-000000000000"),
        (
            "GET",
            "/v1/instances/00000000-0000-4000-8000-000000000000/results/a/g/notanumber",
        ),
    ] {
        let bearer = if path.starts_with("/v1/agent") {
            b.credential.clone()
        } else {
            svc.token.clone()
        };
        let (st, v) = svc.req(method, path, Some(&bearer), None).await;
        assert!(
            (400..500).contains(&st) && v["error"].is_string(),
            "{method} {path}: {st} {v}"
        );
    }
    let (st, v) = svc
        .op(
            "POST",
            "/v1/instances",
            Some(&json!({"name": "x", "hosts": [{"name": "a b"}]})),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"].as_str().expect("e").contains("hosts[0].name"),
        "{v}"
    );

    // Delete revokes credentials.
    let (st, _) = svc.op("DELETE", &format!("/v1/instances/{id}"), None).await;
    assert_eq!(st, 200);
    assert_eq!(b.work(&svc, 0, None).await.0, 401);
    assert_eq!(svc.instance(&id).await["status"], "deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_opens_one_request_per_silent_or_failed_host() {
    let dir = tmp();
    let mut cfg = config(dir.path());
    cfg.agent_timeout = Duration::from_secs(1);
    let svc = Svc::start(cfg).await;
    let spec = json!({"name": "mon", "hosts": [{"name": "quiet"}, {"name": "broken"}], "groups": [
        {"name": "b", "hosts": ["broken"], "steps": [{"index": 1, "content": "exit 7"}]}]});
    let (id, keys) = svc.create(&spec).await;
    let _quiet = svc.pair(&id, &keys, "quiet").await;
    let broken = svc.pair(&id, &keys, "broken").await;
    let w = broken.take(&svc).await;
    broken
        .run(&svc, w["exec_id"].as_str().expect("exec"), false, "", None)
        .await;
    let t = Instant::now();
    let mut list = Vec::new();
    while t.elapsed() < Duration::from_secs(10) {
        // The broken host keeps its heartbeat; the quiet one is silent.
        let (st, _) = svc.req("POST", "/v1/agent/heartbeat", Some(&broken.credential), Some(&json!({"agent_version": "t", "uptime_s": 1, "running_exec": null, "queued_reports": 0}))).await;
        assert_eq!(st, 200);
        list = svc.recovery(&id).await;
        if list.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        t.elapsed() >= Duration::from_millis(700),
        "silent verdict came too early"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = svc.recovery(&id).await;
    assert_eq!(again.len(), 2, "{again:#?}");
    let by = |h: &str| {
        list.iter()
            .find(|r| r["host"] == h)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(by("quiet")["kind"], "agent_silent", "{list:#?}");
    assert!(
        by("quiet")["reason"]
            .as_str()
            .expect("r")
            .contains("silent"),
        "{list:#?}"
    );
    assert_eq!(by("broken")["kind"], "agent_failed", "{list:#?}");
    assert!(
        by("broken")["reason"].as_str().expect("r").contains("b/1"),
        "{list:#?}"
    );
    let inst = svc.instance(&id).await;
    let host = |h: &str| {
        inst["hosts"]
            .as_array()
            .expect("hosts")
            .iter()
            .find(|x| x["name"] == h)
            .cloned()
            .expect("host")
    };
    assert_eq!(host("quiet")["health"], "unhealthy");
    assert!(host("quiet")["unhealthy_since"].is_i64());
    // Resolving closes it; the still-silent host gets a new one.
    let rid = by("quiet")["id"].as_str().expect("id").to_string();
    let (st, _) = svc
        .op(
            "POST",
            &format!("/v1/recovery-requests/{rid}/resolve"),
            None,
        )
        .await;
    assert_eq!(st, 200);
    let (st, all) = svc
        .op("GET", &format!("/v1/recovery-requests?instance={id}"), None)
        .await;
    assert_eq!(st, 200);
    assert!(
        all.as_array()
            .expect("list")
            .iter()
            .any(|r| r["status"] == "resolved")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_gates_running_and_missing_results_request_recovery() {
    let dir = tmp();
    let mut cfg = config(dir.path());
    cfg.health_timeout = Duration::from_secs(1);
    let svc = Svc::start(cfg).await;
    let spec = json!({"name": "health", "hosts": [{"name": "h"}],
        "groups": [{"name": "g", "hosts": ["h"], "steps": [{"index": 1, "content": "true"}]}],
        "health_checks": [{"name": "app", "kind": "port_health", "port": 8080, "period": "1s"}]});
    let (id, keys) = svc.create(&spec).await;
    let h = svc.pair(&id, &keys, "h").await;
    let w = h.take(&svc).await;
    let (_, before) = h.work(&svc, 0, None).await;
    assert_eq!(
        before["health_checks"],
        json!([]),
        "checks wait for the steps"
    );
    h.run(&svc, w["exec_id"].as_str().expect("exec"), true, "", None)
        .await;
    let (_, after) = h.work(&svc, 0, None).await;
    assert_eq!(after["health_checks"][0]["name"], "app", "{after}");
    assert_ne!(before["config_rev"], after["config_rev"]);
    assert_eq!(svc.instance(&id).await["status"], "applying");
    let report =
        |ok: bool| json!({"check": "app", "ok": ok, "detail": "d", "at_ms": 1, "duration_ms": 1});
    let (st, _) = svc
        .req(
            "POST",
            "/v1/agent/health",
            Some(&h.credential),
            Some(&report(true)),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(svc.instance(&id).await["status"], "running");
    let (st, _) = svc
        .req(
            "POST",
            "/v1/agent/health",
            Some(&h.credential),
            Some(&report(false)),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(svc.instance(&id).await["status"], "applying");
    let t = Instant::now();
    let req = loop {
        let _ = svc.req("POST", "/v1/agent/heartbeat", Some(&h.credential), Some(&json!({"agent_version": "t", "uptime_s": 1, "running_exec": null, "queued_reports": 0}))).await;
        if let Some(r) = svc.recovery(&id).await.into_iter().next() {
            break r;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no recovery request");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(req["kind"], "health_missing", "{req:#}");
    assert!(
        req["reason"].as_str().expect("reason").contains("app"),
        "{req:#}"
    );
    let (st, hr) = svc
        .op("GET", &format!("/v1/instances/{id}/hosts/h/health"), None)
        .await;
    assert_eq!((st, &hr[0]["ok"]), (200, &json!(false)), "{hr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_the_same_state_keeps_everything() {
    let dir = tmp();
    let mut svc = Svc::start(config(dir.path())).await;
    let cert = svc.server.as_ref().expect("server").cert_sha256.clone();
    let (id, keys) = svc.create(&two_host_spec()).await;
    let a = svc.pair(&id, &keys, "a").await;
    let w = a.take(&svc).await;
    a.run(
        &svc,
        w["exec_id"].as_str().expect("exec"),
        true,
        "kept",
        Some(json!({"k": 1})),
    )
    .await;
    let inflight = a.take(&svc).await;
    svc.restart().await;
    assert_eq!(
        svc.server.as_ref().expect("server").cert_sha256,
        cert,
        "certificate reused"
    );
    let s = svc.step(&id, "a", "base", 1).await;
    assert_eq!(
        (s["status"].as_str(), s["result"].as_str()),
        (Some("ok"), Some("kept"))
    );
    assert_eq!(s["structured_result"], json!({"k": 1}));
    // The credential still works and the in-flight exec is handed out again.
    assert_eq!(a.take(&svc).await["exec_id"], inflight["exec_id"]);
    a.run(
        &svc,
        inflight["exec_id"].as_str().expect("exec"),
        true,
        "",
        None,
    )
    .await;
    let inst = svc.instance(&id).await;
    assert_eq!(inst["steps"]["ok"], 2, "{inst:#}");
    assert_eq!(inst["hosts"][0]["agent_version"], "test", "{inst:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_every_route_and_installer_is_served() {
    let dir = tmp();
    let svc = Svc::start(config(dir.path())).await;
    let (st, doc) = svc.req("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(st, 200);
    assert!(doc["openapi"].as_str().expect("version").starts_with("3.1"));
    for ibkit_server::routes::RouteInfo { method, path, .. } in ibkit_server::routes::routes() {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} not documented"
        );
        // And the route exists in the router (not the 404/405 fallback).
        let concrete = path
            .replace("{id}", "00000000-0000-4000-8000-000000000000")
            .replace("{host}", "h")
            .replace("{group}", "g")
            .replace("{index}", "1");
        let (st, body) = svc.req(&method.to_uppercase(), &concrete, None, None).await;
        assert!(
            body["error"] != "no such route" && st != 405,
            "{method} {path} is not routed: {st} {body}"
        );
    }
    let r = svc
        .client
        .get(format!("{}/v1/agent/install.sh", svc.url))
        .send()
        .await
        .expect("get");
    let script = r.text().await.expect("text");
    let cert = svc
        .server
        .as_ref()
        .expect("server")
        .cert_sha256
        .clone()
        .expect("cert");
    assert!(
        script.contains(&format!("CERT_SHA256='{cert}'")),
        "{script}"
    );
    assert!(script.contains("CURL_PIN='sha256//"), "{script}");
    let (st, body) = svc.req("GET", "/v1/agent/binary", None, None).await;
    assert_eq!(st, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .expect("e")
            .contains("no-agent-binary")
    );
    let (_, created) = svc
        .op(
            "POST",
            "/v1/instances",
            Some(&json!({"name": "i", "hosts": [{"name": "vm"}]})),
        )
        .await;
    let cmd = created["hosts"][0]["install_command"]
        .as_str()
        .expect("cmd");
    // The key travels in the installer's environment, never on its command line.
    let id = created["id"].as_str().expect("id");
    assert!(
        cmd.starts_with("IBKIT_PAIRING_KEY=pk_")
            && cmd.contains(" sh -c \"$(curl -fsS -g -k --pinnedpubkey 'sha256//")
            && cmd.ends_with(&format!(" ibkit-install --instance {id} --host vm"))
            && !cmd.contains("--pairing-key"),
        "{cmd}"
    );
    // An instance without steps or checks is running at once.
    assert_eq!(created["status"], "running");
}

/// Whether `schema` (or a schema it refers to or combines) has property `key`.
fn describes(doc: &Value, schema: &Value, key: &str) -> bool {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        return describes(doc, &doc["components"]["schemas"][name], key);
    }
    schema["properties"].get(key).is_some()
        || ["oneOf", "allOf"].iter().any(|c| {
            schema[c]
                .as_array()
                .is_some_and(|a| a.iter().any(|s| describes(doc, s, key)))
        })
}

/// A small JSON Schema check (the subset utoipa writes): `$ref`, `type`,
/// `enum`, `properties`/`required`, `additionalProperties`, `items`,
/// `oneOf`, `allOf`. Objects reached other than through `allOf` must not
/// have properties their schema does not describe.
fn conforms(doc: &Value, schema: &Value, v: &Value, strict: bool) -> Result<(), String> {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        return conforms(doc, &doc["components"]["schemas"][name], v, strict)
            .map_err(|e| format!("{name}: {e}"));
    }
    if let Some(all) = schema["allOf"].as_array() {
        for s in all {
            conforms(doc, s, v, false)?;
        }
        if strict
            && let Some(obj) = v.as_object()
            && let Some(k) = obj
                .keys()
                .find(|k| !all.iter().any(|s| describes(doc, s, k)))
        {
            return Err(format!("undocumented property {k:?}"));
        }
        return Ok(());
    }
    if let Some(one) = schema["oneOf"].as_array() {
        let errs: Vec<String> = one
            .iter()
            .filter_map(|s| conforms(doc, s, v, strict).err())
            .collect();
        return if errs.len() < one.len() {
            Ok(())
        } else {
            Err(format!("no oneOf matches {v}: {errs:?}"))
        };
    }
    if let Some(e) = schema["enum"].as_array()
        && !e.contains(v)
    {
        return Err(format!("{v} not in {e:?}"));
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let ty = match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let allowed =
        types.is_empty() || types.contains(&ty) || (ty == "integer" && types.contains(&"number"));
    if !allowed {
        return Err(format!("{v} is not {types:?}"));
    }
    if let Value::Object(obj) = v {
        for r in schema["required"].as_array().into_iter().flatten() {
            let r = r.as_str().unwrap_or("");
            if !obj.contains_key(r) {
                return Err(format!("missing required {r:?} in {v}"));
            }
        }
        let props = schema["properties"].as_object();
        for (k, x) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => conforms(doc, s, x, true).map_err(|e| format!("{k}: {e}"))?,
                None if schema["additionalProperties"].is_object() => {
                    conforms(doc, &schema["additionalProperties"], x, true)
                        .map_err(|e| format!("{k}: {e}"))?
                }
                None if strict && (props.is_some() || schema["additionalProperties"] == false) => {
                    return Err(format!("undocumented property {k:?} in {v}"));
                }
                None => {}
            }
        }
    }
    if let Value::Array(items) = v {
        for x in items {
            conforms(doc, &schema["items"], x, true)?;
        }
    }
    Ok(())
}

/// The real answers of every JSON route match the OpenAPI document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_match_the_openapi_schemas() {
    let dir = tmp();
    let mut cfg = config(dir.path());
    cfg.agent_timeout = Duration::from_secs(1);
    let svc = Svc::start(cfg).await;
    let (_, doc) = svc.req("GET", "/v1/openapi.json", None, None).await;
    let check = |method: &str, path: &str, status: u16, body: &Value| {
        let op = &doc["paths"][path][method];
        let schema = &op["responses"][status.to_string()]["content"]["application/json"]["schema"];
        assert!(
            schema.is_object(),
            "{method} {path}: {status} not documented: {body}"
        );
        if let Err(e) = conforms(&doc, schema, body, true) {
            panic!("{method} {path} {status}: {e}\n{body:#}");
        }
    };
    let spec = json!({"name": "shapes", "hosts": [{"name": "h"}, {"name": "quiet"}],
        "groups": [{"name": "g", "hosts": ["h"], "steps": [
            {"index": 1, "content": "echo '{}' > r.json", "options": {"structured_result_file": "r.json", "timeout": "15s"}}]}],
        "health_checks": [{"name": "app", "kind": "http_health", "port": 8080}]});
    let (st, body) = svc.req("GET", "/healthz", None, None).await;
    check("get", "/healthz", st, &body);
    let (st, created) = svc.op("POST", "/v1/instances", Some(&spec)).await;
    check("post", "/v1/instances", st, &created);
    let id = created["id"].as_str().expect("id").to_string();
    let (st, body) = svc
        .op("POST", "/v1/instances", Some(&json!({"name": "x"})))
        .await;
    check("post", "/v1/instances", st, &body);
    let keys: Vec<(String, String)> = created["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| {
            (
                h["name"].as_str().expect("n").into(),
                h["pairing_key"].as_str().expect("k").into(),
            )
        })
        .collect();
    let key = &keys.iter().find(|(h, _)| h == "h").expect("h").1;
    let (st, paired) = svc
        .req("POST", "/v1/agent/pair", None, Some(&json!({"instance": id, "host": "h", "pairing_key": key, "agent_version": "t", "protocol": ibkit_api::PROTOCOL_VERSION})))
        .await;
    check("post", "/v1/agent/pair", st, &paired);
    let cred = paired["credential"].as_str().expect("cred").to_string();
    let _quiet = svc.pair(&id, &keys, "quiet").await;
    let (st, work) = svc
        .req("GET", "/v1/agent/work?wait_ms=0", Some(&cred), None)
        .await;
    check("get", "/v1/agent/work", st, &work);
    let exec = work["work"]["exec_id"].as_str().expect("exec").to_string();
    let running = json!({"report_id": "r-1", "exec_id": exec, "status": "running", "attempt": 1, "started_at_ms": 1});
    let (st, body) = svc
        .req("POST", "/v1/agent/reports", Some(&cred), Some(&running))
        .await;
    check("post", "/v1/agent/reports", st, &body);
    let done = finished("r-2", &exec, true, "raw", Some(json!({"k": 1})));
    let (st, body) = svc
        .req("POST", "/v1/agent/reports", Some(&cred), Some(&done))
        .await;
    check("post", "/v1/agent/reports", st, &body);
    let (st, body) = svc
        .req("POST", "/v1/agent/reports", Some(&cred), Some(&done))
        .await;
    assert_eq!(body["duplicate"], true, "{body}");
    check("post", "/v1/agent/reports", st, &body);
    let (st, work) = svc
        .req("GET", "/v1/agent/work?wait_ms=0", Some(&cred), None)
        .await;
    assert_eq!(work["health_checks"][0]["name"], "app", "{work}");
    check("get", "/v1/agent/work", st, &work);
    let hb =
        json!({"agent_version": "t", "uptime_s": 1, "running_exec": null, "queued_reports": 0});
    let (st, body) = svc
        .req("POST", "/v1/agent/heartbeat", Some(&cred), Some(&hb))
        .await;
    check("post", "/v1/agent/heartbeat", st, &body);
    let hr = json!({"check": "app", "ok": true, "detail": "d", "at_ms": 1, "duration_ms": 1});
    let (st, body) = svc
        .req("POST", "/v1/agent/health", Some(&cred), Some(&hr))
        .await;
    check("post", "/v1/agent/health", st, &body);
    let (st, body) = svc.req("GET", "/v1/service", None, None).await;
    check("get", "/v1/service", st, &body);
    let (st, body) = svc.op("GET", "/v1/service", None).await;
    check("get", "/v1/service", st, &body);
    let (st, body) = svc.req("GET", "/v1/instances", None, None).await;
    check("get", "/v1/instances", st, &body);
    let (st, body) = svc.op("GET", "/v1/instances", None).await;
    check("get", "/v1/instances", st, &body);
    let (st, body) = svc.op("GET", &format!("/v1/instances/{id}"), None).await;
    check("get", "/v1/instances/{id}", st, &body);
    let (st, body) = svc.op("GET", "/v1/instances/not-a-uuid", None).await;
    check("get", "/v1/instances/{id}", st, &body);
    let (st, body) = svc
        .op("GET", &format!("/v1/instances/{id}/hosts/h/steps"), None)
        .await;
    check("get", "/v1/instances/{id}/hosts/{host}/steps", st, &body);
    let (st, body) = svc
        .op("GET", &format!("/v1/instances/{id}/hosts/h/health"), None)
        .await;
    check("get", "/v1/instances/{id}/hosts/{host}/health", st, &body);
    let (st, body) = svc
        .op("GET", &format!("/v1/instances/{id}/results/h/g/1"), None)
        .await;
    check(
        "get",
        "/v1/instances/{id}/results/{host}/{group}/{index}",
        st,
        &body,
    );
    let t = Instant::now();
    let list = loop {
        let list = svc.recovery(&id).await;
        if !list.is_empty() {
            break list;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no recovery request");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    check(
        "get",
        "/v1/recovery-requests",
        200,
        &Value::Array(list.clone()),
    );
    let (st, body) = svc
        .op("GET", "/v1/recovery-requests?status=nope", None)
        .await;
    check("get", "/v1/recovery-requests", st, &body);
    let rid = list[0]["id"].as_str().expect("id");
    let (st, body) = svc
        .op(
            "POST",
            &format!("/v1/recovery-requests/{rid}/resolve"),
            None,
        )
        .await;
    check("post", "/v1/recovery-requests/{id}/resolve", st, &body);
    let (st, body) = svc
        .op("PUT", &format!("/v1/instances/{id}"), Some(&spec))
        .await;
    check("put", "/v1/instances/{id}", st, &body);
    let (st, body) = svc
        .op("POST", &format!("/v1/instances/{id}/redeploy"), None)
        .await;
    check("post", "/v1/instances/{id}/redeploy", st, &body);
    let (st, body) = svc
        .op(
            "POST",
            &format!("/v1/instances/{id}/hosts/quiet/pairing-key"),
            None,
        )
        .await;
    check(
        "post",
        "/v1/instances/{id}/hosts/{host}/pairing-key",
        st,
        &body,
    );
    let (st, body) = svc.op("DELETE", &format!("/v1/instances/{id}"), None).await;
    check("delete", "/v1/instances/{id}", st, &body);
    let (st, body) = svc
        .op("POST", &format!("/v1/instances/{id}/redeploy"), None)
        .await;
    check("post", "/v1/instances/{id}/redeploy", st, &body);
    let (st, body) = svc.req("GET", "/v1/agent/work", Some(&cred), None).await;
    check("get", "/v1/agent/work", st, &body);
}

/// Pairs `host` with a raw request and returns the whole answer.
async fn pair_raw(svc: &Svc, id: &str, key: &str, host: &str) -> Value {
    let (st, body) = svc
        .req("POST", "/v1/agent/pair", None, Some(&json!({"instance": id, "host": host, "pairing_key": key, "agent_version": "t", "protocol": ibkit_api::PROTOCOL_VERSION})))
        .await;
    assert_eq!(st, 200, "pair: {body}");
    body
}

fn heartbeat() -> Value {
    json!({"agent_version": "t", "uptime_s": 1, "running_exec": null, "queued_reports": 0})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detection_timeout_sets_the_heartbeat_interval_agents_are_told() {
    let dir = tmp();
    let mut cfg = config(dir.path());
    cfg.heartbeat_interval = Duration::from_secs(30);
    let svc = Svc::start(cfg).await;
    let (fast, fast_keys) = svc
        .create(&json!({"name": "fast", "hosts": [{"name": "h"}], "detection_timeout": "30s"}))
        .await;
    let (slow, slow_keys) = svc
        .create(&json!({"name": "slow", "hosts": [{"name": "h"}]}))
        .await;
    let paired = pair_raw(&svc, &fast, &fast_keys[0].1, "h").await;
    assert_eq!(paired["heartbeat_interval"], "10s", "{paired}");
    let fast_cred = paired["credential"].as_str().expect("cred").to_string();
    let paired = pair_raw(&svc, &slow, &slow_keys[0].1, "h").await;
    assert_eq!(paired["heartbeat_interval"], "30s", "{paired}");
    let slow_cred = paired["credential"].as_str().expect("cred").to_string();
    let work = |cred: String, q: String| {
        let svc = &svc;
        async move {
            let (st, body) = svc.req("GET", &q, Some(&cred), None).await;
            assert_eq!(st, 200, "{body}");
            body
        }
    };
    let fast_work = work(fast_cred.clone(), "/v1/agent/work?wait_ms=0".into()).await;
    assert_eq!(fast_work["heartbeat_interval"], "10s", "{fast_work}");
    let slow_work = work(slow_cred.clone(), "/v1/agent/work?wait_ms=0".into()).await;
    assert_eq!(slow_work["heartbeat_interval"], "30s", "{slow_work}");
    // Same (no) checks: only the interval tells the revisions apart.
    assert_ne!(fast_work["config_rev"], slow_work["config_rev"]);
    // Setting a detection timeout on a running instance ends the agent's
    // long poll at once with the new interval.
    let rev = slow_work["config_rev"].as_str().expect("rev").to_string();
    let t = Instant::now();
    let (polled, (st, put)) = tokio::join!(
        work(
            slow_cred.clone(),
            format!("/v1/agent/work?wait_ms=20000&config_rev={rev}")
        ),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            svc.op(
                "PUT",
                &format!("/v1/instances/{slow}"),
                Some(&json!({"name": "slow", "hosts": [{"name": "h"}], "detection_timeout": "6s"})),
            )
            .await
        }
    );
    assert_eq!(st, 200, "{put}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the long poll waited"
    );
    assert_eq!(polled["heartbeat_interval"], "2s", "{polled}");
    assert_ne!(polled["config_rev"], slow_work["config_rev"]);
    assert_eq!(svc.instance(&slow).await["spec"]["detection_timeout"], "6s");
    // Out of range or malformed: refused, naming the field.
    for bad in [json!("500ms"), json!("25h"), json!("soon")] {
        let (st, body) = svc
            .op(
                "POST",
                "/v1/instances",
                Some(&json!({"name": "bad", "hosts": [{"name": "h"}], "detection_timeout": bad})),
            )
            .await;
        assert_eq!(st, 400, "{bad}: {body}");
        assert!(
            body["error"]
                .as_str()
                .expect("error")
                .contains("detection_timeout")
                || body["error"].as_str().expect("error").contains("soon"),
            "{bad}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detection_timeout_replaces_the_agent_and_health_timeouts() {
    let dir = tmp();
    // The global timeouts (60s) cannot fire during this test.
    let svc = Svc::start(config(dir.path())).await;
    let t = Instant::now();
    let (fast, fast_keys) = svc
        .create(&json!({"name": "fast", "detection_timeout": "2s",
            "hosts": [{"name": "quiet"}, {"name": "checked"}],
            "groups": [{"name": "g", "hosts": ["checked"], "steps": [{"index": 1, "content": "true"}]}],
            "health_checks": [{"name": "app", "kind": "port_health", "port": 8080, "period": "1s", "hosts": ["checked"]}]}))
        .await;
    let (slow, slow_keys) = svc
        .create(&json!({"name": "slow", "hosts": [{"name": "quiet"}]}))
        .await;
    let _quiet = svc.pair(&fast, &fast_keys, "quiet").await;
    let checked = svc.pair(&fast, &fast_keys, "checked").await;
    let _slow_quiet = svc.pair(&slow, &slow_keys, "quiet").await;
    let w = checked.take(&svc).await;
    checked
        .run(&svc, w["exec_id"].as_str().expect("exec"), true, "", None)
        .await;
    let (_, active) = checked.work(&svc, 0, None).await;
    assert_eq!(active["health_checks"][0]["name"], "app", "{active}");
    let list = loop {
        // `checked` keeps heartbeating but never reports a passing check.
        let (st, _) = svc
            .req(
                "POST",
                "/v1/agent/heartbeat",
                Some(&checked.credential),
                Some(&heartbeat()),
            )
            .await;
        assert_eq!(st, 200);
        let list = svc.recovery(&fast).await;
        if list.len() >= 2 {
            break list;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "no recovery requests: {list:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "the verdict came before the 2s timeout"
    );
    let by = |h: &str| {
        list.iter()
            .find(|r| r["host"] == h)
            .cloned()
            .unwrap_or_else(|| panic!("no request for {h}: {list:#?}"))
    };
    let quiet = by("quiet");
    assert_eq!(quiet["kind"], "agent_silent", "{quiet:#}");
    let reason = quiet["reason"].as_str().expect("reason");
    assert!(
        reason.contains("timeout 2s, detection_timeout"),
        "the reason names the timeout used: {reason}"
    );
    let missing = by("checked");
    assert_eq!(missing["kind"], "health_missing", "{missing:#}");
    let reason = missing["reason"].as_str().expect("reason");
    assert!(
        reason.contains("\"app\"") && reason.contains("timeout 2s, detection_timeout"),
        "{reason}"
    );
    // The other instance's silent host is judged by --agent-timeout (60s).
    assert_eq!(svc.recovery(&slow).await, Vec::<Value>::new());
    assert_eq!(svc.instance(&slow).await["hosts"][0]["health"], "healthy");
}

/// `GET /v1/service`, `STATE/endpoint.json` and the pinned client of
/// `ibkit_api::pin` against the real service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_info_and_endpoint_file_give_the_pins() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tmp();
    let mut svc = Svc::start(config(dir.path())).await;
    let cert = svc
        .server
        .as_ref()
        .expect("server")
        .cert_sha256
        .clone()
        .expect("cert");
    // The operator token is required.
    let (st, body) = svc.req("GET", "/v1/service", None, None).await;
    assert_eq!(st, 401, "{body}");
    let (st, body) = svc.req("GET", "/v1/service", Some("op_wrong"), None).await;
    assert_eq!(st, 401, "{body}");
    let (st, body) = svc.op("GET", "/v1/service", None).await;
    assert_eq!(st, 200, "{body}");
    let info: ibkit_api::wire::ServiceInfo =
        serde_json::from_value(body.clone()).expect("a ServiceInfo");
    assert_eq!(info.public_url, svc.url);
    assert_eq!(info.cert_sha256.as_deref(), Some(cert.as_str()));
    assert_eq!(info.heartbeat_interval.to_string(), "500ms");
    assert_eq!(info.agent_timeout.to_string(), "1m");
    assert_eq!(info.health_timeout.to_string(), "1m");
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    // curl_pin is the one the installer is served with.
    let pin = info.curl_pin.clone().expect("self-signed: a curl pin");
    assert!(pin.starts_with("sha256//"), "{pin}");
    let script = svc
        .client
        .get(format!("{}/v1/agent/install.sh", svc.url))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert!(script.contains(&format!("CURL_PIN='{pin}'\n")), "{script}");

    // endpoint.json: the URL and pin, private like the rest, written atomically.
    let path = dir.path().join("endpoint.json");
    let read = |path: &std::path::Path| -> Value {
        serde_json::from_slice(&std::fs::read(path).expect("endpoint.json")).expect("JSON")
    };
    assert_eq!(read(&path), json!({"url": svc.url, "cert_sha256": cert}));
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let temps = std::fs::read_dir(dir.path())
        .expect("state dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .count();
    assert_eq!(temps, 0, "temp file left");
    // What a local `ibkit deploy` does: trust only the file's pin.
    let endpoint: ibkit_api::wire::ServiceEndpoint =
        serde_json::from_value(read(&path)).expect("a ServiceEndpoint");
    let pinned = |hex: &str| {
        let pin = ibkit_api::pin::parse_cert_sha256(hex).expect("pin");
        let tls = ibkit_api::pin::pinned_client_config(pin).expect("tls");
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()
            .expect("client")
    };
    let client = pinned(endpoint.cert_sha256.as_deref().expect("cert"));
    let r = client
        .get(format!("{}/v1/service", endpoint.url))
        .bearer_auth(&svc.token)
        .send()
        .await
        .expect("the pinned certificate is accepted");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().await.expect("json"), body);
    let wrong = pinned(&"00".repeat(32))
        .get(format!("{}/healthz", endpoint.url))
        .send()
        .await
        .expect_err("another pin is refused");
    let mut chain = wrong.to_string();
    let mut src = std::error::Error::source(&wrong);
    while let Some(s) = src {
        chain.push_str(&format!(": {s}"));
        src = s.source();
    }
    assert!(chain.contains("not the pinned one"), "{chain}");

    // A restart listens on another port: the file follows.
    svc.restart().await;
    assert_eq!(read(&path)["url"], svc.url);

    // Plain HTTP: no pins anywhere.
    let plain_dir = tmp();
    let mut cfg = config(plain_dir.path());
    cfg.tls = ibkit_server::TlsMode::InsecureHttp;
    let server = ibkit_server::Server::start(cfg).await.expect("starts");
    assert!(server.url.starts_with("http://"), "{}", server.url);
    assert_eq!(
        read(&plain_dir.path().join("endpoint.json")),
        json!({"url": server.url, "cert_sha256": null})
    );
    let token = std::fs::read_to_string(plain_dir.path().join("operator-token")).expect("token");
    let info: ibkit_api::wire::ServiceInfo = reqwest::Client::new()
        .get(format!("{}/v1/service", server.url))
        .bearer_auth(token.trim())
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("a ServiceInfo");
    assert_eq!((info.cert_sha256, info.curl_pin), (None, None));
    server.shutdown().await;
}

/// The served installer with `--server-url`: the VM reaches the service at
/// another address than the public URL baked into the script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installer_server_url_overrides_the_public_url() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tmp();
    let mut cfg = config(dir.path());
    // Nothing answers there: only the override can reach the service.
    cfg.public_url = Some("https://public.invalid:9".into());
    // A stand-in agent that records how the installer calls it.
    let fake = dir.path().join("fake-agent");
    std::fs::write(
        &fake,
        "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$(dirname \"$0\")/../../../agent-args\"\n",
    )
    .expect("fake agent");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    cfg.agent_binary = Some(fake.clone());
    let mut svc = Svc::start(cfg).await;
    // The address the "VM" (and this test) reaches the service at.
    svc.url = format!(
        "https://{}",
        svc.server.as_ref().expect("server").local_addr
    );
    let (id, keys) = svc
        .create(&json!({"name": "i", "hosts": [{"name": "vm"}]}))
        .await;
    let script = svc
        .client
        .get(format!("{}/v1/agent/install.sh", svc.url))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert!(
        script.contains("SERVER_URL='https://public.invalid:9'"),
        "{script}"
    );
    let script_path = dir.path().join("install.sh");
    std::fs::write(&script_path, &script).expect("write");
    let install = |root: &std::path::Path, url: &str| {
        std::process::Command::new("sh")
            .arg(&script_path)
            .args(["--instance", &id, "--host", "vm"])
            .args(["--server-url", url])
            .env("IBKIT_PAIRING_KEY", &keys[0].1)
            .env("IBKIT_ROOT", root)
            .env("IBKIT_NO_SYSTEMD", "1")
            .output()
            .expect("sh runs")
    };
    // A trailing slash is dropped.
    for (n, url) in [svc.url.clone(), format!("{}/", svc.url)]
        .iter()
        .enumerate()
    {
        let root = dir.path().join(format!("root{n}"));
        let out = install(&root, url);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "install failed: {stderr}");
        assert!(
            stderr.contains(&format!("downloading the agent from {}\n", svc.url)),
            "{stderr}"
        );
        assert_eq!(
            std::fs::read(root.join("usr/local/bin/ibkit-agent")).expect("installed"),
            std::fs::read(&fake).expect("fake"),
            "the binary came from the service"
        );
        let toml = std::fs::read_to_string(root.join("etc/ibkit/agent.toml")).expect("config");
        assert!(
            toml.contains(&format!("server_url = \"{}\"\n", svc.url)),
            "{toml}"
        );
        assert!(!toml.contains("public.invalid"), "{toml}");
        let cert = svc
            .server
            .as_ref()
            .expect("server")
            .cert_sha256
            .clone()
            .expect("cert");
        assert!(
            toml.contains(&format!("server_cert_sha256 = \"{cert}\"")),
            "{toml}"
        );
        let args = std::fs::read_to_string(root.join("agent-args")).expect("the agent ran");
        let config = root.join("etc/ibkit/agent.toml");
        assert_eq!(args, format!("pair\n--config\n{}\n", config.display()));
    }
    // Anything else is refused before anything is downloaded or written.
    for bad in [
        "ftp://127.0.0.1:1",
        "https://",
        "127.0.0.1:8443",
        "https://a;touch${IFS}pwned",
        "https://a b",
        "https://a\"b",
        "https://a'b",
        "https://a$(id)",
        "https://a\\b",
        "https://a?b",
    ] {
        let root = dir.path().join("refused");
        let out = install(&root, bad);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("--server-url"), "{bad}: {stderr}");
        assert!(stderr.contains(bad), "the message quotes it: {stderr}");
        assert!(!root.exists(), "{bad}: the installer went on");
    }
}

/// `POST /v1/instances?id=`: a package deployment creates its instance
/// under the marketplace's instance_uuid; an id is never given twice, not
/// even after a delete, and a malformed one is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_can_be_created_under_a_chosen_id() {
    let dir = tmp();
    let svc = Svc::start(config(dir.path())).await;
    let spec = json!({"name": "pkg", "hosts": [{"name": "h"}]});
    let id = "0c943e02-dff0-4932-897c-a38dafe66930";
    let (st, body) = svc
        .op("POST", &format!("/v1/instances?id={id}"), Some(&spec))
        .await;
    assert_eq!(st, 201, "{body}");
    assert_eq!(body["id"], id);
    let (st, body) = svc.op("GET", &format!("/v1/instances/{id}"), None).await;
    assert_eq!((st, body["name"].as_str()), (200, Some("pkg")));
    let (st, body) = svc
        .op("POST", &format!("/v1/instances?id={id}"), Some(&spec))
        .await;
    assert_eq!(st, 409, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains(id)),
        "{body}"
    );
    let (st, _) = svc.op("DELETE", &format!("/v1/instances/{id}"), None).await;
    assert_eq!(st, 200);
    let (st, _) = svc
        .op("POST", &format!("/v1/instances?id={id}"), Some(&spec))
        .await;
    assert_eq!(st, 409, "a deleted instance's id is not reused");
    for bad in ["0C943E02-DFF0-4932-897C-A38DAFE66930", "42", "..%2F"] {
        let (st, body) = svc
            .op("POST", &format!("/v1/instances?id={bad}"), Some(&spec))
            .await;
        assert_eq!(st, 400, "{bad}: {body}");
    }
    let (st, body) = svc.op("GET", "/v1/instances", None).await;
    assert_eq!(st, 200);
    assert_eq!(body.as_array().map(Vec::len), Some(1), "{body}");
}

/// The deployment controller's timeline: stored per instance, replaced on
/// each publish, kept across a restart, refused over the limits with the
/// limit named, and 404 before any publish or for an unknown instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_deployment_timeline_is_kept_replaced_and_bounded() {
    let dir = tmp();
    let mut svc = Svc::start(config(dir.path())).await;
    let (id, _) = svc.create(&two_host_spec()).await;
    let path = format!("/v1/instances/{id}/deployment");

    let (status, body) = svc.op("GET", &path, None).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("no deployment controller"),
        "{body}"
    );

    let attempt = |n: u32, outcome: Option<&str>| {
        json!({"number": n, "kind": if n == 1 { "create" } else { "retry" },
               "started_at": 1000 * i64::from(n), "ended_at": outcome.map(|_| 1000 * i64::from(n) + 500),
               "outcome": outcome, "failure": outcome.filter(|o| *o == "failed").map(|_| "step base/1 failed"),
               "milestones": [{"name": "vms_created", "at": 1000 * i64::from(n) + 10}]})
    };
    let timeline = json!({
        "deployment": "order", "backend": "the local QEMU backend",
        "status": "running", "status_reason": null,
        "attempts": [attempt(1, Some("failed")), attempt(2, Some("running"))],
        "recoveries": [{"host": "b", "kind": "vm_stopped", "reason": "the VM stopped",
            "detected_at": 5000, "recreated_at": 6000, "recovered_at": 9000,
            "old_vm": "b-a1", "new_vm": "b-a2", "failure": null,
            "milestones": [{"name": "recreated", "at": 6000}, {"name": "running", "at": 9000}]}],
        "published_at": 9500,
    });
    let (status, body) = svc.op("PUT", &path, Some(&timeline)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], id.as_str());
    let (status, got) = svc.op("GET", &path, None).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got, timeline);

    // Over the limits: refused, naming which, and the stored copy stays.
    let mut too_many = timeline.clone();
    too_many["attempts"] = Value::Array((1..=51).map(|n| attempt(n, None)).collect());
    let (status, body) = svc.op("PUT", &path, Some(&too_many)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("51 attempts"),
        "{body}"
    );
    let mut long = timeline.clone();
    long["status_reason"] = json!("x".repeat(9000));
    let (status, body) = svc.op("PUT", &path, Some(&long)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("9000 bytes"),
        "{body}"
    );
    assert_eq!(svc.op("GET", &path, None).await.1, timeline);

    // A later publish replaces it; a restart keeps it.
    let mut later = timeline.clone();
    later["status"] = json!("failed");
    assert_eq!(svc.op("PUT", &path, Some(&later)).await.0, 200);
    svc.restart().await;
    assert_eq!(svc.op("GET", &path, None).await.1, later);

    let other = format!("/v1/instances/{}/deployment", uuid_like());
    assert_eq!(svc.op("PUT", &other, Some(&timeline)).await.0, 404);
}

fn uuid_like() -> String {
    "00000000-0000-4000-8000-000000000001".to_string()
}

/// `GET /v1/agent/ibkit-agent.deb` streams the `--agent-deb` file with
/// Debian's media type, to anyone (a VM's package manager has no token);
/// without `--agent-deb`, or with its file gone, it is a 404 saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_package_is_downloadable_without_a_token() {
    let dir = common::tmp();
    let state = dir.path().join("state");
    let unconfigured = Svc::start(common::config(&state)).await;
    let (st, body) = unconfigured
        .req("GET", "/v1/agent/ibkit-agent.deb", None, None)
        .await;
    assert_eq!(st, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("--agent-deb"),
        "{body}"
    );
    drop(unconfigured);

    // Bytes no text decoder would keep intact, larger than one stream chunk.
    let deb = dir.path().join("ibkit-agent_0.1.0_amd64.deb");
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&deb, &bytes).expect("write deb");
    let mut cfg = common::config(&dir.path().join("state2"));
    cfg.agent_deb = Some(deb.clone());
    let svc = Svc::start(cfg).await;
    let r = svc
        .client
        .get(format!("{}/v1/agent/ibkit-agent.deb", svc.url))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()[reqwest::header::CONTENT_TYPE],
        "application/vnd.debian.binary-package"
    );
    assert_eq!(
        r.headers()[reqwest::header::CONTENT_LENGTH],
        bytes.len().to_string().as_str()
    );
    assert!(r.bytes().await.expect("body") == bytes, "the file's bytes");

    std::fs::remove_file(&deb).expect("rm deb");
    let (st, body) = svc
        .req("GET", "/v1/agent/ibkit-agent.deb", None, None)
        .await;
    assert_eq!(st, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("ibkit-agent_0.1.0_amd64.deb is not available"),
        "{body}"
    );
}

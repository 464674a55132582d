//! The web console (`/console`) over real HTTPS: its authentication and
//! headers with a plain HTTP client, and its pages in a real headless
//! Chromium driven over the DevTools protocol (CDP) — log in through the
//! form, watch an instance fail and recover without reloading, read logs.
//!
//! Chromium is the Debian package `chromium` (scripts/apt-test-packages.txt);
//! without it the browser test fails saying so. Screenshots go to
//! `target/ibkit-artifacts/console/` (or `$IBKIT_ARTIFACTS_DIR/console/`);
//! the recovered two-host instance also to `docs/console.png` when that is
//! missing or `IBKIT_BLESS=1` is set.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Agent, Svc, config, finished, tmp};
use ibkit_server::routes::CONSOLE_ROUTES;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{Mutex, oneshot};

fn artifacts_dir() -> PathBuf {
    let base = std::env::var_os("IBKIT_ARTIFACTS_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/ibkit-artifacts"),
        PathBuf::from,
    );
    let dir = base.join("console");
    std::fs::create_dir_all(&dir).expect("artifacts directory");
    dir
}

/// A client that does not follow redirects (to see them) and pins the
/// service's self-signed certificate.
fn raw_client(svc: &Svc) -> reqwest::Client {
    let cert = std::fs::read(svc.cfg.state_dir.join("tls/cert.pem")).expect("cert");
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&cert).expect("pem"))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// POST of the login form (`application/x-www-form-urlencoded`).
fn login(http: &reqwest::Client, url: &str, token: &str) -> reqwest::RequestBuilder {
    let encoded: String = token
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    http.post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={encoded}"))
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_requires_a_session_escapes_everything_and_sends_strict_headers() {
    let dir = tmp();
    let svc = Svc::start(config(dir.path())).await;
    let http = raw_client(&svc);
    let url = |p: &str| format!("{}{p}", svc.url);
    // A vendor-controlled name with markup.
    let hostile = "<img src=x onerror=alert(1)> & \"quoted\"";
    let (id, _) = svc
        .create(&json!({"name": hostile, "hosts": [{"name": "vm"}],
            "groups": [{"name": "g", "hosts": ["vm"], "steps": [{"index": 1, "content": "true"}]}]}))
        .await;

    // No session: pages redirect to the login form, live data is 401.
    let r = http.get(url("/console")).send().await.expect("get");
    assert_eq!(r.status(), 303);
    assert_eq!(header(&r, "location"), "/console/login");
    for live in [
        "/console/live".to_string(),
        format!("/console/instances/{id}/live"),
    ] {
        let r = http.get(url(&live)).send().await.expect("get");
        assert_eq!(r.status(), 401, "{live}");
        let r = http
            .get(url(&live))
            .bearer_auth("op_wrong")
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 401, "{live} with a wrong token");
    }

    // The operator token as a bearer works; the page is escaped and strict.
    let r = http
        .get(url("/console"))
        .bearer_auth(&svc.token)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    let csp = header(&r, "content-security-policy").to_string();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ] {
        assert!(csp.contains(directive), "CSP {csp:?} lacks {directive}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(header(&r, "x-content-type-options"), "nosniff");
    assert_eq!(header(&r, "cache-control"), "no-store");
    let page = r.text().await.expect("text");
    assert!(
        page.contains("&lt;img src=x onerror=alert(1)&gt; &amp; &quot;quoted&quot;"),
        "{page}"
    );
    assert!(!page.contains("<img"), "{page}");
    assert!(!page.contains("<script>"), "no inline script: {page}");
    assert!(!page.contains("style="), "no inline style: {page}");

    // The assets are served with their types (nosniff needs them right).
    for (path, ty) in [
        ("/console/assets/console.js", "text/javascript"),
        ("/console/assets/console.css", "text/css"),
    ] {
        let r = http.get(url(path)).send().await.expect("get");
        assert_eq!(r.status(), 200);
        assert!(header(&r, "content-type").starts_with(ty), "{path}");
    }

    // The login form: a wrong token is refused, the right one gives a
    // cookie scoped to /console that scripts cannot read.
    let r = login(&http, &url("/console/login"), "op_wrong")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 401);
    assert!(r.text().await.expect("t").contains("Wrong operator token"));
    let r = login(&http, &url("/console/login"), &svc.token)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 303);
    assert_eq!(header(&r, "location"), "/console");
    let set_cookie = header(&r, "set-cookie").to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/console", "Secure"] {
        assert!(set_cookie.contains(attr), "{set_cookie} lacks {attr}");
    }
    let cookie = set_cookie
        .split(';')
        .next()
        .expect("name=value")
        .to_string();
    assert!(cookie.starts_with("ibkit_console=cs_"), "{cookie}");
    let r = http
        .get(url(&format!("/console/instances/{id}/live")))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert!(r.text().await.expect("t").contains("data-step=\"vm/g/1\""));
    // A session id that was never issued is nobody's.
    let r = http
        .get(url("/console"))
        .header("cookie", "ibkit_console=cs_forged")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 303);

    // Unknown instances and steps are clean 404 pages, not panics.
    for path in [
        "/console/instances/not-an-id".to_string(),
        "/console/instances/00000000-0000-4000-8000-000000000000".to_string(),
        format!("/console/instances/{id}/logs/vm/g/9"),
        format!("/console/instances/{id}/logs/vm/g/1?page=2"),
        format!("/console/instances/{id}/logs/no%20such/g/1"),
        format!("/console/instances/{id}/results/vm/nope/1"),
    ] {
        let r = http
            .get(url(&path))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 404, "{path}");
        assert!(
            header(&r, "content-type").starts_with("text/html"),
            "{path}"
        );
    }

    // Logging out ends the session on the service, not only in the browser.
    let r = http
        .post(url("/console/logout"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 303);
    assert!(header(&r, "set-cookie").contains("Max-Age=0"));
    let r = http
        .get(url("/console"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 303, "the old cookie still works after logout");

    // Every console route is routed and none is in the OpenAPI document
    // (HTML for a browser, not API).
    let (_, doc) = svc.req("GET", "/v1/openapi.json", None, None).await;
    for route in CONSOLE_ROUTES {
        let concrete = route
            .path
            .replace("{id}", &id)
            .replace("{host}", "vm")
            .replace("{group}", "g")
            .replace("{index}", "1");
        let m = reqwest::Method::from_bytes(route.method.to_uppercase().as_bytes()).expect("m");
        let r = http
            .request(m, url(&concrete))
            .bearer_auth(&svc.token)
            .send()
            .await
            .expect("request");
        assert!(
            r.status() != 404 && r.status() != 405,
            "{} {} is not routed: {}",
            route.method,
            route.path,
            r.status()
        );
        assert!(
            doc["paths"][route.path].is_null(),
            "{} is in the OpenAPI document",
            route.path
        );
    }

    // Failed logins are limited: past ten a minute, even the right token
    // waits (checked last: it locks the form for a minute).
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let r = login(&http, &url("/console/login"), "op_guess")
            .send()
            .await
            .expect("post");
        statuses.push(r.status().as_u16());
    }
    assert!(
        statuses.contains(&401) && statuses.ends_with(&[429]),
        "{statuses:?}"
    );
    let r = login(&http, &url("/console/login"), &svc.token)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 429);
}

// ---------------------------------------------------------------------------
// A small CDP client over --remote-debugging-pipe: Chromium reads commands
// on fd 3 and writes answers and events on fd 4, each a JSON text ended by
// a NUL byte. No websocket and no CDP crate needed.

type Pending = Arc<std::sync::Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

struct Browser {
    child: Child,
    commands: Mutex<ChildStdin>,
    pending: Pending,
    next_id: AtomicU64,
    _profile: tempfile::TempDir,
}

fn chromium_path() -> PathBuf {
    // Debian's wrapper script (/usr/bin/chromium) execs this binary.
    let direct = PathBuf::from("/usr/lib/chromium/chromium");
    if direct.exists() {
        return direct;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("chromium"))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "Chromium is not installed: the console's browser test needs the Debian \
                 package `chromium` (apt-get install chromium; listed in \
                 scripts/apt-test-packages.txt)"
            )
        })
}

impl Browser {
    async fn start(log: &Path) -> Browser {
        let profile = tmp();
        let chromium = chromium_path();
        let mut args = vec![
            "--headless".to_string(),
            "--remote-debugging-pipe".into(),
            // The service's certificate is self-signed; this browser only
            // ever talks to it.
            "--ignore-certificate-errors".into(),
            format!("--user-data-dir={}", profile.path().display()),
            "--no-first-run".into(),
            "--disable-gpu".into(),
            "--disable-extensions".into(),
            "--disable-background-networking".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,900".into(),
        ];
        if nix::unistd::geteuid().is_root() {
            // Chromium refuses to run as root with its sandbox. The test
            // browser loads only the service under test on loopback, with a
            // throw-away profile, so the sandbox protects nothing here.
            args.push("--no-sandbox".into());
        }
        args.push("about:blank".into());
        // bash moves the pipes to the fds CDP uses: our stdin pipe becomes
        // fd 3 (commands), our stdout pipe fd 4 (answers).
        let mut child = Command::new("bash")
            .arg("-c")
            .arg("exec 3<&0 4>&1 </dev/null >/dev/null; exec \"$@\"")
            .arg("bash")
            .arg(&chromium)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("chromium log"))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));
        let commands = child.stdin.take().expect("stdin");
        let answers = child.stdout.take().expect("stdout");
        let pending: Pending = Arc::default();
        let p = pending.clone();
        tokio::spawn(async move {
            let mut r = BufReader::new(answers);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(0, &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                let Ok(msg) = serde_json::from_slice::<Value>(&buf) else {
                    continue;
                };
                // Answers carry the command's id; events are not needed.
                if let Some(id) = msg["id"].as_u64() {
                    let waiter = p.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                    if let Some(tx) = waiter {
                        let _ = tx.send(msg);
                    }
                }
            }
        });
        Browser {
            child,
            commands: Mutex::new(commands),
            pending,
            next_id: AtomicU64::new(1),
            _profile: profile,
        }
    }

    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.try_call(session, method, params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// A command's result, or its error (e.g. the page navigated while a
    /// script ran).
    async fn try_call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let mut bytes = serde_json::to_vec(&msg).expect("json");
        bytes.push(0);
        {
            let mut w = self.commands.lock().await;
            w.write_all(&bytes).await.expect("write to chromium");
            w.flush().await.expect("flush");
        }
        let answer = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .unwrap_or_else(|_| panic!("chromium did not answer {method}"))
            .unwrap_or_else(|_| panic!("chromium exited during {method}"));
        if answer["error"].is_null() {
            Ok(answer["result"].clone())
        } else {
            Err(answer["error"].clone())
        }
    }

    /// A new tab, attached.
    async fn tab(&self) -> Tab<'_> {
        let t = self
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let target = t["targetId"].as_str().expect("targetId").to_string();
        let a = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await;
        let session = a["sessionId"].as_str().expect("sessionId").to_string();
        let tab = Tab {
            browser: self,
            session,
        };
        tab.cmd(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        tab
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

struct Tab<'a> {
    browser: &'a Browser,
    session: String,
}

impl Tab<'_> {
    async fn cmd(&self, method: &str, params: Value) -> Value {
        self.browser.call(Some(&self.session), method, params).await
    }

    /// The value of a JavaScript expression (promises awaited).
    async fn eval(&self, expr: &str) -> Value {
        let r = self
            .cmd(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            r["exceptionDetails"].is_null(),
            "{expr}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    async fn text(&self, selector: &str) -> String {
        let sel = serde_json::to_string(selector).expect("json");
        self.eval(&format!(
            "(document.querySelector({sel}) || {{textContent: ''}}).textContent"
        ))
        .await
        .as_str()
        .unwrap_or("")
        .to_string()
    }

    /// Waits until `expr` is true (the page loaded, the DOM changed).
    async fn wait_for(&self, expr: &str, what: &str) {
        let t = Instant::now();
        loop {
            // An error here is a navigation under way: try again.
            let r = self
                .browser
                .try_call(
                    Some(&self.session),
                    "Runtime.evaluate",
                    json!({"expression": format!("document.readyState === 'complete' && !!({expr})"), "returnByValue": true}),
                )
                .await;
            if r.is_ok_and(|r| r["result"]["value"] == json!(true)) {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "timed out waiting for {what} ({expr}); page: {}",
                self.text("body").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Navigates; the caller waits for what the page should show.
    async fn open(&self, url: &str) {
        self.cmd("Page.navigate", json!({"url": url})).await;
    }

    /// Navigates to a page that does not redirect and waits for it.
    async fn goto(&self, url: &str) {
        self.open(url).await;
        let u = serde_json::to_string(url).expect("json");
        self.wait_for(&format!("location.href === {u}"), url).await;
    }

    async fn click(&self, selector: &str) {
        let sel = serde_json::to_string(selector).expect("json");
        let found = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({sel}); if (!e) return false; e.click(); return true; }})()"
            ))
            .await;
        assert_eq!(found, json!(true), "nothing to click at {selector}");
    }

    /// The whole page as PNG into each of `paths`.
    async fn screenshot(&self, paths: &[PathBuf]) {
        let m = self.cmd("Page.getLayoutMetrics", json!({})).await;
        let height = m["cssContentSize"]["height"].as_f64().unwrap_or(900.0);
        let shot = self
            .cmd(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true,
                    "clip": {"x": 0, "y": 0, "width": 1280, "height": height.min(4000.0), "scale": 1}}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("data"))
            .expect("base64");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        for p in paths {
            std::fs::write(p, &png).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
    }
}

// ---------------------------------------------------------------------------

/// A fake agent runs its next step: running, then finished with `log`
/// (and real times, so the page shows plausible durations).
async fn run_step(svc: &Svc, agent: &Agent, ok: bool, log: &str) -> Value {
    let work = agent.take(svc).await;
    let exec = work["exec_id"].as_str().expect("exec");
    let now = ibkit_support::clock::now_ms();
    let (s, b) = agent
        .report(svc, json!({"report_id": agent.report_id(), "exec_id": exec, "status": "running", "attempt": 1, "started_at_ms": now - 1800}))
        .await;
    assert_eq!(s, 200, "{b}");
    let mut fin = finished(&agent.report_id(), exec, ok, "generated-secret-42", None);
    fin["log"] = json!(log);
    fin["started_at_ms"] = json!(now - 1800);
    fin["finished_at_ms"] = json!(now);
    let (s, b) = agent.report(svc, fin).await;
    assert_eq!((s, &b["applied"]), (200, &json!(true)), "{b}");
    work
}

async fn alive(svc: &Svc, agent: &Agent) {
    let (st, b) = svc
        .req("POST", "/v1/agent/heartbeat", Some(&agent.credential), Some(&json!({"agent_version": "0.1.0", "uptime_s": 60, "running_exec": null, "queued_reports": 0})))
        .await;
    assert_eq!(st, 200, "{b}");
    let (st, b) = svc
        .req("POST", "/v1/agent/health", Some(&agent.credential), Some(&json!({"check": "web", "ok": true, "detail": "port 8080 answers", "at_ms": ibkit_support::clock::now_ms(), "duration_ms": 3})))
        .await;
    assert_eq!(st, 200, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_headless_chromium_shows_a_failure_and_its_recovery_live() {
    let chromium = chromium_path();
    let dir = tmp();
    let svc = Svc::start(config(dir.path())).await;
    let art = artifacts_dir();
    let browser = Browser::start(&art.join("chromium.log")).await;
    let tab = browser.tab().await;
    let url = |p: &str| format!("{}{p}", svc.url);
    eprintln!("console test: {} → {}", chromium.display(), art.display());

    let (id, keys) = svc
        .create(&json!({
            "name": "shop",
            "hosts": [{"name": "a"}, {"name": "b"}],
            "groups": [
                {"name": "base", "hosts": ["a", "b"], "steps": [{"index": 1, "content": "apt-get install -y nginx"}]},
                {"name": "app", "hosts": ["b"], "depends_on": ["base"], "steps": [{"index": 1, "content": "./migrate.sh"}]},
            ],
            "health_checks": [{"name": "web", "kind": "port_health", "port": 8080, "period": "5s"}],
        }))
        .await;
    let a = svc.pair(&id, &keys, "a").await;
    let b = svc.pair(&id, &keys, "b").await;
    // Host a's log spans three pages (256 KiB each).
    let mut big = String::from("FIRST-LINE\n");
    let mut i = 0;
    while big.len() < 600 << 10 {
        big.push_str(&format!("line {i:06} unpacking nginx-common ... done\n"));
        i += 1;
    }
    big.push_str("LAST-LINE\n");
    run_step(&svc, &a, true, &big).await;
    alive(&svc, &a).await;

    // Without a session the console sends the browser to the login form.
    tab.open(&url("/console")).await;
    tab.wait_for("location.pathname === '/console/login'", "the login form")
        .await;
    // A wrong token is refused on the form itself.
    tab.eval("document.getElementById('token').value = 'op_wrong'; true")
        .await;
    tab.click("form.login button").await;
    tab.wait_for(
        "document.querySelector('.error') && document.querySelector('.error').textContent.includes('Wrong')",
        "the wrong-token message",
    )
    .await;
    let token = serde_json::to_string(&svc.token).expect("json");
    tab.eval(&format!(
        "document.getElementById('token').value = {token}; true"
    ))
    .await;
    tab.click("form.login button").await;
    tab.wait_for("location.pathname === '/console'", "the instance list")
        .await;
    let row = format!("tr[data-instance=\"{id}\"]");
    let list = tab.text(&row).await;
    assert!(list.contains("shop") && list.contains("applying"), "{list}");
    assert!(
        tab.eval(&format!(
            "document.querySelector('{row}').children[4].textContent"
        ))
        .await
            == json!("2"),
        "two hosts: {list}"
    );
    // The session cookie is HttpOnly: page scripts cannot read it.
    assert_eq!(tab.eval("document.cookie").await, json!(""));
    tab.screenshot(&[art.join("list.png")]).await;

    // The instance page: both hosts, host a's step done, b's pending.
    tab.click(&format!("{row} a")).await;
    tab.wait_for("document.getElementById('hosts')", "the instance page")
        .await;
    let hosts = tab.text("#hosts").await;
    assert!(hosts.contains("paired") && hosts.contains("ago"), "{hosts}");
    for (sel, status) in [
        ("a/base/1", "ok"),
        ("b/base/1", "pending"),
        ("b/app/1", "pending"),
    ] {
        let got = tab
            .eval(&format!(
                "(document.querySelector('tr[data-step=\"{sel}\"]') || {{dataset: {{}}}}).dataset.status"
            ))
            .await;
        assert_eq!(got, json!(status), "{sel}");
    }
    // Results are masked until revealed.
    let host_a = tab.text("#host-a").await;
    assert!(
        host_a.contains("••••") && !host_a.contains("generated-secret-42"),
        "{host_a}"
    );
    assert!(host_a.contains("port 8080 answers"), "{host_a}");
    assert!(tab.text("#recovery").await.contains("No recovery requests"));

    // Host b's migration fails; the page, not reloaded, shows the failed
    // step and the recovery request the monitor opens.
    tab.eval("window.__consoleMarker = 'not reloaded'; true")
        .await;
    run_step(&svc, &b, true, "base ok\n").await;
    let hostile_log = "running migrations\n\u{1b}[31mERROR\u{1b}[0m relation \"orders\" exists\n\
        <script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\">\n\
        MIGRATION-FAILED-MARKER\n";
    run_step(&svc, &b, false, hostile_log).await;
    alive(&svc, &b).await;
    tab.wait_for(
        "document.querySelector('#recovery tr[data-status=\"open\"]')",
        "the recovery request to appear live",
    )
    .await;
    tab.wait_for(
        "document.querySelector('tr[data-step=\"b/app/1\"][data-status=\"failed\"]')",
        "the failed step",
    )
    .await;
    assert_eq!(
        tab.eval("window.__consoleMarker").await,
        json!("not reloaded"),
        "the page reloaded instead of updating in place"
    );
    let recovery = tab.text("#recovery").await;
    assert!(
        recovery.contains("agent_failed") && recovery.contains("app/1"),
        "{recovery}"
    );
    tab.screenshot(&[art.join("instance-failed.png")]).await;

    // The failed step's log, from its link: the agent's text, inert.
    tab.click("tr[data-step=\"b/app/1\"] a.log").await;
    tab.wait_for("document.getElementById('log')", "the log page")
        .await;
    let log = tab.text("#log").await;
    assert!(log.contains("MIGRATION-FAILED-MARKER"), "{log}");
    assert!(
        log.contains("<script>window.__pwned = 1</script>") && log.contains("^[[31mERROR"),
        "markup and escapes are shown as text: {log}"
    );
    assert_eq!(
        tab.eval("[window.__pwned === undefined, document.querySelectorAll('#log *').length, document.scripts.length]")
            .await,
        json!([true, 0, 1]),
        "the log injected markup"
    );
    tab.screenshot(&[art.join("log-failed.png")]).await;

    // A log of three pages, paged with next/previous.
    tab.goto(&url(&format!("/console/instances/{id}/logs/a/base/1")))
        .await;
    assert_eq!(tab.text(".page").await, "page 1 of 3");
    let first = tab.text("#log").await;
    assert!(first.starts_with("FIRST-LINE") && !first.contains("LAST-LINE"));
    assert!(
        first.len() <= (256 << 10) + 3,
        "{} bytes on a page",
        first.len()
    );
    tab.click("a.next").await;
    tab.wait_for(
        "document.querySelector('.page').textContent === 'page 2 of 3'",
        "page 2",
    )
    .await;
    tab.click("a.next").await;
    tab.wait_for(
        "document.querySelector('.page').textContent === 'page 3 of 3'",
        "page 3",
    )
    .await;
    assert!(tab.text("#log").await.ends_with("LAST-LINE\n"));
    assert_eq!(
        tab.eval("document.querySelector('a.next')").await,
        Value::Null,
        "a next link on the last page"
    );
    tab.screenshot(&[art.join("log-paged.png")]).await;
    tab.click("a.prev").await;
    tab.wait_for(
        "document.querySelector('.page').textContent === 'page 2 of 3'",
        "back to page 2",
    )
    .await;
    // Revealing a result is an explicit step.
    tab.goto(&url(&format!("/console/instances/{id}/results/a/base/1")))
        .await;
    assert!(tab.text("pre").await.contains("generated-secret-42"));

    // Recovery as `ibkit deploy` does it: resolve the request, give the
    // recreated VM a new pairing key, its new agent pairs and runs b's
    // steps again. The open page follows without a reload.
    tab.goto(&url(&format!("/console/instances/{id}"))).await;
    tab.eval("window.__consoleMarker = 'still not reloaded'; true")
        .await;
    // (The new key first: it resets b's failed step, so the monitor has
    // no failure left to open a second request for.)
    let open = svc.recovery(&id).await;
    let rid = open[0]["id"].as_str().expect("id");
    let (st, rekeyed) = svc
        .op(
            "POST",
            &format!("/v1/instances/{id}/hosts/b/pairing-key"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{rekeyed}");
    let (st, body) = svc
        .op(
            "POST",
            &format!("/v1/recovery-requests/{rid}/resolve"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let new_key = vec![(
        "b".to_string(),
        rekeyed["pairing_key"].as_str().expect("key").to_string(),
    )];
    let b2 = svc.pair(&id, &new_key, "b").await;
    run_step(&svc, &b2, true, "base ok again\n").await;
    run_step(&svc, &b2, true, "migrations applied\n").await;
    alive(&svc, &a).await;
    alive(&svc, &b2).await;
    tab.wait_for(
        "document.querySelector('#recovery tr[data-status=\"resolved\"]') && \
         document.querySelector('tr[data-step=\"b/app/1\"][data-status=\"ok\"]') && \
         document.getElementById('summary').textContent.includes('running')",
        "the recovered instance, running",
    )
    .await;
    assert_eq!(
        tab.eval("window.__consoleMarker").await,
        json!("still not reloaded")
    );
    // The deployment controller publishes its timeline after recreating
    // b's VM (as `ibkit deploy` does after every change): it appears on
    // the open page too.
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms");
    let timeline = json!({
        "deployment": "shop", "backend": "the local QEMU backend", "status": "running",
        "status_reason": null, "published_at": now,
        "attempts": [{"number": 1, "kind": "create", "started_at": now - 95_000,
            "ended_at": now - 30_000, "outcome": "running", "failure": null,
            "milestones": [{"name": "vms_created", "at": now - 93_000},
                           {"name": "a.paired", "at": now - 60_000},
                           {"name": "b.paired", "at": now - 58_000},
                           {"name": "steps_done", "at": now - 35_000},
                           {"name": "health_passed", "at": now - 30_000}]}],
        "recoveries": [{"host": "b", "kind": "agent_failed",
            "reason": "agent reported a failure: step app/1 failed: exit code 7",
            "detected_at": now - 12_000, "recreated_at": now - 9_000, "recovered_at": now - 1_000,
            "old_vm": "shop.b-a1", "new_vm": "shop.b-a2", "failure": null,
            "milestones": [{"name": "recreated", "at": now - 9_000},
                           {"name": "paired", "at": now - 4_000},
                           {"name": "steps_done", "at": now - 2_000},
                           {"name": "running", "at": now - 1_000}]}],
    });
    let (st, body) = svc
        .op(
            "PUT",
            &format!("/v1/instances/{id}/deployment"),
            Some(&timeline),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    tab.wait_for(
        "document.querySelector('#deployment tr[data-vm-recovery=\"b\"]') && \
         document.querySelector('#deployment tr[data-attempt=\"1\"]')",
        "the published deployment timeline",
    )
    .await;
    assert!(tab.text("#deployment").await.contains("shop.b-a2"));
    assert_eq!(
        tab.eval("window.__consoleMarker").await,
        json!("still not reloaded")
    );
    // docs/console.png is checked in: rewritten when missing or asked for
    // (IBKIT_BLESS=1, as for docs/api/openapi.json), so that a test run
    // does not leave the tree dirty with new timestamps.
    let mut shots = vec![art.join("instance-recovered.png")];
    let docs_png = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/console.png");
    if std::env::var_os("IBKIT_BLESS").is_some() || !docs_png.exists() {
        shots.push(docs_png);
    }
    tab.screenshot(&shots).await;

    // Logging out ends the session: the page sends the browser back.
    tab.click("form.logout button").await;
    tab.wait_for(
        "location.pathname === '/console/login'",
        "the login form after logout",
    )
    .await;
    tab.open(&url("/console")).await;
    tab.wait_for(
        "location.pathname === '/console/login'",
        "the login form, logged out",
    )
    .await;
}

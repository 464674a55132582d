//! The `install.sh` one-liner for real: `sh`, `curl` with the public-key
//! pin and the agent binary against a local HTTPS server (issue 12 items 4
//! and 9c).
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use ibkit_api::dist::{install_command, install_script};
use serde_json::json;
use sha2::Digest;

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ibkit-agent"))
}

fn have_curl() -> bool {
    Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// curl's `--pinnedpubkey` of a certificate.
fn curl_pin(ck: &rcgen::CertifiedKey<rcgen::KeyPair>) -> String {
    let spki = rcgen::PublicKeyData::subject_public_key_info(&ck.signing_key);
    format!(
        "sha256//{}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&spki))
    )
}

#[derive(Clone, Default)]
struct Seen {
    keys: Arc<Mutex<Vec<String>>>,
}

/// The service's installer routes; `/cut/…` serves half the installer and
/// then breaks the connection.
fn router(script: String, seen: Seen) -> axum::Router {
    use axum::routing::{get, post};
    let cut_script = script.clone();
    axum::Router::new()
        .route(
            "/v1/agent/install.sh",
            get(move || {
                let s = script.clone();
                async move { s }
            }),
        )
        .route(
            "/cut/v1/agent/install.sh",
            get(move || {
                let s = cut_script.clone();
                async move {
                    let half = s.as_bytes()[..s.len() / 2].to_vec();
                    let parts: Vec<Result<Vec<u8>, std::io::Error>> = vec![
                        Ok(half),
                        Err(std::io::Error::other("connection lost (test)")),
                    ];
                    axum::response::Response::builder()
                        .header("content-length", s.len().to_string())
                        .body(axum::body::Body::from_stream(futures_util::stream::iter(
                            parts,
                        )))
                        .unwrap()
                }
            }),
        )
        .route(
            "/v1/agent/binary",
            get(|| async { std::fs::read(exe()).unwrap() }),
        )
        .route(
            "/v1/agent/pair",
            post(
                |axum::extract::State(s): axum::extract::State<Seen>,
                 axum::Json(req): axum::Json<ibkit_api::wire::PairRequest>| async move {
                    s.keys.lock().unwrap().push(req.pairing_key.clone());
                    // Long enough for the test to look at every process.
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    axum::Json(json!({"credential": "cred-x", "instance": req.instance, "host": req.host, "heartbeat_interval": "1s"}))
                },
            ),
        )
        .with_state(seen)
}

/// Serves `router` over TLS with `ck`; the installer names `url_of(addr)`.
async fn serve(ck: &rcgen::CertifiedKey<rcgen::KeyPair>, seen: Seen) -> String {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let cert_hex = ibkit_api::step::hex(&sha2::Sha256::digest(ck.cert.der().as_ref()));
    let script = install_script(&url, &cert_hex, &curl_pin(ck));
    let config = axum_server::tls_rustls::RustlsConfig::from_der(
        vec![ck.cert.der().to_vec()],
        ck.signing_key.serialize_der(),
    )
    .await
    .unwrap();
    let app = router(script, seen);
    tokio::spawn(async move {
        axum_server::from_tcp_rustls(listener, config)
            .unwrap()
            .serve(app.into_make_service())
            .await
    });
    url
}

/// Runs `line` as an operator would type it: read by `sh` from stdin, so
/// no process gets the line itself as an argument.
fn run_line(line: &str, root: &Path) -> Output {
    let mut child = Command::new("sh")
        .arg("-s")
        .env("IBKIT_ROOT", root)
        .env("IBKIT_NO_SYSTEMD", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{line}\n").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Every process's argv (and the agent's environment) that holds `key`.
fn processes_showing(key: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let p = entry.path();
        let Ok(cmdline) = std::fs::read(p.join("cmdline")) else {
            continue;
        };
        let argv = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if argv.contains(key) {
            found.push(format!("argv of {}: {argv}", p.display()));
        }
        if argv.contains("ibkit-agent pair") {
            let env = std::fs::read(p.join("environ")).unwrap_or_default();
            if String::from_utf8_lossy(&env).contains(key) {
                found.push(format!("environment of {}: {argv}", p.display()));
            }
        }
    }
    found
}

/// The documented `curl … | sh` exited 0 when the certificate pin did not
/// match (sh ran an empty script): the install looked fine and nothing was
/// installed. The one-liner now fails, loudly, and installs nothing; a
/// download cut short runs nothing either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_liner_fails_loudly_on_a_wrong_pin_or_a_cut_download() {
    if !have_curl() {
        eprintln!("skipped: no curl");
        return;
    }
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let url = serve(&ck, Seen::default()).await;
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let root = dir.path().join("wrong-pin");
    let line = install_command(&url, &curl_pin(&other), "i1", "db", "key-1");
    let out = tokio::task::spawn_blocking({
        let root = root.clone();
        move || run_line(&line, &root)
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("wrong pin: {:?}: {stderr}", out.status);
    assert!(!out.status.success(), "a wrong pin must fail: {stderr}");
    assert!(
        stderr.contains("curl: (90)") || stderr.contains("pinned"),
        "{stderr}"
    );
    assert!(!root.exists(), "nothing installed");

    let root = dir.path().join("cut");
    let line = install_command(&format!("{url}/cut"), &curl_pin(&ck), "i1", "db", "key-1");
    let out = tokio::task::spawn_blocking({
        let root = root.clone();
        move || run_line(&line, &root)
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("cut download: {:?}: {stderr}", out.status);
    assert!(!out.status.success(), "a cut download must fail: {stderr}");
    assert!(!root.exists(), "a partial script ran: {stderr}");

    // Whatever curl wrote before the cut, followed by the one-liner's
    // "\nexit 1": never exits 0, never runs the installer.
    let script = install_script(
        &url,
        &ibkit_api::step::hex(&sha2::Sha256::digest(ck.cert.der().as_ref())),
        &curl_pin(&ck),
    );
    let cut_points: Vec<usize> = (0..script.len())
        .step_by(61)
        .chain([script.len() - 2])
        .filter(|&i| script.is_char_boundary(i))
        .collect();
    let root = dir.path().join("prefix");
    let ran = tokio::task::spawn_blocking({
        let root = root.clone();
        move || {
            cut_points
                .into_iter()
                .filter(|&i| {
                    let out = Command::new("sh")
                        .arg("-c")
                        .arg(format!("{}\nexit 1", &script[..i]))
                        .args(["ibkit-install", "--instance", "i1", "--host", "db"])
                        .env("IBKIT_PAIRING_KEY", "key-1")
                        .env("IBKIT_ROOT", &root)
                        .env("IBKIT_NO_SYSTEMD", "1")
                        .output()
                        .unwrap();
                    out.status.success() || root.exists()
                })
                .collect::<Vec<_>>()
        }
    })
    .await
    .unwrap();
    assert!(ran.is_empty(), "prefixes that exited 0 or ran: {ran:?}");
}

/// The pairing key was an installer argument (visible to every local user
/// in ps), stayed in agent.toml and was reusable. Now: from the
/// environment or a file, in no process's argv, never in agent.toml, and
/// deleted once the agent paired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pairing_key_stays_off_command_lines_and_is_deleted_after_pairing() {
    if !have_curl() {
        eprintln!("skipped: no curl");
        return;
    }
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let seen = Seen::default();
    let url = serve(&ck, seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let key = format!("key-{}", uuid::Uuid::new_v4().simple());
    let root = dir.path().join("root");
    let line = install_command(&url, &curl_pin(&ck), "i1", "db", &key);
    let install = tokio::task::spawn_blocking({
        let root = root.clone();
        move || run_line(&line, &root)
    });
    // Look at every process while the installer runs (the fake service
    // holds the pairing request for 1.5 s).
    let mut shown = Vec::new();
    while !install.is_finished() {
        shown.extend(processes_showing(&key));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = install.await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "install failed: {stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    assert_eq!(
        seen.keys.lock().unwrap()[..],
        [key.as_str()],
        "paired with the key"
    );
    assert!(shown.is_empty(), "the key was visible: {shown:?}");
    let config = std::fs::read_to_string(root.join("etc/ibkit/agent.toml")).unwrap();
    assert!(!config.contains(&key), "{config}");
    assert!(
        !root.join("etc/ibkit/pairing-key").exists(),
        "the key is deleted"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("var/lib/ibkit-agent/credential")).unwrap(),
        "cred-x"
    );

    // --pairing-key-file works too; --pairing-key still works but warns.
    let key_file = dir.path().join("k");
    std::fs::write(&key_file, "key-from-file\n").unwrap();
    let root2 = dir.path().join("root2");
    let line = format!(
        "sh -c \"$(curl -fsS -k --pinnedpubkey '{}' {url}/v1/agent/install.sh)\" x --instance i1 --host db --pairing-key-file {}",
        curl_pin(&ck),
        key_file.display()
    );
    let out = tokio::task::spawn_blocking({
        let root2 = root2.clone();
        move || run_line(&line, &root2)
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root3 = dir.path().join("root3");
    let line = format!(
        "curl -fsS -k --pinnedpubkey '{}' {url}/v1/agent/install.sh | sh -s -- --instance i1 --host db --pairing-key legacy-key",
        curl_pin(&ck)
    );
    let out = tokio::task::spawn_blocking({
        let root3 = root3.clone();
        move || run_line(&line, &root3)
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: --pairing-key puts the key on the command line"),
        "{stderr}"
    );
    assert!(
        !std::fs::read_to_string(root3.join("etc/ibkit/agent.toml"))
            .unwrap()
            .contains("legacy-key")
    );
    assert_eq!(
        seen.keys.lock().unwrap()[1..],
        ["key-from-file".to_string(), "legacy-key".to_string()]
    );
}

/// An agent configured with an inline `pairing_key` (older installers,
/// `ibkit instance`) removes it from its config once paired, and one with
/// `pairing_key_file` deletes the file: a VM keeps no usable key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_forgets_its_pairing_key_once_paired() {
    let seen = Seen::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = router(String::new(), seen.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "# kept\nserver_url = \"{url}\"\ninstance = \"i\"\nhost = \"h\"\npairing_key = \"inline-key\"\nstate_dir = \"{}\"\n",
            dir.path().join("s1").display()
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || {
            Command::new(exe())
                .args(["pair", "--config"])
                .arg(cfg)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        !text.contains("inline-key") && text.starts_with("# kept\n"),
        "{text}"
    );
    ibkit_agent::config::Config::load(&cfg).unwrap();

    let key_file = dir.path().join("pairing-key");
    std::fs::write(&key_file, "file-key\n").unwrap();
    let cfg2 = dir.path().join("agent2.toml");
    std::fs::write(
        &cfg2,
        format!(
            "server_url = \"{url}\"\ninstance = \"i\"\nhost = \"h\"\npairing_key_file = \"{}\"\nstate_dir = \"{}\"\n",
            key_file.display(),
            dir.path().join("s2").display()
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(exe())
            .args(["pair", "--config"])
            .arg(cfg2)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!key_file.exists(), "the used key file is deleted");
    assert_eq!(
        *seen.keys.lock().unwrap(),
        ["inline-key".to_string(), "file-key".to_string()]
    );
}

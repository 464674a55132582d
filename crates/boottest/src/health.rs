//! Probing the app's health check on a running VM.
//!
//! The check is the manifest's `[health]` table, parsed and validated when
//! the manifest is loaded ([`ibkit_rules::health`]) into the platform's own
//! [`HealthKind`]s. Boot-test's semantics: `port_health` and `http_health`
//! are probed from the host through the VM's forwarded port, as a buyer
//! would reach the app, so their `host` is ignored (the manifest cannot set
//! it: it is always the guest itself); an `http_health` with a full `url`
//! cannot be probed that way and fails. `script_health` runs in the guest
//! over SSH as root (bash, or python3) and passes on exit status 0; its
//! step options are not used. Every check must pass in one round; rounds
//! repeat every 2 s until the spec's timeout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ibkit_api::{HealthKind, ScriptType};
use ibkit_vm::qemu::{Proto, Vm};
use ibkit_vm::ssh::SshSession;

pub use ibkit_rules::health::{DEFAULT_HEALTH_TIMEOUT, HealthSpec, describe, guest_port};

use crate::gather::exec_as_root;
use crate::observe::HealthObs;
use crate::run::{Clock, vm_alive};

/// Poll the app's health until every check passes or the spec's timeout.
pub(crate) async fn probe_health(
    clock: &Clock,
    vm: &Vm,
    session: &SshSession,
    spec: &HealthSpec,
) -> HealthObs {
    let t0 = Instant::now();
    let mut h = HealthObs::default();
    loop {
        h.attempts += 1;
        let mut failure = None;
        for c in &spec.checks {
            if let Err(e) = probe_once(vm, session, c).await {
                failure = Some(format!("{}: {e}", describe(c)));
                break;
            }
        }
        match failure {
            None => {
                h.passed = true;
                h.last_error = None;
                h.after_s = t0.elapsed().as_secs_f64();
                return h;
            }
            Some(e) => h.last_error = Some(e),
        }
        if t0.elapsed() >= spec.timeout || !vm_alive(vm) {
            h.after_s = t0.elapsed().as_secs_f64();
            clock.say(&format!(
                "health check failed: {}",
                h.last_error.as_deref().unwrap_or("?")
            ));
            return h;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The host-side address of a guest TCP port.
fn forwarded(vm: &Vm, port: u16) -> Result<u16, String> {
    vm.host_port(Proto::Tcp, port)
        .ok_or_else(|| "port not forwarded".to_string())
}

async fn probe_once(vm: &Vm, session: &SshSession, check: &HealthKind) -> Result<(), String> {
    match check {
        HealthKind::PortHealth { port, .. } => {
            let hp = forwarded(vm, *port)?;
            let addr = SocketAddr::from(([127, 0, 0, 1], hp));
            let mut stream =
                tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
                    .await
                    .map_err(|_| "connect timed out".to_string())?
                    .map_err(|e| format!("connect: {e}"))?;
            // slirp accepts on the host side before it connects to the guest, and
            // closes at once when the guest refuses: an immediate EOF is "closed".
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 64];
            match tokio::time::timeout(Duration::from_millis(1500), stream.read(&mut buf)).await {
                Err(_) | Ok(Ok(1..)) => Ok(()),
                Ok(Ok(0)) => Err("connection closed at once: nothing listens in the guest".into()),
                Ok(Err(e)) => Err(format!("connection reset: {e}")),
            }
        }
        HealthKind::HttpHealth { url: Some(_), .. } => {
            Err("a full url cannot be probed through the VM's forwarded port".into())
        }
        HealthKind::HttpHealth {
            url: None,
            protocol,
            method,
            port,
            path,
            http_codes,
            ..
        } => {
            let port = port.ok_or("no port")?;
            let hp = forwarded(vm, port)?;
            let url = format!("{protocol}://127.0.0.1:{hp}{path}");
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .danger_accept_invalid_certs(true)
                .build()
                .map_err(|e| e.to_string())?;
            let m = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
            let resp = client
                .request(m, &url)
                .send()
                .await
                .map_err(|e| error_chain(&e))?;
            let code = resp.status().as_u16();
            if http_codes.contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP {code}"))
            }
        }
        HealthKind::ScriptHealth {
            script_type,
            script,
            ..
        } => {
            let interp = match script_type {
                ScriptType::Python => "python3",
                ScriptType::Bash => "bash",
            };
            let o = exec_as_root(session, interp, script, Duration::from_secs(60)).await?;
            if o.success() {
                Ok(())
            } else {
                Err(format!(
                    "exit {:?}: {}",
                    o.exit_status,
                    String::from_utf8_lossy(&o.stderr).trim()
                ))
            }
        }
    }
}

/// An error with its causes: reqwest's own message hides the useful part
/// ("connection refused", "connection reset").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

//! APP-BILLING's course: the marketplace's billing emulator (`ibkit
//! serve`'s own, started in this process on loopback) wired into the first
//! VM as the platform would wire it, then the app's pushes watched across
//! key rotations. The judgement is [`crate::checks`]'s.
//!
//! What the guest gets, as root, before the manifest's `setup` runs:
//! - the access key in `token_file` (0600 root), rewritten atomically on
//!   every rotation as the platform's agent does;
//! - `/run/ibkit-billing/{ca.pem, marketplace.pem, service-token,
//!   instance-uuid}`;
//! - in `setup`'s environment: `IBKIT_BILLING_URL` (the emulator through
//!   a guest forward, `https://10.0.2.100`), `IBKIT_BILLING_CA_FILE`,
//!   `IBKIT_BILLING_PUBLIC_KEY_FILE`, `IBKIT_BILLING_TOKEN_FILE`,
//!   `IBKIT_BILLING_SERVICE_TOKEN_FILE`, `IBKIT_INSTANCE_UUID` and
//!   `IBKIT_BILLING_PARAMS` (space-separated).
//!
//! The emulator's keys live [`KEY_TTL`]: a new key every half of it, the
//! old one refused once it expires. A watch longer than the TTL therefore
//! catches a client that read the key once and never again.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use ibkit_api::operator::{CreateInstanceQuery, InstanceId, InstanceUsage};
use ibkit_api::{BillingSpec, HostSpec, InstanceSpec};
use ibkit_client::{OperatorClient, ServiceEndpoint};
use ibkit_rules::billing::BillingManifest;
use ibkit_server::{ServeConfig, Server, TlsMode};
use ibkit_support::secret::Secret;
use ibkit_support::text::tail_lines;
use ibkit_vm::GuestForward;
use ibkit_vm::ssh::SshSession;
use serde::{Deserialize, Serialize};

use crate::gather::root_exec;
use crate::run::Clock;

/// Lifetime of the emulator's access keys during a boot test.
pub const KEY_TTL: Duration = Duration::from_secs(30);
/// Where the guest reaches the emulator (a guest forward to its port on
/// the host's loopback): the one address a restricted guest can reach.
const GUEST_ADDR: Ipv4Addr = GuestForward::DEFAULT_ADDR;
const GUEST_PORT: u16 = 443;
/// Where the guest gets the emulator's certificate, key and credentials.
const GUEST_DIR: &str = "/run/ibkit-billing";
/// How often the rotation is followed (the agent asks when told to; this
/// is well inside half a key's life).
const POLL: Duration = Duration::from_secs(2);

/// What the billing watch saw.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BillingObs {
    /// The emulator's URL as the guest reaches it.
    pub url: String,
    /// The manifest's `setup`, when it ran.
    pub setup: Option<SetupRun>,
    /// Seconds the pushes were watched.
    pub watched_s: f64,
    /// Unix ms when the watch ended.
    pub ended_at: i64,
    /// Times the token file was written (the first key included).
    pub token_writes: u32,
    /// The emulator's record of the instance: totals, pushes, keys.
    pub usage: Option<InstanceUsage>,
    /// Why the watch could not be done (the emulator, the guest).
    pub error: Option<String>,
}

/// The `setup` script's run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SetupRun {
    pub exit_code: Option<i32>,
    /// Last lines of its output.
    pub output_tail: String,
}

/// The marketplace's emulator, started before the first VM so that the
/// guest's forward to it exists from boot (a restricted guest network
/// reaches nothing else).
pub(crate) struct Emulator {
    server: Result<Server, String>,
}

impl Emulator {
    pub(crate) async fn start(state: &Path) -> Emulator {
        let mut cfg = ServeConfig::new(state);
        cfg.listen = ([127, 0, 0, 1], 0).into();
        cfg.tls = TlsMode::Generated {
            extra_sans: vec![GUEST_ADDR.to_string()],
        };
        cfg.billing_key_ttl = KEY_TTL;
        Emulator {
            server: Server::start(cfg).await.map_err(|e| format!("{e:#}")),
        }
    }

    /// The guest's way to the emulator: `https://10.0.2.100` leads to its
    /// port on the host's loopback. None when it did not start.
    pub(crate) fn guest_forward(&self) -> Option<GuestForward> {
        let server = self.server.as_ref().ok()?;
        Some(GuestForward {
            guest_addr: GUEST_ADDR,
            guest_port: GUEST_PORT,
            host_port: server.local_addr.port(),
        })
    }

    pub(crate) async fn shutdown(self) {
        if let Ok(server) = self.server {
            server.shutdown().await;
        }
    }
}

/// Wires the guest to the emulator and watches the pushes for
/// `spec.watch`. Never fails: what went wrong is in `error`.
pub(crate) async fn watch(
    emulator: &Emulator,
    session: &SshSession,
    spec: &BillingManifest,
    clock: &Clock,
) -> BillingObs {
    let mut obs = BillingObs::default();
    let server = match &emulator.server {
        Ok(s) => s,
        Err(e) => {
            obs.error = Some(format!("the billing emulator did not start: {e}"));
            return obs;
        }
    };
    obs.url = format!("https://{GUEST_ADDR}");
    if let Err(e) = run_watch(server, session, spec, clock, &mut obs).await {
        obs.error = Some(e);
    }
    obs
}

async fn run_watch(
    server: &Server,
    session: &SshSession,
    spec: &BillingManifest,
    clock: &Clock,
    obs: &mut BillingObs,
) -> Result<(), String> {
    let token = std::fs::read_to_string(server.operator_token_file())
        .map_err(|e| format!("the emulator's operator token: {e}"))?;
    let client = OperatorClient::new(&ServiceEndpoint {
        url: server.local_url(),
        cert_sha256: server.cert_sha256.clone(),
        operator_token: Secret::new(token.trim()),
    })
    .map_err(|e| format!("the emulator's client: {e}"))?;
    let created = client
        .create_instance(
            &InstanceSpec {
                name: "boot-test-billing".into(),
                hosts: vec![HostSpec { name: "app".into() }],
                groups: Vec::new(),
                health_checks: Vec::new(),
                detection_timeout: None,
                billing: Some(BillingSpec {
                    params: spec.params.clone(),
                }),
            },
            &CreateInstanceQuery::default(),
        )
        .await
        .map_err(|e| format!("the emulator refused the instance: {e}"))?;
    let id: InstanceId = created.id;
    let creds = client
        .instance_billing(&id)
        .await
        .map_err(|e| format!("the emulator's credentials: {e}"))?;
    let public = client
        .billing_public_key()
        .await
        .map_err(|e| format!("the emulator's public key: {e}"))?;
    let ca = std::fs::read_to_string(server.state.cfg.state_dir.join("tls/cert.pem"))
        .map_err(|e| format!("the emulator's certificate: {e}"))?;

    clock.say("first boot: billing: wiring the app to the marketplace emulator");
    let mut script = format!("set -e\numask 077\nmkdir -p {GUEST_DIR}\n");
    for (name, text) in [
        ("ca.pem", ca.as_str()),
        ("marketplace.pem", public.public_key_pem.as_str()),
        ("service-token", creds.service_token.as_str()),
        ("instance-uuid", id.as_str()),
    ] {
        script.push_str(&write_file(&format!("{GUEST_DIR}/{name}"), text));
    }
    script.push_str(&token_file_script(&spec.token_file, &creds.key));
    root_ok(session, &script, Duration::from_secs(60))
        .await
        .map_err(|e| format!("cannot write the billing files in the guest: {e}"))?;
    obs.token_writes = 1;
    let mut current_key = creds.key;

    if let Some(setup) = &spec.setup {
        let env = [
            ("IBKIT_BILLING_URL", obs.url.clone()),
            ("IBKIT_BILLING_CA_FILE", format!("{GUEST_DIR}/ca.pem")),
            (
                "IBKIT_BILLING_PUBLIC_KEY_FILE",
                format!("{GUEST_DIR}/marketplace.pem"),
            ),
            ("IBKIT_BILLING_TOKEN_FILE", spec.token_file.clone()),
            (
                "IBKIT_BILLING_SERVICE_TOKEN_FILE",
                format!("{GUEST_DIR}/service-token"),
            ),
            ("IBKIT_INSTANCE_UUID", id.as_str().to_string()),
            ("IBKIT_BILLING_PARAMS", spec.params.join(" ")),
        ];
        let mut script = String::new();
        for (k, v) in env {
            script.push_str(&format!("export {k}={}\n", shell_quote(&v)));
        }
        script.push_str(setup);
        clock.say("first boot: billing: running the manifest's setup");
        let run = match root_exec(session, &script, Duration::from_secs(120)).await {
            Ok(out) => SetupRun {
                exit_code: out.exit_status.and_then(|c| i32::try_from(c).ok()),
                output_tail: tail_lines(&format!("{}{}", out.stdout_text(), out.stderr_text()), 10),
            },
            Err(e) => SetupRun {
                exit_code: None,
                output_tail: e,
            },
        };
        let ok = run.exit_code == Some(0);
        obs.setup = Some(run);
        if !ok {
            return Ok(());
        }
    }

    clock.say(&format!(
        "first boot: billing: watching the pushes for {} s (keys rotate every {} s)",
        spec.watch.as_secs(),
        KEY_TTL.as_secs() / 2
    ));
    let started = Instant::now();
    while started.elapsed() < spec.watch {
        tokio::time::sleep(POLL.min(spec.watch.saturating_sub(started.elapsed()))).await;
        // Asking rotates the key when due, as the agent's request does.
        let creds = client
            .instance_billing(&id)
            .await
            .map_err(|e| format!("the emulator's credentials: {e}"))?;
        if creds.key != current_key {
            root_ok(
                session,
                &token_file_script(&spec.token_file, &creds.key),
                Duration::from_secs(30),
            )
            .await
            .map_err(|e| format!("cannot rewrite the token file in the guest: {e}"))?;
            obs.token_writes += 1;
            current_key = creds.key;
        }
    }
    obs.watched_s = started.elapsed().as_secs_f64();
    obs.ended_at = ibkit_support::clock::now_ms();
    obs.usage = Some(
        client
            .instance_usage(&id)
            .await
            .map_err(|e| format!("the emulator's usage: {e}"))?,
    );
    Ok(())
}

/// Runs `script` as root; an error unless it exits 0 (its stderr's end).
async fn root_ok(session: &SshSession, script: &str, timeout: Duration) -> Result<(), String> {
    let out = root_exec(session, script, timeout).await?;
    out.success()
        .then_some(())
        .ok_or_else(|| tail_lines(&out.stderr_text(), 5))
}

/// Shell lines that write `text` to `path` (base64 on the wire: no quoting).
fn write_file(path: &str, text: &str) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
    format!("echo {b64} | base64 -d > '{path}'\n")
}

/// Shell lines that replace the token file atomically: never a moment
/// without a valid key on disk (the old key stays valid meanwhile).
fn token_file_script(path: &str, key: &str) -> String {
    let dir = path.rsplit_once('/').map_or("/", |(d, _)| d);
    let dir = if dir.is_empty() { "/" } else { dir };
    format!(
        "set -e\numask 077\nmkdir -p '{dir}'\n{}mv -f '{path}.ibkit-new' '{path}'\n",
        write_file(&format!("{path}.ibkit-new"), key)
    )
}

/// `'text'` for a POSIX shell.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_replaced_by_rename() {
        let s = token_file_script("/opt/agent/t.key", "mpk_x");
        assert!(s.contains("mkdir -p '/opt/agent'"), "{s}");
        assert!(s.contains("> '/opt/agent/t.key.ibkit-new'"), "{s}");
        assert!(s.ends_with("mv -f '/opt/agent/t.key.ibkit-new' '/opt/agent/t.key'\n"));
        assert!(token_file_script("/t.key", "k").contains("mkdir -p '/'"));
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
    }
}

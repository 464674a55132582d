//! Facts read from a booted guest: one scripted SSH round as root for the
//! cheap facts (cloud-init, CPUs, memory, disk, NICs, units, shadow), the
//! listeners, password logins from the host, the virtiofs share, and what
//! the VM's network capture shows. Parsing the output is [`crate::guest`]'s
//! job; the course that calls this is [`crate::run`].

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ibkit_vm::qemu::{MacAddr, ShareState, Vm};
use ibkit_vm::ssh::{self, SshSession};
use tracing::debug;

use crate::guest::{self, judge_shadow};
use crate::observe::*;
use crate::run::Clock;

/// Where the guest mounts the virtiofs share.
const SHARE_MOUNT: &str = "/run/ibkit-share";

/// What reading a guest needs from the run besides the session.
pub(crate) struct GuestQuery<'a> {
    /// Progress and step log.
    pub clock: &'a Clock,
    /// The manifest's app units.
    pub app_units: &'a [String],
    /// The image's `/etc/shadow`, name → hash.
    pub image_shadow: &'a BTreeMap<String, String>,
}

/// Run a script as root in the guest, sections split on `@@name` lines.
pub(crate) async fn sections(
    session: &SshSession,
    script: &str,
    timeout: Duration,
) -> Result<Vec<(String, String)>, String> {
    let out = root_exec(session, script, timeout).await?;
    let text = out.stdout_text();
    let mut res: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("@@") {
            res.push((name.trim().to_string(), String::new()));
        } else if let Some((_, body)) = res.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    Ok(res)
}

/// Run a script as root in the guest with `bash`.
pub(crate) async fn root_exec(
    session: &SshSession,
    script: &str,
    timeout: Duration,
) -> Result<ssh::ExecOutput, String> {
    exec_as_root(session, "bash", script, timeout).await
}

/// Run a script as root in the guest with `interp` (`bash`, `python3`).
pub(crate) async fn exec_as_root(
    session: &SshSession,
    interp: &str,
    script: &str,
    timeout: Duration,
) -> Result<ssh::ExecOutput, String> {
    session
        .exec(&root_command(interp, script), timeout)
        .await
        .map_err(|e| e.to_string())
}

/// The command line that feeds `script` to `interp` under sudo: base64 on
/// the wire, so no quoting of the script is needed.
fn root_command(interp: &str, script: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(script.as_bytes());
    format!("echo {b64} | base64 -d | sudo -n {interp}")
}

/// The state of `units` (`systemctl is-active` / `is-enabled`).
pub(crate) async fn read_units(
    session: &SshSession,
    units: &[String],
) -> Result<Vec<UnitState>, String> {
    let secs = sections(
        session,
        &format!("echo @@units\n{}", unit_loop(units)),
        Duration::from_secs(30),
    )
    .await?;
    Ok(secs
        .into_iter()
        .filter(|(n, _)| n == "units")
        .map(|(_, body)| parse_units(&body))
        .next_back()
        .unwrap_or_default())
}

fn unit_loop(units: &[String]) -> String {
    let mut s = String::new();
    for u in units {
        // Unit names come from the manifest: quote them for the shell.
        let q = shell_quote(u);
        s.push_str(&format!(
            "echo \"{u_} $(systemctl is-active {q} 2>/dev/null || true) $(systemctl is-enabled {q} 2>/dev/null || echo not-found)\"\n",
            u_ = u.replace(['"', '$', '`', '\\'], "_")
        ));
    }
    s
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn parse_units(body: &str) -> Vec<UnitState> {
    body.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some(UnitState {
                unit: w.next()?.to_string(),
                active: w.next().unwrap_or("unknown").to_string(),
                enabled: w.next().unwrap_or("unknown").to_string(),
            })
        })
        .collect()
}

/// Read the guest's facts. `full`: everything (first boot); else what the
/// flavor check needs. Returns the observations and the seconds spent
/// waiting on the guest.
pub(crate) async fn gather(
    q: &GuestQuery<'_>,
    session: &SshSession,
    vm: &Vm,
    label: &str,
    full: bool,
    notes: &mut Vec<String>,
) -> (GuestObs, f64) {
    let clock = q.clock;
    let mut g = GuestObs::default();
    let t0 = Instant::now();
    clock.say(&format!("{label}: waiting for cloud-init to finish"));
    let mut ci = CloudInitObs::default();
    let ci_wait = Instant::now();
    let ci_result = root_exec(
        session,
        "cloud-init status --wait >/dev/null 2>&1; cloud-init status --long; echo \"@@exit $?\"",
        Duration::from_secs(300),
    )
    .await;
    // Waiting for cloud-init is waiting for the guest; the rest is our work.
    let waited = ci_wait.elapsed().as_secs_f64();
    match ci_result {
        Ok(o) => {
            let text = o.stdout_text();
            let (body, exit) = match text.rsplit_once("@@exit ") {
                Some((b, e)) => (b.to_string(), e.trim().parse::<u32>().ok()),
                None => (text.clone(), None),
            };
            ci.status = body
                .lines()
                .find_map(|l| l.trim().strip_prefix("status:"))
                .map(|s| s.trim().to_string());
            ci.status_text = body;
            ci.exit_status = exit;
        }
        Err(e) => g.errors.push(format!("cloud-init status: {e}")),
    }
    let mut script = String::from(
        "echo @@cmdline; cat /proc/cmdline\n\
         echo @@nproc; nproc\n\
         echo @@meminfo; cat /proc/meminfo\n\
         echo @@rootsize; df -B1 --output=size / | tail -n 1\n\
         echo @@blk; r=$(findmnt -no SOURCE /); p=$(lsblk -no PKNAME \"$r\" 2>/dev/null | head -n 1); basename \"$(readlink -f /sys/block/${p:-vda}/device/driver)\"\n\
         echo @@net; for n in /sys/class/net/*; do [ -e \"$n/device/driver\" ] && echo \"$(basename \"$n\") $(cat \"$n/address\") $(basename \"$(readlink -f \"$n/device/driver\")\")\"; done\n\
         echo @@addr; ip -4 -o addr show scope global 2>/dev/null | awk '{print $2, $4}'\n\
         echo @@result; cat /run/cloud-init/result.json 2>/dev/null\n\
         echo @@sshd\n",
    );
    script.push_str(&unit_loop(&[
        "ssh.service".into(),
        "ssh.socket".into(),
        "sshd.service".into(),
    ]));
    script.push_str("echo @@units\n");
    script.push_str(&unit_loop(q.app_units));
    if full {
        script.push_str("echo @@shadow; cat /etc/shadow\n");
    }
    match sections(session, &script, Duration::from_secs(60)).await {
        Ok(secs) => {
            for (name, body) in secs {
                let first = body.lines().next().unwrap_or("").trim().to_string();
                match name.as_str() {
                    "cmdline" => g.cmdline = Some(first),
                    "nproc" => g.nproc = first.parse().ok(),
                    "meminfo" => g.mem_total_kib = guest::mem_total_kib(&body),
                    "rootsize" => g.root_size = first.parse().ok(),
                    "blk" => g.block_driver = Some(first).filter(|s| !s.is_empty()),
                    "net" => {
                        for l in body.lines() {
                            let w: Vec<&str> = l.split_whitespace().collect();
                            if w.len() == 3 {
                                g.macs.push(w[1].to_string());
                                g.net_drivers.push(w[2].to_string());
                            }
                        }
                    }
                    "addr" => g.addresses = body.lines().map(str::to_string).collect(),
                    "result" => parse_result_json(&body, &mut ci),
                    "sshd" => g.sshd_units = parse_units(&body),
                    "units" => g.app_units = parse_units(&body),
                    "shadow" => g.shadow = Some(judge_shadow(&body, q.image_shadow)),
                    _ => {}
                }
            }
        }
        Err(e) => g.errors.push(format!("reading guest facts: {e}")),
    }
    if full && g.shadow.is_none() {
        g.shadow_error = Some("`cat /etc/shadow` as root failed".into());
    }
    g.cloud_init = Some(ci);
    if full {
        read_listeners(session, &mut g).await;
        password_attempts(vm, &mut g).await;
        g.share = mount_share(session, vm).await;
    }
    for e in &g.errors {
        notes.push(format!("{label}: {e}"));
    }
    debug!(?g, elapsed = t0.elapsed().as_secs_f64(), "guest facts");
    (g, waited)
}

fn parse_result_json(body: &str, ci: &mut CloudInitObs) {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return;
    };
    ci.result_found = true;
    let v1 = &v["v1"];
    ci.datasource = v1["datasource"].as_str().map(str::to_string);
    if let Some(errs) = v1["errors"].as_array() {
        ci.errors = errs
            .iter()
            .map(|e| {
                e.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| e.to_string())
            })
            .collect();
    }
    if let Some(rec) = v1["recoverable_errors"].as_object() {
        for (level, list) in rec {
            for e in list.as_array().into_iter().flatten() {
                ci.recoverable
                    .push(format!("{level}: {}", e.as_str().unwrap_or("?")));
            }
        }
    }
}

pub(crate) async fn read_listeners(session: &SshSession, g: &mut GuestObs) {
    match root_exec(session, "ss -Hltunp", Duration::from_secs(30)).await {
        Ok(o) if o.success() => {
            let (l, bad) = guest::parse_ss(&o.stdout_text());
            g.listeners = Some(l);
            g.listeners_unparsed = bad;
            g.listeners_error = None;
        }
        Ok(o) => {
            g.listeners_error = Some(format!(
                "exit {:?}: {}",
                o.exit_status,
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
        Err(e) => g.listeners_error = Some(e),
    }
}

/// Password logins as root with the best-known passwords, in parallel.
async fn password_attempts(vm: &Vm, g: &mut GuestObs) {
    let Some(addr) = vm.ssh_addr() else { return };
    let t = Duration::from_secs(20);
    g.auth_methods = ssh::offered_methods(addr, "root", t).await.ok();
    let tries = ["toor", "root", "password"];
    let futs = tries
        .into_iter()
        .map(|p| async move { (p, ssh::try_password(addr, "root", p, t).await) });
    for (p, res) in futures_join_all(futs).await {
        let outcome = match res {
            Ok(ssh::PasswordOutcome::Accepted) => "accepted".to_string(),
            Ok(ssh::PasswordOutcome::Rejected) => "rejected".to_string(),
            Ok(ssh::PasswordOutcome::NotOffered) => "not-offered".to_string(),
            Err(e) => format!("error: {e}"),
        };
        g.password_attempts.push(PasswordAttempt {
            user: "root".into(),
            password: redact(p),
            outcome,
        });
    }
}

async fn futures_join_all<F, T>(futs: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

fn redact(p: &str) -> String {
    let c: Vec<char> = p.chars().collect();
    match c.len() {
        0 => String::new(),
        1 | 2 => "*".repeat(c.len()),
        n => format!("{}{}{}", c[0], "*".repeat(n - 2), c[n - 1]),
    }
}

async fn mount_share(session: &SshSession, vm: &Vm) -> ShareObs {
    match vm.share() {
        ShareState::Ready => {}
        ShareState::Unavailable(why) => {
            return ShareObs {
                unavailable: Some(why.clone()),
                ..Default::default()
            };
        }
        ShareState::NotRequested => {
            return ShareObs {
                unavailable: Some("no share requested".into()),
                ..Default::default()
            };
        }
    }
    let marker = vm
        .config()
        .share_dir
        .as_ref()
        .and_then(|d| std::fs::read_to_string(d.join("marker")).ok())
        .unwrap_or_default();
    let script = format!(
        "mkdir -p {SHARE_MOUNT} && mount -t virtiofs ibkit {SHARE_MOUNT} && cat {SHARE_MOUNT}/marker; rc=$?; umount {SHARE_MOUNT} 2>/dev/null; exit $rc"
    );
    match root_exec(session, &script, Duration::from_secs(60)).await {
        Ok(o) if o.success() && o.stdout_text().trim() == marker.trim() && !marker.is_empty() => {
            ShareObs {
                mounted: true,
                ..Default::default()
            }
        }
        Ok(o) => ShareObs {
            error: Some(format!(
                "exit {:?}: {}{}",
                o.exit_status,
                String::from_utf8_lossy(&o.stderr).trim(),
                if o.success() { " (marker differs)" } else { "" }
            )),
            ..Default::default()
        },
        Err(e) => ShareObs {
            error: Some(e),
            ..Default::default()
        },
    }
}

pub(crate) fn network_obs(pcap: &Path, mac: &MacAddr, qemu_start: SystemTime) -> NetObs {
    let bytes = match std::fs::read(pcap) {
        Ok(b) => b,
        Err(e) => {
            return NetObs {
                error: Some(format!("{}: {e}", pcap.display())),
                ..Default::default()
            };
        }
    };
    let mut n = NetObs::default();
    match ibkit_vm::pcap::frames_from(&bytes, mac) {
        Ok(c) => n.frames_from_guest = c,
        Err(e) => n.error = Some(e.to_string()),
    }
    match ibkit_vm::pcap::dhcp_packets(&bytes) {
        Ok(packets) => {
            let start = qemu_start
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            for p in packets.iter().filter(|p| p.client_mac == *mac) {
                if !p.from_server && (p.message_type == 1 || p.message_type == 3) {
                    n.dhcp_requests += 1;
                }
                if p.from_server && p.message_type == 5 && n.dhcp_ack.is_none() {
                    n.dhcp_ack = Some(p.your_ip.to_string());
                    n.dhcp_ack_after_s = Some((p.time_s - start).max(0.0));
                }
            }
        }
        Err(e) => n.error = Some(e.to_string()),
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_command_sends_the_script_in_base64() {
        assert_eq!(
            root_command("bash", "foobar"),
            "echo Zm9vYmFy | base64 -d | sudo -n bash"
        );
        assert_eq!(
            root_command("python3", "fo"),
            "echo Zm8= | base64 -d | sudo -n python3"
        );
    }

    #[test]
    fn result_json() {
        let mut ci = CloudInitObs::default();
        parse_result_json(
            r#"{"v1": {"datasource": "DataSourceNoCloud [seed=/dev/vdb]", "errors": ["x failed"], "recoverable_errors": {"WARNING": ["w"]}}}"#,
            &mut ci,
        );
        assert!(ci.result_found);
        assert_eq!(ci.errors, vec!["x failed".to_string()]);
        assert_eq!(ci.recoverable, vec!["WARNING: w".to_string()]);
        assert!(
            ci.datasource
                .as_deref()
                .is_some_and(|d| d.contains("NoCloud"))
        );
        let mut none = CloudInitObs::default();
        parse_result_json("not json", &mut none);
        assert!(!none.result_found);
    }

    #[test]
    fn units_and_quoting() {
        let u = parse_units("ssh.service active enabled\nssh.socket inactive disabled\n");
        assert_eq!(u.len(), 2);
        assert_eq!(u[1].enabled, "disabled");
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
        assert_eq!(redact("toor"), "t**r");
    }
}

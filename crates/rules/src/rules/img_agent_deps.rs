//! IMG-AGENT-DEPS: curl and systemd, which the platform's agent needs.

use super::util::{find_binary, installed_package};
use crate::context::Context;
use crate::model::{Evidence, Outcome, Severity};
use crate::rule::RuleDef;
use crate::rule_id::RuleId;

/// The rule.
pub static RULE: RuleDef = RuleDef {
    id: RuleId::IMG_AGENT_DEPS,
    title: "curl and systemd for the agent",
    requirement: "The image must contain curl and systemd when the agent is used (curl fetches the agent, systemd runs and watches it).",
    severity: Severity::Error,
    doc: r#"## What it checks
That `curl` is installed (package or executable) and that `/sbin/init` is
systemd (a symlink to `systemd`, or the systemd package with `/lib/systemd/systemd`).
Skipped (pass) when the app manifest says `agent = false`.

## Why
The platform installs its agent at first boot from cloud-init user data:
`curl` downloads it from the configuration service and a systemd unit runs
and restarts it with a memory cap. Without either, deployment fails on the
buyer's project.

## Evidence
Offline: the curl package or binary; the target of `/sbin/init` and the
systemd package.

## Remediation
Install `curl` and use systemd as init (`apt-get install curl systemd-sysv`,
`dnf install curl systemd`).

## Traps
`/sbin/init` may be a symlink chain (`/sbin` → `usr/sbin` →
`../lib/systemd/systemd`); it is resolved inside the guest. Busybox `wget`
does not replace curl.
"#,
    remediation: "Install curl and systemd (as /sbin/init).",
    check,
};

fn check(cx: &Context) -> Outcome {
    let mut o = Outcome::default();
    if let Some(m) = cx.manifest
        && !m.agent
    {
        o.proof(Evidence::at(
            m.path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "manifest".into()),
            "agent = false: the app does not use the platform's agent",
        ));
        return o;
    }
    match (installed_package(cx, &["curl"]), find_binary(cx, &["curl"])) {
        (Some(e), _) => o.proof(e),
        (None, Some(bin)) => o.proof(Evidence::at(bin, "curl executable present")),
        (None, None) => o.fail(
            "curl-missing",
            "curl is not installed",
            Evidence::note("no curl package and no curl in /usr/bin, /bin, /usr/local/bin"),
        ),
    }
    let init_target = cx.guest.resolve("/sbin/init", true).ok();
    let systemd_pkg = installed_package(cx, &["systemd"]);
    match init_target {
        Some(r) if r.meta.is_some() => {
            let target = String::from_utf8_lossy(&r.path).into_owned();
            if target.ends_with("/systemd") {
                o.proof(Evidence::at(
                    "/sbin/init",
                    format!("/sbin/init is systemd ({target})"),
                ));
                if let Some(e) = systemd_pkg {
                    o.proof(e);
                }
            } else {
                o.fail(
                    "init-not-systemd",
                    format!("/sbin/init is not systemd (it is {target})"),
                    Evidence::at("/sbin/init", format!("resolves to {target}")),
                );
            }
        }
        _ => {
            // No /sbin/init: the kernel command line may name init=.
            let init_arg = cx
                .boot()
                .effective()
                .and_then(|c| crate::facts::boot::arg_value(&c.args, "init"));
            match init_arg {
                Some(i) if i.ends_with("/systemd") => o.proof(Evidence::note(format!(
                    "init={i} on the kernel command line"
                ))),
                _ if systemd_pkg.is_some() && cx.guest.is_file("/lib/systemd/systemd") => {
                    o.warn(
                        "init-missing",
                        "systemd is installed but /sbin/init does not exist",
                        Evidence::at("/sbin/init", "missing"),
                    );
                }
                _ => o.fail(
                    "systemd-missing",
                    "systemd is not the init system (no /sbin/init)",
                    Evidence::at("/sbin/init", "missing"),
                ),
            }
        }
    }
    o
}

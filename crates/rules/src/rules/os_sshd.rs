//! OS-SSHD: an SSH server installed and started at boot.

use super::util::{enabled_evidence, find_binary, installed_package};
use crate::context::Context;
use crate::facts::systemd::{UnmetCondition, load_unit_file, unmet_path_conditions};
use crate::model::{Evidence, Outcome, Severity};
use crate::rule::RuleDef;
use crate::rule_id::RuleId;

/// Units that start an SSH server (service or socket activation).
pub const SSH_UNITS: &[&str] = &[
    "ssh.service",
    "sshd.service",
    "ssh.socket",
    "sshd.socket",
    "dropbear.service",
];

/// The rule.
pub static RULE: RuleDef = RuleDef {
    id: RuleId::OS_SSHD,
    title: "SSH server starts at boot",
    requirement: "The OS must have an SSH server installed and started at boot (service or socket activation).",
    severity: Severity::Error,
    doc: r#"## What it checks
That an SSH server is installed (`openssh-server` package or an `sshd`
executable) and that `ssh.service`, `sshd.service`, `ssh.socket` or
`sshd.socket` is pulled in by the default target (directly or through
`sockets.target`), and not masked.

## Why
Buyers reach their instance over SSH with the key they chose at deployment;
the platform's support also relies on it.

## Evidence
Offline: package and version; the symlink (e.g.
`/etc/systemd/system/multi-user.target.wants/ssh.service`) that makes the
unit start. Live (boot-test): the port 22 banner.

## Remediation
Install the server and enable it: `apt-get install openssh-server && systemctl
enable ssh` (Debian/Ubuntu) or `dnf install openssh-server && systemctl enable
sshd` (RHEL family).

## Traps
A unit can be enabled and still never start: Debian's `ssh.service` (and
`ssh.socket`) have `ConditionPathExists=!/etc/ssh/sshd_not_to_be_run`, so
that marker file switches sshd off for good. Each enabled unit's
`ConditionPathExists=` (unit file and drop-ins; for a socket also the
service it activates) is evaluated on the image's files; a unit whose
condition fails does not count, and if no SSH unit is left the rule fails
with the marker (or the missing required path) as evidence. Conditions on
run-time paths (`/run`, `/proc`, `/sys`, `/dev`, `/tmp`) are not judged.
Socket activation: on Ubuntu 22.10+ `ssh.socket` starts sshd on the first
connection and `ssh.service` is not enabled; that passes.
"#,
    remediation: "Install openssh-server and enable ssh.service/sshd.service (or ssh.socket).",
    check,
};

/// Failed `ConditionPathExists=` of `unit` and, for a socket, of the service
/// it activates (`ssh@.service` with `Accept=yes`, else `ssh.service`).
fn unit_conditions(cx: &Context, unit: &str) -> Vec<(String, UnmetCondition)> {
    let units = cx.units();
    let file_of = |u: &str| units.file(u).cloned().or_else(|| load_unit_file(cx, u));
    let Some(file) = file_of(unit) else {
        return Vec::new();
    };
    let mut out: Vec<(String, UnmetCondition)> = unmet_path_conditions(cx, &file)
        .into_iter()
        .map(|c| (unit.to_owned(), c))
        .collect();
    if let Some(stem) = unit.strip_suffix(".socket") {
        let accept = file.value("Socket", "Accept").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "yes" | "true" | "1" | "on")
        });
        let service = file.value("Socket", "Service").unwrap_or_else(|| {
            if accept {
                format!("{stem}@.service")
            } else {
                format!("{stem}.service")
            }
        });
        if let Some(f) = file_of(&service) {
            out.extend(
                unmet_path_conditions(cx, &f)
                    .into_iter()
                    .map(|c| (service.clone(), c)),
            );
        }
    }
    out
}

fn check(cx: &Context) -> Outcome {
    let mut o = Outcome::default();
    let pkg = installed_package(
        cx,
        &[
            "openssh-server",
            "openssh-server-ssh1",
            "dropbear",
            "dropbear-bin",
        ],
    );
    let bin = find_binary(cx, &["sshd", "dropbear"]);
    match (&pkg, &bin) {
        (Some(e), _) => o.proof(e.clone()),
        (None, Some(b)) => o.proof(Evidence::at(b.clone(), "SSH server executable present")),
        (None, None) => {
            o.fail(
                "sshd-missing",
                "no SSH server is installed",
                Evidence::note("no openssh-server package and no sshd executable"),
            );
            return o;
        }
    }
    let units = cx.units();
    if units.no_systemd {
        o.unverified("no systemd unit directories: cannot tell whether sshd starts at boot");
        return o;
    }
    let enabled: Vec<_> = SSH_UNITS
        .iter()
        .filter_map(|u| enabled_evidence(cx, u).map(|e| (*u, e)))
        .collect();
    // An enabled unit whose ConditionPathExists= fails is skipped at every
    // boot (Debian: `!/etc/ssh/sshd_not_to_be_run`).
    let mut blocked = Vec::new();
    let enabled: Vec<Evidence> = enabled
        .into_iter()
        .filter_map(|(u, e)| {
            let unmet = unit_conditions(cx, u);
            if unmet.is_empty() {
                Some(e)
            } else {
                blocked.push((u, unmet));
                None
            }
        })
        .collect();
    if enabled.is_empty() && !blocked.is_empty() {
        for (u, unmet) in blocked {
            for (unit, c) in unmet {
                let detail = if c.negated {
                    format!(
                        "exists, and {unit} has ConditionPathExists=!{} ({}): {u} never starts",
                        c.path, c.source
                    )
                } else {
                    format!(
                        "missing, and {unit} has ConditionPathExists={} ({}): {u} never starts",
                        c.path, c.source
                    )
                };
                o.fail(
                    "sshd-condition-unmet",
                    format!("{u} is enabled but its start condition fails"),
                    Evidence::at(c.path.clone(), detail),
                );
            }
        }
        return o;
    }
    if enabled.is_empty() {
        let masked: Vec<_> = SSH_UNITS
            .iter()
            .filter_map(|u| units.masked.get(*u).map(|p| (u, p)))
            .collect();
        if let Some((u, p)) = masked.first() {
            o.fail(
                "sshd-masked",
                format!("{u} is masked"),
                Evidence::at((*p).clone(), "symlink to /dev/null"),
            );
        } else {
            let present: Vec<&str> = SSH_UNITS
                .iter()
                .copied()
                .filter(|u| units.exists(u))
                .collect();
            o.fail(
                "sshd-not-enabled",
                "the SSH server does not start at boot",
                Evidence::note(if present.is_empty() {
                    "no ssh/sshd unit file found".to_string()
                } else {
                    format!(
                        "{} exist but nothing in {} pulls them in",
                        present.join(", "),
                        units
                            .default_target
                            .as_deref()
                            .unwrap_or("the default target")
                    )
                }),
            );
        }
    } else {
        for e in enabled {
            o.proof(e);
        }
    }
    o
}

//! OS-SSHD: an SSH server installed and started at boot.

use super::util::{enabled_evidence, find_binary, installed_package};
use crate::context::Context;
use crate::model::{Evidence, Outcome, Severity};
use crate::rule::RuleDef;

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
    id: "OS-SSHD",
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
Socket activation: on Ubuntu 22.10+ `ssh.socket` starts sshd on the first
connection and `ssh.service` is not enabled; that passes.
"#,
    remediation: "Install openssh-server and enable ssh.service/sshd.service (or ssh.socket).",
    check,
};

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
        .filter_map(|u| enabled_evidence(cx, u))
        .collect();
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

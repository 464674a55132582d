//! APP-AUTOSTART-SOFT and APP-AUTOSTART-HARD (static side): the app's units
//! start at boot.

use crate::context::Context;
use crate::facts::systemd::load_unit_file;
use crate::model::{Evidence, Outcome, Severity};
use crate::rule::RuleDef;
use crate::rule_id::RuleId;

/// APP-AUTOSTART-SOFT.
pub static SOFT: RuleDef = RuleDef {
    id: RuleId::APP_AUTOSTART_SOFT,
    title: "App starts after a clean reboot",
    requirement: "The application must start by itself after a clean reboot (e.g. the buyer reboots over SSH after updates).",
    severity: Severity::Error,
    doc: const_format_soft(),
    remediation: "Enable the app's units (`systemctl enable app.service`) with `WantedBy=multi-user.target` in [Install].",
    check: check_soft,
};

/// APP-AUTOSTART-HARD.
pub static HARD: RuleDef = RuleDef {
    id: RuleId::APP_AUTOSTART_HARD,
    title: "App starts after a forced reset",
    requirement: "The application must start by itself after a forced reset (the platform's orchestrator restarts a VM after an infrastructure fault).",
    severity: Severity::Error,
    doc: const_format_hard(),
    remediation: "Enable the app's units and keep PID/lock files under /run so a crash leaves nothing that blocks the next start.",
    check: check_hard,
};

const fn const_format_soft() -> &'static str {
    concat!(
        "## What it checks\nFor each unit the app manifest declares (`app.units`): the unit file exists,\nis not masked, and the default target pulls it in (through `.wants/` links or\n`Wants=`/`Requires=` chains), so it starts without anyone logging in.\n\n",
        "## Why\nBuyers reboot after updates; an app that needs a manual start after a reboot\nis down until someone notices.\n\n",
        "## Evidence\nOffline: the chain of links from the default target to the unit. Live\n(boot-test): `systemctl reboot` over SSH, then the app's health check passes.\n\n",
        "## Remediation\n`systemctl enable app.service` with `[Install] WantedBy=multi-user.target`.\n\n",
        "## Traps\nOnly re-checking SSH after the reboot proves nothing about the app. A unit that\nis started by hand in the build VM but not enabled looks fine until the first reboot.\n"
    )
}

const fn const_format_hard() -> &'static str {
    concat!(
        "## What it checks\nEverything APP-AUTOSTART-SOFT checks, plus what a crash leaves behind: a\n`PIDFile=` outside `/run` or a `ConditionPathExists=!` on a persistent path\n(a stale file after a reset stops the service from starting).\n\n",
        "## Why\nAfter an infrastructure fault the platform resets the VM without a clean\nshutdown. Services that rely on shutdown cleanup do not come back.\n\n",
        "## Evidence\nOffline: the enabling chain, the unit's `PIDFile=`/conditions. Live (boot-test):\nQMP `system_reset`, then the app's health check passes.\n\n",
        "## Remediation\nEnable the units; keep PID and lock files on `/run` (tmpfs) so a reset clears them.\n\n",
        "## Traps\nA clean reboot passing does not prove a reset does: stale PID/lock files and\nunfinished writes only show up after a hard reset.\n"
    )
}

fn manifest_units(cx: &Context) -> Option<Vec<String>> {
    let m = cx.manifest?;
    Some(m.units.clone())
}

fn check_enabled(cx: &Context, o: &mut Outcome) -> Vec<String> {
    let Some(units_declared) = manifest_units(cx) else {
        o.unverified("no app manifest: declare the app's systemd units in ibkit.toml (app.units)");
        return Vec::new();
    };
    if units_declared.is_empty() {
        o.unverified("the manifest declares no app units (app.units)");
        return Vec::new();
    }
    let units = cx.units();
    if units.no_systemd {
        o.unverified("no systemd unit directories in the image");
        return Vec::new();
    }
    let mut ok = Vec::new();
    for unit in units_declared {
        if let Some(mask) = units.masked.get(&unit) {
            o.fail(
                "unit-masked",
                format!("{unit} is masked"),
                Evidence::at(mask.clone(), "symlink to /dev/null"),
            );
        } else if units.is_enabled(&unit) {
            let chain = units.chain(&unit);
            let path = chain.first().and_then(|(_, p)| {
                p.how
                    .split_whitespace()
                    .find(|w| w.starts_with('/'))
                    .map(|w| w.split(':').next().unwrap_or(w).to_owned())
            });
            o.proof(Evidence {
                path,
                line: None,
                package: None,
                detail: format!(
                    "{unit} starts at boot: {}",
                    chain
                        .iter()
                        .rev()
                        .map(|(u, _)| u.as_str())
                        .collect::<Vec<_>>()
                        .join(" -> ")
                ),
            });
            ok.push(unit);
        } else if !units.exists(&unit) {
            o.fail(
                "unit-missing",
                format!("{unit} does not exist in the image"),
                Evidence::note(format!("no unit file {unit} in any systemd unit directory")),
            );
        } else {
            let wanted_by = load_unit_file(cx, &unit)
                .map(|f| f.values("Install", "WantedBy"))
                .unwrap_or_default();
            let hint = if wanted_by.is_empty() {
                "its [Install] section has no WantedBy=".to_string()
            } else {
                format!(
                    "WantedBy={} but the link was never created (run `systemctl enable {unit}`)",
                    wanted_by
                        .iter()
                        .map(|(v, _)| v.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            };
            o.fail(
                "unit-not-enabled",
                format!("{unit} does not start at boot"),
                Evidence::note(hint),
            );
        }
    }
    ok
}

fn check_soft(cx: &Context) -> Outcome {
    let mut o = Outcome::default();
    check_enabled(cx, &mut o);
    o
}

fn check_hard(cx: &Context) -> Outcome {
    let mut o = Outcome::default();
    for unit in check_enabled(cx, &mut o) {
        let Some(f) = load_unit_file(cx, &unit) else {
            continue;
        };
        for (v, line) in f.values("Service", "PIDFile") {
            if !(v.starts_with("/run/") || v.starts_with("/var/run/")) {
                o.warn(
                    "persistent-pidfile",
                    format!("{unit} keeps its PID file on disk ({v}): a reset leaves it stale"),
                    Evidence::at_line(f.path.clone(), line, format!("PIDFile={v}")),
                );
            }
        }
        for (v, line) in f.values("Unit", "ConditionPathExists") {
            if let Some(p) = v.strip_prefix('!')
                && !(p.starts_with("/run/") || p.starts_with("/var/run/") || p.starts_with("/etc/"))
            {
                o.warn(
                    "persistent-condition",
                    format!("{unit} does not start while {p} exists; a reset may leave it behind"),
                    Evidence::at_line(f.path.clone(), line, format!("ConditionPathExists={v}")),
                );
            }
        }
    }
    o
}

//! IMG-CLOUDINIT: cloud-init installed and enabled, with a datasource for OpenStack.

use serde_json::Value;

use super::util::{enabled_evidence, find_binary, installed_package};
use crate::context::Context;
use crate::model::{Evidence, Outcome, Severity};
use crate::rule::RuleDef;
use crate::rule_id::RuleId;

/// cloud-init's boot stages.
pub const STAGES: &[&str] = &[
    "cloud-init-local.service",
    "cloud-init.service",
    "cloud-config.service",
    "cloud-final.service",
];

/// Datasources that work on the platform.
pub const OPENSTACK_DATASOURCES: &[&str] = &["OpenStack", "ConfigDrive"];

/// The rule.
pub static RULE: RuleDef = RuleDef {
    id: RuleId::IMG_CLOUDINIT,
    title: "cloud-init installed and enabled",
    requirement: "The image must contain cloud-init (and have it enabled).",
    severity: Severity::Error,
    doc: r#"## What it checks
- cloud-init is installed (package database, and the `cloud-init` executable);
- its boot stages (`cloud-init-local`, `cloud-init`, `cloud-config`,
  `cloud-final`) are pulled in at boot, directly or through `cloud-init.target`;
- it is not disabled: no `/etc/cloud/cloud-init.disabled`, no
  `cloud-init=disabled` on any kernel command line, no mask;
- the merged `datasource_list` (`/etc/cloud/cloud.cfg` then
  `cloud.cfg.d/*.cfg`) allows `OpenStack` or `ConfigDrive` (an unset list
  means "all", which passes).

## Why
The platform configures every VM through cloud-init: the buyer's SSH key,
host name, network, and the user data that installs the agent. An image
without a working cloud-init deploys but cannot be reached or configured.

## Evidence
Offline: package and version, the links that enable each stage, the file
that sets `datasource_list`. Live (boot-test): `cloud-init status`.

## Remediation
Install cloud-init, enable its services (`systemctl enable cloud-init-local
cloud-init cloud-config cloud-final`), remove `/etc/cloud/cloud-init.disabled`
and keep `OpenStack` and/or `ConfigDrive` in `datasource_list`.

## Traps
Checking only that the binary exists: a disabled or datasource-less
cloud-init is as bad as none. On Debian/Ubuntu the stages hang off
`cloud-init.target`, which the `cloud-init-generator` adds at boot; the
generator's presence counts as enabling the target.
"#,
    remediation: "Install cloud-init, enable its four services, remove any disable switch and allow the OpenStack/ConfigDrive datasources.",
    check,
};

fn check(cx: &Context) -> Outcome {
    let mut o = Outcome::default();
    match (
        installed_package(cx, &["cloud-init"]),
        find_binary(cx, &["cloud-init"]),
    ) {
        (Some(e), _) => o.proof(e),
        (None, Some(b)) => o.proof(Evidence::at(
            b,
            "cloud-init executable present (no package record)",
        )),
        (None, None) => {
            o.fail(
                "cloudinit-missing",
                "cloud-init is not installed",
                Evidence::note("no cloud-init package and no cloud-init executable"),
            );
            return o;
        }
    }
    if cx.guest.exists("/etc/cloud/cloud-init.disabled") {
        o.fail(
            "cloudinit-disabled-file",
            "cloud-init is disabled by /etc/cloud/cloud-init.disabled",
            Evidence::at(
                "/etc/cloud/cloud-init.disabled",
                "file present: cloud-init does nothing at boot",
            ),
        );
    }
    for c in &cx.boot().cmdlines {
        if crate::facts::boot::split_args(&c.args)
            .iter()
            .any(|a| a == "cloud-init=disabled")
        {
            o.fail(
                "cloudinit-disabled-cmdline",
                "cloud-init=disabled on the kernel command line",
                Evidence::at_line(c.path.clone(), c.line, "cloud-init=disabled"),
            );
        }
    }

    // Stages.
    let units = cx.units();
    if units.no_systemd {
        o.unverified("no systemd unit directories: cannot tell whether cloud-init runs at boot");
    } else {
        let generator = [
            "/lib/systemd/system-generators/cloud-init-generator",
            "/usr/lib/systemd/system-generators/cloud-init-generator",
        ]
        .into_iter()
        .find(|p| cx.guest.exists(p));
        let target_enabled = units.is_enabled("cloud-init.target");
        for stage in STAGES {
            if units.masked.contains_key(*stage) {
                o.fail(
                    "cloudinit-masked",
                    format!("{stage} is masked"),
                    Evidence::at(units.masked[*stage].clone(), "symlink to /dev/null"),
                );
                continue;
            }
            if let Some(e) = enabled_evidence(cx, stage) {
                o.proof(e);
                continue;
            }
            // Wanted by cloud-init.target, which the generator enables at boot.
            let wanted_by_target = [
                "/etc/systemd/system/cloud-init.target.wants",
                "/lib/systemd/system/cloud-init.target.wants",
                "/usr/lib/systemd/system/cloud-init.target.wants",
            ]
            .iter()
            .map(|d| format!("{d}/{stage}"))
            .find(|p| cx.guest.exists(p));
            match (wanted_by_target, generator) {
                (Some(link), Some(g)) if !target_enabled => o.proof(Evidence::at(
                    link,
                    format!("{stage} is wanted by cloud-init.target, which {g} adds to the boot at run time"),
                )),
                _ if !units.exists(stage) => o.fail(
                    "cloudinit-stage-missing",
                    format!("{stage} does not exist"),
                    Evidence::note(format!("no unit file for {stage}")),
                ),
                _ => o.fail(
                    "cloudinit-stage-disabled",
                    format!("{stage} does not start at boot"),
                    Evidence::note(format!("nothing pulls {stage} into {}", units.default_target.as_deref().unwrap_or("the default target"))),
                ),
            }
        }
    }

    // Datasources.
    let cc = cx.cloud();
    for (path, err) in &cc.errors {
        o.warn(
            "cloudcfg-unparsable",
            format!("cloud-init config does not parse: {err}"),
            Evidence::at(path.clone(), err.clone()),
        );
    }
    match cc.get("datasource_list") {
        None => o.proof(Evidence::note(
            "datasource_list not set: cloud-init probes every datasource, OpenStack included",
        )),
        Some(Value::Array(list)) => {
            let names: Vec<String> = list
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            let origin = cc
                .origin("datasource_list")
                .unwrap_or("/etc/cloud/cloud.cfg")
                .to_owned();
            if names.iter().any(|n| {
                OPENSTACK_DATASOURCES
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case(n.trim()))
            }) {
                o.proof(Evidence::at(
                    origin,
                    format!("datasource_list: [{}]", names.join(", ")),
                ));
            } else {
                o.fail(
                    "datasource-missing",
                    "datasource_list has neither OpenStack nor ConfigDrive",
                    Evidence::at(origin, format!("datasource_list: [{}]", names.join(", "))),
                );
            }
        }
        Some(other) => o.warn(
            "datasource-list-invalid",
            "datasource_list is not a list",
            Evidence::at(
                cc.origin("datasource_list")
                    .unwrap_or("/etc/cloud/cloud.cfg")
                    .to_owned(),
                other.to_string(),
            ),
        ),
    }
    o
}

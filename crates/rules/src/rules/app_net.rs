//! APP-NET (static side): networking works with the cloud's DHCP and MTU.

use super::util::{find_binary, names};
use crate::context::Context;
use crate::model::{Evidence, Outcome, Severity};
use crate::rule::RuleDef;
use crate::rule_id::RuleId;

/// The rule.
pub static RULE: RuleDef = RuleDef {
    id: RuleId::APP_NET,
    title: "Works with the cloud's network (DHCP, any MAC, MTU < 1500)",
    requirement: "The application must work within the network solutions the cloud provides (DHCP on virtio-net, any MAC, metadata service / config drive, MTU below 1500 possible).",
    severity: Severity::Error,
    doc: r#"## What it checks
- a DHCP client exists (dhclient, dhcpcd, NetworkManager, systemd-networkd,
  udhcpc) and cloud-init's network configuration is not disabled (or, if it
  is, the image's own config uses DHCP);
- no static address is configured (ifupdown `inet static`, ifcfg
  `BOOTPROTO=static|none` with `IPADDR`, netplan `addresses:` without DHCP,
  NetworkManager `method=manual`) outside cloud-init's own rendered files;
- no MTU is hard-coded (the cloud's overlay networks use less than 1500 and
  announce it over DHCP).
MAC pinning is OS-NO-FIXED-MAC's job.

## Why
Every instance gets its address, MTU and routes from the cloud's DHCP and
metadata service. A static address or a fixed MTU of 1500 works on the build
network and breaks in the buyer's project.

## Evidence
Offline: the DHCP client and the config lines. Live (boot-test): the VM gets
an address over DHCP with a fresh MAC.

## Remediation
Leave network configuration to cloud-init (remove `network: {config:
disabled}`), delete static configs, and remove `mtu` settings.

## Traps
cloud-init's rendered files (`50-cloud-init.*`) are re-rendered per instance.
Harmless look-alikes pass: commented settings (`# iface eth0 inet static`,
`# mtu 1400`), DNS servers in netplan (`nameservers: addresses: [...]`), and
DHCP switched on with any YAML true (`dhcp4: on`, `dhcp4: "yes"`).
"#,
    remediation: "Use DHCP through cloud-init; remove static addresses and hard-coded MTUs.",
    check,
};

/// True if a netplan file turns DHCP on (`dhcp4:`/`dhcp6:` with a YAML true:
/// `true`, `yes`, `on`, any case, quoted or not).
fn netplan_dhcp(text: &str) -> bool {
    text.lines().any(|l| {
        let t = l.trim();
        let Some((k, v)) = t.split_once(':') else {
            return false;
        };
        let v = v
            .split(" #")
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches(|c| c == '"' || c == '\'');
        matches!(k.trim(), "dhcp4" | "dhcp6")
            && ["true", "yes", "on", "y"]
                .iter()
                .any(|y| v.eq_ignore_ascii_case(y))
    })
}

fn generated(path: &str) -> bool {
    path.contains("cloud-init") || path.ends_with("/50-cloud-init")
}

fn check(cx: &Context) -> Outcome {
    let mut o = Outcome::default();
    let units = cx.units();
    let client =
        find_binary(cx, &["dhclient", "dhcpcd", "udhcpc", "NetworkManager"]).or_else(|| {
            units
                .is_enabled("systemd-networkd.service")
                .then(|| "systemd-networkd.service".to_string())
        });
    match client {
        Some(c) => o.proof(Evidence::note(format!("DHCP client: {c}"))),
        None => o.fail(
            "no-dhcp-client",
            "no DHCP client (dhclient, dhcpcd, NetworkManager, systemd-networkd)",
            Evidence::note("none found"),
        ),
    }
    let cc = cx.cloud();
    let disabled = cc
        .get("network")
        .and_then(|n| n.get("config"))
        .and_then(|c| c.as_str())
        .is_some_and(|s| s.eq_ignore_ascii_case("disabled"));
    if disabled {
        o.info(
            "cloudinit-network-disabled",
            "cloud-init does not configure the network; the image's own config must use DHCP",
            Evidence::at(
                cc.origin("network")
                    .unwrap_or("/etc/cloud/cloud.cfg")
                    .to_owned(),
                "network: {config: disabled}",
            ),
        );
    }

    let mut files: Vec<String> = vec!["/etc/network/interfaces".into()];
    files.extend(
        names(cx, "/etc/network/interfaces.d")
            .into_iter()
            .map(|n| format!("/etc/network/interfaces.d/{n}")),
    );
    for p in files.iter().filter(|p| !generated(p)) {
        let Some(text) = cx.read_text(p) else {
            continue;
        };
        for (i, l) in text.lines().enumerate() {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.first() == Some(&"iface") && w.get(3) == Some(&"static") && w.get(1) != Some(&"lo")
            {
                o.fail(
                    "static-address",
                    format!("static address configured for {}", w.get(1).unwrap_or(&"?")),
                    Evidence::at_line(p.clone(), i + 1, l.trim().to_owned()),
                );
            }
            if w.first() == Some(&"mtu") {
                o.warn(
                    "fixed-mtu",
                    "MTU hard-coded in ifupdown config",
                    Evidence::at_line(p.clone(), i + 1, l.trim().to_owned()),
                );
            }
        }
    }
    for n in names(cx, "/etc/sysconfig/network-scripts") {
        if !n.starts_with("ifcfg-") || n == "ifcfg-lo" {
            continue;
        }
        let p = format!("/etc/sysconfig/network-scripts/{n}");
        let Some(text) = cx.read_text(&p) else {
            continue;
        };
        if text.contains("Created by cloud-init") {
            continue;
        }
        let get = |k: &str| {
            text.lines()
                .enumerate()
                .find(|(_, l)| l.trim().starts_with(&format!("{k}=")))
                .map(|(i, l)| (i + 1, l.trim().to_owned()))
        };
        let boot = get("BOOTPROTO")
            .map(|(_, l)| l.to_ascii_lowercase())
            .unwrap_or_default();
        if let (true, Some((line, ip))) = (
            boot.contains("static") || boot.contains("none"),
            get("IPADDR"),
        ) {
            o.fail(
                "static-address",
                format!("static address in {n}"),
                Evidence::at_line(p.clone(), line, ip),
            );
        }
        if let Some((line, mtu)) = get("MTU") {
            o.warn(
                "fixed-mtu",
                format!("MTU hard-coded in {n}"),
                Evidence::at_line(p.clone(), line, mtu),
            );
        }
    }
    for n in names(cx, "/etc/netplan") {
        let p = format!("/etc/netplan/{n}");
        if generated(&p) {
            continue;
        }
        let Some(text) = cx.read_text(&p) else {
            continue;
        };
        let dhcp = netplan_dhcp(&text);
        // `addresses:` under `nameservers:` are DNS servers, not the
        // interface's address.
        let mut nameservers: Option<usize> = None;
        for (i, l) in text.lines().enumerate() {
            let t = l.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let indent = l.len() - l.trim_start().len();
            if nameservers.is_some_and(|n| indent <= n) {
                nameservers = None;
            }
            if t.starts_with("nameservers:") {
                nameservers = Some(indent);
            }
            if t.starts_with("addresses:") && !dhcp && nameservers.is_none() {
                o.fail(
                    "static-address",
                    format!("static address in {n}"),
                    Evidence::at_line(p.clone(), i + 1, t.to_owned()),
                );
            }
            if t.starts_with("mtu:") {
                o.warn(
                    "fixed-mtu",
                    format!("MTU hard-coded in {n}"),
                    Evidence::at_line(p.clone(), i + 1, t.to_owned()),
                );
            }
        }
    }
    for n in names(cx, "/etc/NetworkManager/system-connections") {
        let p = format!("/etc/NetworkManager/system-connections/{n}");
        let Some(text) = cx.read_text(&p) else {
            continue;
        };
        for (i, l) in text.lines().enumerate() {
            let t = l.trim();
            if t == "method=manual" {
                o.fail(
                    "static-address",
                    format!("static address in NetworkManager connection {n}"),
                    Evidence::at_line(p.clone(), i + 1, t.to_owned()),
                );
            }
            if t.starts_with("mtu=") && t != "mtu=0" {
                o.warn(
                    "fixed-mtu",
                    format!("MTU hard-coded in {n}"),
                    Evidence::at_line(p.clone(), i + 1, t.to_owned()),
                );
            }
        }
    }
    if !disabled
        && o.findings
            .iter()
            .all(|f| f.level == crate::model::Level::Info)
    {
        o.proof(Evidence::note(
            "network configuration is left to cloud-init (DHCP from the cloud)",
        ));
    }
    o
}

//! OS-NO-FIXED-MAC: no network configuration pinned to a MAC address.

use serde_json::Value;

use super::util::names;
use crate::context::Context;
use crate::model::{Evidence, Outcome, Severity};
use crate::rule::RuleDef;
use crate::rule_id::RuleId;

/// The rule.
pub static RULE: RuleDef = RuleDef {
    id: RuleId::OS_NO_FIXED_MAC,
    title: "No network config pinned to a MAC address",
    requirement: "The OS must have no built-in, unchangeable MAC addresses for network devices.",
    severity: Severity::Error,
    doc: r#"## What it checks
Every network stack's way of tying configuration to a MAC address:
- udev `70-persistent-net.rules` (`ATTR{address}==`);
- ifcfg files (`HWADDR=`, `MACADDR=`; SUSE `LLADDR=`);
- NetworkManager keyfiles (`mac-address=`, `cloned-mac-address=`);
- netplan YAML (`macaddress:` under `match:` or as a set address);
- systemd-networkd `.network` (`MACAddress=`/`PermanentMACAddress=` in
  `[Match]`) and `.link` files (`MACAddress=`);
- ifupdown (`hwaddress` in `/etc/network/interfaces` and `interfaces.d`);
- cloud-init's own configuration: `network:` in `/etc/cloud/cloud.cfg` and
  `/etc/cloud/cloud.cfg.d/*.cfg` (merged as cloud-init merges them), v1
  `config:` entries of `type: physical` with `mac_address:`, v2 `ethernets:`
  with `match: macaddress:` (or a set `macaddress:`).

## Why
Every VM the platform creates from the image gets a new MAC address. A
configuration bound to the build machine's MAC matches nothing: the NIC stays
down or gets renamed, and the VM is unreachable.

## Evidence
Offline: file and line of each pinned MAC (for cloud-init's configuration,
the line in the last file that names it). Live (boot-test): a boot with a
fresh MAC gets an address.

## Remediation
Delete `/etc/udev/rules.d/70-persistent-net.rules`, remove `HWADDR`/`MACADDR`
lines, and match interfaces by name or driver instead of MAC.

## Traps
cloud-init renders its own network config per instance
(`/etc/netplan/50-cloud-init.yaml`, `/etc/network/interfaces.d/50-cloud-init`,
`ifcfg-*` it wrote) with the MAC of the VM it ran on; it is rewritten on the
next instance, so it is a warning (clean it anyway), not a failure.
cloud-init's **own** configuration is different: a `network:` in `cloud.cfg`
or `cloud.cfg.d` takes precedence over the datasource's network config
(cloud-init's order: kernel command line, initramfs, system config,
datasource), so every instance applies it and matches the build VM's MAC: a
failure, with file and line. `network: {config: disabled}` in the merged
configuration turns it off and passes.
Harmless look-alikes pass: commented lines (`#HWADDR=…`), an empty
`HWADDR=`, udev rules matching any address (`ATTR{address}=="?*"`), and
`MACAddressPolicy=` in `.link` files (a policy, not an address).
"#,
    remediation: "Remove MAC-pinned network config (70-persistent-net.rules, HWADDR=, macaddress:, MACAddress=) and match by name.",
    check,
};

fn is_mac(s: &str) -> bool {
    let s = s.trim().trim_matches(|c| c == '"' || c == '\'');
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// cloud-init writes these per instance.
fn rendered_by_cloudinit(path: &str, text: &str) -> bool {
    path.ends_with("/50-cloud-init.yaml")
        || path.ends_with("/50-cloud-init")
        || path.ends_with("/50-cloud-init.cfg")
        || path.ends_with("-cloud-init.network")
        || path.contains("cloud-init")
        || text.lines().take(5).any(|l| {
            l.contains("generated from information provided by the datasource")
                || l.contains("Created by cloud-init")
        })
}

fn scan(cx: &Context, o: &mut Outcome, path: &str, matcher: impl Fn(&str) -> Option<String>) {
    let Some(text) = cx.read_text(path) else {
        return;
    };
    let generated = rendered_by_cloudinit(path, &text);
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('#') {
            continue;
        }
        if let Some(detail) = matcher(t) {
            if generated {
                o.warn(
                    "mac-in-cloudinit-config",
                    format!("cloud-init's rendered network config names a MAC: {path}"),
                    Evidence::at_line(
                        path,
                        i + 1,
                        format!("{detail} (re-rendered per instance; remove before sealing)"),
                    ),
                );
            } else {
                o.fail(
                    "mac-pinned",
                    format!("network config pinned to a MAC: {path}"),
                    Evidence::at_line(path, i + 1, detail),
                );
            }
        }
    }
}

/// A udev rule line that matches one MAC address (`ATTR{address}=="52:54:…"`);
/// a wildcard such as `"?*"` matches every NIC and pins nothing.
fn udev_mac(t: &str) -> Option<String> {
    for key in ["ATTR{address}==", "ATTRS{address}=="] {
        let mut rest = t;
        while let Some(i) = rest.find(key) {
            let after = &rest[i + key.len()..];
            let value = after
                .strip_prefix('"')
                .and_then(|v| v.split('"').next())
                .unwrap_or("");
            if is_mac(value) {
                return Some(t.chars().take(160).collect());
            }
            rest = after;
        }
    }
    None
}

fn key_value_mac(t: &str, keys: &[&str]) -> Option<String> {
    let (k, v) = t.split_once('=')?;
    let k = k.trim();
    if keys.iter().any(|key| k.eq_ignore_ascii_case(key)) && is_mac(v) {
        Some(format!("{k}={}", v.trim()))
    } else {
        None
    }
}

fn mac_of(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str).filter(|m| is_mac(m))
}

/// MACs in a cloud-init network config value: v1 `mac_address` of a
/// `physical` entry, v2 `match: macaddress` or a set `macaddress` of an
/// ethernet. Returns `(interface, mac)`.
fn cloudinit_network_macs(net: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(Value::Array(items)) = net.get("config") {
        for it in items {
            if it.get("type").and_then(Value::as_str) == Some("physical")
                && let Some(m) = mac_of(it.get("mac_address"))
            {
                let name = it.get("name").and_then(Value::as_str).unwrap_or("?");
                out.push((name.to_owned(), m.to_owned()));
            }
        }
    }
    if let Some(Value::Object(eths)) = net.get("ethernets") {
        for (name, e) in eths {
            for m in [
                mac_of(e.get("match").and_then(|m| m.get("macaddress"))),
                mac_of(e.get("macaddress")),
            ]
            .into_iter()
            .flatten()
            {
                out.push((name.clone(), m.to_owned()));
            }
        }
    }
    out
}

/// cloud-init's own configuration (`/etc/cloud/cloud.cfg`, `cloud.cfg.d`)
/// with a `network:` that names MACs. cloud-init prefers it over the
/// datasource's network config, so every instance applies it.
fn cloudinit_system_config(cx: &Context, o: &mut Outcome) {
    let cc = cx.cloud();
    let Some(net) = &cc.network else {
        return;
    };
    if net.get("config").and_then(Value::as_str) == Some("disabled") {
        return;
    }
    for (iface, mac) in cloudinit_network_macs(net) {
        // The line that names the MAC, last file first (later files win).
        let hit = cc.network_files.iter().rev().find_map(|p| {
            let text = cx.read_text(p)?;
            text.lines()
                .enumerate()
                .find(|(_, l)| {
                    let t = l.trim();
                    !t.starts_with('#')
                        && t.to_ascii_lowercase().contains(&mac.to_ascii_lowercase())
                })
                .map(|(i, l)| (p.clone(), i + 1, l.trim().to_owned()))
        });
        let (path, line, text) = hit.unwrap_or_else(|| {
            (
                cc.network_files.last().cloned().unwrap_or_default(),
                0,
                format!("macaddress {mac}"),
            )
        });
        let detail = format!(
            "{text} (interface {iface}; cloud-init's system network config overrides the cloud's on every instance)"
        );
        o.fail(
            "mac-in-cloudinit-system-config",
            format!("cloud-init's own configuration pins a network interface to a MAC: {path}"),
            if line > 0 {
                Evidence::at_line(path, line, detail)
            } else {
                Evidence::at(path, detail)
            },
        );
    }
}

fn check(cx: &Context) -> Outcome {
    let mut o = Outcome::default();
    let mut scanned = cx.cloud().network_files.len();
    cloudinit_system_config(cx, &mut o);
    for p in [
        "/etc/udev/rules.d/70-persistent-net.rules",
        "/etc/udev/rules.d/75-persistent-net-generator.rules",
    ] {
        if cx.guest.exists(p) {
            scanned += 1;
        }
        scan(cx, &mut o, p, udev_mac);
    }
    for n in names(cx, "/etc/udev/rules.d") {
        if n.ends_with(".rules")
            && !n.starts_with("70-persistent-net")
            && !n.starts_with("75-persistent-net")
        {
            let p = format!("/etc/udev/rules.d/{n}");
            scanned += 1;
            scan(cx, &mut o, &p, |t| {
                if t.contains("SUBSYSTEM==\"net\"") {
                    udev_mac(t)
                } else {
                    None
                }
            });
        }
    }
    for dir in ["/etc/sysconfig/network-scripts", "/etc/sysconfig/network"] {
        for n in names(cx, dir) {
            if n.starts_with("ifcfg-") && n != "ifcfg-lo" {
                scanned += 1;
                scan(cx, &mut o, &format!("{dir}/{n}"), |t| {
                    key_value_mac(t, &["HWADDR", "MACADDR", "LLADDR"])
                });
            }
        }
    }
    for dir in [
        "/etc/NetworkManager/system-connections",
        "/usr/lib/NetworkManager/system-connections",
    ] {
        for n in names(cx, dir) {
            scanned += 1;
            scan(cx, &mut o, &format!("{dir}/{n}"), |t| {
                key_value_mac(t, &["mac-address", "cloned-mac-address"])
            });
        }
    }
    for dir in ["/etc/netplan", "/lib/netplan", "/run/netplan"] {
        for n in names(cx, dir) {
            if n.ends_with(".yaml") || n.ends_with(".yml") {
                scanned += 1;
                scan(cx, &mut o, &format!("{dir}/{n}"), |t| {
                    let (k, v) = t.split_once(':')?;
                    (k.trim().trim_start_matches("- ") == "macaddress" && is_mac(v))
                        .then(|| t.to_owned())
                });
            }
        }
    }
    for dir in [
        "/etc/systemd/network",
        "/usr/lib/systemd/network",
        "/lib/systemd/network",
    ] {
        for n in names(cx, dir) {
            if n.ends_with(".network") || n.ends_with(".link") || n.ends_with(".netdev") {
                // Debian and systemd ship 99-default.link with MACAddressPolicy,
                // which has no address: only explicit addresses count.
                scanned += 1;
                scan(cx, &mut o, &format!("{dir}/{n}"), |t| {
                    let (k, v) = t.split_once('=')?;
                    let k = k.trim();
                    (matches!(k, "MACAddress" | "PermanentMACAddress")
                        && v.split_whitespace().any(is_mac))
                    .then(|| t.to_owned())
                });
            }
        }
    }
    let mut ifupdown = vec!["/etc/network/interfaces".to_string()];
    ifupdown.extend(
        names(cx, "/etc/network/interfaces.d")
            .into_iter()
            .map(|n| format!("/etc/network/interfaces.d/{n}")),
    );
    for p in ifupdown {
        if cx.guest.exists(&p) {
            scanned += 1;
        }
        scan(cx, &mut o, &p, |t| {
            let mut w = t.split_whitespace();
            (w.next() == Some("hwaddress") && w.any(is_mac)).then(|| t.to_owned())
        });
    }
    if o.findings.is_empty() {
        o.proof(Evidence::note(format!("no MAC address in {scanned} network configuration files (udev, ifcfg, NetworkManager, netplan, networkd, ifupdown, cloud-init)")));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::is_mac;

    #[test]
    fn macs() {
        assert!(is_mac("52:54:00:12:34:56"));
        assert!(is_mac("\"FA:16:3E:00:00:01\""));
        assert!(!is_mac("52:54:00:12:34"));
        assert!(!is_mac("persistent"));
    }

    #[test]
    fn udev_rules() {
        use super::udev_mac;
        assert!(
            udev_mac(r#"SUBSYSTEM=="net", ATTR{address}=="52:54:00:12:34:56", NAME="eth0""#)
                .is_some()
        );
        assert!(udev_mac(r#"SUBSYSTEM=="net", ATTR{address}=="?*", NAME="eth0""#).is_none());
        assert!(
            udev_mac(
                r#"SUBSYSTEM=="net", ATTR{address}=="?*", ATTRS{address}=="fa:16:3e:00:00:01""#
            )
            .is_some()
        );
    }
}

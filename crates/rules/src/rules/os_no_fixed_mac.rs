//! OS-NO-FIXED-MAC: no network configuration pinned to a MAC address.

use super::util::names;
use crate::context::Context;
use crate::model::{Evidence, Outcome, Severity};
use crate::rule::RuleDef;

/// The rule.
pub static RULE: RuleDef = RuleDef {
    id: "OS-NO-FIXED-MAC",
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
- ifupdown (`hwaddress` in `/etc/network/interfaces` and `interfaces.d`).

## Why
Every VM the platform creates from the image gets a new MAC address. A
configuration bound to the build machine's MAC matches nothing: the NIC stays
down or gets renamed, and the VM is unreachable.

## Evidence
Offline: file and line of each pinned MAC. Live (boot-test): a boot with a
fresh MAC gets an address.

## Remediation
Delete `/etc/udev/rules.d/70-persistent-net.rules`, remove `HWADDR`/`MACADDR`
lines, and match interfaces by name or driver instead of MAC.

## Traps
cloud-init renders its own network config per instance
(`/etc/netplan/50-cloud-init.yaml`, `/etc/network/interfaces.d/50-cloud-init`,
`ifcfg-*` it wrote) with the MAC of the VM it ran on; it is rewritten on the
next instance, so it is a warning (clean it anyway), not a failure.
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

fn key_value_mac(t: &str, keys: &[&str]) -> Option<String> {
    let (k, v) = t.split_once('=')?;
    let k = k.trim();
    if keys.iter().any(|key| k.eq_ignore_ascii_case(key)) && is_mac(v) {
        Some(format!("{k}={}", v.trim()))
    } else {
        None
    }
}

fn check(cx: &Context) -> Outcome {
    let mut o = Outcome::default();
    let mut scanned = 0usize;
    for p in [
        "/etc/udev/rules.d/70-persistent-net.rules",
        "/etc/udev/rules.d/75-persistent-net-generator.rules",
    ] {
        if cx.guest.exists(p) {
            scanned += 1;
        }
        scan(cx, &mut o, p, |t| {
            (t.contains("ATTR{address}==") || t.contains("ATTRS{address}=="))
                .then(|| t.chars().take(160).collect())
        });
    }
    for n in names(cx, "/etc/udev/rules.d") {
        if n.ends_with(".rules")
            && !n.starts_with("70-persistent-net")
            && !n.starts_with("75-persistent-net")
        {
            let p = format!("/etc/udev/rules.d/{n}");
            scanned += 1;
            scan(cx, &mut o, &p, |t| {
                (t.contains("SUBSYSTEM==\"net\"")
                    && (t.contains("ATTR{address}==") || t.contains("ATTRS{address}==")))
                .then(|| t.chars().take(160).collect())
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
        o.proof(Evidence::note(format!("no MAC address in {scanned} network configuration files (udev, ifcfg, NetworkManager, netplan, networkd, ifupdown)")));
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
}

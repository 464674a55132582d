//! OS-FIREWALL-OFF: no host firewall enabled (security groups do that job).

use crate::context::Context;
use crate::model::{Evidence, Outcome, Severity};
use crate::rule::RuleDef;
use crate::rule_id::RuleId;

/// The rule.
pub static RULE: RuleDef = RuleDef {
    id: RuleId::OS_FIREWALL_OFF,
    title: "Host firewall disabled",
    requirement: "The OS must have the firewall disabled (the cloud's security groups do that job).",
    severity: Severity::Error,
    doc: r#"## What it checks
- ufw: `ENABLED=yes` in `/etc/ufw/ufw.conf` (with `ufw.service` starting at boot);
- firewalld: `firewalld.service` starts at boot;
- nftables: `nftables.service` starts at boot and `/etc/nftables.conf`
  (or `/etc/sysconfig/nftables.conf` and its includes) holds rules;
- iptables: `iptables.service`/`ip6tables.service` (RHEL `iptables-services`)
  or `netfilter-persistent.service` starts at boot with rules in
  `/etc/sysconfig/iptables` or `/etc/iptables/rules.v4|v6`.

## Why
The buyer controls access with the cloud's security groups. A firewall inside
the image silently overrides them: ports the buyer opened stay closed, and
health checks from the platform fail.

## Evidence
Offline: the config line or the enabling symlink and the rule file. Live
(boot-test): `nft list ruleset`.

## Remediation
`ufw disable`, `systemctl disable --now firewalld`, `systemctl disable
nftables`, or empty the saved rule files.

## Traps
Other marketplaces require the opposite (a firewall on by default); that
belongs in a profile (`[rules] "OS-FIREWALL-OFF" = "off"`), not in the rule.
An installed but disabled firewall passes.
"#,
    remediation: "Disable ufw/firewalld/nftables/iptables services or empty their saved rules.",
    check,
};

fn has_rules(text: &str, nft: bool) -> Option<(usize, String)> {
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let is_rule = if nft {
            // A rule line inside a chain: anything but structure keywords.
            !(t.starts_with("flush ")
                || t.starts_with("table ")
                || t.starts_with("chain ")
                || t.starts_with("type ")
                || t == "}"
                || t == "{"
                || t.starts_with("#!")
                || t.starts_with("include ")
                || t.starts_with("define "))
                || t.contains("policy drop")
                || t.contains("policy reject")
        } else {
            t.starts_with("-A ")
                || t.contains(" DROP") && t.starts_with(':') && !t.starts_with(":INPUT ACCEPT")
        };
        if is_rule {
            return Some((i + 1, t.chars().take(120).collect()));
        }
    }
    None
}

fn check(cx: &Context) -> Outcome {
    let mut o = Outcome::default();
    let units = cx.units();
    let enabled = |u: &str| units.is_enabled(u);
    let mut looked = Vec::new();

    if let Some(text) = cx.read_text("/etc/ufw/ufw.conf") {
        looked.push("ufw");
        if let Some((i, _)) = text.lines().enumerate().find(|(_, l)| {
            l.trim()
                .replace('"', "")
                .eq_ignore_ascii_case("ENABLED=yes")
        }) {
            if units.no_systemd || enabled("ufw.service") {
                o.fail(
                    "ufw-enabled",
                    "ufw is enabled",
                    Evidence::at_line("/etc/ufw/ufw.conf", i + 1, "ENABLED=yes"),
                );
            } else {
                o.warn(
                    "ufw-enabled-unit-off",
                    "ufw is configured ENABLED=yes but ufw.service does not start",
                    Evidence::at_line("/etc/ufw/ufw.conf", i + 1, "ENABLED=yes"),
                );
            }
        }
    }
    if enabled("firewalld.service") {
        looked.push("firewalld");
        o.fail(
            "firewalld-enabled",
            "firewalld starts at boot",
            Evidence::note(units.explain("firewalld.service").unwrap_or_default()),
        );
    }
    if enabled("nftables.service") {
        looked.push("nftables");
        let mut found = false;
        for p in ["/etc/nftables.conf", "/etc/sysconfig/nftables.conf"] {
            if let Some(text) = cx.read_text(p) {
                if let Some((line, rule)) = has_rules(&text, true) {
                    o.fail(
                        "nftables-rules",
                        "nftables starts at boot with rules",
                        Evidence::at_line(p, line, rule),
                    );
                    found = true;
                }
                for (i, l) in text.lines().enumerate() {
                    if let Some(inc) = l.trim().strip_prefix("include ") {
                        let inc = inc.trim().trim_matches('"');
                        if let Some(t) = cx.read_text(inc) {
                            if let Some((line, rule)) = has_rules(&t, true) {
                                o.fail(
                                    "nftables-rules",
                                    "nftables starts at boot with rules",
                                    Evidence::at_line(inc, line, rule),
                                );
                                found = true;
                            }
                        } else if inc.contains('*') {
                            o.info(
                                "nftables-include",
                                "nftables includes a glob that was not expanded",
                                Evidence::at_line(p, i + 1, inc.to_owned()),
                            );
                        }
                    }
                }
            }
        }
        if !found {
            o.proof(Evidence::note(
                "nftables.service starts at boot but its configuration has no rules",
            ));
        }
    }
    for (unit, files) in [
        ("iptables.service", &["/etc/sysconfig/iptables"][..]),
        ("ip6tables.service", &["/etc/sysconfig/ip6tables"][..]),
        (
            "netfilter-persistent.service",
            &["/etc/iptables/rules.v4", "/etc/iptables/rules.v6"][..],
        ),
    ] {
        if !enabled(unit) {
            continue;
        }
        looked.push(unit);
        for p in files {
            if let Some(text) = cx.read_text(p)
                && let Some((line, rule)) = has_rules(&text, false)
            {
                o.fail(
                    "iptables-rules",
                    format!("{unit} restores firewall rules at boot"),
                    Evidence::at_line(*p, line, rule),
                );
            }
        }
    }
    if units.no_systemd {
        o.unverified("no systemd unit directories: firewall services could not be evaluated");
    }
    if o.findings
        .iter()
        .all(|f| f.level < crate::model::Level::Warn)
    {
        o.proof(Evidence::note(if looked.is_empty() {
            "no ufw, firewalld, nftables or iptables firewall starts at boot".to_string()
        } else {
            format!("checked {}: no rules are loaded at boot", looked.join(", "))
        }));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::has_rules;

    #[test]
    fn nft_rules() {
        let empty = "#!/usr/sbin/nft -f\nflush ruleset\ntable inet filter {\n chain input {\n  type filter hook input priority 0;\n }\n}\n";
        assert_eq!(has_rules(empty, true), None);
        let drop = "table inet filter {\n chain input {\n  type filter hook input priority 0; policy drop;\n }\n}\n";
        assert!(has_rules(drop, true).is_some());
        let rule = "table inet filter {\n chain input {\n  type filter hook input priority 0;\n  tcp dport 22 accept\n }\n}\n";
        assert_eq!(has_rules(rule, true).map(|r| r.0), Some(4));
    }

    #[test]
    fn iptables_rules() {
        assert!(has_rules("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n", false).is_none());
        assert!(
            has_rules(
                "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j DROP\nCOMMIT\n",
                false
            )
            .is_some()
        );
    }
}

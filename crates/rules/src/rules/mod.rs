//! One file per SPEC rule. Add a rule: write `rules/<id>.rs` with a
//! `RuleDef` (doc headings: What it checks / Why / Evidence / Remediation /
//! Traps), list it in [`ALL`], add fixtures in `tests/rules.rs`.

mod util;

pub mod app_autostart;
pub mod app_billing;
pub mod app_docs;
pub mod app_flavor;
pub mod app_kvm;
pub mod app_net;
pub mod app_nopass;
pub mod app_ports;
pub mod img_agent_deps;
pub mod img_cloudinit;
pub mod img_no_debuggers;
pub mod img_no_history;
pub mod img_no_secrets;
pub mod kernel_virtio;
pub mod os_console_log;
pub mod os_firewall_off;
pub mod os_no_fixed_mac;
pub mod os_sshd;

use crate::rule::RuleDef;

/// Every rule, in report order (SPEC §1 order).
pub static ALL: &[&RuleDef] = &[
    &app_kvm::RULE,
    &app_net::RULE,
    &app_nopass::RULE,
    &app_ports::RULE,
    &app_flavor::RULE,
    &app_autostart::SOFT,
    &app_autostart::HARD,
    &app_billing::RULE,
    &app_docs::RULE,
    &img_cloudinit::RULE,
    &img_agent_deps::RULE,
    &img_no_secrets::RULE,
    &img_no_history::RULE,
    &img_no_debuggers::RULE,
    &os_sshd::RULE,
    &os_firewall_off::RULE,
    &os_console_log::RULE,
    &os_no_fixed_mac::RULE,
    &kernel_virtio::RULE,
];

#[cfg(test)]
mod tests {
    use super::ALL;
    use crate::rule_id::RuleId;

    /// Every ID has its rule, once, in SPEC order (the strings themselves
    /// are checked against SPEC in `rule_id`).
    #[test]
    fn every_spec_id_exactly_once() {
        let ids: Vec<RuleId> = ALL.iter().map(|r| r.id).collect();
        assert_eq!(ids, RuleId::ALL);
        for id in RuleId::ALL {
            assert!(crate::rule::rule_def(*id).is_some_and(|r| r.id == *id));
        }
    }

    #[test]
    fn docs_have_the_headings() {
        for r in ALL {
            for h in [
                "## What it checks",
                "## Why",
                "## Evidence",
                "## Remediation",
                "## Traps",
            ] {
                assert!(r.doc.contains(h), "{} doc lacks {h}", r.id);
            }
            assert!(
                !r.remediation.is_empty() && !r.title.is_empty() && !r.requirement.is_empty(),
                "{}",
                r.id
            );
        }
    }
}

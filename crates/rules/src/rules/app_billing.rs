//! APP-BILLING: billed per the marketplace's rules (not verifiable offline;
//! `ibkit boot-test` proves it live, `crates/boottest/src/checks/app_billing.rs`).

use crate::context::Context;
use crate::model::{Outcome, Severity};
use crate::rule::RuleDef;
use crate::rule_id::RuleId;

/// The rule.
pub static RULE: RuleDef = RuleDef {
    id: RuleId::APP_BILLING,
    title: "Billed per the marketplace's rules",
    requirement: "The application must be billed per the marketplace's billing rules (usage metrics may be pushed by the app).",
    severity: Severity::Error,
    doc: r#"## What it checks
Nothing in the image can prove billing: the tariff is configured in the
marketplace, and usage metrics (if the tariff uses them) are pushed by the
running app. The rule is always `unknown` offline and says so, so that the
report lists every marketplace rule.

## Why
The marketplace requires it; listing it keeps the report complete.

## Evidence
None offline. `ibkit boot-test` with `[billing] params` in the manifest
proves it live: the app's pushes to the marketplace's billing emulator are
watched through a key rotation (see docs/billing.md); a refused push, no
push at all, or a client stuck on an expired key fails the rule.

## Remediation
Configure the tariff in the marketplace; if it bills by usage, make the app
push its metrics to the marketplace's billing endpoint.

## Traps
None known.
"#,
    remediation: "Configure the tariff in the marketplace and push usage metrics if the tariff needs them.",
    check,
};

fn check(_cx: &Context) -> Outcome {
    Outcome::unknown("billing is configured in the marketplace, not in the image")
}

//! APP-BILLING: billed per the marketplace's rules (not verifiable offline).

use crate::context::Context;
use crate::model::{Outcome, Severity};
use crate::rule::RuleDef;
use crate::rule_id::RuleId;

/// The rule.
pub static RULE: RuleDef = RuleDef {
    id: RuleId::APP_BILLING,
    title: "Billed per the marketplace's rules",
    requirement: "The application must be billed per the marketplace's billing rules (usage metrics may be pushed by the app).",
    severity: Severity::Warning,
    doc: r#"## What it checks
Nothing in the image can prove billing: the tariff is configured in the
marketplace, and usage metrics (if the tariff uses them) are pushed by the
running app. The rule is always `unknown` offline and says so, so that the
report lists every marketplace rule.

## Why
The marketplace requires it; listing it keeps the report complete.

## Evidence
None offline. The marketplace's moderation verifies the tariff.

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

//! A rule's definition: its stable ID, what it proves, its documentation and
//! its check. One `RuleDef` per file in `rules/`.

use crate::context::Context;
use crate::model::{Outcome, Severity};
use crate::rule_id::RuleId;

/// One rule of the catalogue.
pub struct RuleDef {
    /// SPEC rule ID, never renamed (reports, waivers and tests use it).
    pub id: RuleId,
    /// Short title.
    pub title: &'static str,
    /// The marketplace's requirement, as SPEC §1 states it.
    pub requirement: &'static str,
    /// Default severity in the marketplace profile.
    pub severity: Severity,
    /// Markdown documentation with the headings `What it checks`, `Why`,
    /// `Evidence`, `Remediation`, `Traps` (checked by a test).
    pub doc: &'static str,
    /// One-paragraph fix, shown with failures.
    pub remediation: &'static str,
    /// The check: pure over the context's facts.
    pub check: fn(&Context) -> Outcome,
}

/// Every rule, in report order.
pub fn catalogue() -> &'static [&'static RuleDef] {
    crate::rules::ALL
}

/// Look a rule up by ID text (case-insensitive); `None` for an unknown ID.
pub fn find_rule(id: &str) -> Option<&'static RuleDef> {
    RuleId::parse(id).ok().and_then(rule_def)
}

/// The definition of a known rule (every [`RuleId`] has one; a test checks).
pub fn rule_def(id: RuleId) -> Option<&'static RuleDef> {
    catalogue().iter().copied().find(|r| r.id == id)
}

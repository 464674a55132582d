//! What a rule produces: a status, evidence, findings. These types are the
//! stable JSON interface (see the report crate's docs); field names matter.

use serde::{Deserialize, Serialize};

/// Verdict of one rule, or one finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The requirement is met.
    Pass,
    /// Every problem found was accepted by a waiver.
    Waived,
    /// Nothing could prove or disprove the requirement offline.
    Unknown,
    /// Probably fine, but worth a look (not a failure).
    Warn,
    /// The requirement is not met.
    Fail,
}

impl Status {
    /// Lowercase name as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Waived => "waived",
            Status::Unknown => "unknown",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Worth knowing; does not change the verdict.
    Info,
    /// Makes the rule `warn`.
    Warn,
    /// Makes the rule `fail`.
    Fail,
}

/// Where something was seen. At least one of `path` or `package` is set
/// for evidence from the image; `detail` says what was seen there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// Guest path (`/etc/shadow`) or host path for manifest-side evidence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// 1-based line number in `path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// Package name (and version) that proves it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    /// What was seen; secrets are redacted before they get here.
    pub detail: String,
}

impl Evidence {
    /// Evidence at a path.
    pub fn at(path: impl Into<String>, detail: impl Into<String>) -> Self {
        Evidence {
            path: Some(path.into()),
            detail: detail.into(),
            ..Default::default()
        }
    }
    /// Evidence at a path and line.
    pub fn at_line(path: impl Into<String>, line: usize, detail: impl Into<String>) -> Self {
        Evidence {
            path: Some(path.into()),
            line: Some(line),
            detail: detail.into(),
            ..Default::default()
        }
    }
    /// Evidence from the package database.
    pub fn package(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Evidence {
            package: Some(name.into()),
            detail: detail.into(),
            ..Default::default()
        }
    }
    /// Evidence with no location (a conclusion from other evidence).
    pub fn note(detail: impl Into<String>) -> Self {
        Evidence {
            detail: detail.into(),
            ..Default::default()
        }
    }
}

/// One problem (or observation) a rule found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Fail, warn or info.
    pub level: Level,
    /// Short stable key for waivers and tests (`history-file`, `host-key`).
    pub kind: String,
    /// One sentence: what is wrong.
    pub message: String,
    /// Where.
    pub evidence: Evidence,
    /// Set when a waiver accepted it: the waiver's reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waived: Option<String>,
}

/// What a rule's check returns.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Problems and observations.
    pub findings: Vec<Finding>,
    /// What proves the requirement is met (shown for passing rules).
    pub evidence: Vec<Evidence>,
    /// What could not be verified, and why (makes the rule `unknown` when
    /// there is no finding and no evidence).
    pub unverified: Vec<String>,
}

impl Outcome {
    /// Record a failing finding.
    pub fn fail(&mut self, kind: &str, message: impl Into<String>, evidence: Evidence) {
        self.push(Level::Fail, kind, message, evidence);
    }
    /// Record a warning.
    pub fn warn(&mut self, kind: &str, message: impl Into<String>, evidence: Evidence) {
        self.push(Level::Warn, kind, message, evidence);
    }
    /// Record an observation that does not change the verdict.
    pub fn info(&mut self, kind: &str, message: impl Into<String>, evidence: Evidence) {
        self.push(Level::Info, kind, message, evidence);
    }
    fn push(&mut self, level: Level, kind: &str, message: impl Into<String>, evidence: Evidence) {
        self.findings.push(Finding {
            level,
            kind: kind.to_owned(),
            message: message.into(),
            evidence,
            waived: None,
        });
    }
    /// Record positive evidence.
    pub fn proof(&mut self, evidence: Evidence) {
        self.evidence.push(evidence);
    }
    /// Record something that could not be checked.
    pub fn unverified(&mut self, why: impl Into<String>) {
        self.unverified.push(why.into());
    }
    /// An outcome that says only "could not verify: why".
    pub fn unknown(why: impl Into<String>) -> Self {
        let mut o = Outcome::default();
        o.unverified(why);
        o
    }
    /// The verdict: the worst unwaived finding; `waived` if only waived
    /// findings are problems; `unknown` if nothing at all proves the rule.
    pub fn status(&self) -> Status {
        let open = |lvl| {
            self.findings
                .iter()
                .any(|f| f.level == lvl && f.waived.is_none())
        };
        let waived = self
            .findings
            .iter()
            .any(|f| f.level >= Level::Warn && f.waived.is_some());
        if open(Level::Fail) {
            Status::Fail
        } else if open(Level::Warn) {
            Status::Warn
        } else if !self.unverified.is_empty() && self.evidence.is_empty() {
            if waived {
                Status::Waived
            } else {
                Status::Unknown
            }
        } else if waived {
            Status::Waived
        } else {
            Status::Pass
        }
    }
}

/// Severity of a rule when it fails: `error` fails the check (exit 1),
/// `warning` only reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// A failure fails the check.
    Error,
    /// A failure is reported as a warning.
    Warning,
}

/// The result of one rule on one image.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RuleResult {
    /// SPEC rule ID, e.g. `IMG-NO-HISTORY`.
    pub id: String,
    /// Short title.
    pub title: String,
    /// The requirement as the marketplace states it.
    pub requirement: String,
    /// Severity in the active profile.
    pub severity: Severity,
    /// Verdict.
    pub status: Status,
    /// One line for humans.
    pub summary: String,
    /// Positive evidence (what proves the requirement).
    pub evidence: Vec<Evidence>,
    /// Problems and observations.
    pub findings: Vec<Finding>,
    /// What could not be verified offline.
    pub unverified: Vec<String>,
    /// How to fix a failure.
    pub remediation: String,
    /// Rule check time in microseconds.
    pub elapsed_us: u64,
}

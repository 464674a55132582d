//! Lint findings.

use serde::Serialize;

/// A package lint rule. IDs are stable: pipelines waive and grep them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum PkgRule {
    /// Required files and directories, names, the zip's size.
    #[serde(rename = "PKG-STRUCTURE")]
    Structure,
    /// `version.yaml`.
    #[serde(rename = "PKG-VERSION")]
    Version,
    /// `service.yaml`.
    #[serde(rename = "PKG-SERVICE")]
    Service,
    /// `plans/<PLAN>/plan.yaml`.
    #[serde(rename = "PKG-PLAN")]
    Plan,
    /// `parameters/<OPTION>.yaml`.
    #[serde(rename = "PKG-PARAMETER")]
    Parameter,
    /// `plans/<PLAN>/display.yaml`.
    #[serde(rename = "PKG-DISPLAY")]
    Display,
    /// `plans/<PLAN>/deployment/settings.yaml`.
    #[serde(rename = "PKG-SETTINGS")]
    Settings,
    /// Cross-file: every option of a plan is shown in its display.yaml and
    /// has a typed Terraform variable; postpaid options only in free
    /// plans; no trial periods; `plan_updateable` consistent.
    #[serde(rename = "PKG-CONSISTENCY")]
    Consistency,
    /// `plans/<PLAN>/deployment/*.tf` is HCL.
    #[serde(rename = "PKG-TF-PARSE")]
    TfParse,
    /// Terraform variables: typed; one per plan option, of an option's
    /// type; `instance_uuid` and `email` are strings.
    #[serde(rename = "PKG-TF-VARIABLE")]
    TfVariable,
    /// Only resource and data types the platform supports.
    #[serde(rename = "PKG-TF-RESOURCE")]
    TfResource,
    /// `ivkcs_agent_exec`: required fields and valid steps.
    #[serde(rename = "PKG-TF-STEP")]
    TfStep,
    /// `ivkcs_agent_check`: valid health checks.
    #[serde(rename = "PKG-TF-HEALTH")]
    TfHealth,
    /// Outputs carrying keys or passwords are `sensitive`.
    #[serde(rename = "PKG-TF-SENSITIVE")]
    TfSensitive,
}

impl PkgRule {
    pub const ALL: [PkgRule; 14] = [
        PkgRule::Structure,
        PkgRule::Version,
        PkgRule::Service,
        PkgRule::Plan,
        PkgRule::Parameter,
        PkgRule::Display,
        PkgRule::Settings,
        PkgRule::Consistency,
        PkgRule::TfParse,
        PkgRule::TfVariable,
        PkgRule::TfResource,
        PkgRule::TfStep,
        PkgRule::TfHealth,
        PkgRule::TfSensitive,
    ];

    pub fn id(self) -> &'static str {
        match self {
            PkgRule::Structure => "PKG-STRUCTURE",
            PkgRule::Version => "PKG-VERSION",
            PkgRule::Service => "PKG-SERVICE",
            PkgRule::Plan => "PKG-PLAN",
            PkgRule::Parameter => "PKG-PARAMETER",
            PkgRule::Display => "PKG-DISPLAY",
            PkgRule::Settings => "PKG-SETTINGS",
            PkgRule::Consistency => "PKG-CONSISTENCY",
            PkgRule::TfParse => "PKG-TF-PARSE",
            PkgRule::TfVariable => "PKG-TF-VARIABLE",
            PkgRule::TfResource => "PKG-TF-RESOURCE",
            PkgRule::TfStep => "PKG-TF-STEP",
            PkgRule::TfHealth => "PKG-TF-HEALTH",
            PkgRule::TfSensitive => "PKG-TF-SENSITIVE",
        }
    }

    /// One line: what the rule checks.
    pub fn title(self) -> &'static str {
        match self {
            PkgRule::Structure => {
                "the package has the files and directories the marketplace requires"
            }
            PkgRule::Version => "version.yaml names a known generator version",
            PkgRule::Service => "service.yaml has the required fields with valid values",
            PkgRule::Plan => {
                "each plan.yaml has valid billing, resource usages and parameter patches"
            }
            PkgRule::Parameter => "each option file has valid actions and a valid schema",
            PkgRule::Display => "each display.yaml has valid pages, groups and parameters",
            PkgRule::Settings => "each settings.yaml has a valid preset and retry",
            PkgRule::Consistency => {
                "files agree: options shown and declared, billing rules, plan updates"
            }
            PkgRule::TfParse => "each deployment/*.tf file is valid HCL",
            PkgRule::TfVariable => {
                "variables are typed; each plan option has a string, number or bool variable"
            }
            PkgRule::TfResource => "only resource and data types the platform supports",
            PkgRule::TfStep => "each ivkcs_agent_exec has valid steps (ibkit's step validation)",
            PkgRule::TfHealth => "each ivkcs_agent_check has valid health checks",
            PkgRule::TfSensitive => "outputs with keys or passwords are sensitive",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub rule: PkgRule,
    pub severity: Severity,
    /// Path inside the package, `/`-separated (`plans/free/plan.yaml`).
    pub file: String,
    /// 1-based line, when the problem is at one.
    pub line: Option<u32>,
    pub message: String,
}

impl Diagnostic {
    pub fn error(
        rule: PkgRule,
        file: impl Into<String>,
        line: Option<u32>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            rule,
            severity: Severity::Error,
            file: file.into(),
            line,
            message: message.into(),
        }
    }

    pub fn warning(
        rule: PkgRule,
        file: impl Into<String>,
        line: Option<u32>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(rule, file, line, message)
        }
    }
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match self.line {
            Some(l) => write!(
                f,
                "{}:{l}: {sev}[{}]: {}",
                self.file,
                self.rule.id(),
                self.message
            ),
            None => write!(
                f,
                "{}: {sev}[{}]: {}",
                self.file,
                self.rule.id(),
                self.message
            ),
        }
    }
}

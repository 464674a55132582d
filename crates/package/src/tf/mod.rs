//! The subset of Terraform that VK's service packages use, evaluated
//! without Terraform: variables (typed, with defaults), locals, references,
//! `count`, `for_each`, conditionals, `for` expressions, templates and
//! heredocs, and the functions VK's examples call (`try` and `can` lazily).
//!
//! - [`config`]: the plan's `.tf` files read into blocks with file and line;
//! - [`heredoc`]: `<<-EOT` dedented as Terraform does (hcl-rs gets it wrong
//!   when a line holds an interpolation);
//! - [`eval`]: expressions, resources and outputs; what a provider would
//!   compute (`random_password.x.result`, a VM's address) comes from a
//!   [`eval::Provider`] the caller supplies;
//! - [`functions`]: the built-in functions;
//! - [`value`]: values, with run-time values carried as ibkit result
//!   references.

pub mod config;
pub mod eval;
pub mod functions;
pub mod heredoc;
pub mod value;

pub use config::{Config, Origin};
pub use eval::{Evaluator, Provider, ResourceInstance};
pub use value::Value;

/// Why an expression could not be evaluated; `at` says where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}{message}", at.as_ref().map(|a| format!("{a}: ")).unwrap_or_default())]
pub struct EvalError {
    pub at: Option<String>,
    pub message: String,
}

impl EvalError {
    pub fn msg(message: impl Into<String>) -> EvalError {
        EvalError {
            at: None,
            message: message.into(),
        }
    }

    /// Prefixes the location unless one is set already (the innermost
    /// location is the most useful).
    pub fn at(mut self, at: impl Into<String>) -> EvalError {
        if self.at.is_none() {
            self.at = Some(at.into());
        }
        self
    }
}

/// hcl-rs's parser recurses per nesting level; a hostile manifest must
/// not overflow the caller's stack, so it runs on a thread of its own.
const PARSE_STACK_BYTES: usize = 64 * 1024 * 1024;

/// The evaluator's stack: it recurses per nested expression and per
/// reference (at most `eval::MAX_DEPTH` levels), with large frames in
/// debug builds.
const EVAL_STACK_BYTES: usize = 256 * 1024 * 1024;

/// Runs `f` (an evaluation) on a thread whose stack fits the evaluator's
/// depth limit; the caller's thread may have a small one.
pub fn with_eval_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("tf-eval".into())
            .stack_size(EVAL_STACK_BYTES)
            .spawn_scoped(scope, f);
        match spawned {
            Ok(handle) => match handle.join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            },
            Err(e) => panic!("cannot start the evaluator's thread: {e}"),
        }
    })
}

/// Deeper bracket nesting than this is refused before parsing (a real
/// manifest nests a few levels; the parser's stack grows with each).
const MAX_NESTING: usize = 256;

/// Why HCL text did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct ParseError {
    pub line: Option<u32>,
    pub message: String,
}

impl ParseError {
    fn msg(message: impl Into<String>) -> ParseError {
        ParseError {
            line: None,
            message: message.into(),
        }
    }
}

/// Parses HCL text on a thread with a large stack, `<<-` heredocs dedented
/// as Terraform does first ([`heredoc`]).
pub fn parse_body(src: &str) -> Result<hcl::Body, ParseError> {
    let src = &heredoc::dedent_heredocs(src);
    // An upper bound of the real nesting (brackets in strings count too):
    // a stack overflow would abort the process, not fail the parse.
    let mut depth = 0usize;
    let mut deepest = 0usize;
    for b in src.bytes() {
        match b {
            b'{' | b'[' | b'(' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if deepest > MAX_NESTING {
        return Err(ParseError::msg(format!(
            "brackets nested {deepest} deep (at most {MAX_NESTING})"
        )));
    }
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("hcl-parse".into())
            .stack_size(PARSE_STACK_BYTES)
            .spawn_scoped(scope, || hcl::parse(src).map_err(|e| parse_message(&e)));
        match spawned {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|_| Err(ParseError::msg("the HCL parser failed"))),
            Err(_) => hcl::parse(src).map_err(|e| parse_message(&e)),
        }
    })
}

/// The parser's message and line, without the source excerpt and caret
/// its Display adds.
fn parse_message(e: &hcl::Error) -> ParseError {
    match e {
        hcl::Error::Parse(p) => ParseError {
            line: u32::try_from(p.location().line()).ok(),
            message: p.message().to_string(),
        },
        other => ParseError::msg(other.to_string()),
    }
}

/// The text of a template expression as written.
pub fn template_text(t: &hcl::TemplateExpr) -> &str {
    match t {
        hcl::TemplateExpr::QuotedString(s) => s,
        hcl::TemplateExpr::Heredoc(h) => &h.template,
    }
}

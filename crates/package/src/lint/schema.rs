//! Each YAML file of a package against the field tables of VK's
//! documentation (`manage-apps/ibservice_add/`): required keys, types,
//! maximum lengths, allowed values; unknown keys are warnings. Every
//! problem is reported, with the line of the key or value at fault.

use crate::yaml::{self, Entry, Node, Value};
use crate::{Diagnostic, PackageFiles, PkgRule};

pub(crate) mod display;
pub(crate) mod parameter;
mod plan;
mod service;

/// Generator versions `version.yaml` may name.
pub const KNOWN_VERSIONS: [&str; 1] = ["0.0.1"];

pub fn check(pkg: &PackageFiles, out: &mut Vec<Diagnostic>) {
    if let Some(root) = load(pkg, "version.yaml", PkgRule::Version, out) {
        let mut c = Ctx::new("version.yaml", PkgRule::Version, out);
        check_version(&mut c, &root);
    }
    if let Some(root) = load(pkg, "service.yaml", PkgRule::Service, out) {
        let mut c = Ctx::new("service.yaml", PkgRule::Service, out);
        service::check(&mut c, &root, pkg);
    }
    for plan in pkg.plans() {
        let file = format!("plans/{plan}/plan.yaml");
        if let Some(root) = load(pkg, &file, PkgRule::Plan, out) {
            let mut c = Ctx::new(&file, PkgRule::Plan, out);
            plan::check(&mut c, &root, &plan);
        }
        let file = format!("plans/{plan}/display.yaml");
        if let Some(root) = load(pkg, &file, PkgRule::Display, out) {
            let mut c = Ctx::new(&file, PkgRule::Display, out);
            display::check(&mut c, &root);
        }
        let file = format!("plans/{plan}/deployment/settings.yaml");
        if let Some(root) = load(pkg, &file, PkgRule::Settings, out) {
            let mut c = Ctx::new(&file, PkgRule::Settings, out);
            check_settings(&mut c, &root);
        }
    }
    for file in option_files(pkg) {
        if let Some(root) = load(pkg, &file, PkgRule::Parameter, out) {
            let mut c = Ctx::new(&file, PkgRule::Parameter, out);
            parameter::check(&mut c, &root);
        }
    }
}

/// `parameters/<OPTION>.yaml` files (direct children only).
pub fn option_files(pkg: &PackageFiles) -> Vec<String> {
    pkg.under("parameters", true)
        .filter(|p| p.ends_with(".yaml"))
        .map(str::to_string)
        .collect()
}

/// The option's name: `parameters/<OPTION>.yaml` → `<OPTION>`.
pub fn option_name(file: &str) -> Option<&str> {
    file.strip_prefix("parameters/")?.strip_suffix(".yaml")
}

/// Parses a file of the package; `None` when it is absent (the structure
/// rules report that) or broken (reported here, once, under `rule`).
pub fn load(
    pkg: &PackageFiles,
    file: &str,
    rule: PkgRule,
    out: &mut Vec<Diagnostic>,
) -> Option<Node> {
    let text = match pkg.text(file)? {
        Ok(t) => t,
        Err(_) => {
            out.push(Diagnostic::error(rule, file, None, "not UTF-8 text"));
            return None;
        }
    };
    match yaml::parse(text) {
        Ok(n) => Some(n),
        Err(e) => {
            out.push(Diagnostic::error(
                rule,
                file,
                e.line,
                format!("invalid YAML: {}", e.message),
            ));
            None
        }
    }
}

/// Where findings of one file go.
pub(crate) struct Ctx<'a> {
    pub file: String,
    pub rule: PkgRule,
    pub out: &'a mut Vec<Diagnostic>,
}

impl<'a> Ctx<'a> {
    pub fn new(file: &str, rule: PkgRule, out: &'a mut Vec<Diagnostic>) -> Self {
        Ctx {
            file: file.to_string(),
            rule,
            out,
        }
    }

    pub fn error(&mut self, line: Option<u32>, msg: impl Into<String>) {
        self.out
            .push(Diagnostic::error(self.rule, &self.file, line, msg));
    }

    pub fn warning(&mut self, line: Option<u32>, msg: impl Into<String>) {
        self.out
            .push(Diagnostic::warning(self.rule, &self.file, line, msg));
    }

    /// `node` as a mapping, else an error at `path`.
    pub fn map<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [Entry]> {
        match &node.value {
            Value::Map(m) => Some(m),
            other => {
                self.error(
                    Some(node.line),
                    format!(
                        "{}: expected a mapping, found {}",
                        shown(path),
                        other.kind()
                    ),
                );
                None
            }
        }
    }

    /// `node` as a list, else an error at `path`.
    pub fn seq<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [Node]> {
        match &node.value {
            Value::Seq(s) => Some(s),
            other => {
                self.error(
                    Some(node.line),
                    format!("{path}: expected a list, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// Unknown keys (warnings) and missing required keys (errors, at
    /// `line`: the line of the key that owns the mapping).
    pub fn keys(
        &mut self,
        entries: &[Entry],
        path: &str,
        line: Option<u32>,
        allowed: &[&str],
        required: &[&str],
    ) {
        for e in entries {
            if !allowed.contains(&e.key.as_str()) {
                self.warning(
                    Some(e.key_line),
                    format!("unknown key {}", join(path, &e.key)),
                );
            }
        }
        for r in required {
            if !entries.iter().any(|e| e.key == *r) {
                self.error(line, format!("missing required key {}", join(path, r)));
            }
        }
    }

    /// A string of at most `max` characters. Numbers are accepted as their
    /// text (`revision: 1.0`), as VK's YAML reader does.
    pub fn string(&mut self, node: &Node, path: &str, max: Option<usize>) -> Option<String> {
        let s = match &node.value {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            other => {
                self.error(
                    Some(node.line),
                    format!("{path}: expected a string, found {}", other.kind()),
                );
                return None;
            }
        };
        if let Some(max) = max {
            let n = s.chars().count();
            if n > max {
                self.error(
                    Some(node.line),
                    format!("{path}: {n} characters, at most {max} allowed"),
                );
            }
        }
        Some(s)
    }

    pub fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        match &node.value {
            Value::Bool(b) => Some(*b),
            other => {
                self.error(
                    Some(node.line),
                    format!("{path}: expected true or false, found {}", other.kind()),
                );
                None
            }
        }
    }

    pub fn integer(&mut self, node: &Node, path: &str) -> Option<i64> {
        match &node.value {
            Value::Int(i) => Some(*i),
            other => {
                self.error(
                    Some(node.line),
                    format!("{path}: expected an integer, found {}", other.kind()),
                );
                None
            }
        }
    }

    pub fn number(&mut self, node: &Node, path: &str) -> Option<f64> {
        match &node.value {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            other => {
                self.error(
                    Some(node.line),
                    format!("{path}: expected a number, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// A string that must be one of `allowed`.
    pub fn one_of(&mut self, node: &Node, path: &str, allowed: &[&str]) -> Option<String> {
        let s = self.string(node, path, None)?;
        if allowed.contains(&s.as_str()) {
            Some(s)
        } else {
            self.error(
                Some(node.line),
                format!("{path}: {s:?} is not one of {}", allowed.join(", ")),
            );
            None
        }
    }

    /// A UUID4 (`xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx`).
    pub fn uuid4(&mut self, node: &Node, path: &str) {
        if let Some(s) = self.string(node, path, None)
            && !is_uuid4(&s)
        {
            self.error(Some(node.line), format!("{path}: {s:?} is not a UUID4"));
        }
    }

    /// A list of `{name: X}` mappings: the names with their lines.
    pub fn name_list(&mut self, node: &Node, path: &str) -> Vec<(String, u32)> {
        let mut names = Vec::new();
        let Some(items) = self.seq(node, path) else {
            return names;
        };
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{path}[{i}]");
            let Some(m) = self.map(item, &ipath) else {
                continue;
            };
            self.keys(m, &ipath, Some(item.line), &["name"], &["name"]);
            if let Some(e) = item.get("name")
                && let Some(s) = self.string(&e.value, &join(&ipath, "name"), Some(255))
            {
                names.push((s, e.value.line));
            }
        }
        names
    }
}

/// `a.b` from a path and a key (the root's path is empty).
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn shown(path: &str) -> &str {
    if path.is_empty() {
        "the document"
    } else {
        path
    }
}

pub fn is_uuid4(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
        && b[14] == b'4'
        && matches!(b[19].to_ascii_lowercase(), b'8' | b'9' | b'a' | b'b')
}

fn check_version(c: &mut Ctx, root: &Node) {
    let Some(m) = c.map(root, "") else { return };
    c.keys(m, "", None, &["version"], &["version"]);
    if let Some(e) = root.get("version")
        && let Some(v) = c.string(&e.value, "version", None)
        && !KNOWN_VERSIONS.contains(&v.as_str())
    {
        c.error(
            Some(e.value.line),
            format!(
                "version: {v:?} is not a known version ({})",
                KNOWN_VERSIONS.join(", ")
            ),
        );
    }
}

fn check_settings(c: &mut Ctx, root: &Node) {
    let Some(m) = c.map(root, "") else { return };
    c.keys(m, "", None, &["preset", "retry"], &[]);
    if let Some(e) = root.get("preset") {
        c.one_of(&e.value, "preset", &["base_v2", "base_v3", "base_alpha"]);
    }
    if let Some(e) = root.get("retry") {
        // VK documents `yes`/`no`; a YAML boolean means the same.
        let ok = match &e.value.value {
            Value::Bool(_) => true,
            Value::Str(s) => matches!(s.as_str(), "yes" | "no"),
            _ => false,
        };
        if !ok {
            c.error(Some(e.value.line), "retry: must be yes or no");
        }
    }
}

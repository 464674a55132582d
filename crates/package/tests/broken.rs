//! One broken package per lint rule: `tests/broken/<rule-id>.toml`
//! (`pkg-tf-step.toml` for PKG-TF-STEP), each a patch over
//! examples/packages/grafana with the mistakes a vendor makes and the
//! findings they must give:
//!
//! ```toml
//! summary = "one line: what is planted"      # listed in docs/packages.md
//! delete = ["full_description.md"]           # optional
//!
//! [[write]]                                  # a file, overwritten or new
//! path = "plans/free/deployment/settings.yaml"
//! content = '''
//! preset: base_v4
//! '''
//!
//! [[expect]]
//! rule = "PKG-SETTINGS"
//! file = "plans/free/deployment/settings.yaml"
//! line = 1                                   # only where the rule has none
//! severity = "warning"                       # optional; default error
//! message = "base_v4"                        # optional: words of the message
//! ```
//!
//! Each fixture alone must give exactly its findings (so a new false
//! positive shows up too); all fixtures that touch different files, applied
//! together, must still give every planted finding, each with its file and
//! line.
//!
//! The crate has no TOML parser (and its manifest is not ours to change),
//! so [`toml_lite`] reads the small subset above, strictly: anything else
//! is an error naming the fixture's line.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

mod common;

use ibkit_package::{Diagnostic, PkgRule, Severity};

struct Fixture {
    /// The file's stem: the rule's ID in lower case.
    name: String,
    summary: String,
    writes: Vec<(String, String)>,
    deletes: Vec<String>,
    expect: Vec<Expect>,
}

#[derive(Debug)]
struct Expect {
    rule: PkgRule,
    file: String,
    line: Option<u32>,
    severity: Severity,
    message: Option<String>,
}

impl Expect {
    fn matches(&self, d: &Diagnostic) -> bool {
        d.rule == self.rule
            && d.file == self.file
            && d.line == self.line
            && d.severity == self.severity
            && self
                .message
                .as_ref()
                .is_none_or(|m| d.message.contains(m.as_str()))
    }
}

impl Fixture {
    /// Paths this fixture writes or deletes.
    fn touched(&self) -> BTreeSet<&str> {
        self.writes
            .iter()
            .map(|(p, _)| p.as_str())
            .chain(self.deletes.iter().map(String::as_str))
            .collect()
    }
}

fn broken_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken")
}

fn rule_by_id(id: &str) -> Option<PkgRule> {
    PkgRule::ALL.iter().copied().find(|r| r.id() == id)
}

fn fixtures() -> Vec<Fixture> {
    let dir = broken_dir();
    let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            e.unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path()
        })
        .collect();
    paths.sort();
    paths.iter().map(|p| load(p)).collect()
}

fn load(path: &Path) -> Fixture {
    let shown = path.display().to_string();
    assert_eq!(
        path.extension().and_then(|e| e.to_str()),
        Some("toml"),
        "{shown}: tests/broken holds only <rule-id>.toml fixtures"
    );
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    let src = fs::read_to_string(path).unwrap_or_else(|e| panic!("{shown}: {e}"));
    let doc = toml_lite::parse(&src).unwrap_or_else(|e| panic!("{shown}:{e}"));
    let mut fx = Fixture {
        name,
        summary: String::new(),
        writes: Vec::new(),
        deletes: Vec::new(),
        expect: Vec::new(),
    };
    for (k, v) in &doc.top {
        match (k.as_str(), v) {
            ("summary", toml_lite::Val::Str(s)) => fx.summary = s.clone(),
            ("delete", toml_lite::Val::Arr(a)) => fx.deletes = a.clone(),
            _ => panic!("{shown}: unexpected top-level key {k} = {v:?}"),
        }
    }
    assert!(!fx.summary.is_empty(), "{shown}: needs a summary");
    for (table, entries) in &doc.tables {
        let get = |key: &str| entries.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        let string = |key: &str| match get(key) {
            Some(toml_lite::Val::Str(s)) => Some(s.clone()),
            None => None,
            Some(v) => panic!("{shown}: [[{table}]] {key} must be a string, not {v:?}"),
        };
        let allowed: &[&str] = match table.as_str() {
            "write" => &["path", "content"],
            "expect" => &["rule", "file", "line", "severity", "message"],
            t => panic!("{shown}: unknown table [[{t}]]"),
        };
        for (k, _) in entries {
            assert!(allowed.contains(&k.as_str()), "{shown}: [[{table}]] {k}?");
        }
        let need =
            |key: &str| string(key).unwrap_or_else(|| panic!("{shown}: [[{table}]] needs {key}"));
        if table == "write" {
            fx.writes.push((need("path"), need("content")));
            continue;
        }
        let id = need("rule");
        let line = match get("line") {
            None => None,
            Some(toml_lite::Val::Int(n)) => {
                Some(u32::try_from(*n).unwrap_or_else(|_| panic!("{shown}: line {n} out of range")))
            }
            Some(v) => panic!("{shown}: line must be an integer, not {v:?}"),
        };
        let severity = match string("severity").as_deref() {
            None | Some("error") => Severity::Error,
            Some("warning") => Severity::Warning,
            Some(s) => panic!("{shown}: severity {s:?} is not error or warning"),
        };
        fx.expect.push(Expect {
            rule: rule_by_id(&id).unwrap_or_else(|| panic!("{shown}: no rule {id}")),
            file: need("file"),
            line,
            severity,
            message: string("message"),
        });
    }
    fx
}

/// The example package with `fixtures` applied, in a temporary directory.
fn materialize(fixtures: &[&Fixture]) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    ibkit_test_utils::copy_dir(&common::grafana_dir(), t.path());
    for fx in fixtures {
        for p in &fx.deletes {
            let at = t.path().join(p);
            fs::remove_file(&at).unwrap_or_else(|e| panic!("{}: delete {p}: {e}", fx.name));
        }
        for (p, content) in &fx.writes {
            let at = t.path().join(p);
            if let Some(dir) = at.parent() {
                fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {p}: {e}", fx.name));
            }
            fs::write(&at, content).unwrap_or_else(|e| panic!("{}: write {p}: {e}", fx.name));
        }
    }
    t
}

/// Lints the way `ibkit package lint DIR` does.
fn lint(dir: &Path) -> Vec<Diagnostic> {
    ibkit_package::lint_path(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn listing(diags: &[Diagnostic]) -> String {
    diags.iter().map(|d| format!("  {d}\n")).collect()
}

/// Matches each expectation to its own finding; returns the problems and
/// the findings no expectation took.
fn reconcile<'d>(fx: &Fixture, diags: &'d [Diagnostic]) -> (Vec<String>, Vec<&'d Diagnostic>) {
    let mut taken = vec![false; diags.len()];
    let mut missing = Vec::new();
    for e in &fx.expect {
        match (0..diags.len()).find(|&i| !taken[i] && e.matches(&diags[i])) {
            Some(i) => taken[i] = true,
            None => missing.push(format!("{}: missing {e:?}", fx.name)),
        }
    }
    let extra = diags
        .iter()
        .zip(&taken)
        .filter(|(_, t)| !**t)
        .map(|(d, _)| d)
        .collect();
    (missing, extra)
}

#[test]
fn every_rule_has_exactly_one_fixture() {
    let names: BTreeSet<String> = fixtures().into_iter().map(|f| f.name).collect();
    let rules: BTreeSet<String> = PkgRule::ALL
        .iter()
        .map(|r| r.id().to_ascii_lowercase())
        .collect();
    let no_fixture: Vec<_> = rules.difference(&names).collect();
    let no_rule: Vec<_> = names.difference(&rules).collect();
    assert!(
        no_fixture.is_empty() && no_rule.is_empty(),
        "rules without a fixture: {no_fixture:?}; fixtures for no rule: {no_rule:?}"
    );
}

#[test]
fn the_example_itself_is_clean() {
    let d = lint(&common::grafana_dir());
    assert!(d.is_empty(), "{}", listing(&d));
}

#[test]
fn each_fixture_gives_exactly_its_findings() {
    let mut problems = Vec::new();
    for fx in fixtures() {
        let own = rule_by_id(&fx.name.to_ascii_uppercase());
        if !fx.expect.iter().any(|e| Some(e.rule) == own) {
            problems.push(format!("{}: expects no finding of its own rule", fx.name));
        }
        for e in &fx.expect {
            if !fx.touched().contains(e.file.as_str()) {
                // Another fixture may rewrite that file in the combined
                // run, moving or removing the finding.
                problems.push(format!(
                    "{}: expects a finding in {}, a file it does not touch",
                    fx.name, e.file
                ));
            }
        }
        let t = materialize(&[&fx]);
        let diags = lint(t.path());
        let (missing, extra) = reconcile(&fx, &diags);
        problems.extend(missing);
        problems.extend(
            extra
                .iter()
                .map(|d| format!("{}: unexpected finding {d}", fx.name)),
        );
        if !problems.is_empty() {
            eprintln!("{}: lint says\n{}", fx.name, listing(&diags));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn all_fixtures_at_once() {
    let all = fixtures();
    // In name order, each fixture whose files no earlier one touched.
    let mut used: Vec<&Fixture> = Vec::new();
    let mut skipped = Vec::new();
    for fx in &all {
        if used.iter().any(|u| !u.touched().is_disjoint(&fx.touched())) {
            skipped.push(fx.name.as_str());
        } else {
            used.push(fx);
        }
    }
    // Today only pkg-plan shares plan.yaml with pkg-consistency; a new
    // overlap should be a decision, not an accident.
    assert_eq!(
        skipped,
        ["pkg-plan"],
        "fixtures left out of the combined run"
    );
    let t = materialize(&used);
    let diags = lint(t.path());
    eprintln!("{} fixtures at once:\n{}", used.len(), listing(&diags));
    let mut problems: Vec<String> = used.iter().flat_map(|fx| reconcile(fx, &diags).0).collect();
    // Each rule still fires, the left-out ones through another fixture.
    for r in PkgRule::ALL {
        if !diags.iter().any(|d| d.rule == r) {
            problems.push(format!("no {} finding in the combined run", r.id()));
        }
    }
    assert!(
        problems.is_empty(),
        "{}\nlint says\n{}",
        problems.join("\n"),
        listing(&diags)
    );
}

#[test]
fn docs_list_every_fixture() {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/packages.md");
    let text = fs::read_to_string(&doc).unwrap_or_else(|e| panic!("{}: {e}", doc.display()));
    let missing: Vec<String> = fixtures()
        .into_iter()
        .map(|f| format!("{}.toml", f.name))
        .filter(|n| !text.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} does not list {missing:?}",
        doc.display()
    );
}

/// The TOML subset the fixtures use: comments, top-level keys before the
/// first table, `[[table]]` arrays, and values that are basic or literal
/// strings, `'''` multi-line literal strings, integers and one-line arrays
/// of strings.
mod toml_lite {
    #[derive(Debug, Clone, PartialEq)]
    pub enum Val {
        Str(String),
        Int(i64),
        Arr(Vec<String>),
    }

    #[derive(Default)]
    pub struct Doc {
        pub top: Vec<(String, Val)>,
        pub tables: Vec<(String, Vec<(String, Val)>)>,
    }

    /// Errors are `LINE: message`.
    pub fn parse(src: &str) -> Result<Doc, String> {
        let mut doc = Doc::default();
        let lines: Vec<&str> = src.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let n = i + 1;
            let line = lines[i].trim();
            i += 1;
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
                doc.tables.push((name.trim().to_string(), Vec::new()));
                continue;
            }
            let (key, rest) = line
                .split_once('=')
                .ok_or_else(|| format!("{n}: expected key = value"))?;
            let key = key.trim();
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("{n}: bad key {key:?}"));
            }
            let rest = rest.trim();
            let val = if let Some(after) = rest.strip_prefix("'''") {
                // A newline right after the opening quotes is not content.
                let mut pending = (!after.is_empty()).then_some(after);
                let mut body = String::new();
                loop {
                    let l = match pending.take() {
                        Some(a) => a,
                        None => {
                            let l = *lines
                                .get(i)
                                .ok_or_else(|| format!("{n}: unterminated '''"))?;
                            i += 1;
                            l
                        }
                    };
                    if let Some(at) = l.find("'''") {
                        body.push_str(&l[..at]);
                        end(&l[at + 3..], n)?;
                        break;
                    }
                    body.push_str(l);
                    body.push('\n');
                }
                Val::Str(body)
            } else {
                let (v, tail) = value(rest).map_err(|e| format!("{n}: {e}"))?;
                end(tail, n)?;
                v
            };
            let entries = match doc.tables.last_mut() {
                Some((_, e)) => e,
                None => &mut doc.top,
            };
            if entries.iter().any(|(k, _)| k == key) {
                return Err(format!("{n}: {key} given twice"));
            }
            entries.push((key.to_string(), val));
        }
        Ok(doc)
    }

    /// Only a comment may follow a value.
    fn end(tail: &str, n: usize) -> Result<(), String> {
        let t = tail.trim();
        if t.is_empty() || t.starts_with('#') {
            Ok(())
        } else {
            Err(format!("{n}: unexpected {t:?} after the value"))
        }
    }

    /// A one-line value and what follows it.
    fn value(s: &str) -> Result<(Val, &str), String> {
        if s.starts_with('"') || s.starts_with('\'') {
            let (v, rest) = string(s)?;
            return Ok((Val::Str(v), rest));
        }
        if let Some(mut rest) = s.strip_prefix('[') {
            let mut items = Vec::new();
            loop {
                rest = rest.trim_start();
                if let Some(r) = rest.strip_prefix(']') {
                    return Ok((Val::Arr(items), r));
                }
                let (v, r) = string(rest)?;
                items.push(v);
                rest = r.trim_start();
                rest = rest.strip_prefix(',').unwrap_or(rest);
            }
        }
        let end = s
            .find(|c: char| c.is_whitespace() || c == '#')
            .unwrap_or(s.len());
        let n = s[..end]
            .parse::<i64>()
            .map_err(|_| format!("not a string, integer or array: {s:?}"))?;
        Ok((Val::Int(n), &s[end..]))
    }

    /// `"basic"` (escapes \" \\ \n \t) or `'literal'`.
    fn string(s: &str) -> Result<(String, &str), String> {
        let mut chars = s.char_indices();
        let quote = match chars.next() {
            Some((_, q @ ('"' | '\''))) => q,
            _ => return Err(format!("expected a string: {s:?}")),
        };
        let mut out = String::new();
        while let Some((at, c)) = chars.next() {
            match c {
                c if c == quote => return Ok((out, &s[at + 1..])),
                '\\' if quote == '"' => match chars.next() {
                    Some((_, '"')) => out.push('"'),
                    Some((_, '\\')) => out.push('\\'),
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    other => return Err(format!("unsupported escape {other:?}")),
                },
                c => out.push(c),
            }
        }
        Err(format!("unterminated string: {s:?}"))
    }

    #[test]
    fn subset() {
        let d = parse(
            "# c\nsummary = \"a \\\"b\\\"\" # c\ndelete = ['x', \"y\"]\n\n[[write]]\n\
             path = 'p'\ncontent = '''\none\n  two\n'''\n[[expect]]\nline = 3\n\
             content = '''x'''\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            d.top,
            [
                ("summary".into(), Val::Str("a \"b\"".into())),
                ("delete".into(), Val::Arr(vec!["x".into(), "y".into()])),
            ]
        );
        assert_eq!(d.tables[0].1[1].1, Val::Str("one\n  two\n".into()));
        assert_eq!(d.tables[1].1[0].1, Val::Int(3));
        assert_eq!(d.tables[1].1[1].1, Val::Str("x".into()));
        assert!(parse("a = 1 2").is_err());
        assert!(parse("a = '''\nno end").is_err());
        assert!(parse("a = 1\na = 2").is_err());
    }
}

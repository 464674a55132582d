//! Terraform's built-in functions that VK's packages use (and their
//! close relatives). `try` and `can` are in the evaluator: they need
//! their arguments unevaluated.

use std::collections::BTreeMap;

use base64::Engine as _;
use ibkit_api::ReferenceTarget;
use ibkit_api::reference::find_references;

use super::EvalError;
use super::value::{RUNTIME_MARK, Value, describe, format_number};
use crate::PackageFiles;

/// Functions known here, for messages and docs.
pub const FUNCTIONS: &[&str] = &[
    "abs",
    "base64decode",
    "base64encode",
    "can",
    "ceil",
    "chomp",
    "coalesce",
    "coalescelist",
    "compact",
    "concat",
    "contains",
    "distinct",
    "element",
    "endswith",
    "file",
    "flatten",
    "floor",
    "format",
    "index",
    "join",
    "jsondecode",
    "jsonencode",
    "keys",
    "length",
    "lookup",
    "lower",
    "max",
    "merge",
    "min",
    "range",
    "replace",
    "reverse",
    "slice",
    "sort",
    "split",
    "startswith",
    "substr",
    "templatefile",
    "title",
    "tobool",
    "tolist",
    "tomap",
    "tonumber",
    "toset",
    "tostring",
    "trim",
    "trimprefix",
    "trimspace",
    "trimsuffix",
    "try",
    "upper",
    "values",
    "zipmap",
];

fn arity(name: &str, args: &[Value], n: usize) -> Result<(), EvalError> {
    if args.len() != n {
        return Err(EvalError::msg(format!(
            "{name}() takes {n} argument{}, given {}",
            if n == 1 { "" } else { "s" },
            args.len()
        )));
    }
    Ok(())
}

fn list(v: &Value) -> Result<Vec<Value>, EvalError> {
    match v {
        Value::List(l) => Ok(l.clone()),
        other => Err(EvalError::msg(format!(
            "expected a list, found {}",
            describe(other)
        ))),
    }
}

pub fn map(v: &Value) -> Result<BTreeMap<String, Value>, EvalError> {
    match v {
        Value::Map(m) => Ok(m.clone()),
        other => Err(EvalError::msg(format!(
            "expected a map, found {}",
            describe(other)
        ))),
    }
}

fn set_of(mut items: Vec<Value>) -> Vec<Value> {
    items.sort_by_key(|v| v.to_json().to_string());
    items.dedup();
    items
}

/// Calls a function on evaluated arguments.
pub fn call(
    name: &str,
    args: Vec<Value>,
    files: Option<&PackageFiles>,
    dir: &str,
) -> Result<Value, EvalError> {
    let a = &args;
    Ok(match name {
        "length" => {
            arity(name, a, 1)?;
            Value::Number(match &a[0] {
                Value::List(l) => l.len(),
                Value::Map(m) => m.len(),
                s => s.known_str(name)?.chars().count(),
            } as f64)
        }
        "element" => {
            arity(name, a, 2)?;
            let l = list(&a[0])?;
            if l.is_empty() {
                return Err(EvalError::msg("element() of an empty list"));
            }
            let i = a[1].as_index()?;
            l[i % l.len()].clone()
        }
        "index" => {
            arity(name, a, 2)?;
            let l = list(&a[0])?;
            let at = l.iter().position(|v| v == &a[1]).ok_or_else(|| {
                EvalError::msg(format!("index(): {} is not in the list", describe(&a[1])))
            })?;
            Value::Number(at as f64)
        }
        "substr" => {
            arity(name, a, 3)?;
            let s: Vec<char> = a[0].known_str(name)?.chars().collect();
            let off = a[1].as_number()?;
            let len = a[2].as_number()?;
            let start = if off < 0.0 {
                s.len().saturating_sub((-off) as usize)
            } else {
                (off as usize).min(s.len())
            };
            let end = if len < 0.0 {
                s.len()
            } else {
                (start + len as usize).min(s.len())
            };
            Value::String(s[start..end].iter().collect())
        }
        "lower" => Value::String(one_str(name, a)?.to_lowercase()),
        "upper" => Value::String(one_str(name, a)?.to_uppercase()),
        "title" => Value::String(
            one_str(name, a)?
                .split(' ')
                .map(|w| {
                    let mut c = w.chars();
                    c.next()
                        .map_or(String::new(), |f| f.to_uppercase().chain(c).collect())
                })
                .collect::<Vec<_>>()
                .join(" "),
        ),
        "trimspace" => Value::String(one_str(name, a)?.trim().to_string()),
        "chomp" => Value::String(one_str(name, a)?.trim_end_matches(['\n', '\r']).to_string()),
        "trim" => {
            arity(name, a, 2)?;
            let cut: Vec<char> = a[1].known_str(name)?.chars().collect();
            Value::String(
                a[0].known_str(name)?
                    .trim_matches(|c| cut.contains(&c))
                    .to_string(),
            )
        }
        "trimprefix" | "trimsuffix" | "startswith" | "endswith" => {
            arity(name, a, 2)?;
            let s = a[0].known_str(name)?;
            let p = a[1].known_str(name)?;
            match name {
                "trimprefix" => Value::String(s.strip_prefix(&p).unwrap_or(&s).to_string()),
                "trimsuffix" => Value::String(s.strip_suffix(&p).unwrap_or(&s).to_string()),
                "startswith" => Value::Bool(s.starts_with(&p)),
                _ => Value::Bool(s.ends_with(&p)),
            }
        }
        "replace" => {
            arity(name, a, 3)?;
            let s = a[0].known_str(name)?;
            let from = a[1].known_str(name)?;
            let to = a[2].to_text()?;
            if from.len() > 2 && from.starts_with('/') && from.ends_with('/') {
                let re = regex::Regex::new(&from[1..from.len() - 1])
                    .map_err(|e| EvalError::msg(format!("replace(): bad pattern: {e}")))?;
                Value::String(
                    re.replace_all(&s, to.replace("$", "$$").as_str())
                        .into_owned(),
                )
            } else {
                Value::String(s.replace(&from, &to))
            }
        }
        "split" => {
            arity(name, a, 2)?;
            let sep = a[0].known_str(name)?;
            let s = a[1].known_str(name)?;
            if s.is_empty() {
                Value::List(Vec::new())
            } else {
                Value::List(s.split(sep.as_str()).map(Value::str).collect())
            }
        }
        "join" => {
            if a.len() < 2 {
                return Err(EvalError::msg("join() takes a separator and lists"));
            }
            let sep = a[0].to_text()?;
            let mut parts = Vec::new();
            for l in &a[1..] {
                for v in list(l)? {
                    parts.push(v.to_text()?);
                }
            }
            Value::String(parts.join(&sep))
        }
        "format" => {
            let Some((fmt, rest)) = a.split_first() else {
                return Err(EvalError::msg("format() needs a format"));
            };
            Value::String(format(&fmt.known_str(name)?, rest)?)
        }
        "concat" => Value::List(a.iter().map(list).collect::<Result<Vec<_>, _>>()?.concat()),
        "flatten" => {
            arity(name, a, 1)?;
            fn flat(v: &Value, out: &mut Vec<Value>) {
                match v {
                    Value::List(l) => l.iter().for_each(|i| flat(i, out)),
                    other => out.push(other.clone()),
                }
            }
            let mut out = Vec::new();
            flat(&a[0], &mut out);
            Value::List(out)
        }
        "compact" => {
            arity(name, a, 1)?;
            Value::List(
                list(&a[0])?
                    .into_iter()
                    .filter(|v| !matches!(v, Value::Null) && v != &Value::str(""))
                    .collect(),
            )
        }
        "distinct" => {
            arity(name, a, 1)?;
            let mut out: Vec<Value> = Vec::new();
            for v in list(&a[0])? {
                if !out.contains(&v) {
                    out.push(v);
                }
            }
            Value::List(out)
        }
        "reverse" => {
            arity(name, a, 1)?;
            let mut l = list(&a[0])?;
            l.reverse();
            Value::List(l)
        }
        "sort" => {
            arity(name, a, 1)?;
            let mut l = list(&a[0])?
                .iter()
                .map(|v| v.known_str(name))
                .collect::<Result<Vec<_>, _>>()?;
            l.sort();
            Value::List(l.into_iter().map(Value::String).collect())
        }
        "slice" => {
            arity(name, a, 3)?;
            let l = list(&a[0])?;
            let (s, e) = (a[1].as_index()?, a[2].as_index()?);
            if s > e || e > l.len() {
                return Err(EvalError::msg(format!(
                    "slice(): {s}..{e} out of 0..{}",
                    l.len()
                )));
            }
            Value::List(l[s..e].to_vec())
        }
        "contains" => {
            arity(name, a, 2)?;
            Value::Bool(list(&a[0])?.contains(&a[1]))
        }
        "range" => {
            let nums = a
                .iter()
                .map(Value::as_number)
                .collect::<Result<Vec<_>, _>>()?;
            let (start, end, step) = match nums.as_slice() {
                [e] => (0.0, *e, 1.0),
                [s, e] => (*s, *e, if s <= e { 1.0 } else { -1.0 }),
                [s, e, st] => (*s, *e, *st),
                _ => return Err(EvalError::msg("range() takes 1 to 3 numbers")),
            };
            if step == 0.0 {
                return Err(EvalError::msg("range(): step 0"));
            }
            let mut out = Vec::new();
            let mut x = start;
            while (step > 0.0 && x < end) || (step < 0.0 && x > end) {
                if out.len() >= 1024 {
                    return Err(EvalError::msg("range(): more than 1024 elements"));
                }
                out.push(Value::Number(x));
                x += step;
            }
            Value::List(out)
        }
        "keys" => {
            arity(name, a, 1)?;
            Value::List(map(&a[0])?.into_keys().map(Value::String).collect())
        }
        "values" => {
            arity(name, a, 1)?;
            Value::List(map(&a[0])?.into_values().collect())
        }
        "lookup" => {
            if !(2..=3).contains(&a.len()) {
                return Err(EvalError::msg("lookup() takes a map, a key and a default"));
            }
            let m = map(&a[0])?;
            let k = a[1].known_str(name)?;
            match (m.get(&k), a.get(2)) {
                (Some(v), _) => v.clone(),
                (None, Some(d)) => d.clone(),
                (None, None) => return Err(EvalError::msg(format!("lookup(): no key {k:?}"))),
            }
        }
        "merge" => {
            let mut out = BTreeMap::new();
            for m in a {
                if matches!(m, Value::Null) {
                    continue;
                }
                out.extend(map(m)?);
            }
            Value::Map(out)
        }
        "zipmap" => {
            arity(name, a, 2)?;
            let (k, v) = (list(&a[0])?, list(&a[1])?);
            if k.len() != v.len() {
                return Err(EvalError::msg("zipmap(): lists of different lengths"));
            }
            let mut out = BTreeMap::new();
            for (k, v) in k.iter().zip(v) {
                out.insert(k.known_str(name)?, v);
            }
            Value::Map(out)
        }
        "coalesce" => a
            .iter()
            .find(|v| !matches!(v, Value::Null) && **v != Value::str(""))
            .cloned()
            .ok_or_else(|| EvalError::msg("coalesce(): every argument is null or empty"))?,
        "coalescelist" => a
            .iter()
            .find(|v| matches!(v, Value::List(l) if !l.is_empty()))
            .cloned()
            .ok_or_else(|| EvalError::msg("coalescelist(): every list is empty"))?,
        "toset" => {
            arity(name, a, 1)?;
            Value::List(set_of(list(&a[0])?))
        }
        "tolist" => {
            arity(name, a, 1)?;
            Value::List(list(&a[0])?)
        }
        "tomap" => {
            arity(name, a, 1)?;
            Value::Map(map(&a[0])?)
        }
        "tostring" => {
            arity(name, a, 1)?;
            Value::String(a[0].to_text()?)
        }
        "tonumber" => {
            arity(name, a, 1)?;
            Value::Number(a[0].as_number()?)
        }
        "tobool" => {
            arity(name, a, 1)?;
            Value::Bool(a[0].as_bool()?)
        }
        "min" | "max" => {
            let nums = a
                .iter()
                .map(Value::as_number)
                .collect::<Result<Vec<_>, _>>()?;
            let folded = nums
                .iter()
                .copied()
                .reduce(|x, y| if name == "min" { x.min(y) } else { x.max(y) });
            Value::Number(folded.ok_or_else(|| EvalError::msg(format!("{name}() needs numbers")))?)
        }
        "abs" | "ceil" | "floor" => {
            arity(name, a, 1)?;
            let n = a[0].as_number()?;
            Value::Number(match name {
                "abs" => n.abs(),
                "ceil" => n.ceil(),
                _ => n.floor(),
            })
        }
        "jsonencode" => {
            arity(name, a, 1)?;
            Value::String(a[0].to_json().to_string())
        }
        "jsondecode" => {
            arity(name, a, 1)?;
            // The structured result of a script, known at run time: keep
            // it as a reference whose fields can be picked.
            if let Value::String(s) = &a[0]
                && s.contains(RUNTIME_MARK)
                && let Ok(refs) = find_references(s)
                && let [r] = refs.as_slice()
                && matches!(&r.target, ReferenceTarget::Structured(p) if p.is_empty())
                && s.trim() == r.to_string()
            {
                return Ok(Value::Structured(r.clone()));
            }
            let s = a[0].known_str(name)?;
            let j: serde_json::Value = serde_json::from_str(&s)
                .map_err(|e| EvalError::msg(format!("jsondecode(): {e}")))?;
            Value::from_json(&j)
        }
        "base64encode" => Value::String(
            base64::engine::general_purpose::STANDARD.encode(one_str(name, a)?.as_bytes()),
        ),
        "base64decode" => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(one_str(name, a)?.trim())
                .map_err(|e| EvalError::msg(format!("base64decode(): {e}")))?;
            Value::String(
                String::from_utf8(bytes)
                    .map_err(|_| EvalError::msg("base64decode(): not UTF-8"))?,
            )
        }
        "file" => {
            arity(name, a, 1)?;
            Value::String(read_file(files, dir, &a[0].known_str(name)?)?)
        }
        _ => {
            return Err(EvalError::msg(format!(
                "function {name}() is not supported by ibkit (supported: {})",
                FUNCTIONS.join(", ")
            )));
        }
    })
}

fn one_str(name: &str, a: &[Value]) -> Result<String, EvalError> {
    arity(name, a, 1)?;
    a[0].known_str(name)
}

/// `%s`, `%d`, `%v`, `%q` and `%%`, enough for the packages seen.
fn format(fmt: &str, args: &[Value]) -> Result<String, EvalError> {
    let mut out = String::new();
    let mut it = args.iter();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(verb) = chars.next() else {
            return Err(EvalError::msg("format(): a lone % at the end"));
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let arg = it
            .next()
            .ok_or_else(|| EvalError::msg("format(): fewer arguments than verbs"))?;
        match verb {
            's' | 'v' => out.push_str(&arg.to_text()?),
            'd' => out.push_str(&format_number(arg.as_number()?.trunc())),
            'q' => out.push_str(&serde_json::Value::String(arg.to_text()?).to_string()),
            other => {
                return Err(EvalError::msg(format!(
                    "format(): %{other} is not supported"
                )));
            }
        }
    }
    Ok(out)
}

/// A file of the package, relative to the deployment directory (or with
/// `path.module` already in front).
pub fn read_file(files: Option<&PackageFiles>, dir: &str, path: &str) -> Result<String, EvalError> {
    let Some(files) = files else {
        return Err(EvalError::msg("no package files to read from"));
    };
    let rel = path.strip_prefix("./").unwrap_or(path);
    let full = if rel.starts_with(dir) {
        rel.to_string()
    } else {
        format!("{dir}/{rel}")
    };
    if full.split('/').any(|p| p == "..") {
        return Err(EvalError::msg(format!(
            "{path}: must stay inside the package"
        )));
    }
    match files.text(&full) {
        Some(Ok(t)) => Ok(t.to_string()),
        Some(Err(_)) => Err(EvalError::msg(format!("{full}: not UTF-8"))),
        None => Err(EvalError::msg(format!(
            "{full}: no such file in the package"
        ))),
    }
}

//! Result references: a step's content and environment may use the result of
//! a step that ran earlier, on the same or another host of the instance.
//!
//! Syntax (whitespace inside the braces is allowed):
//!
//! - `{{ibkit.results.HOST.GROUP.INDEX.raw}}`: the raw result (stdout);
//! - `{{ibkit.results.HOST.GROUP.INDEX.structured}}`: the structured result
//!   as compact JSON;
//! - `{{ibkit.results.HOST.GROUP.INDEX.structured.FIELD.SUB}}`: one field;
//!   a string is inserted as is, anything else as compact JSON. Array items
//!   are addressed by number.
//!
//! `HOST` may be `self`. Text in `{{ }}` that does not start with `ibkit.` is
//! left alone, so other template languages in scripts keep working.

use std::fmt;

use serde_json::Value;

/// One parsed reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    pub host: String,
    pub group: String,
    pub index: u32,
    pub target: ReferenceTarget,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReferenceTarget {
    Raw,
    /// A path into the structured result; empty means the whole object.
    Structured(Vec<String>),
}

impl Reference {
    /// The environment variable (and file) name the agent gives this
    /// reference's value: `IBKIT_RESULT_` + host, group, index, `RAW` or
    /// `STRUCTURED` and the field path, upper-cased, every byte outside
    /// `[A-Z0-9]` replaced by `_`. `{{ibkit.results.db.init.0.structured.pass}}`
    /// is `IBKIT_RESULT_DB_INIT_0_STRUCTURED_PASS`.
    pub fn env_name(&self) -> String {
        let mut parts = vec![
            self.host.clone(),
            self.group.clone(),
            self.index.to_string(),
        ];
        match &self.target {
            ReferenceTarget::Raw => parts.push("raw".into()),
            ReferenceTarget::Structured(path) => {
                parts.push("structured".into());
                parts.extend(path.iter().cloned());
            }
        }
        let mut name = String::from("IBKIT_RESULT");
        for p in parts {
            name.push('_');
            name.extend(p.chars().map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            }));
        }
        name
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{{{{ibkit.results.{}.{}.{}",
            self.host, self.group, self.index
        )?;
        match &self.target {
            ReferenceTarget::Raw => f.write_str(".raw")?,
            ReferenceTarget::Structured(path) => {
                f.write_str(".structured")?;
                for p in path {
                    write!(f, ".{p}")?;
                }
            }
        }
        f.write_str("}}")
    }
}

/// A piece of text: literal, or a reference to fill in.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Ref(Reference),
}

/// Parses every reference in `text`; an `{{ibkit.…}}` that is malformed is
/// an error naming it.
pub fn find_references(text: &str) -> Result<Vec<Reference>, String> {
    Ok(split(text)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Ref(r) => Some(r),
            Piece::Text(_) => None,
        })
        .collect())
}

/// Replaces every reference using `lookup`, which returns the value or an
/// error message; the first error is returned with the reference named.
pub fn resolve<F>(text: &str, mut lookup: F) -> Result<String, String>
where
    F: FnMut(&Reference) -> Result<String, String>,
{
    let mut out = String::with_capacity(text.len());
    for piece in split(text)? {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Ref(r) => {
                let value = lookup(&r).map_err(|why| format!("reference {r}: {why}"))?;
                out.push_str(&value);
            }
        }
    }
    Ok(out)
}

/// The text a structured-result path stands for.
pub fn render_structured(value: &Value, path: &[String]) -> Result<String, String> {
    let mut current = value;
    for (depth, key) in path.iter().enumerate() {
        let next = match current {
            Value::Object(map) => map.get(key),
            Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        current = next.ok_or_else(|| {
            format!(
                "the structured result has no field {:?}",
                path[..=depth].join(".")
            )
        })?;
    }
    Ok(match current {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

fn split(text: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            break;
        };
        let inner = after[..close].trim();
        if let Some(body) = inner.strip_prefix("ibkit.") {
            pieces.push(Piece::Text(&rest[..open]));
            pieces.push(Piece::Ref(parse_body(body).map_err(|why| {
                format!("malformed reference {{{{{inner}}}}}: {why}")
            })?));
            rest = &after[close + 2..];
        } else {
            pieces.push(Piece::Text(&rest[..open + 2]));
            rest = after;
        }
    }
    pieces.push(Piece::Text(rest));
    Ok(pieces)
}

fn parse_body(body: &str) -> Result<Reference, String> {
    let parts: Vec<&str> = body.split('.').collect();
    if parts.first() != Some(&"results") {
        return Err("expected ibkit.results.HOST.GROUP.INDEX.raw|structured[.FIELD…]".into());
    }
    if parts.len() < 5 {
        return Err("expected ibkit.results.HOST.GROUP.INDEX.raw|structured[.FIELD…]".into());
    }
    let (host, group) = (parts[1], parts[2]);
    for (what, name) in [("host", host), ("group", group)] {
        if !crate::is_valid_name(name) {
            return Err(format!("{what} {name:?} is not a valid name"));
        }
    }
    let index: u32 = parts[3]
        .parse()
        .map_err(|_| format!("step index {:?} is not a number", parts[3]))?;
    let target = match parts[4] {
        "raw" if parts.len() == 5 => ReferenceTarget::Raw,
        "raw" => return Err("raw results have no fields".into()),
        "structured" => {
            let path: Vec<String> = parts[5..].iter().map(|s| s.to_string()).collect();
            if path.iter().any(|p| p.is_empty()) {
                return Err("empty field name".into());
            }
            ReferenceTarget::Structured(path)
        }
        other => return Err(format!("{other:?} is neither raw nor structured")),
    };
    Ok(Reference {
        host: host.into(),
        group: group.into(),
        index,
        target,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_resolves_references() {
        let text = "join {{ ibkit.results.primary.init.2.structured.token }} raw={{ibkit.results.self.g.1.raw}} keep {{ other }}";
        let refs = find_references(text).expect("parses");
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[0].host, "primary");
        assert_eq!(
            refs[0].target,
            ReferenceTarget::Structured(vec!["token".into()])
        );
        assert_eq!(refs[1].target, ReferenceTarget::Raw);
        let out = resolve(text, |r| match r.target {
            ReferenceTarget::Raw => Ok("R".into()),
            ReferenceTarget::Structured(_) => Ok("T".into()),
        })
        .expect("resolves");
        assert_eq!(out, "join T raw=R keep {{ other }}");
    }

    #[test]
    fn env_names_are_shell_safe_and_predictable() {
        let refs = find_references(
            "{{ibkit.results.db-1.init.0.raw}} {{ibkit.results.self.g.2.structured.a.b-c}}",
        )
        .expect("parses");
        assert_eq!(refs[0].env_name(), "IBKIT_RESULT_DB_1_INIT_0_RAW");
        assert_eq!(refs[1].env_name(), "IBKIT_RESULT_SELF_G_2_STRUCTURED_A_B_C");
    }

    #[test]
    fn malformed_and_failed_references_are_named() {
        let e = find_references("{{ibkit.results.a.b.x.raw}}").expect_err("bad index");
        assert!(e.contains("ibkit.results.a.b.x.raw"), "{e}");
        let e = resolve("{{ibkit.results.a.b.1.raw}}", |_| {
            Err("step a/b/1 failed".into())
        })
        .expect_err("lookup fails");
        assert_eq!(
            e,
            "reference {{ibkit.results.a.b.1.raw}}: step a/b/1 failed"
        );
    }

    #[test]
    fn renders_structured_fields() {
        let v: Value = serde_json::json!({"token":"abc","n":3,"list":[{"x":true}]});
        assert_eq!(render_structured(&v, &["token".into()]), Ok("abc".into()));
        assert_eq!(render_structured(&v, &["n".into()]), Ok("3".into()));
        assert_eq!(
            render_structured(&v, &["list".into(), "0".into(), "x".into()]),
            Ok("true".into())
        );
        assert!(
            render_structured(&v, &["nope".into()])
                .expect_err("missing")
                .contains("nope")
        );
    }
}

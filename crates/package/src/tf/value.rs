//! Terraform values as ibkit evaluates them.
//!
//! A value known only once the VMs run (a script's result, a VM's address)
//! is carried as the text of an ibkit result reference
//! (`{{ibkit.results.HOST.GROUP.INDEX.raw}}`), which the agent substitutes
//! on the VM. Strings can be concatenated with such text; functions that
//! would need its content refuse it (see [`Value::known_str`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ibkit_api::reference::Reference;
use serde_json::Value as Json;

use super::EvalError;

/// The marker every run-time value's text contains.
pub const RUNTIME_MARK: &str = "{{ibkit.";

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    /// Lists, tuples and sets (sets are kept sorted and unique).
    List(Vec<Value>),
    /// Objects and maps.
    Map(BTreeMap<String, Value>),
    /// A structured script result (`jsondecode` of a
    /// `data.ivkcs_agent_script_result.X.structured_result`): indexing it
    /// extends the reference's field path.
    Structured(Reference),
}

impl Value {
    pub fn str(s: impl Into<String>) -> Value {
        Value::String(s.into())
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::List(_) => "list",
            Value::Map(_) => "object",
            Value::Structured(_) => "structured script result",
        }
    }

    /// The text of a primitive, as string interpolation renders it.
    pub fn to_text(&self) -> Result<String, EvalError> {
        match self {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(format_number(*n)),
            Value::Bool(b) => Ok(b.to_string()),
            Value::Structured(r) => Ok(r.to_string()),
            Value::Null => Err(EvalError::msg("a null value cannot be used in a string")),
            other => Err(EvalError::msg(format!(
                "a {} cannot be used in a string (use jsonencode)",
                other.type_name()
            ))),
        }
    }

    /// The text of a string whose content a function needs: refused when
    /// it carries a value known only at run time.
    pub fn known_str(&self, func: &str) -> Result<String, EvalError> {
        let s = self.to_text()?;
        if s.contains(RUNTIME_MARK) || matches!(self, Value::Structured(_)) {
            return Err(EvalError::msg(format!(
                "{func}(): its argument is known only once the VMs run ({})",
                runtime_part(&s)
            )));
        }
        Ok(s)
    }

    pub fn as_bool(&self) -> Result<bool, EvalError> {
        match self {
            Value::Bool(b) => Ok(*b),
            Value::String(s) if s == "true" => Ok(true),
            Value::String(s) if s == "false" => Ok(false),
            other => Err(EvalError::msg(format!(
                "expected a bool, found {}",
                describe(other)
            ))),
        }
    }

    pub fn as_number(&self) -> Result<f64, EvalError> {
        match self {
            Value::Number(n) => Ok(*n),
            Value::String(s) => s
                .trim()
                .parse::<f64>()
                .map_err(|_| EvalError::msg(format!("expected a number, found the string {s:?}"))),
            other => Err(EvalError::msg(format!(
                "expected a number, found {}",
                describe(other)
            ))),
        }
    }

    /// A non-negative whole number (an index, a count, a length).
    pub fn as_index(&self) -> Result<usize, EvalError> {
        let n = self.as_number()?;
        if n < 0.0 || n.fract() != 0.0 || n > 1e9 {
            return Err(EvalError::msg(format!(
                "expected a whole number ≥ 0, found {}",
                format_number(n)
            )));
        }
        Ok(n as usize)
    }

    pub fn as_list(&self) -> Result<&[Value], EvalError> {
        match self {
            Value::List(l) => Ok(l),
            other => Err(EvalError::msg(format!(
                "expected a list, found {}",
                describe(other)
            ))),
        }
    }

    /// What iterating over a collection gives (`for`, `%{ for }`,
    /// `dynamic`): index and element of a list, key and value of a map.
    /// `what` names the construct in the error.
    pub fn into_pairs(self, what: &str) -> Result<Vec<(Value, Value)>, EvalError> {
        match self {
            Value::List(l) => Ok(l
                .into_iter()
                .enumerate()
                .map(|(i, v)| (Value::Number(i as f64), v))
                .collect()),
            Value::Map(m) => Ok(m.into_iter().map(|(k, v)| (Value::String(k), v)).collect()),
            other => Err(EvalError::msg(format!(
                "{what}: cannot iterate over {}",
                describe(&other)
            ))),
        }
    }

    /// JSON, as `jsonencode` and the deploy mapping see it.
    pub fn to_json(&self) -> Json {
        match self {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Number(n) => number_json(*n),
            Value::String(s) => Json::String(s.clone()),
            Value::List(l) => Json::Array(l.iter().map(Value::to_json).collect()),
            Value::Map(m) => {
                Json::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
            Value::Structured(r) => Json::String(r.to_string()),
        }
    }

    pub fn from_json(j: &Json) -> Value {
        match j {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => Value::Number(n.as_f64().unwrap_or(0.0)),
            Json::String(s) => Value::String(s.clone()),
            Json::Array(a) => Value::List(a.iter().map(Value::from_json).collect()),
            Json::Object(o) => Value::Map(
                o.iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect(),
            ),
        }
    }
}

impl Value {
    /// Bytes of text plus 64 per element, counted up to `limit`: a
    /// configuration that doubles a value local by local must stop before
    /// it exhausts memory.
    pub fn weight_exceeds(&self, limit: usize) -> bool {
        fn go(v: &Value, left: &mut usize) -> bool {
            // An element costs about its size in memory.
            let cost = match v {
                Value::String(s) => s.len() + 64,
                _ => 64,
            };
            if cost > *left {
                return true;
            }
            *left -= cost;
            match v {
                Value::List(l) => l.iter().any(|i| go(i, left)),
                Value::Map(m) => m.iter().any(|(k, i)| {
                    if k.len() > *left {
                        return true;
                    }
                    *left -= k.len();
                    go(i, left)
                }),
                _ => false,
            }
        }
        let mut left = limit;
        go(self, &mut left)
    }
}

/// Numbers print as Terraform prints them: whole numbers without a point.
pub fn format_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        let mut s = String::new();
        let _ = write!(s, "{n}");
        s
    }
}

fn number_json(n: f64) -> Json {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        Json::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Json::Null, Json::Number)
    }
}

/// A short description of a value for an error message.
pub fn describe(v: &Value) -> String {
    match v {
        Value::String(s) if s.chars().count() <= 40 => format!("the string {s:?}"),
        Value::String(_) => "a string".into(),
        Value::Number(n) => format!("the number {}", format_number(*n)),
        Value::Bool(b) => format!("{b}"),
        other => format!("a {}", other.type_name()),
    }
}

/// The first run-time reference in a text, for messages.
pub fn runtime_part(s: &str) -> &str {
    match s.find(RUNTIME_MARK) {
        Some(at) => {
            let rest = &s[at..];
            let end = rest.find("}}").map_or(rest.len(), |e| e + 2);
            &rest[..end]
        }
        None => s,
    }
}

//! A step's structured result on the wire and in storage: compact JSON
//! *text*, never a parsed tree.
//!
//! A parsed `serde_json::Value` costs tens of bytes per array element, so a
//! report of a few MiB of `[0,0,0,…]` used to cost the service gigabytes.
//! Carrying the text keeps memory proportional to the bytes received; the
//! service parses it only with [`StructuredJson::parse_bounded`].

use serde::{Deserialize, Serialize};

/// Default cap on a structured result's compact JSON text (agents and the
/// service): 1 MiB.
pub const DEFAULT_MAX_STRUCTURED_BYTES: usize = 1 << 20;

/// Nesting deeper than this is refused when parsing.
pub const MAX_STRUCTURED_DEPTH: usize = 64;

/// Compact JSON text of a structured result (a JSON object). On the wire it
/// is a JSON *string* holding that text.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(value_type = String))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StructuredJson(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StructuredError {
    #[error("the structured result is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("the structured result nests deeper than {MAX_STRUCTURED_DEPTH} levels")]
    TooDeep,
    #[error("the structured result is not valid JSON: {0}")]
    Invalid(String),
    #[error("the structured result must be a JSON object, not {0}")]
    NotAnObject(&'static str),
}

impl StructuredJson {
    /// Checks `text` (size first, then depth, then syntax; a JSON object)
    /// and keeps it in compact form.
    pub fn from_text(text: &str, limit: usize) -> Result<StructuredJson, StructuredError> {
        let value = Self::parse_text(text, limit)?;
        let compact =
            serde_json::to_string(&value).map_err(|e| StructuredError::Invalid(e.to_string()))?;
        if compact.len() > limit {
            return Err(StructuredError::TooLarge {
                size: compact.len(),
                limit,
            });
        }
        Ok(StructuredJson(compact))
    }

    /// Compact text of an object already parsed.
    pub fn from_value(value: &serde_json::Value) -> StructuredJson {
        StructuredJson(value.to_string())
    }

    /// Wraps text read from storage that was checked when it was stored.
    pub fn from_stored(text: String) -> StructuredJson {
        StructuredJson(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses the text into a tree, refusing more than `limit` bytes or
    /// more than [`MAX_STRUCTURED_DEPTH`] levels before any tree is built.
    pub fn parse_bounded(&self, limit: usize) -> Result<serde_json::Value, StructuredError> {
        Self::parse_text(&self.0, limit)
    }

    /// Checks the text as [`Self::parse_bounded`] does (size, depth, valid
    /// JSON, an object) without building a tree: what the service runs on
    /// every report.
    pub fn validate(&self, limit: usize) -> Result<(), StructuredError> {
        let text = self.0.as_str();
        precheck(text, limit)?;
        serde_json::from_str::<serde::de::IgnoredAny>(text)
            .map_err(|e| StructuredError::Invalid(e.to_string()))?;
        match text.trim_start().bytes().next() {
            Some(b'{') => Ok(()),
            Some(b'[') => Err(StructuredError::NotAnObject("an array")),
            Some(b'"') => Err(StructuredError::NotAnObject("a string")),
            Some(b'n') => Err(StructuredError::NotAnObject("null")),
            Some(b't' | b'f') => Err(StructuredError::NotAnObject("a boolean")),
            _ => Err(StructuredError::NotAnObject("a number")),
        }
    }

    fn parse_text(text: &str, limit: usize) -> Result<serde_json::Value, StructuredError> {
        precheck(text, limit)?;
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| StructuredError::Invalid(e.to_string()))?;
        match value {
            serde_json::Value::Object(_) => Ok(value),
            serde_json::Value::Null => Err(StructuredError::NotAnObject("null")),
            serde_json::Value::Bool(_) => Err(StructuredError::NotAnObject("a boolean")),
            serde_json::Value::Number(_) => Err(StructuredError::NotAnObject("a number")),
            serde_json::Value::String(_) => Err(StructuredError::NotAnObject("a string")),
            serde_json::Value::Array(_) => Err(StructuredError::NotAnObject("an array")),
        }
    }
}

/// Size and depth, before any parser runs.
fn precheck(text: &str, limit: usize) -> Result<(), StructuredError> {
    if text.len() > limit {
        return Err(StructuredError::TooLarge {
            size: text.len(),
            limit,
        });
    }
    if nesting_depth(text) > MAX_STRUCTURED_DEPTH {
        return Err(StructuredError::TooDeep);
    }
    Ok(())
}

/// Deepest bracket nesting of JSON text, outside strings (a cheap scan that
/// runs before the parser builds anything).
fn nesting_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_compact_text_and_travels_as_a_string() {
        let s = StructuredJson::from_text("{ \"a\" : [1, 2] }\n", 100).expect("valid");
        assert_eq!(s.as_str(), r#"{"a":[1,2]}"#);
        let wire = serde_json::to_string(&s).expect("serialises");
        assert_eq!(wire, r#""{\"a\":[1,2]}""#);
        let back: StructuredJson = serde_json::from_str(&wire).expect("parses");
        assert_eq!(back, s);
        // An object on the wire is refused: only text travels.
        assert!(serde_json::from_str::<StructuredJson>(r#"{"a":1}"#).is_err());
    }

    #[test]
    fn refuses_large_deep_invalid_and_non_objects() {
        assert!(matches!(
            StructuredJson::from_text(&format!("{{\"a\":\"{}\"}}", "x".repeat(200)), 100),
            Err(StructuredError::TooLarge { limit: 100, .. })
        ));
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100), "]".repeat(100));
        assert_eq!(
            StructuredJson::from_text(&deep, 1 << 20),
            Err(StructuredError::TooDeep)
        );
        // Brackets inside strings do not count.
        let quoted = format!("{{\"a\":\"{}\"}}", "[".repeat(100));
        assert!(StructuredJson::from_text(&quoted, 1 << 20).is_ok());
        assert!(matches!(
            StructuredJson::from_text("{nope", 100),
            Err(StructuredError::Invalid(_))
        ));
        assert_eq!(
            StructuredJson::from_text("[1]", 100),
            Err(StructuredError::NotAnObject("an array"))
        );
        // validate() agrees with parsing, on text as received.
        for (text, want) in [
            ("{\"a\":1}", Ok(())),
            ("[0,0]", Err(StructuredError::NotAnObject("an array"))),
            (" 7", Err(StructuredError::NotAnObject("a number"))),
            ("{\"a\":", Err(StructuredError::Invalid(String::new()))),
        ] {
            let got = StructuredJson::from_stored(text.to_string()).validate(100);
            match (got, want) {
                (Err(StructuredError::Invalid(_)), Err(StructuredError::Invalid(_))) => {}
                (got, want) => assert_eq!(got, want, "{text}"),
            }
        }
    }
}

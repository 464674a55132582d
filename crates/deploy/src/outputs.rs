//! Outputs: values for the buyer, rendered from step results.
//!
//! An output's `value` is text with result references
//! (`{{ibkit.results.HOST.GROUP.INDEX.raw}}`,
//! `{{ibkit.results.HOST.GROUP.INDEX.structured.FIELD…}}`, see
//! [`ibkit_api::reference`]), filled in from the results `ibkit serve` holds
//! (`GET /v1/instances/{id}/results/{host}/{group}/{index}`). A sensitive
//! output is delivered (`--show-sensitive`, JSON) but masked in listings, logs
//! and `Debug` output. Raw results (stdout) lose their trailing line breaks
//! in outputs.

use std::fmt;

use ibkit_api::reference::{self, ReferenceTarget};
use serde::Serialize;
use serde_json::Value;

use crate::manifest::OutputDef;

/// What listings show instead of a sensitive value.
pub const MASK: &str = "(sensitive; use --show-sensitive)";

/// A step's result as the service returns it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StepResultView {
    /// The script's stdout.
    pub raw: String,
    /// The JSON object the script wrote to its `structured_result_file`.
    pub structured: Option<Value>,
}

/// One rendered output: a value, or why there is none (yet).
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct OutputValue {
    pub name: String,
    pub value: Option<String>,
    pub sensitive: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl fmt::Debug for OutputValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = match (&self.value, self.sensitive) {
            (Some(_), true) => Some("***"),
            (v, false) => v.as_deref(),
            (None, true) => None,
        };
        f.debug_struct("OutputValue")
            .field("name", &self.name)
            .field("value", &value)
            .field("sensitive", &self.sensitive)
            .field("description", &self.description)
            .field("error", &self.error)
            .finish()
    }
}

impl OutputValue {
    /// The value as a listing shows it: masked when sensitive unless
    /// `show_sensitive`, or the reason it is missing.
    pub fn display_value(&self, show_sensitive: bool) -> String {
        match (&self.value, &self.error) {
            (Some(_), _) if self.sensitive && !show_sensitive => MASK.to_string(),
            (Some(v), _) => v.clone(),
            (None, Some(e)) => format!("(not available: {e})"),
            (None, None) => "(not available)".to_string(),
        }
    }

    /// The output as JSON, the value masked unless `show_sensitive`.
    pub fn to_json(&self, show_sensitive: bool) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if self.sensitive && !show_sensitive && self.value.is_some() {
            v["value"] = Value::Null;
            v["masked"] = Value::Bool(true);
        }
        v
    }
}

/// Renders every output with `results(host, group, index)`, which returns
/// the step's result or `None` when there is none (yet). A missing result,
/// a missing structured result or field is that output's `error`; the
/// other outputs are rendered regardless.
pub fn render_outputs(
    outputs: &[OutputDef],
    results: &dyn Fn(&str, &str, u32) -> Option<StepResultView>,
) -> Vec<OutputValue> {
    outputs
        .iter()
        .map(|o| {
            let rendered = reference::resolve(&o.value, |r| {
                let view = results(&r.host, &r.group, r.index).ok_or_else(|| {
                    format!(
                        "no result of step {}/{} on host {} (not run or not successful yet)",
                        r.group, r.index, r.host
                    )
                })?;
                match &r.target {
                    ReferenceTarget::Raw => Ok(view.raw.trim_end_matches(['\n', '\r']).to_string()),
                    ReferenceTarget::Structured(path) => {
                        let value = view.structured.as_ref().ok_or_else(|| {
                            format!(
                                "step {}/{} on host {} has no structured result",
                                r.group, r.index, r.host
                            )
                        })?;
                        reference::render_structured(value, path)
                    }
                }
            });
            let (value, error) = match rendered {
                Ok(v) => (Some(v), None),
                Err(e) => (None, Some(e)),
            };
            OutputValue {
                name: o.name.clone(),
                value,
                sensitive: o.sensitive,
                description: o.description.clone(),
                error,
            }
        })
        .collect()
}

/// A listing, one `name = value` line per output (with its description as
/// a comment), sensitive values masked unless `show_sensitive`.
pub fn format_outputs(values: &[OutputValue], show_sensitive: bool) -> String {
    let mut out = String::new();
    for v in values {
        if let Some(d) = &v.description {
            out.push_str(&format!("# {d}\n"));
        }
        out.push_str(&format!(
            "{} = {}\n",
            v.name,
            v.display_value(show_sensitive)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn def(name: &str, value: &str, sensitive: bool) -> OutputDef {
        OutputDef {
            name: name.into(),
            value: value.into(),
            sensitive,
            description: None,
        }
    }

    fn results(host: &str, group: &str, index: u32) -> Option<StepResultView> {
        match (host, group, index) {
            ("primary", "init", 1) => Some(StepResultView {
                raw: "10.0.0.5\n".into(),
                structured: Some(
                    json!({"token": "s3cret", "port": 5432, "nested": {"list": ["a", "b"]}}),
                ),
            }),
            ("primary", "init", 2) => Some(StepResultView {
                raw: "plain".into(),
                structured: None,
            }),
            _ => None,
        }
    }

    #[test]
    fn renders_raw_structured_and_missing_results() {
        let defs = [
            def(
                "url",
                "postgres://{{ibkit.results.primary.init.1.structured.port}}/db",
                false,
            ),
            def(
                "token",
                "{{ibkit.results.primary.init.1.structured.token}}",
                true,
            ),
            def(
                "second",
                "{{ibkit.results.primary.init.1.structured.nested.list.1}}",
                false,
            ),
            def("raw", "[{{ibkit.results.primary.init.2.raw}}]", false),
            def("missing", "{{ibkit.results.replica.join.1.raw}}", false),
            def(
                "no_structured",
                "{{ibkit.results.primary.init.2.structured.x}}",
                false,
            ),
            def(
                "no_field",
                "{{ibkit.results.primary.init.1.structured.nope}}",
                true,
            ),
            def("literal", "see the guide", false),
            def(
                "address",
                "{{ibkit.results.primary.init.1.raw}}:5432",
                false,
            ),
        ];
        let v = render_outputs(&defs, &results);
        let values: Vec<Option<&str>> = v.iter().map(|o| o.value.as_deref()).collect();
        assert_eq!(
            values,
            [
                Some("postgres://5432/db"),
                Some("s3cret"),
                Some("b"),
                Some("[plain]"),
                None,
                None,
                None,
                Some("see the guide"),
                Some("10.0.0.5:5432"),
            ]
        );
        let err = |i: usize| v[i].error.clone().unwrap_or_default();
        assert!(
            err(4).contains("{{ibkit.results.replica.join.1.raw}}"),
            "{}",
            err(4)
        );
        assert!(
            err(4).contains("no result of step join/1 on host replica"),
            "{}",
            err(4)
        );
        assert!(err(5).contains("no structured result"), "{}", err(5));
        assert!(err(6).contains("\"nope\""), "{}", err(6));
        assert!(v[1].sensitive && v[1].error.is_none());
    }

    #[test]
    fn sensitive_values_are_masked_unless_asked() {
        let v = render_outputs(
            &[
                OutputDef {
                    description: Some("Join token".into()),
                    ..def(
                        "token",
                        "{{ibkit.results.primary.init.1.structured.token}}",
                        true,
                    )
                },
                def(
                    "port",
                    "{{ibkit.results.primary.init.1.structured.port}}",
                    false,
                ),
                def("gone", "{{ibkit.results.x.y.1.raw}}", true),
            ],
            &results,
        );
        let listing = format_outputs(&v, false);
        assert!(!listing.contains("s3cret"), "{listing}");
        assert!(listing.contains(&format!("token = {MASK}")), "{listing}");
        assert!(listing.contains("# Join token\n"), "{listing}");
        assert!(listing.contains("port = 5432"), "{listing}");
        assert!(listing.contains("gone = (not available: "), "{listing}");
        let shown = format_outputs(&v, true);
        assert!(shown.contains("token = s3cret"), "{shown}");
        assert!(!format!("{v:?}").contains("s3cret"));
        assert!(format!("{:?}", v[1]).contains("5432"));
        let masked = v[0].to_json(false);
        assert_eq!(masked["value"], Value::Null);
        assert_eq!(masked["masked"], Value::Bool(true));
        assert!(!masked.to_string().contains("s3cret"));
        assert_eq!(v[0].to_json(true)["value"], json!("s3cret"));
        assert_eq!(v[1].to_json(false)["value"], json!("5432"));
    }
}

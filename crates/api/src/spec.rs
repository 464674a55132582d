//! The desired state of a service instance: hosts, script groups, health
//! checks. Validated as a whole so a bad spec is refused before anything runs.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::reference::{self, ReferenceTarget};
use crate::{Duration, HealthCheck, StepSpec};

/// Bounds of [`InstanceSpec::detection_timeout`]: below a second heartbeats
/// cannot keep up; above a day a dead host would go unnoticed too long.
pub const DETECTION_TIMEOUT_MIN: Duration = Duration::from_secs(1);
pub const DETECTION_TIMEOUT_MAX: Duration = Duration::from_secs(24 * 3600);

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    pub name: String,
    pub hosts: Vec<HostSpec>,
    #[serde(default)]
    pub groups: Vec<GroupSpec>,
    #[serde(default)]
    pub health_checks: Vec<HealthCheck>,
    /// How long an agent may stay silent, or a host's health checks go
    /// without a passing result, before the host is unhealthy and a recovery
    /// request is opened; default: the service's --agent-timeout /
    /// --health-timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection_timeout: Option<Duration>,
    /// The marketplace's usage billing for this instance (postpaid
    /// options); absent: the billing emulator refuses its pushes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing: Option<BillingSpec>,
}

/// Postpaid billing of an instance (VK: options with `resource_usages`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingSpec {
    /// The options (`param`s) usage may be pushed for: the names of the
    /// options' YAML files.
    pub params: Vec<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    pub name: String,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    pub name: String,
    /// Hosts the group runs on; each runs the steps in index order.
    pub hosts: Vec<String>,
    /// Groups that must have finished on all their hosts first.
    #[serde(default)]
    pub depends_on: Vec<String>,
    pub steps: Vec<StepSpec>,
}

/// Why a spec was refused; `at` is a JSON-path-like location.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{at}: {message}")]
pub struct SpecError {
    pub at: String,
    pub message: String,
}

fn err(at: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError {
        at: at.into(),
        message: message.into(),
    }
}

impl InstanceSpec {
    pub fn host_names(&self) -> impl Iterator<Item = &str> {
        self.hosts.iter().map(|h| h.name.as_str())
    }

    pub fn group(&self, name: &str) -> Option<&GroupSpec> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// Sorts a host's steps (anything with a group and an index) into the
    /// order they are dispatched: by [`Self::group_order`], then index;
    /// steps of groups the spec no longer has come last.
    pub fn sort_in_dispatch_order<T>(&self, items: &mut [T], key: impl Fn(&T) -> (&str, u32)) {
        let order: Vec<&str> = self.group_order().iter().map(|g| g.name.as_str()).collect();
        items.sort_by_key(|item| {
            let (group, index) = key(item);
            (
                order.iter().position(|o| *o == group).unwrap_or(usize::MAX),
                index,
            )
        });
    }

    /// Groups in an order where every group comes after its dependencies;
    /// among independent groups the spec's order is kept.
    pub fn group_order(&self) -> Vec<&GroupSpec> {
        let mut done: BTreeSet<&str> = BTreeSet::new();
        let mut order = Vec::with_capacity(self.groups.len());
        while order.len() < self.groups.len() {
            let before = order.len();
            for g in &self.groups {
                if !done.contains(g.name.as_str())
                    && g.depends_on.iter().all(|d| done.contains(d.as_str()))
                {
                    done.insert(&g.name);
                    order.push(g);
                }
            }
            if order.len() == before {
                break; // a cycle; validate() refuses those
            }
        }
        order
    }

    /// Checks names, host and group links, dependency cycles, step options
    /// and every result reference.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.name.trim().is_empty() || self.name.len() > 200 {
            return Err(err("name", "must be 1-200 characters"));
        }
        if let Some(t) = self.detection_timeout
            && !(DETECTION_TIMEOUT_MIN..=DETECTION_TIMEOUT_MAX).contains(&t)
        {
            return Err(err(
                "detection_timeout",
                format!(
                    "detection_timeout {t} is out of range: it must be between \
                     {DETECTION_TIMEOUT_MIN} and {DETECTION_TIMEOUT_MAX}"
                ),
            ));
        }
        if self.hosts.is_empty() {
            return Err(err("hosts", "an instance needs at least one host"));
        }
        let mut hosts = BTreeSet::new();
        for (i, h) in self.hosts.iter().enumerate() {
            if !crate::is_valid_name(&h.name) || h.name == "self" {
                return Err(err(
                    format!("hosts[{i}].name"),
                    format!(
                        "{:?} is not a valid host name ([A-Za-z0-9_-], not \"self\")",
                        h.name
                    ),
                ));
            }
            if !hosts.insert(h.name.as_str()) {
                return Err(err(
                    format!("hosts[{i}].name"),
                    format!("duplicate host {:?}", h.name),
                ));
            }
        }
        let mut groups: BTreeMap<&str, &GroupSpec> = BTreeMap::new();
        for (gi, g) in self.groups.iter().enumerate() {
            let at = format!("groups[{gi}]");
            if !crate::is_valid_name(&g.name) {
                return Err(err(
                    format!("{at}.name"),
                    format!("{:?} is not a valid group name", g.name),
                ));
            }
            if groups.insert(&g.name, g).is_some() {
                return Err(err(
                    format!("{at}.name"),
                    format!("duplicate group {:?}", g.name),
                ));
            }
            if g.hosts.is_empty() {
                return Err(err(
                    format!("{at}.hosts"),
                    "a group needs at least one host",
                ));
            }
            for h in &g.hosts {
                if !hosts.contains(h.as_str()) {
                    return Err(err(format!("{at}.hosts"), format!("unknown host {h:?}")));
                }
            }
            let mut indexes = BTreeSet::new();
            for (si, s) in g.steps.iter().enumerate() {
                if !indexes.insert(s.index) {
                    return Err(err(
                        format!("{at}.steps[{si}].index"),
                        format!("duplicate step index {}", s.index),
                    ));
                }
                s.options
                    .validate()
                    .map_err(|m| err(format!("{at}.steps[{si}].options"), m))?;
            }
        }
        for (gi, g) in self.groups.iter().enumerate() {
            for d in &g.depends_on {
                if !groups.contains_key(d.as_str()) {
                    return Err(err(
                        format!("groups[{gi}].depends_on"),
                        format!("unknown group {d:?}"),
                    ));
                }
            }
        }
        if self.group_order().len() != self.groups.len() {
            return Err(err("groups", "depends_on forms a cycle"));
        }
        for (gi, g) in self.groups.iter().enumerate() {
            for (si, s) in g.steps.iter().enumerate() {
                let at = format!("groups[{gi}].steps[{si}]");
                let texts = std::iter::once(("content", s.content.as_str())).chain(
                    s.options
                        .environment_variables
                        .iter()
                        .map(|e| ("options.environment_variables", e.as_str())),
                );
                for (field, text) in texts {
                    let refs = reference::find_references(text)
                        .map_err(|m| err(format!("{at}.{field}"), m))?;
                    for r in refs {
                        let target = groups.get(r.group.as_str()).ok_or_else(|| {
                            err(
                                format!("{at}.{field}"),
                                format!("reference {r}: unknown group {:?}", r.group),
                            )
                        })?;
                        if !target.steps.iter().any(|t| t.index == r.index) {
                            return Err(err(
                                format!("{at}.{field}"),
                                format!(
                                    "reference {r}: group {:?} has no step {}",
                                    r.group, r.index
                                ),
                            ));
                        }
                        let on_hosts: Vec<&str> = if r.host == "self" {
                            g.hosts.iter().map(String::as_str).collect()
                        } else {
                            vec![r.host.as_str()]
                        };
                        for h in on_hosts {
                            if !target.hosts.iter().any(|t| t == h) {
                                return Err(err(
                                    format!("{at}.{field}"),
                                    format!(
                                        "reference {r}: group {:?} does not run on host {h:?}",
                                        r.group
                                    ),
                                ));
                            }
                        }
                        if r.group == g.name && r.index >= s.index && (r.host == "self") {
                            return Err(err(
                                format!("{at}.{field}"),
                                format!(
                                    "reference {r}: a step can only use results of earlier steps"
                                ),
                            ));
                        }
                        if let ReferenceTarget::Structured(_) = r.target {
                            let t = target.steps.iter().find(|t| t.index == r.index);
                            if t.is_some_and(|t| t.options.structured_result_file.is_none()) {
                                return Err(err(
                                    format!("{at}.{field}"),
                                    format!(
                                        "reference {r}: step {}/{} has no structured_result_file",
                                        r.group, r.index
                                    ),
                                ));
                            }
                        }
                    }
                }
            }
        }
        for (ci, c) in self.health_checks.iter().enumerate() {
            c.validate()
                .map_err(|m| err(format!("health_checks[{ci}]"), m))?;
            for h in &c.hosts {
                if !hosts.contains(h.as_str()) {
                    return Err(err(
                        format!("health_checks[{ci}].hosts"),
                        format!("unknown host {h:?}"),
                    ));
                }
            }
        }
        let mut names = BTreeSet::new();
        for (ci, c) in self.health_checks.iter().enumerate() {
            if !names.insert(c.name.as_str()) {
                return Err(err(
                    format!("health_checks[{ci}].name"),
                    format!("duplicate check {:?}", c.name),
                ));
            }
        }
        if let Some(b) = &self.billing {
            b.validate()?;
        }
        Ok(())
    }
}

/// Most options one instance may bill.
pub const MAX_BILLING_PARAMS: usize = 100;

impl BillingSpec {
    /// Longest option name: VK names an option after its YAML file.
    pub const MAX_PARAM_LEN: usize = 64;

    /// Whether `name` may be a `param`: `[A-Za-z0-9_-]`, 1-64 characters.
    pub fn is_valid_param(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= Self::MAX_PARAM_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }

    /// Names valid and unique, at least one, at most [`MAX_BILLING_PARAMS`].
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.params.is_empty() || self.params.len() > MAX_BILLING_PARAMS {
            return Err(err(
                "billing.params",
                format!("billing needs 1 to {MAX_BILLING_PARAMS} params"),
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, p) in self.params.iter().enumerate() {
            if !Self::is_valid_param(p) {
                return Err(err(
                    format!("billing.params[{i}]"),
                    format!(
                        "{p:?} is not a valid param ([A-Za-z0-9_-], 1-{} characters)",
                        Self::MAX_PARAM_LEN
                    ),
                ));
            }
            if !seen.insert(p.as_str()) {
                return Err(err(
                    format!("billing.params[{i}]"),
                    format!("duplicate param {p:?}"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> InstanceSpec {
        serde_json::from_str(json).expect("parses")
    }

    #[test]
    fn valid_two_host_spec_with_cross_host_reference() {
        let s = spec(
            r#"{"name":"db","hosts":[{"name":"primary"},{"name":"replica"}],
                "groups":[
                  {"name":"init","hosts":["primary"],"steps":[{"index":1,"content":"echo '{\"token\":\"t\"}' > r.json","options":{"structured_result_file":"r.json"}}]},
                  {"name":"join","hosts":["replica"],"depends_on":["init"],"steps":[{"index":1,"content":"join {{ibkit.results.primary.init.1.structured.token}}"}]}
                ]}"#,
        );
        s.validate().expect("valid");
        let order: Vec<&str> = s.group_order().iter().map(|g| g.name.as_str()).collect();
        assert_eq!(order, ["init", "join"]);
    }

    #[test]
    fn bad_specs_name_the_problem() {
        let cases = [
            (r#"{"name":"x","hosts":[]}"#, "hosts"),
            (r#"{"name":"x","hosts":[{"name":"a b"}]}"#, "hosts[0].name"),
            (
                r#"{"name":"x","hosts":[{"name":"a"}],"groups":[{"name":"g","hosts":["b"],"steps":[]}]}"#,
                "groups[0].hosts",
            ),
            (
                r#"{"name":"x","hosts":[{"name":"a"}],"groups":[{"name":"g","hosts":["a"],"depends_on":["g"],"steps":[]}]}"#,
                "groups",
            ),
            (
                r#"{"name":"x","hosts":[{"name":"a"}],"groups":[{"name":"g","hosts":["a"],"steps":[{"index":1,"content":"{{ibkit.results.a.h.1.raw}}"}]}]}"#,
                "groups[0].steps[0].content",
            ),
            (
                r#"{"name":"x","hosts":[{"name":"a"}],"groups":[{"name":"g","hosts":["a"],"steps":[{"index":1,"content":"x"},{"index":2,"content":"{{ibkit.results.self.g.1.structured.k}}"}]}]}"#,
                "groups[0].steps[1].content",
            ),
            (
                r#"{"name":"x","hosts":[{"name":"a"}],"groups":[{"name":"g","hosts":["a"],"steps":[{"index":1,"content":"x","options":{"attempts":0}}]}]}"#,
                "groups[0].steps[0].options",
            ),
            (
                r#"{"name":"x","hosts":[{"name":"a"}],"detection_timeout":"999ms"}"#,
                "detection_timeout",
            ),
            (
                r#"{"name":"x","hosts":[{"name":"a"}],"detection_timeout":"24h1s"}"#,
                "detection_timeout",
            ),
            (
                r#"{"name":"x","hosts":[{"name":"a"}],"billing":{"params":[]}}"#,
                "billing.params",
            ),
            (
                r#"{"name":"x","hosts":[{"name":"a"}],"billing":{"params":["cpu","a b"]}}"#,
                "billing.params[1]",
            ),
            (
                r#"{"name":"x","hosts":[{"name":"a"}],"billing":{"params":["cpu","cpu"]}}"#,
                "billing.params[1]",
            ),
        ];
        for (json, at) in cases {
            let e = spec(json).validate().expect_err(json);
            assert_eq!(e.at, at, "{json}: {e}");
        }
    }

    #[test]
    fn detection_timeout_is_optional_and_bounded() {
        let plain = spec(r#"{"name":"x","hosts":[{"name":"a"}]}"#);
        assert_eq!(plain.detection_timeout, None);
        // Absent stays absent on the wire (specs stored before the field existed).
        let text = serde_json::to_string(&plain).expect("serialises");
        assert!(!text.contains("detection_timeout"), "{text}");
        for (json, millis) in [
            ("\"30s\"", 30_000),
            ("\"1s\"", 1_000),
            ("\"24h\"", 86_400_000),
            ("90", 90_000),
        ] {
            let s = spec(&format!(
                r#"{{"name":"x","hosts":[{{"name":"a"}}],"detection_timeout":{json}}}"#
            ));
            s.validate().expect(json);
            assert_eq!(s.detection_timeout.map(Duration::as_millis), Some(millis));
            let back: InstanceSpec =
                serde_json::from_str(&serde_json::to_string(&s).expect("serialises"))
                    .expect("round trips");
            assert_eq!(back, s);
        }
        let e = spec(r#"{"name":"x","hosts":[{"name":"a"}],"detection_timeout":"0s"}"#)
            .validate()
            .expect_err("zero");
        assert_eq!(e.at, "detection_timeout");
        assert!(
            e.message.contains("detection_timeout 0s") && e.message.contains("1s and 24h"),
            "{e}"
        );
        assert!(
            serde_json::from_str::<InstanceSpec>(
                r#"{"name":"x","hosts":[{"name":"a"}],"detection_timeout":"soon"}"#
            )
            .is_err()
        );
    }

    #[test]
    fn billing_params_are_option_names() {
        let long = "p".repeat(64);
        let s = spec(&format!(
            r#"{{"name":"x","hosts":[{{"name":"a"}}],"billing":{{"params":["cpu_usage","ram-gb","{long}"]}}}}"#
        ));
        s.validate().expect("valid");
        let too_long = spec(&format!(
            r#"{{"name":"x","hosts":[{{"name":"a"}}],"billing":{{"params":["{long}p"]}}}}"#
        ));
        let e = too_long.validate().expect_err("65 characters");
        assert_eq!(e.at, "billing.params[0]", "{e}");
        // Absent stays absent on the wire.
        let plain = spec(r#"{"name":"x","hosts":[{"name":"a"}]}"#);
        let text = serde_json::to_string(&plain).expect("serialises");
        assert!(!text.contains("billing"), "{text}");
        assert!(
            serde_json::from_str::<InstanceSpec>(
                r#"{"name":"x","hosts":[{"name":"a"}],"billing":{"params":["a"],"price":1}}"#
            )
            .is_err()
        );
    }
}

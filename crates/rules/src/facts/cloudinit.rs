//! cloud-init's configuration, merged as cloud-init does: `/etc/cloud/cloud.cfg`
//! then `/etc/cloud/cloud.cfg.d/*.cfg` in name order, later files overriding
//! top-level keys.

use serde_json::Value;

use crate::context::Context;

/// The merged configuration.
#[derive(Clone, Debug, Default)]
pub struct CloudConfig {
    /// Merged top-level keys.
    pub merged: serde_json::Map<String, Value>,
    /// For each top-level key, the file that set it last.
    pub origin: std::collections::BTreeMap<String, String>,
    /// Files read, in order.
    pub files: Vec<String>,
    /// Files that did not parse, with the parser's message.
    pub errors: Vec<(String, String)>,
    /// The `network:` key merged the way cloud-init merges its system
    /// config (mappings recursively, later files win; lists replaced), so a
    /// later `network: {config: disabled}` does not hide an earlier file's
    /// `ethernets:` from the merge but does switch it off.
    pub network: Option<Value>,
    /// Files that set `network:`, in order.
    pub network_files: Vec<String>,
}

/// Merge `over` into `base`: mappings key by key, anything else replaced.
fn deep_merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => deep_merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

impl CloudConfig {
    /// A top-level key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.merged.get(key)
    }
    /// A top-level key as a boolean (YAML's `true`/`True`/`yes` are parsed
    /// already; strings `"true"`, `"false"` are accepted too).
    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            Value::String(s) => match s.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => Some(true),
                "false" | "no" | "off" | "0" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }
    /// A list of strings (module lists hold `name` or `[name, freq]`).
    pub fn names(&self, key: &str) -> Option<Vec<String>> {
        let Value::Array(a) = self.get(key)? else {
            return None;
        };
        Some(
            a.iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Array(inner) => inner.first().and_then(Value::as_str).map(str::to_owned),
                    _ => None,
                })
                .collect(),
        )
    }
    /// Where `key` was last set.
    pub fn origin(&self, key: &str) -> Option<&str> {
        self.origin.get(key).map(String::as_str)
    }
}

/// Load and merge cloud-init's configuration files.
pub fn load(cx: &Context) -> CloudConfig {
    let mut cc = CloudConfig::default();
    let mut paths = vec!["/etc/cloud/cloud.cfg".to_owned()];
    let mut dropins: Vec<String> = cx
        .list_dir("/etc/cloud/cloud.cfg.d")
        .into_iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .filter(|n| n.ends_with(".cfg"))
        .collect();
    dropins.sort();
    paths.extend(
        dropins
            .into_iter()
            .map(|n| format!("/etc/cloud/cloud.cfg.d/{n}")),
    );
    for p in paths {
        let Some(text) = cx.read_text(&p) else {
            continue;
        };
        cc.files.push(p.clone());
        if text.trim().is_empty() {
            continue;
        }
        match serde_saphyr::from_str::<Value>(&text) {
            Ok(Value::Object(map)) => {
                for (k, v) in map {
                    if k == "network" {
                        cc.network_files.push(p.clone());
                        match cc.network.as_mut() {
                            Some(n) => deep_merge(n, v.clone()),
                            None => cc.network = Some(v.clone()),
                        }
                    }
                    cc.origin.insert(k.clone(), p.clone());
                    cc.merged.insert(k, v);
                }
            }
            Ok(Value::Null) => {}
            Ok(_) => cc.errors.push((p, "top level is not a mapping".into())),
            Err(e) => cc
                .errors
                .push((p, e.to_string().lines().next().unwrap_or("").to_owned())),
        }
    }
    cc
}

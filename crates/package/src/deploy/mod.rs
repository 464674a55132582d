//! `ibkit package deploy`: a plan of a service package, evaluated and
//! mapped onto an ibkit deployment manifest ([`DeployManifest`]), which
//! `ibkit deploy` then runs like any other.
//!
//! | Terraform | ibkit |
//! |---|---|
//! | `vkcs_compute_instance` | a host (image and flavor via `--map` or the backend) |
//! | `vkcs_blockstorage_volume` booted from | the host's disk size |
//! | security group rules (ingress TCP) | the host's open ports |
//! | `ivkcs_user_data` | the host's user data (agent, keys, packages, billing token file) |
//! | `ivkcs_agent_exec` | a script group; `depends_on` → group order |
//! | `ivkcs_agent_check` | health checks |
//! | `data.ivkcs_agent_script_result` | result references |
//! | `time_sleep`, `ivkcs_compute_instance_reboot` | groups that wait / reboot |
//! | `random_*`, `ivkcs_ssh_keypair` | generated once, kept with the deployment |
//! | plan `resource_usages` (postpaid options) | `[billing] params` |
//! | `ivkcs_dns`, `ivkcs_s3`, `ivkcs_cert`, `ivkcs_monitoring_user` | not emulated: a warning |
//!
//! See `docs/packages.md` for the whole table and the reasons.

pub mod provider;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ibkit_api::reference::find_references;
use ibkit_deploy::DeployManifest;
use serde_json::{Map, Value as Json, json};

use crate::PackageFiles;
use crate::tf::EvalError;
use crate::tf::config::{Config, Resource, body_references, references};
use crate::tf::eval::{Evaluator, ResourceInstance};
use crate::tf::value::{RUNTIME_MARK, Value};
pub use provider::{ADDRESS_GROUP, Generated, PackageProvider};

/// Where the deployment will run: decides what an unmapped image or
/// flavor means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Qemu,
    OpenStack,
}

/// What the vendor asked for.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    pub plan: String,
    /// `--var NAME=VALUE`: option values and variables.
    pub vars: BTreeMap<String, String>,
    /// `--map KEY=VALUE`: an image key → a disk image file (QEMU) or a
    /// Glance image; a flavor → `VCPUSxMEMORY_MIB` or a Nova flavor.
    pub maps: BTreeMap<String, String>,
    /// The deployment's name (default: from the service id and plan).
    pub name: Option<String>,
    pub backend: Backend,
}

/// The mapped deployment.
#[derive(Debug)]
pub struct Translation {
    pub manifest: DeployManifest,
    /// The manifest as TOML (what `ibkit deploy` reads).
    pub toml: String,
    /// What was not emulated or guessed, one line each, naming the resource.
    pub warnings: Vec<String>,
    /// Generated values, to keep with the deployment.
    pub generated: Generated,
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{0}")]
    Eval(#[from] EvalError),
    #[error("the package cannot be deployed:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Mapping(Vec<String>),
    #[error(
        "the deployment ibkit made from the package is invalid (a bug in the mapping, or a value ibkit refuses):\n{0}"
    )]
    Manifest(String),
}

/// Evaluates the plan and maps it. `generated` are the values kept from an
/// earlier deploy of the same deployment (none: generate).
pub fn translate(
    pkg: &PackageFiles,
    req: &DeployRequest,
    cwd: &Path,
    generated: Option<Generated>,
) -> Result<Translation, DeployError> {
    crate::tf::with_eval_stack(|| translate_here(pkg, req, cwd, generated))
}

fn translate_here(
    pkg: &PackageFiles,
    req: &DeployRequest,
    cwd: &Path,
    generated: Option<Generated>,
) -> Result<Translation, DeployError> {
    let plans = pkg.plans();
    if !plans.contains(&req.plan) {
        return Err(DeployError::Mapping(vec![format!(
            "no plan {:?} (the package has: {})",
            req.plan,
            plans.join(", ")
        )]));
    }
    let cfg = Config::load(pkg, &req.plan)?;
    let generated = match generated {
        Some(g) => g,
        None => Generated::new()?,
    };
    let inputs = inputs(pkg, &cfg, req, &generated)?;
    // The service's instance is the marketplace's: created under the
    // package's instance_uuid, which the app's billing pushes name.
    let instance_uuid = match inputs.get("instance_uuid") {
        Some(Value::String(given)) => given.clone(),
        _ => generated.instance_uuid.clone(),
    };
    let provider = PackageProvider { generated };
    let mut ev = Evaluator::new(&cfg, Some(pkg), &inputs, provider)?;
    let mut m = Mapper {
        cfg: &cfg,
        req,
        cwd,
        errors: Vec::new(),
        warnings: Vec::new(),
        instances: BTreeMap::new(),
    };
    for r in &cfg.resources {
        match ev.instances(&r.address()) {
            Ok(list) => {
                m.instances.insert(r.address(), list);
            }
            Err(e) => m.errors.push(e.to_string()),
        }
    }
    let mut outputs = Vec::new();
    for o in &cfg.outputs {
        match ev.output(&o.name) {
            Ok(v) => outputs.push((o, v)),
            Err(e) => m.errors.push(e.to_string()),
        }
    }
    let mut json = m.manifest(&settings_max_attempts(pkg, &req.plan), &outputs, pkg);
    if ibkit_api::operator::InstanceId::parse(&instance_uuid).is_ok() {
        json["instance"]["id"] = json!(instance_uuid);
    } else {
        m.warnings.push(format!(
            "instance_uuid {instance_uuid:?} is not a lower-case UUID: the service picks the instance's id, and billing pushes naming {instance_uuid:?} will be refused"
        ));
    }
    let params = resource_usages(pkg, &req.plan);
    if !params.is_empty() {
        json["billing"] = json!({ "params": params });
    }
    if !m.errors.is_empty() {
        return Err(DeployError::Mapping(m.errors));
    }
    let manifest: DeployManifest =
        serde_json::from_value(json).map_err(|e| DeployError::Manifest(e.to_string()))?;
    let toml = toml::to_string(&manifest).map_err(|e| DeployError::Manifest(e.to_string()))?;
    // Parsed back: the same validation as a hand-written manifest.
    let manifest = DeployManifest::parse(&toml, cwd, "the mapped package")
        .map_err(|e| DeployError::Manifest(e.to_string()))?;
    manifest
        .validate()
        .map_err(|e| DeployError::Manifest(e.to_string()))?;
    Ok(Translation {
        manifest,
        toml,
        warnings: m.warnings,
        generated: ev.into_provider().generated,
    })
}

/// Variable values: `--var`, the marketplace's special variables, the
/// option's default from `parameters/NAME.yaml`.
fn inputs(
    pkg: &PackageFiles,
    cfg: &Config,
    req: &DeployRequest,
    generated: &Generated,
) -> Result<BTreeMap<String, Value>, DeployError> {
    let unknown: Vec<&String> = req
        .vars
        .keys()
        .filter(|k| cfg.variable(k).is_none())
        .collect();
    if !unknown.is_empty() {
        return Err(DeployError::Mapping(
            unknown
                .iter()
                .map(|k| format!("--var {k}: the plan declares no variable {k:?}"))
                .collect(),
        ));
    }
    let mut out = BTreeMap::new();
    for v in &cfg.variables {
        if let Some(given) = req.vars.get(&v.name) {
            out.insert(v.name.clone(), Value::String(given.clone()));
            continue;
        }
        match v.name.as_str() {
            // The marketplace sets these (VK: tf_manifest_variable).
            "instance_uuid" => {
                out.insert(
                    v.name.clone(),
                    Value::String(generated.instance_uuid.clone()),
                );
            }
            "email" if v.default.is_none() => {
                out.insert(v.name.clone(), Value::str("buyer@example.com"));
            }
            _ if v.default.is_none() => {
                if let Some(d) = option_default(pkg, &v.name) {
                    out.insert(v.name.clone(), d);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// `schema.default` of `parameters/NAME.yaml`.
fn option_default(pkg: &PackageFiles, name: &str) -> Option<Value> {
    let text = pkg.text(&format!("parameters/{name}.yaml"))?.ok()?;
    let root = crate::yaml::parse(text).ok()?;
    let d = &root.get("schema")?.value.get("default")?.value;
    Some(match &d.value {
        crate::yaml::Value::Str(s) => Value::String(s.clone()),
        crate::yaml::Value::Bool(b) => Value::Bool(*b),
        crate::yaml::Value::Int(n) => Value::Number(*n as f64),
        crate::yaml::Value::Float(f) => Value::Number(*f),
        _ => return None,
    })
}

/// `settings.yaml` `retry`: `no` → one attempt; `yes` (or none) → the
/// platform's three.
fn settings_max_attempts(pkg: &PackageFiles, plan: &str) -> u32 {
    let path = format!("plans/{plan}/deployment/settings.yaml");
    let Some(Ok(text)) = pkg.text(&path) else {
        return 3;
    };
    let Ok(root) = crate::yaml::parse(text) else {
        return 3;
    };
    match root.get("retry").map(|e| &e.value.value) {
        Some(crate::yaml::Value::Bool(false)) => 1,
        Some(crate::yaml::Value::Str(s)) if s == "no" => 1,
        _ => 3,
    }
}

/// `plans/<PLAN>/plan.yaml` `resource_usages`: the plan's postpaid
/// options, whose usage the application pushes (VK: ibplan).
fn resource_usages(pkg: &PackageFiles, plan: &str) -> Vec<String> {
    let path = format!("plans/{plan}/plan.yaml");
    let Some(Ok(text)) = pkg.text(&path) else {
        return Vec::new();
    };
    let Ok(root) = crate::yaml::parse(text) else {
        return Vec::new();
    };
    root.get("resource_usages")
        .and_then(|e| e.value.as_seq())
        .map(|items| {
            items
                .iter()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

struct Mapper<'a> {
    cfg: &'a Config,
    req: &'a DeployRequest,
    cwd: &'a Path,
    errors: Vec<String>,
    warnings: Vec<String>,
    /// Per resource address, its evaluated instances.
    instances: BTreeMap<String, Vec<ResourceInstance>>,
}

/// A node that orders script groups: an `ivkcs_agent_exec`, a
/// `time_sleep` or a reboot.
fn orders_groups(kind: &str) -> bool {
    matches!(
        kind,
        "ivkcs_agent_exec" | "time_sleep" | "ivkcs_compute_instance_reboot"
    )
}

fn s(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(crate::tf::value::format_number(*n)),
        _ => None,
    }
}

fn list_of_maps(v: Option<&Value>) -> Vec<BTreeMap<String, Value>> {
    match v {
        Some(Value::List(l)) => l
            .iter()
            .filter_map(|i| match i {
                Value::Map(m) => Some(m.clone()),
                _ => None,
            })
            .collect(),
        Some(Value::Map(m)) => vec![m.clone()],
        _ => Vec::new(),
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::List(l)) => l.iter().filter_map(|i| i.to_text().ok()).collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// A group or check name from a resource name: ibkit's `[A-Za-z0-9_-]`.
fn safe_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect()
}

impl Mapper<'_> {
    fn of_kind(&self, kind: &str) -> Vec<(&Resource, &ResourceInstance)> {
        self.cfg
            .resources
            .iter()
            .filter(|r| r.kind == kind && !r.data)
            .flat_map(|r| {
                self.instances
                    .get(&r.address())
                    .into_iter()
                    .flatten()
                    .map(move |i| (r, i))
            })
            .collect()
    }

    /// [`Self::of_kind`], owned: for the mapping steps that record errors
    /// and warnings while they walk the instances.
    fn owned_of_kind(&self, kind: &str) -> Vec<(Resource, ResourceInstance)> {
        self.of_kind(kind)
            .into_iter()
            .map(|(r, i)| (r.clone(), i.clone()))
            .collect()
    }

    fn manifest(
        &mut self,
        max_attempts: &u32,
        outputs: &[(&crate::tf::config::Output, Value)],
        pkg: &PackageFiles,
    ) -> Json {
        self.warn_unemulated();
        let hosts = self.hosts();
        let host_names: BTreeSet<String> = hosts
            .iter()
            .filter_map(|h| h.get("name").and_then(Json::as_str).map(str::to_string))
            .collect();
        let mut groups = self.groups(&host_names);
        let checks = self.checks(&host_names);
        let outputs: Vec<Json> = outputs
            .iter()
            .filter_map(|(o, v)| {
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Structured(r) => r.to_string(),
                    Value::Null => return None,
                    other => other.to_json().to_string(),
                };
                let mut j =
                    json!({"name": safe_name(&o.name), "value": value, "sensitive": o.sensitive});
                if let Some(d) = &o.description {
                    j["description"] = Json::String(d.clone());
                }
                Some(j)
            })
            .collect();
        // The address step, on the hosts whose address is used.
        let mut texts: Vec<String> = Vec::new();
        for g in &groups {
            texts.push(g.to_string());
        }
        for o in &outputs {
            texts.push(o.to_string());
        }
        let mut address_hosts = BTreeSet::new();
        for t in &texts {
            for h in &host_names {
                if t.contains(&provider::address_reference(h)) {
                    address_hosts.insert(h.clone());
                }
            }
        }
        if !address_hosts.is_empty() {
            groups.insert(
                0,
                json!({
                    "name": ADDRESS_GROUP,
                    "hosts": address_hosts,
                    "steps": [{
                        "index": 1,
                        "type": "bash",
                        // The first address on the VM's first network: what
                        // the cloud reports as access_ip_v4.
                        // No line break: the value is pasted into scripts.
                        "content": "ip -4 -o addr show scope global | awk '{split($4, a, \"/\"); printf \"%s\", a[1]; exit}'",
                        "options": {"attempts": 30, "attempt_pause": "2s", "timeout": "10s"}
                    }]
                }),
            );
        }
        self.add_result_dependencies(&mut groups);
        let name = self
            .req
            .name
            .clone()
            .unwrap_or_else(|| default_name(pkg, &self.req.plan));
        let (attempt_timeout, health_timeout) = self.timeouts();
        json!({
            "instance": {
                "name": name,
                "max_attempts": max_attempts,
                "attempt_timeout": attempt_timeout,
                "health_timeout": health_timeout,
            },
            "hosts": hosts,
            "groups": groups,
            "health_checks": checks,
            "outputs": outputs,
        })
    }

    fn warn_unemulated(&mut self) {
        for r in &self.cfg.resources {
            let n = self.instances.get(&r.address()).map_or(0, Vec::len);
            if n == 0 {
                continue;
            }
            let why = if provider::NOT_EMULATED.iter().any(|(k, _)| *k == r.kind) {
                "not emulated by ibkit: its attributes are placeholders (`not-emulated:…`)"
            } else if r.kind == "null_resource" || r.kind.starts_with("terraform_") {
                "not run by ibkit (provisioners run on the Terraform host, not on a VM)"
            } else if r.kind == "vkcs_networking_floatingip"
                || r.kind == "vkcs_compute_floatingip_associate"
            {
                "no floating IP: the backend's network gives each VM its address"
            } else if r.kind == "vkcs_blockstorage_volume" && !self.is_boot_volume(r) {
                "extra data volumes are not attached (only the boot disk's size is used)"
            } else if r.kind == "vkcs_compute_volume_attach" {
                "extra data volumes are not attached"
            } else {
                continue;
            };
            self.warnings
                .push(format!("{} ({}): {why}", r.address(), r.origin));
        }
    }

    fn is_boot_volume(&self, vol: &Resource) -> bool {
        let ids: Vec<String> = self
            .instances
            .get(&vol.address())
            .into_iter()
            .flatten()
            .filter_map(|i| s(i.get("id")))
            .collect();
        self.of_kind("vkcs_compute_instance")
            .iter()
            .any(|(_, inst)| {
                list_of_maps(inst.get("block_device"))
                    .iter()
                    .any(|b| s(b.get("uuid")).is_some_and(|u| ids.contains(&u)))
            })
    }

    /// A volume instance by its id.
    fn volume(&self, id: &str) -> Option<&ResourceInstance> {
        self.of_kind("vkcs_blockstorage_volume")
            .into_iter()
            .map(|(_, i)| i)
            .find(|i| s(i.get("id")).as_deref() == Some(id))
    }

    fn hosts(&mut self) -> Vec<Json> {
        let computes: Vec<(Resource, ResourceInstance)> =
            self.owned_of_kind("vkcs_compute_instance");
        if computes.is_empty() {
            self.errors
                .push("no vkcs_compute_instance: nothing to deploy".into());
        }
        let ports_by_group = self.secgroup_ports();
        let mut out = Vec::new();
        for (r, inst) in &computes {
            let at = format!("{} ({})", inst.address, r.origin);
            let Some(name) = s(inst.get("name")) else {
                self.errors.push(format!("{at}: no name"));
                continue;
            };
            if !ibkit_api::is_valid_name(&name) || name == "self" {
                self.errors.push(format!(
                    "{at}: the VM name {name:?} cannot name an ibkit host ([A-Za-z0-9_-], at most 63)"
                ));
                continue;
            }
            // Image and disk: image_id/image_name, else the boot block
            // device (an image, or a volume made from one).
            let mut image_key = s(inst.get("image_id")).or_else(|| s(inst.get("image_name")));
            let mut disk_gib: Option<f64> = None;
            let devices = list_of_maps(inst.get("block_device"));
            let boot = devices
                .iter()
                .find(|b| b.get("boot_index").and_then(|v| v.as_number().ok()) == Some(0.0))
                .or_else(|| devices.first());
            if let Some(b) = boot {
                let uuid = s(b.get("uuid"));
                match s(b.get("source_type")).as_deref() {
                    Some("image") => {
                        image_key = image_key.or(uuid);
                        disk_gib = b.get("volume_size").and_then(|v| v.as_number().ok());
                    }
                    Some("volume") => {
                        if let Some(vol) = uuid.as_deref().and_then(|u| self.volume(u)) {
                            image_key = image_key.or_else(|| s(vol.get("image_id")));
                            disk_gib = vol.get("size").and_then(|v| v.as_number().ok());
                        }
                    }
                    _ => {}
                }
            }
            let Some(image_key) = image_key else {
                self.errors.push(format!(
                    "{at}: no image (image_id, image_name or a boot block_device)"
                ));
                continue;
            };
            let image = match (self.req.maps.get(&image_key), self.req.backend) {
                (Some(v), Backend::Qemu) => {
                    let p = self.cwd.join(v);
                    p.to_string_lossy().into_owned()
                }
                (Some(v), Backend::OpenStack) => {
                    let p = self.cwd.join(v);
                    if p.is_file() {
                        p.to_string_lossy().into_owned()
                    } else {
                        v.clone()
                    }
                }
                (None, Backend::OpenStack) => image_key.clone(),
                (None, Backend::Qemu) => {
                    self.errors.push(format!(
                        "{at}: image {image_key:?}: give its disk image file with --map {image_key}=FILE"
                    ));
                    continue;
                }
            };
            let mut flavor = json!({"vcpus": 1, "memory_mib": 1024, "disk_gib": disk_gib.map_or(10, |d| d.max(1.0) as u64)});
            let mut os_flavor = None;
            let flavor_key = s(inst.get("flavor_id")).or_else(|| s(inst.get("flavor_name")));
            if let Some(key) = &flavor_key {
                match (self.req.maps.get(key), parse_flavor(key)) {
                    (Some(v), _) => match parse_size(v) {
                        Some((c, mem)) => {
                            flavor["vcpus"] = c.into();
                            flavor["memory_mib"] = mem.into();
                        }
                        None => os_flavor = Some(v.clone()),
                    },
                    // VK's name gives the size; on OpenStack the backend
                    // picks the smallest flavor that fits it.
                    (None, Some((c, mem))) => {
                        flavor["vcpus"] = c.into();
                        flavor["memory_mib"] = mem.into();
                    }
                    (None, None) if self.req.backend == Backend::OpenStack => {
                        os_flavor = Some(key.clone())
                    }
                    (None, None) => self.warnings.push(format!(
                        "{at}: flavor {key:?} is not VK's TYPE-VCPUS-RAM_GB form; 1 vCPU and 1 GiB used (--map {key}=VCPUSxMEMORY_MIB)"
                    )),
                }
            }
            let mut host = json!({
                "name": name,
                "image": image,
                "flavor": flavor,
                "ports": self.host_ports(inst, &ports_by_group),
                "user_data": self.user_data(&name, inst, &at),
            });
            if let Some(f) = os_flavor {
                host["os_flavor"] = Json::String(f);
            }
            out.push(host);
        }
        out
    }

    /// Ingress TCP ports per security group id and name.
    fn secgroup_ports(&self) -> BTreeMap<String, BTreeSet<u16>> {
        let mut by_group: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
        let groups: BTreeMap<String, String> = self
            .of_kind("vkcs_networking_secgroup")
            .into_iter()
            .filter_map(|(_, i)| Some((s(i.get("id"))?, s(i.get("name")).unwrap_or_default())))
            .collect();
        for (_, rule) in self.of_kind("vkcs_networking_secgroup_rule") {
            if s(rule.get("direction")).as_deref() != Some("ingress") {
                continue;
            }
            if !matches!(s(rule.get("protocol")).as_deref(), None | Some("tcp")) {
                continue;
            }
            let (Some(lo), hi) = (
                rule.get("port_range_min").and_then(|v| v.as_number().ok()),
                rule.get("port_range_max").and_then(|v| v.as_number().ok()),
            ) else {
                continue;
            };
            let hi = hi.unwrap_or(lo);
            if !(1.0..=65535.0).contains(&lo) || hi < lo || hi - lo > 64.0 {
                continue;
            }
            let Some(gid) = s(rule.get("security_group_id")) else {
                continue;
            };
            let ports = by_group.entry(gid.clone()).or_default();
            for p in lo as u16..=hi as u16 {
                ports.insert(p);
            }
            if let Some(name) = groups.get(&gid) {
                let copy = by_group.get(&gid).cloned().unwrap_or_default();
                by_group.entry(name.clone()).or_default().extend(copy);
            }
        }
        by_group
    }

    fn host_ports(
        &self,
        inst: &ResourceInstance,
        by_group: &BTreeMap<String, BTreeSet<u16>>,
    ) -> Vec<u16> {
        let mut groups = strings(inst.get("security_group_ids"));
        groups.extend(strings(inst.get("security_groups")));
        // A port's own security groups.
        for n in list_of_maps(inst.get("network")) {
            if let Some(port_id) = s(n.get("port")) {
                for (_, p) in self.of_kind("vkcs_networking_port") {
                    if s(p.get("id")).as_deref() == Some(port_id.as_str()) {
                        groups.extend(strings(p.get("security_group_ids")));
                    }
                }
            }
        }
        let mut ports: BTreeSet<u16> = BTreeSet::new();
        for g in groups {
            if let Some(p) = by_group.get(&g) {
                ports.extend(p);
            }
        }
        ports.into_iter().take(64).collect()
    }

    fn user_data(&mut self, host: &str, inst: &ResourceInstance, at: &str) -> Json {
        let mut ud = json!({});
        let handle = s(inst.get("user_data"));
        let source = match handle.as_deref() {
            Some(h) if h.starts_with(provider::USER_DATA_HANDLE) => {
                let rest = &h[provider::USER_DATA_HANDLE.len()..];
                let addr = rest.rsplit_once(':').map_or(rest, |(a, _)| a);
                self.of_kind("ivkcs_user_data")
                    .into_iter()
                    .find(|(_, i)| i.address == addr)
                    .map(|(_, i)| i.clone())
            }
            Some(text) => {
                if text.starts_with("#cloud-config") {
                    ud["cloud_config"] = Json::String(text.to_string());
                } else if text.starts_with("#!") {
                    ud["per_instance"] = json!([text]);
                } else {
                    self.warnings.push(format!(
                        "{at}: user_data that is neither #cloud-config nor a script is ignored"
                    ));
                }
                None
            }
            None => self
                .of_kind("ivkcs_user_data")
                .into_iter()
                .find(|(_, i)| strings(i.get("hosts")).iter().any(|h| h == host))
                .map(|(_, i)| i.clone()),
        };
        let Some(src) = source else { return ud };
        if !strings(src.get("hosts")).iter().any(|h| h == host) {
            self.warnings.push(format!(
                "{at}: uses {} whose hosts do not name {host:?}; the agent is configured anyway",
                src.address
            ));
        }
        let keys = strings(src.get("ssh_authorized_keys"));
        if !keys.is_empty() {
            ud["ssh_authorized_keys"] = json!(keys.iter().map(|k| k.trim()).collect::<Vec<_>>());
        }
        let packages: Vec<String> = list_of_maps(src.get("packages"))
            .iter()
            .filter_map(|p| {
                let name = s(p.get("name"))?;
                Some(match s(p.get("version")) {
                    Some(v) => format!("{name}={v}"),
                    None => name,
                })
            })
            .collect();
        if !packages.is_empty() {
            ud["packages"] = json!(packages);
        }
        if let Some(Value::Bool(false)) = src.get("agent_install") {
            ud["install_agent"] = Json::Bool(false);
        }
        if let Some(mb) = src
            .get("agent_memory_limit")
            .and_then(|v| v.as_number().ok())
        {
            ud["agent_memory_max"] = Json::String(format!("{}M", mb as u64));
        }
        let cas = strings(src.get("ca_certificates"));
        if !cas.is_empty() {
            let yaml =
                serde_json::to_string(&json!({"ca_certs": {"trusted": cas}})).unwrap_or_default();
            ud["cloud_config"] = Json::String(format!("#cloud-config\n{yaml}\n"));
        }
        if let Some(b) = self.billing_token(&src) {
            ud["billing_token"] = b;
        }
        for k in ["ssh_private_key", "ssh_public_key"] {
            if src.get(k).is_some() {
                self.warnings
                    .push(format!("{}: {k} is not emulated yet", src.address));
            }
        }
        ud
    }

    /// `token_file_path`, `token_file_owner`, `token_file_group`,
    /// `token_rotate` → the host's `billing_token` (the agent keeps the
    /// marketplace API key in that file).
    fn billing_token(&mut self, src: &ResourceInstance) -> Option<Json> {
        // One resource may configure several hosts: each problem once.
        let once = |list: &mut Vec<String>, msg: String| {
            if !list.contains(&msg) {
                list.push(msg);
            }
        };
        let rotate = match src.get("token_rotate") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(t)) if t == "true" || t == "false" => t == "true",
            Some(other) => {
                once(
                    &mut self.errors,
                    format!(
                        "{}: token_rotate must be a bool, not {}",
                        src.address,
                        other.to_json()
                    ),
                );
                false
            }
        };
        let Some(path) = s(src.get("token_file_path")) else {
            for k in ["token_file_owner", "token_file_group", "token_rotate"] {
                if src.get(k).is_some_and(|v| !matches!(v, Value::Null)) {
                    once(
                        &mut self.warnings,
                        format!("{}: {k} without token_file_path is ignored", src.address),
                    );
                }
            }
            return None;
        };
        let spec = ibkit_deploy::manifest::BillingTokenSpec {
            path,
            // Optional in VK; the file is root's then.
            owner: s(src.get("token_file_owner")).unwrap_or_else(|| "root".into()),
            group: s(src.get("token_file_group")).unwrap_or_else(|| "root".into()),
            rotate,
        };
        for (field, why) in spec.problems() {
            let attr = match field {
                "path" => "token_file_path",
                "owner" => "token_file_owner",
                _ => "token_file_group",
            };
            once(&mut self.errors, format!("{}: {attr}: {why}", src.address));
        }
        serde_json::to_value(&spec).ok()
    }

    /// Resource address → the resources it waits for (explicit
    /// `depends_on` and references), locals followed.
    fn direct_deps(&self, r: &Resource) -> BTreeSet<String> {
        let mut refs = r.depends_on();
        body_references(&r.body, &mut refs);
        let mut out = BTreeSet::new();
        let mut seen = BTreeSet::new();
        while let Some(a) = refs.pop() {
            if !seen.insert(a.clone()) {
                continue;
            }
            if let Some(name) = a.strip_prefix("local.") {
                if let Some(l) = self.cfg.locals.iter().find(|l| l.name == name) {
                    references(&l.expr, &mut refs);
                }
            } else if a != r.address() {
                out.insert(a);
            }
        }
        out
    }

    /// The nearest resources that order groups, through the others.
    fn ordering_ancestors(&self, r: &Resource) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut todo: Vec<String> = self.direct_deps(r).into_iter().collect();
        let mut seen = BTreeSet::new();
        while let Some(a) = todo.pop() {
            if !seen.insert(a.clone()) {
                continue;
            }
            let Some(dep) = self.cfg.resource(&a) else {
                continue;
            };
            if !dep.data && orders_groups(&dep.kind) {
                out.insert(a);
            } else {
                todo.extend(self.direct_deps(dep));
            }
        }
        out
    }

    /// The group names a group-ordering resource produces.
    fn group_names(&self, address: &str) -> Vec<String> {
        let Some(r) = self.cfg.resource(address) else {
            return Vec::new();
        };
        self.instances
            .get(address)
            .into_iter()
            .flatten()
            .map(|i| group_name(r, i))
            .collect()
    }

    /// The groups a group-ordering resource waits for.
    fn group_dependencies(&self, r: &Resource) -> BTreeSet<String> {
        self.ordering_ancestors(r)
            .iter()
            .flat_map(|a| self.group_names(a))
            .collect()
    }

    fn groups(&mut self, hosts: &BTreeSet<String>) -> Vec<Json> {
        let mut out = Vec::new();
        let sleep_hosts = self.sleep_hosts();
        let execs = self.owned_of_kind("ivkcs_agent_exec");
        let mut seen_names = BTreeSet::new();
        for (r, inst) in &execs {
            let at = format!("{} ({})", inst.address, r.origin);
            let name = s(inst.get("name")).unwrap_or_default();
            if !seen_names.insert(name.clone()) {
                self.errors
                    .push(format!("{at}: a second group named {name:?}"));
                continue;
            }
            let group_hosts = strings(inst.get("hosts"));
            for h in &group_hosts {
                if !hosts.contains(h) {
                    self.errors.push(format!(
                        "{at}: host {h:?} is not the name of any vkcs_compute_instance ({})",
                        hosts.iter().cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
            }
            let depends_on = self.group_dependencies(r);
            let mut steps = Vec::new();
            for st in list_of_maps(inst.get("step")) {
                let mut j = Map::new();
                for (k, v) in &st {
                    if k == "options" {
                        continue;
                    }
                    j.insert(k.clone(), v.to_json());
                }
                let options = list_of_maps(st.get("options"))
                    .into_iter()
                    .next()
                    .unwrap_or_default();
                j.insert("options".into(), Value::Map(options).to_json());
                steps.push(Json::Object(j));
            }
            out.push(json!({"name": name, "hosts": group_hosts, "depends_on": depends_on, "steps": steps}));
        }
        // Sleeps and reboots that groups wait for.
        for (r, inst) in self.owned_of_kind("time_sleep") {
            let Some(on) = sleep_hosts.get(&r.address()).cloned() else {
                self.warnings.push(format!(
                    "{} ({}): no script group waits for it, so it has no effect here",
                    inst.address, r.origin
                ));
                continue;
            };
            let secs = s(inst.get("create_duration"))
                .and_then(|d| d.parse::<ibkit_api::Duration>().ok())
                .map_or(0, |d| d.to_std().as_secs());
            let depends_on = self.group_dependencies(&r);
            let name = group_name(&r, &inst);
            out.push(json!({
                "name": name,
                "hosts": on,
                "depends_on": depends_on,
                "steps": [{"index": 1, "type": "bash", "content": format!("sleep {secs}"),
                           "options": {"timeout": format!("{}s", secs + 60), "once": true}}]
            }));
        }
        for (r, inst) in self.owned_of_kind("ivkcs_compute_instance_reboot") {
            let at = format!("{} ({})", inst.address, r.origin);
            let Some(host) = rebooted_host(&inst) else {
                self.errors.push(format!(
                    "{at}: instance must be a vkcs_compute_instance's id"
                ));
                continue;
            };
            let depends_on = self.group_dependencies(&r);
            let name = group_name(&r, &inst);
            let mark = format!("/var/lib/ibkit-reboot-{name}");
            out.push(json!({
                "name": name,
                "hosts": [host],
                "depends_on": depends_on,
                "steps": [
                    // Reboot shortly after the step has reported.
                    {"index": 1, "type": "bash",
                     "content": format!("cat /proc/sys/kernel/random/boot_id > {mark}\nsystemd-run --on-active=5 --unit=ibkit-reboot-{name} systemctl reboot\n"),
                     "options": {"once": true}},
                    // Done once the VM runs on a new boot.
                    {"index": 2, "type": "bash",
                     "content": format!("test \"$(cat /proc/sys/kernel/random/boot_id)\" != \"$(cat {mark})\"\n"),
                     "options": {"once": true, "attempts": 60, "attempt_pause": "5s"}}
                ]
            }));
        }
        out
    }

    /// Which hosts each `time_sleep` runs on: those of the groups (script
    /// groups, reboots, later sleeps) that wait for it.
    fn sleep_hosts(&self) -> BTreeMap<String, BTreeSet<String>> {
        let nodes: Vec<&Resource> = self
            .cfg
            .resources
            .iter()
            .filter(|r| !r.data && orders_groups(&r.kind))
            .collect();
        let own_hosts = |r: &Resource| -> BTreeSet<String> {
            let instances = self.instances.get(&r.address()).into_iter().flatten();
            match r.kind.as_str() {
                "ivkcs_agent_exec" => instances.flat_map(|i| strings(i.get("hosts"))).collect(),
                "ivkcs_compute_instance_reboot" => instances.filter_map(rebooted_host).collect(),
                _ => BTreeSet::new(),
            }
        };
        let mut hosts: BTreeMap<String, BTreeSet<String>> =
            nodes.iter().map(|r| (r.address(), own_hosts(r))).collect();
        let ancestors: Vec<(String, BTreeSet<String>)> = nodes
            .iter()
            .map(|r| (r.address(), self.ordering_ancestors(r)))
            .collect();
        // Until nothing changes: a sleep before a sleep gets its hosts too.
        for _ in 0..=nodes.len() {
            let mut changed = false;
            for (node, before) in &ancestors {
                let mine = hosts.get(node).cloned().unwrap_or_default();
                for a in before.iter().filter(|a| a.starts_with("time_sleep.")) {
                    let theirs = hosts.entry(a.clone()).or_default();
                    let n = theirs.len();
                    theirs.extend(mine.iter().cloned());
                    changed |= theirs.len() != n;
                }
            }
            if !changed {
                break;
            }
        }
        hosts.retain(|a, h| a.starts_with("time_sleep.") && !h.is_empty());
        hosts
    }

    /// A group whose steps read another group's result waits for it.
    fn add_result_dependencies(&mut self, groups: &mut [Json]) {
        let names: BTreeSet<String> = groups
            .iter()
            .filter_map(|g| g.get("name").and_then(Json::as_str).map(str::to_string))
            .collect();
        for g in groups.iter_mut() {
            let own = g
                .get("name")
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_string();
            let mut deps: BTreeSet<String> = g
                .get("depends_on")
                .and_then(Json::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|d| d.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let text = g.get("steps").map(Json::to_string).unwrap_or_default();
            if text.contains(RUNTIME_MARK) {
                // The JSON text escapes nothing inside a reference.
                match find_references(&text) {
                    Ok(refs) => {
                        for r in refs {
                            if r.group != own && names.contains(&r.group) {
                                deps.insert(r.group);
                            }
                        }
                    }
                    Err(e) => self.errors.push(format!("group {own}: {e}")),
                }
            }
            g["depends_on"] = json!(deps);
        }
    }

    fn checks(&mut self, hosts: &BTreeSet<String>) -> Vec<Json> {
        let mut out = Vec::new();
        let all = self.owned_of_kind("ivkcs_agent_check");
        for (r, inst) in all {
            let at = format!("{} ({})", inst.address, r.origin);
            let check_hosts = strings(inst.get("hosts"));
            for h in &check_hosts {
                if !hosts.contains(h) {
                    self.errors.push(format!(
                        "{at}: host {h:?} is not the name of any vkcs_compute_instance"
                    ));
                }
            }
            for kind in ["port_health", "http_health", "script_health"] {
                for (n, block) in list_of_maps(inst.get(kind)).into_iter().enumerate() {
                    let mut j = Map::new();
                    j.insert(
                        "name".into(),
                        Json::String(safe_name(&format!(
                            "{}{}-{kind}-{}",
                            r.name,
                            inst.key.suffix(),
                            n + 1
                        ))),
                    );
                    j.insert("hosts".into(), json!(check_hosts));
                    j.insert("kind".into(), Json::String(kind.into()));
                    for (k, v) in &block {
                        let key = match (kind, k.as_str()) {
                            ("script_health", "type") => "script_type",
                            (_, k) => k,
                        };
                        let mut v = v.to_json();
                        if key == "options" {
                            v = list_of_maps(Some(&Value::from_json(&v)))
                                .into_iter()
                                .next()
                                .map_or(json!({}), |m| Value::Map(m).to_json());
                        }
                        j.insert(key.into(), v);
                    }
                    // A check of the VM's own address is a check of
                    // itself: the agent probes from the VM.
                    if let Some(Json::String(h)) = j.get("host").cloned()
                        && h.contains(RUNTIME_MARK)
                    {
                        let own = check_hosts.len() == 1
                            && h == provider::address_reference(&check_hosts[0]);
                        if own {
                            j.insert("host".into(), Json::String("127.0.0.1".into()));
                        } else {
                            self.errors.push(format!(
                                "{at}: {kind}: host {h} is known only once the VMs run; ibkit checks a VM's own address (give a check per host)"
                            ));
                        }
                    }
                    if kind == "http_health" && !j.contains_key("port") && !j.contains_key("url") {
                        let https = j.get("protocol").and_then(Json::as_str) == Some("https");
                        j.insert("port".into(), if https { 443 } else { 80 }.into());
                    }
                    out.push(Json::Object(j));
                }
            }
        }
        out
    }

    /// The attempt's timeout: 30 minutes, or the longest `timeouts.create`
    /// of a group if larger; the health gate: the checks' `timeouts.create`
    /// (default 10 minutes).
    fn timeouts(&self) -> (String, String) {
        let create = |kind: &str| -> Option<u64> {
            self.of_kind(kind)
                .iter()
                .filter_map(|(_, i)| {
                    let t = list_of_maps(i.get("timeouts")).into_iter().next()?;
                    s(t.get("create"))?.parse::<ibkit_api::Duration>().ok()
                })
                .map(|d| d.to_std().as_secs())
                .max()
        };
        let health = create("ivkcs_agent_check").unwrap_or(600);
        let attempt = create("ivkcs_agent_exec")
            .unwrap_or(0)
            .max(1800)
            .max(health);
        (format!("{attempt}s"), format!("{health}s"))
    }
}

/// The group an instance of a group-ordering resource becomes (its own
/// name for an `ivkcs_agent_exec`; `sleep-NAME[KEY]`, `reboot-NAME[KEY]`).
fn group_name(r: &Resource, i: &ResourceInstance) -> String {
    match r.kind.as_str() {
        "ivkcs_agent_exec" => s(i.get("name")).unwrap_or_else(|| safe_name(&i.address)),
        "time_sleep" => safe_name(&format!("sleep-{}{}", r.name, i.key.suffix())),
        _ => safe_name(&format!("reboot-{}{}", r.name, i.key.suffix())),
    }
}

/// The host an `ivkcs_compute_instance_reboot` reboots (its `instance` is
/// a `vkcs_compute_instance`'s id).
fn rebooted_host(i: &ResourceInstance) -> Option<String> {
    s(i.get("instance"))?
        .strip_prefix(provider::HOST_ID)
        .map(str::to_string)
}

/// VK's flavor names: `STD2-2-4`, `Basic-1-2-20` → (vCPUs, MiB).
fn parse_flavor(name: &str) -> Option<(u32, u32)> {
    let parts: Vec<&str> = name.split('-').collect();
    let [_, cpu, ram, ..] = parts.as_slice() else {
        return None;
    };
    let cpu: u32 = cpu.parse().ok()?;
    let ram: u32 = ram.parse().ok()?;
    Some((cpu, ram.checked_mul(1024)?))
}

/// `2x4096` → (2, 4096).
fn parse_size(v: &str) -> Option<(u32, u32)> {
    let (c, m) = v.split_once('x')?;
    Some((c.trim().parse().ok()?, m.trim().parse().ok()?))
}

/// The default deployment name: the plan and the service id's first part.
pub fn default_name(pkg: &PackageFiles, plan: &str) -> String {
    let id = pkg
        .text("service.yaml")
        .and_then(|t| t.ok())
        .and_then(|t| crate::yaml::parse(t).ok())
        .and_then(|root| {
            root.get("id")
                .and_then(|e| e.value.as_str().map(str::to_string))
        })
        .unwrap_or_default();
    let short: String = id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    safe_name(format!("pkg-{plan}-{short}").trim_end_matches('-'))
}

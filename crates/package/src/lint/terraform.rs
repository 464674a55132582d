//! Terraform rules over each plan's `plans/<PLAN>/deployment/*.tf`
//! (VK's docs: `ibservice_add/tf_manifest/` and the iVK CS provider
//! reference `manage-apps/ivkcs/`):
//!
//! - PKG-TF-PARSE: the file is HCL.
//! - PKG-TF-VARIABLE: every variable is typed; every plan option has a
//!   string/number/bool variable; `instance_uuid` and `email` are strings.
//! - PKG-TF-RESOURCE: only resource and data types the platform supports.
//! - PKG-TF-STEP: `ivkcs_agent_exec` steps, converted to ibkit's own
//!   [`StepSpec`] and checked by the same code as `POST /v1/instances`.
//! - PKG-TF-HEALTH: `ivkcs_agent_check` blocks, converted to ibkit's
//!   [`HealthCheck`] where the shapes line up.
//! - PKG-TF-SENSITIVE: outputs carrying keys or passwords are `sensitive`.
//!
//! [`image_refs`] lists the images the manifests boot from, for
//! `ibkit package lint --image KEY=PATH`.
//!
//! The manifest is parsed, never evaluated: a field whose value is not a
//! literal (a reference, a template, a function call) is taken as present
//! and its value is not checked.

use std::collections::{BTreeMap, BTreeSet};

use hcl::{Block, Body, Expression};
use ibkit_api::{HealthCheck, StepOptions, StepSpec};
use serde_json::{Map, Value as Json};

use crate::yaml::{self, Value};
use crate::{Diagnostic, PackageFiles, PkgRule};

/// `ivkcs_*` resources of the iVK CS provider reference
/// (`manage-apps/ivkcs/ivkcs_resources/`).
const IVKCS_RESOURCES: &[&str] = &[
    "ivkcs_agent_check",
    "ivkcs_agent_exec",
    "ivkcs_agent_init",
    "ivkcs_cert",
    "ivkcs_compute_instance_reboot",
    "ivkcs_dns",
    "ivkcs_s3",
    "ivkcs_ssh_keypair",
    "ivkcs_user_data",
];

/// `ivkcs_*` data sources (`manage-apps/ivkcs/ivkcs_datasources/`).
const IVKCS_DATA: &[&str] = &["ivkcs_agent_script_result", "ivkcs_monitoring_user"];

/// `vkcs_*` types VK's Russian docs use as a resource or a data source.
/// One list for both kinds: the docs show only some of each provider
/// type's uses, and a data source of a documented resource type exists.
const VKCS_TYPES: &[&str] = &[
    "vkcs_baremetal_flavor",
    "vkcs_baremetal_os",
    "vkcs_baremetal_server",
    "vkcs_blockstorage_snapshot",
    "vkcs_blockstorage_volume",
    "vkcs_cdn_origin_group",
    "vkcs_cdn_resource",
    "vkcs_cdn_shielding_pop",
    "vkcs_cdn_shielding_pops",
    "vkcs_cdn_ssl_certificate",
    "vkcs_cloud_monitoring",
    "vkcs_compute_flavor",
    "vkcs_compute_floatingip_associate",
    "vkcs_compute_instance",
    "vkcs_compute_keypair",
    "vkcs_compute_volume_attach",
    "vkcs_dataplatform_cluster",
    "vkcs_dataplatform_product",
    "vkcs_db_database",
    "vkcs_db_instance",
    "vkcs_db_user",
    "vkcs_dc_interface",
    "vkcs_dc_router",
    "vkcs_images_image",
    "vkcs_kubernetes_addon_v2",
    "vkcs_kubernetes_cluster",
    "vkcs_kubernetes_cluster_addon_v2",
    "vkcs_kubernetes_clustertemplate",
    "vkcs_kubernetes_clustertemplates",
    "vkcs_kubernetes_node_group",
    "vkcs_lb_listener",
    "vkcs_lb_loadbalancer",
    "vkcs_lb_member",
    "vkcs_lb_pool",
    "vkcs_mlplatform_jupyterhub",
    "vkcs_mlplatform_k8s_registry",
    "vkcs_mlplatform_mlflow",
    "vkcs_mlplatform_mlflow_deploy",
    "vkcs_mlplatform_spark_k8s",
    "vkcs_networking_floatingip",
    "vkcs_networking_network",
    "vkcs_networking_port",
    "vkcs_networking_port_secgroup_associate",
    "vkcs_networking_router",
    "vkcs_networking_router_interface",
    "vkcs_networking_router_route",
    "vkcs_networking_secgroup",
    "vkcs_networking_secgroup_rule",
    "vkcs_networking_subnet",
    "vkcs_sharedfilesystem_share",
    "vkcs_sharedfilesystem_share_access",
    "vkcs_sharedfilesystem_sharenetwork",
    "vkcs_vpnaas_endpoint_group",
    "vkcs_vpnaas_ike_policy",
    "vkcs_vpnaas_ipsec_policy",
    "vkcs_vpnaas_service",
    "vkcs_vpnaas_site_connection",
];

/// Variables the broker fills in; VK documents them as strings.
const SPECIAL_VARIABLES: &[&str] = &["instance_uuid", "email"];

/// Types an option's variable may have (VK: number, string, boolean).
const OPTION_TYPES: &[&str] = &["string", "number", "bool"];

/// Script languages of a step and of `script_health` (VK: bash, python).
const SCRIPT_TYPES: &[&str] = &["bash", "python"];

/// `http_health` methods VK lists.
const HTTP_METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "OPTIONS"];

/// A declared variable: where, and its type as written (`None`: no type).
struct Var {
    file: String,
    line: Option<u32>,
    ty: Option<String>,
}

pub fn check(pkg: &PackageFiles, out: &mut Vec<Diagnostic>) {
    for plan in pkg.plans() {
        check_plan(pkg, &plan, out);
    }
}

fn check_plan(pkg: &PackageFiles, plan: &str, out: &mut Vec<Diagnostic>) {
    let dir = format!("plans/{plan}/deployment");
    let tf: Vec<&str> = pkg
        .under(&dir, true)
        .filter(|p| p.ends_with(".tf"))
        .collect();
    let mut vars: BTreeMap<String, Var> = BTreeMap::new();
    let mut all_parsed = true;
    for file in tf {
        let Some(Ok(src)) = pkg.text(file) else {
            all_parsed = false;
            out.push(Diagnostic::error(
                PkgRule::TfParse,
                file,
                None,
                "not UTF-8 text",
            ));
            continue;
        };
        match crate::tf::parse_body(src) {
            Ok(body) => Manifest { file, src, out }.check(&body, &mut vars),
            Err(e) => {
                all_parsed = false;
                out.push(parse_error(file, &e));
            }
        }
    }
    // With a file unparsed, a missing variable may just be in it.
    if all_parsed {
        options_have_variables(pkg, plan, &vars, out);
    }
}

fn parse_error(file: &str, e: &crate::tf::ParseError) -> Diagnostic {
    Diagnostic::error(
        PkgRule::TfParse,
        file,
        e.line,
        format!("syntax error: {}", e.message),
    )
}

/// Every option of the plan (keys of `parameters_patch`, entries of
/// `resource_usages`) has a variable of a type an option can fill.
fn options_have_variables(
    pkg: &PackageFiles,
    plan: &str,
    vars: &BTreeMap<String, Var>,
    out: &mut Vec<Diagnostic>,
) {
    let plan_file = format!("plans/{plan}/plan.yaml");
    let Some(root) = pkg
        .text(&plan_file)
        .and_then(Result::ok)
        .and_then(|t| yaml::parse(t).ok())
    else {
        return; // reported by the plan rules
    };
    let mut options: Vec<(String, u32)> = Vec::new();
    if let Some(m) = root.get("parameters_patch").and_then(|e| e.value.as_map()) {
        options.extend(m.iter().map(|e| (e.key.clone(), e.key_line)));
    }
    if let Some(s) = root.get("resource_usages").and_then(|e| e.value.as_seq()) {
        options.extend(s.iter().filter_map(|n| match &n.value {
            Value::Str(s) => Some((s.clone(), n.line)),
            _ => None,
        }));
    }
    let mut seen = BTreeSet::new();
    for (name, line) in options {
        if !seen.insert(name.clone()) {
            continue;
        }
        match vars.get(&name) {
            None => out.push(Diagnostic::error(
                PkgRule::TfVariable,
                &plan_file,
                Some(line),
                format!(
                    "option {name:?} has no variable \"{name}\" in plans/{plan}/deployment/*.tf"
                ),
            )),
            Some(Var {
                file,
                line,
                ty: Some(ty),
            }) if !OPTION_TYPES.contains(&ty.as_str()) && !is_dynamic(ty) => {
                out.push(Diagnostic::error(
                    PkgRule::TfVariable,
                    file,
                    *line,
                    format!(
                        "variable {name:?} holds an option: type must be string, number or bool, not {ty}"
                    ),
                ))
            }
            Some(_) => {}
        }
    }
}

/// A type we cannot judge statically (`any`).
fn is_dynamic(ty: &str) -> bool {
    ty == "any"
}

/// One parsed `.tf` file and where its findings go.
struct Manifest<'a> {
    file: &'a str,
    src: &'a str,
    out: &'a mut Vec<Diagnostic>,
}

impl Manifest<'_> {
    fn push(&mut self, rule: PkgRule, line: Option<u32>, msg: String) {
        self.out.push(Diagnostic::error(rule, self.file, line, msg));
    }

    fn warn(&mut self, rule: PkgRule, line: Option<u32>, msg: String) {
        self.out
            .push(Diagnostic::warning(rule, self.file, line, msg));
    }

    fn check(mut self, body: &Body, vars: &mut BTreeMap<String, Var>) {
        for block in body.blocks() {
            let labels: Vec<&str> = block.labels().iter().map(|l| l.as_str()).collect();
            let line = block_line(self.src, block.identifier(), &labels);
            match (block.identifier(), labels.as_slice()) {
                ("variable", [name]) => self.variable(block, name, line, vars),
                ("resource", [ty, name]) => {
                    self.resource_type(ty, false, line);
                    match *ty {
                        "ivkcs_agent_exec" => self.agent_exec(block, name, line),
                        "ivkcs_agent_check" => self.agent_check(block, name, line),
                        _ => {}
                    }
                }
                ("data", [ty, _]) => self.resource_type(ty, true, line),
                ("output", [name]) => self.output(block, name, line),
                _ => {}
            }
        }
    }

    fn variable(
        &mut self,
        block: &Block,
        name: &str,
        line: Option<u32>,
        vars: &mut BTreeMap<String, Var>,
    ) {
        let ty = attr(block.body(), "type").map(type_name);
        match &ty {
            None => self.push(
                PkgRule::TfVariable,
                line,
                format!("variable {name:?} has no type"),
            ),
            Some(t) if SPECIAL_VARIABLES.contains(&name) && t != "string" => self.push(
                PkgRule::TfVariable,
                line,
                format!("variable {name:?} is set by the platform: type must be string, not {t}"),
            ),
            Some(_) => {}
        }
        vars.entry(name.to_string()).or_insert(Var {
            file: self.file.to_string(),
            line,
            ty,
        });
    }

    fn resource_type(&mut self, ty: &str, data: bool, line: Option<u32>) {
        let ok = if let Some(rest) = ty.strip_prefix("ivkcs_") {
            let list = if data { IVKCS_DATA } else { IVKCS_RESOURCES };
            !rest.is_empty() && list.contains(&ty)
        } else if ty.starts_with("vkcs_") {
            VKCS_TYPES.contains(&ty)
        } else {
            ty.starts_with("random_") || ty.starts_with("time_")
        };
        if !ok {
            let kind = if data { "data source" } else { "resource" };
            self.push(
                PkgRule::TfResource,
                line,
                format!(
                    "{kind} type {ty:?} is not supported by the platform (ivkcs_*/vkcs_* types in VK's docs, random_*, time_*)"
                ),
            );
        }
    }

    fn agent_exec(&mut self, block: &Block, name: &str, line: Option<u32>) {
        let at = format!("ivkcs_agent_exec.{name}");
        let body = block.body();
        for key in ["hosts", "name", "uuid"] {
            if attr(body, key).is_none() {
                self.push(PkgRule::TfStep, line, format!("{at}: {key} is required"));
            }
        }
        let steps: Vec<&Block> = body.blocks().filter(|b| b.identifier() == "step").collect();
        if steps.is_empty() {
            self.push(
                PkgRule::TfStep,
                line,
                format!("{at}: at least one step block is required"),
            );
        }
        let mut indexes = BTreeSet::new();
        for (i, step) in steps.iter().enumerate() {
            let sat = format!("{at}.step[{i}]");
            let sline = nested_line(self.src, line, "step", i).or(line);
            for e in self.step(step.body(), &sat, &mut indexes) {
                self.push(PkgRule::TfStep, sline, e);
            }
        }
    }

    /// One step's problems; `indexes`: literal indexes seen so far.
    fn step(&mut self, body: &Body, at: &str, indexes: &mut BTreeSet<u64>) -> Vec<String> {
        let mut errs = Vec::new();
        let mut spec = Map::new();
        match attr(body, "index") {
            None => errs.push(format!("{at}: index is required")),
            Some(e) => match literal(e) {
                Some(Json::Number(n)) => match n.as_u64() {
                    Some(0) | None => errs.push(format!("{at}: index {n} must be 1 or more")),
                    Some(i) if !indexes.insert(i) => {
                        errs.push(format!("{at}: duplicate step index {i}"))
                    }
                    Some(i) => {
                        spec.insert("index".into(), i.into());
                    }
                },
                Some(v) => errs.push(format!("{at}: index must be a number, not {v}")),
                None => {}
            },
        }
        match attr(body, "type") {
            None => errs.push(format!("{at}: type is required (bash or python)")),
            Some(e) => match literal(e) {
                Some(Json::String(t)) if SCRIPT_TYPES.contains(&t.as_str()) => {
                    spec.insert("type".into(), t.into());
                }
                Some(v) => errs.push(format!("{at}: type {v} is not bash or python")),
                None => {}
            },
        }
        match attr(body, "content") {
            None => errs.push(format!("{at}: content is required")),
            Some(e) => {
                if let Some(v @ Json::String(_)) = literal(e) {
                    spec.insert("content".into(), v);
                }
            }
        }
        spec.insert("options".into(), Json::Object(options(body)));
        for a in body.attributes() {
            if !["index", "type", "content", "options"].contains(&a.key()) {
                errs.push(format!("{at}: unknown argument {}", a.key()));
            }
        }
        if !errs.is_empty() {
            return errs;
        }
        // Stand-ins for what is not a literal, so the rest still goes
        // through ibkit's own parsing and validation.
        spec.entry("index").or_insert(1.into());
        spec.entry("content").or_insert("".into());
        match serde_json::from_value::<StepSpec>(Json::Object(spec)) {
            Err(e) => errs.push(format!("{at}: {}", option_error(body, &e))),
            Ok(s) => {
                if let Err(e) = s.options.validate() {
                    errs.push(format!("{at}: options: {e}"));
                }
            }
        }
        errs
    }

    fn agent_check(&mut self, block: &Block, name: &str, line: Option<u32>) {
        let at = format!("ivkcs_agent_check.{name}");
        let body = block.body();
        for key in ["hosts", "uuid"] {
            if attr(body, key).is_none() {
                self.push(PkgRule::TfHealth, line, format!("{at}: {key} is required"));
            }
        }
        let hosts: Vec<Json> = match attr(body, "hosts").and_then(literal) {
            Some(Json::Array(h)) if h.iter().all(Json::is_string) => h,
            _ => Vec::new(),
        };
        let kinds = ["port_health", "http_health", "script_health"];
        let checks: Vec<&Block> = body
            .blocks()
            .filter(|b| kinds.contains(&b.identifier()))
            .collect();
        if checks.is_empty() {
            self.push(
                PkgRule::TfHealth,
                line,
                format!("{at}: needs a port_health, http_health or script_health block"),
            );
        }
        for (i, check) in checks.iter().enumerate() {
            let kind = check.identifier();
            let cat = format!("{at}.{kind}[{i}]");
            let nth = checks[..i]
                .iter()
                .filter(|c| c.identifier() == kind)
                .count();
            let cline = nested_line(self.src, line, kind, nth).or(line);
            for m in health(check.body(), kind, &hosts) {
                self.push(PkgRule::TfHealth, cline, format!("{cat}: {m}"));
            }
        }
    }

    fn output(&mut self, block: &Block, name: &str, line: Option<u32>) {
        let body = block.body();
        let Some(value) = attr(body, "value") else {
            return;
        };
        let sensitive = match attr(body, "sensitive") {
            None => false,
            Some(Expression::Bool(b)) => *b,
            // A computed flag: cannot tell, so do not report.
            Some(_) => return,
        };
        if sensitive {
            return;
        }
        let text = value.to_string().to_ascii_lowercase();
        if text.contains("private_key") {
            self.push(
                PkgRule::TfSensitive,
                line,
                format!("output {name:?} carries a private key: set sensitive = true (VK forbids it otherwise)"),
            );
        } else if ["random_password.", "ivkcs_agent_script_result", "password"]
            .iter()
            .any(|w| text.contains(w))
        {
            self.warn(
                PkgRule::TfSensitive,
                line,
                format!("output {name:?} looks like a password or a script's secret result: set sensitive = true"),
            );
        }
    }
}

/// Fields each health kind takes (VK's `ivkcs_agent_check`) and which of
/// them are required.
fn health_fields(kind: &str) -> (&'static [&'static str], &'static [&'static str]) {
    match kind {
        "port_health" => (&["host", "period", "port"], &["host", "period", "port"]),
        "http_health" => (
            &[
                "protocol",
                "method",
                "host",
                "path",
                "period",
                "port",
                "http_codes",
                "url",
            ],
            &["protocol", "method", "host", "period", "http_codes"],
        ),
        _ => (
            &["type", "script", "options", "period"],
            &["type", "script"],
        ),
    }
}

/// A health block's problems: its fields first; when those are right,
/// what ibkit's [`HealthCheck`] parsing and validation say.
fn health(body: &Body, kind: &str, hosts: &[Json]) -> Vec<String> {
    let (known, required) = health_fields(kind);
    let mut errs: Vec<String> = required
        .iter()
        .filter(|k| attr(body, k).is_none())
        .map(|k| format!("{k} is required"))
        .collect();
    for a in body.attributes() {
        if !known.contains(&a.key()) {
            errs.push(format!("unknown argument {}", a.key()));
        }
    }
    let mut j = Map::new();
    // VK's check has no name; ibkit's needs one and it is not checked here.
    j.insert("name".into(), "check".into());
    j.insert("hosts".into(), Json::Array(hosts.to_vec()));
    j.insert("kind".into(), kind.into());
    for a in body.attributes() {
        let Some(v) = literal(a.expr()) else { continue };
        let key = match (kind, a.key()) {
            ("script_health", "type") => "script_type",
            ("script_health", "options") => continue,
            (_, k) => k,
        };
        if key == "method"
            && let Json::String(m) = &v
            && !HTTP_METHODS.contains(&m.as_str())
        {
            errs.push(format!(
                "method {m:?} is not one of {}",
                HTTP_METHODS.join(", ")
            ));
        }
        if key == "script_type"
            && !matches!(&v, Json::String(t) if SCRIPT_TYPES.contains(&t.as_str()))
        {
            errs.push(format!("type {v} is not bash or python"));
            continue;
        }
        if known.contains(&a.key()) {
            j.insert(key.into(), v);
        }
    }
    if !errs.is_empty() {
        return errs;
    }
    if kind == "script_health" {
        j.insert("options".into(), Json::Object(options(body)));
        j.entry("script").or_insert("".into());
    }
    if kind == "port_health" {
        j.entry("port").or_insert(1.into());
    }
    if kind == "http_health" && !j.contains_key("port") && !j.contains_key("url") {
        // VK's port is optional (the protocol's own); ibkit wants one.
        let https = j.get("protocol").and_then(Json::as_str) == Some("https");
        j.insert("port".into(), if https { 443 } else { 80 }.into());
    }
    // A non-literal protocol: any valid one stands in.
    if kind == "http_health" {
        j.entry("protocol").or_insert("http".into());
    }
    let check = match serde_json::from_value::<HealthCheck>(Json::Object(j)) {
        Ok(c) => c,
        Err(e) => {
            // serde's message does not name the field; a bad duration can
            // only be the period (script options are parsed as a whole).
            let bad_period =
                body_str(body, "period").is_some_and(|p| p.parse::<ibkit_api::Duration>().is_err());
            let at = if bad_period { "period: " } else { "" };
            return vec![format!("{at}{e}")];
        }
    };
    check.validate().err().into_iter().collect()
}

/// A step's (or `script_health`'s) `options`, as a block or an object,
/// with only the literal values: what is computed cannot be checked.
fn options(body: &Body) -> Map<String, Json> {
    let mut m = Map::new();
    if let Some(b) = body.blocks().find(|b| b.identifier() == "options") {
        for a in b.body().attributes() {
            if let Some(v) = literal(a.expr()) {
                m.insert(a.key().to_string(), v);
            }
        }
    } else if let Some(Expression::Object(o)) = attr(body, "options") {
        for (k, v) in o {
            if let Some(v) = literal(v) {
                m.insert(k.to_string(), v);
            }
        }
    }
    m
}

/// Which option a failed [`StepSpec`] parse is about: serde's message
/// does not name the field, so each option is parsed alone.
fn option_error(body: &Body, whole: &serde_json::Error) -> String {
    for (k, v) in options(body) {
        let one = Json::Object(Map::from_iter([(k.clone(), v)]));
        if let Err(e) = serde_json::from_value::<StepOptions>(one) {
            return format!("options.{k}: {e}");
        }
    }
    format!("options: {whole}")
}

/// A literal string attribute.
fn body_str(body: &Body, key: &str) -> Option<String> {
    match attr(body, key)? {
        Expression::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// The first attribute `key` of a body.
fn attr<'b>(body: &'b Body, key: &str) -> Option<&'b Expression> {
    body.attributes().find(|a| a.key() == key).map(|a| a.expr())
}

/// A variable's type as written: `string`, `list(string)`, or a legacy
/// quoted `"string"`.
fn type_name(e: &Expression) -> String {
    match e {
        Expression::String(s) => s.clone(),
        e => e.to_string(),
    }
}

/// The JSON value of a literal expression; `None` for anything computed
/// (or containing something computed).
fn literal(e: &Expression) -> Option<Json> {
    Some(match e {
        Expression::Null => Json::Null,
        Expression::Bool(b) => Json::Bool(*b),
        Expression::Number(n) => serde_json::to_value(n).ok()?,
        Expression::String(s) => Json::String(s.clone()),
        Expression::Array(a) => Json::Array(a.iter().map(literal).collect::<Option<_>>()?),
        Expression::Parenthesis(e) => literal(e)?,
        _ => return None,
    })
}

/// The 1-based line of the `nth` (from 0) nested block `ident {` below the
/// header at line `after` (a step, a health check), searched for like
/// [`block_line`] (a heredoc line that looks like a block header can
/// mislead both); `None` when not found, e.g. a one-line block.
fn nested_line(src: &str, after: Option<u32>, ident: &str, nth: usize) -> Option<u32> {
    let re = regex::Regex::new(&format!(r"^[ \t]*{}[ \t]*\{{", regex::escape(ident))).ok()?;
    let (i, _) = src
        .lines()
        .enumerate()
        .skip(usize::try_from(after?).ok()?)
        .filter(|(_, l)| re.is_match(l))
        .nth(nth)?;
    u32::try_from(i + 1).ok()
}

/// The 1-based line of a block's header (`resource "TYPE" "NAME" {`):
/// hcl-rs keeps no positions, so the source is searched for it.
pub fn block_line(src: &str, ident: &str, labels: &[&str]) -> Option<u32> {
    let mut pat = format!(r"(?m)^[ \t]*{}", regex::escape(ident));
    for l in labels {
        // Labels may be quoted or bare identifiers.
        pat.push_str(&format!(r#"[ \t]+"?{}"?"#, regex::escape(l)));
    }
    pat.push_str(r"[ \t]*\{");
    let re = regex::Regex::new(&pat).ok()?;
    let at = re.find(src)?.start();
    u32::try_from(src[..at].matches('\n').count() + 1).ok()
}

/// An image the plans' Terraform boots from, with the names
/// `ibkit package lint --image KEY=PATH` may give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The `.tf` file and the line of the block that names the image.
    pub file: String,
    pub line: Option<u32>,
    /// For `data "vkcs_images_image" "L"`: `L`,
    /// `data.vkcs_images_image.L` and its literal `name`/`id`; for an
    /// `image_id`, `image_name` or an image `block_device`'s `uuid`: the
    /// literal value, or for `var.X`: `X`, `var.X` and X's literal default.
    pub keys: Vec<String>,
}

/// Every image the plans' Terraform names, in file order. Files that do
/// not parse are skipped (PKG-TF-PARSE reports them).
pub fn image_refs(pkg: &PackageFiles) -> Vec<ImageRef> {
    let mut refs: Vec<ImageRef> = Vec::new();
    for plan in pkg.plans() {
        let dir = format!("plans/{plan}/deployment");
        let bodies: Vec<(&str, &str, Body)> = pkg
            .under(&dir, true)
            .filter(|p| p.ends_with(".tf"))
            .filter_map(|f| {
                let src = pkg.text(f)?.ok()?;
                Some((f, src, crate::tf::parse_body(src).ok()?))
            })
            .collect();
        // A variable may be declared in another file of the plan.
        let defaults: BTreeMap<&str, Option<String>> = bodies
            .iter()
            .flat_map(|(_, _, b)| b.blocks())
            .filter_map(|b| match (b.identifier(), b.labels()) {
                ("variable", [name]) => Some((name.as_str(), body_str(b.body(), "default"))),
                _ => None,
            })
            .collect();
        for (file, src, body) in &bodies {
            for block in body.blocks() {
                let labels: Vec<&str> = block.labels().iter().map(|l| l.as_str()).collect();
                let mut keys = Vec::new();
                match (block.identifier(), labels.as_slice()) {
                    ("data", ["vkcs_images_image", name]) => {
                        keys.push(name.to_string());
                        keys.push(format!("data.vkcs_images_image.{name}"));
                        keys.extend(
                            ["name", "id"]
                                .iter()
                                .filter_map(|k| body_str(block.body(), k)),
                        );
                    }
                    ("resource", [_, _]) => {
                        let b = block.body();
                        let mut exprs: Vec<&Expression> = ["image_id", "image_name"]
                            .iter()
                            .filter_map(|k| attr(b, k))
                            .collect();
                        exprs.extend(
                            b.blocks()
                                .filter(|d| {
                                    d.identifier() == "block_device"
                                        && body_str(d.body(), "source_type").as_deref()
                                            == Some("image")
                                })
                                .filter_map(|d| attr(d.body(), "uuid")),
                        );
                        for e in exprs {
                            image_keys(e, &defaults, &mut keys);
                        }
                    }
                    _ => continue,
                }
                let mut seen = BTreeSet::new();
                keys.retain(|k| seen.insert(k.clone()));
                if !keys.is_empty() && !refs.iter().any(|r| r.keys == keys) {
                    refs.push(ImageRef {
                        file: file.to_string(),
                        line: block_line(src, block.identifier(), &labels),
                        keys,
                    });
                }
            }
        }
    }
    refs
}

/// The names an image expression gives: a literal, or `var.X` (`X`,
/// `var.X`, X's literal default). A data source's `.id` is named by the
/// data block itself.
fn image_keys(e: &Expression, defaults: &BTreeMap<&str, Option<String>>, keys: &mut Vec<String>) {
    match e {
        Expression::String(s) => keys.push(s.clone()),
        Expression::Traversal(t) => {
            if let (Expression::Variable(v), [hcl::TraversalOperator::GetAttr(name)]) =
                (&t.expr, t.operators.as_slice())
                && v.as_str() == "var"
            {
                keys.push(name.as_str().to_string());
                keys.push(format!("var.{}", name.as_str()));
                if let Some(Some(d)) = defaults.get(name.as_str()) {
                    keys.push(d.clone());
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(tf: &str) -> PackageFiles {
        let mut p = PackageFiles::default();
        p.files.insert(
            "plans/free/deployment/main.tf".into(),
            tf.as_bytes().to_vec(),
        );
        p
    }

    #[test]
    fn image_names() {
        let p = pkg(r#"
variable "image" {
  type    = string
  default = "3f9c2b1e-0000-4000-8000-000000000001"
}

data "vkcs_images_image" "app" {
  name = "grafana"
}

resource "vkcs_compute_instance" "vm" {
  image_id = var.image
  block_device {
    source_type = "image"
    uuid        = data.vkcs_images_image.app.id
  }
}

resource "vkcs_compute_instance" "other" {
  block_device {
    source_type = "blank"
    uuid        = "not-an-image"
  }
  block_device {
    source_type = "image"
    uuid        = "ubuntu-22.04"
  }
}
"#);
        let refs = image_refs(&p);
        let keys: Vec<&[String]> = refs.iter().map(|r| r.keys.as_slice()).collect();
        assert_eq!(
            keys,
            [
                &["app", "data.vkcs_images_image.app", "grafana"][..],
                &["image", "var.image", "3f9c2b1e-0000-4000-8000-000000000001"][..],
                &["ubuntu-22.04"][..],
            ]
        );
        assert_eq!(refs[0].line, Some(7));
        assert_eq!(refs[2].line, Some(19));
    }

    #[test]
    fn nested_lines() {
        let src = "resource \"a\" \"b\" {\n  step {\n  }\n  step {\n  }\n}\n";
        assert_eq!(nested_line(src, Some(1), "step", 0), Some(2));
        assert_eq!(nested_line(src, Some(1), "step", 1), Some(4));
        assert_eq!(nested_line(src, Some(1), "step", 2), None);
        assert_eq!(nested_line(src, None, "step", 0), None);
    }
}

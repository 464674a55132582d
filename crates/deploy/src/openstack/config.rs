//! OpenStack client configuration: `clouds.yaml` + `secure.yaml` and the
//! `OS_*` environment variables, read the way openstacksdk
//! (`openstack.config.loader`, formerly os-client-config) and therefore
//! python-openstackclient read them.
//!
//! Which cloud [`load_cloud`] returns:
//!
//! 1. the cloud named by the caller, else `$OS_CLOUD`: from the clouds
//!    file; the name `envvars` with no such cloud in the file means the
//!    `OS_*` variables;
//! 2. with no name: the `OS_*` variables when `OS_AUTH_URL` is set (as
//!    openstacksdk does, environment variables win over a lone cloud in
//!    the file, so `ibkit` and `openstack` talk to the same cloud);
//! 3. else the only cloud of the clouds file.
//!
//! Files: `$OS_CLIENT_CONFIG_FILE` alone when set (it must exist), else
//! the first of `clouds.{yaml,yml,json}` in `./`,
//! `$XDG_CONFIG_HOME/openstack` (default `~/.config/openstack`),
//! `~/.config/openstack` and `/etc/openstack`. `secure.*` is looked up
//! the same way (`$OS_CLIENT_SECURE_FILE`, also spelt `$OS_SECURE_FILE`)
//! and deep-merged over the clouds file: maps merge, other values from
//! secure.yaml win.
//!
//! Deliberate differences from openstacksdk:
//! - a cloud from a file is used as written: `OS_*` variables (even
//!   `OS_REGION_NAME`) do not override it;
//! - an unreadable or malformed file is an error, not skipped;
//! - vendor profiles (`profile:` / `cloud:`), Keystone v2 and auth types
//!   other than password and application credential are refused;
//! - a scalar keeps its exact spelling (`password: 0x1F` is the text
//!   `0x1F`, not 31; a 30-digit number is not rounded);
//! - `auth_url` is not `str.format`-expanded.
//!
//! Errors name the file (or `the environment`) and the key path
//! (`clouds.ibkit.auth.password`, `OS_PASSWORD`) and never contain a
//! value from the configuration that could be a secret: parser messages
//! are reduced to their wording and position.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use serde_saphyr::Spanned;

use crate::userdata::Secret;

/// Configuration files larger than this are refused (they are a few KiB).
pub const MAX_CONFIG_FILE_BYTES: u64 = 1024 * 1024;
/// The name of the cloud made of `OS_*` environment variables.
pub const ENV_CLOUD_NAME: &str = "envvars";
const SYSTEM_CONFIG_DIR: &str = "/etc/openstack";
const FILE_SUFFIXES: [&str; 3] = ["yaml", "yml", "json"];
/// Deepest nesting of maps and lists accepted in a file (clouds.yaml
/// needs about six levels).
const MAX_YAML_DEPTH: usize = 16;
/// The parser's own thread's stack: serde-saphyr takes tens of KiB per
/// nesting level once optimised, more than a tokio worker can spare.
const PARSE_STACK_BYTES: usize = 8 * 1024 * 1024;
/// Longest excerpt of a (non-secret) value quoted in an error.
const MAX_QUOTED_VALUE: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Interface {
    #[default]
    Public,
    Internal,
    Admin,
}

impl Interface {
    pub fn as_str(&self) -> &'static str {
        match self {
            Interface::Public => "public",
            Interface::Internal => "internal",
            Interface::Admin => "admin",
        }
    }

    /// `public`, `internal`, `admin`, and the Keystone v2 catalogue
    /// spellings `publicURL`… that `endpoint_type` uses.
    fn parse(s: &str) -> Option<Interface> {
        match s.to_ascii_lowercase().as_str() {
            "public" | "publicurl" | "public_url" => Some(Interface::Public),
            "internal" | "internalurl" | "internal_url" => Some(Interface::Internal),
            "admin" | "adminurl" | "admin_url" => Some(Interface::Admin),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameOrId {
    Name(String),
    Id(String),
}

#[derive(Debug, Clone)]
pub enum Auth {
    Password {
        /// As written; the API code normalises `/v3`.
        auth_url: String,
        user: NameOrId,
        /// `user_domain_*`, else `domain_*`.
        user_domain: Option<NameOrId>,
        password: Secret,
        /// `project_*` / `tenant_*`; `None`: an unscoped token.
        project: Option<NameOrId>,
        /// `project_domain_*`, else `domain_*`.
        project_domain: Option<NameOrId>,
    },
    ApplicationCredential {
        auth_url: String,
        id: Option<String>,
        /// With a name (and no id), `user` and, for a user name,
        /// `user_domain` are set.
        name: Option<String>,
        user: Option<NameOrId>,
        user_domain: Option<NameOrId>,
        secret: Secret,
    },
}

impl Auth {
    pub fn auth_url(&self) -> &str {
        match self {
            Auth::Password { auth_url, .. } | Auth::ApplicationCredential { auth_url, .. } => {
                auth_url
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct CloudConfig {
    /// The cloud's name (`envvars` for the `OS_*` variables).
    pub name: String,
    pub auth: Auth,
    pub region: Option<String>,
    pub interface: Interface,
    /// TLS certificate verification; `insecure: true` turns it off.
    pub verify: bool,
    /// Extra CA bundle, `~` expanded, relative to `cwd`.
    pub cacert: Option<PathBuf>,
    /// The clouds file the cloud came from (`None` for the environment).
    pub source: Option<PathBuf>,
}

impl CloudConfig {
    pub fn auth_url(&self) -> &str {
        self.auth.auth_url()
    }
}

/// Where files are searched and which environment applies;
/// [`ConfigSources::from_env`] reads the process's. `Debug` masks
/// passwords and secrets.
#[derive(Clone, Default)]
pub struct ConfigSources {
    /// A snapshot of the `OS_*` variables and `XDG_CONFIG_HOME`.
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    pub home: Option<PathBuf>,
}

impl fmt::Debug for ConfigSources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env: BTreeMap<&str, &str> = self
            .env
            .iter()
            .map(|(k, v)| {
                let secret = ["PASSWORD", "SECRET", "TOKEN", "PASSCODE"]
                    .iter()
                    .any(|s| k.contains(s));
                (k.as_str(), if secret { "***" } else { v.as_str() })
            })
            .collect();
        f.debug_struct("ConfigSources")
            .field("env", &env)
            .field("cwd", &self.cwd)
            .field("home", &self.home)
            .finish()
    }
}

impl ConfigSources {
    pub fn from_env() -> Self {
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| k.starts_with("OS_") || k == "XDG_CONFIG_HOME")
            .collect();
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from);
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        ConfigSources { env, cwd, home }
    }

    /// A variable's value; empty counts as unset (as in openstacksdk).
    fn var(&self, name: &str) -> Option<&str> {
        self.env
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// `~` and `~/…` expanded with `home`; relative paths joined to `cwd`.
    fn resolve(&self, p: &str) -> PathBuf {
        let expanded = match (p.strip_prefix('~'), &self.home) {
            (Some(""), Some(home)) => home.clone(),
            (Some(rest), Some(home)) if rest.starts_with('/') => {
                home.join(rest.trim_start_matches('/'))
            }
            _ => PathBuf::from(p),
        };
        if expanded.is_absolute() {
            expanded
        } else {
            self.cwd.join(expanded)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no OpenStack cloud configured: OS_AUTH_URL is not set and there is no clouds file (searched {})",
        list_paths(searched)
    )]
    NoConfig { searched: Vec<PathBuf> },
    #[error(
        "cloud {cloud:?} requested but there is no clouds file (searched {})",
        list_paths(searched)
    )]
    NoConfigFile {
        cloud: String,
        searched: Vec<PathBuf>,
    },
    #[error("{var} is {}, which does not exist", path.display())]
    EnvFileMissing { var: &'static str, path: PathBuf },
    #[error(
        "{origin}: clouds.{cloud}: no such cloud (defined: {})",
        list_names(available)
    )]
    CloudNotFound {
        cloud: String,
        origin: String,
        available: Vec<String>,
    },
    #[error(
        "{origin}: clouds: {} clouds are defined ({}); choose one with OS_CLOUD",
        available.len(),
        list_names(available)
    )]
    AmbiguousCloud {
        origin: String,
        available: Vec<String>,
    },
    #[error("{origin}: clouds: no cloud is defined and OS_AUTH_URL is not set")]
    NoClouds { origin: String },
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}: larger than {MAX_CONFIG_FILE_BYTES} bytes; not an OpenStack configuration file",
        path.display()
    )]
    TooLarge { path: PathBuf },
    #[error("{}: not UTF-8 text", path.display())]
    NotUtf8 { path: PathBuf },
    #[error("{}:{line}:{column}: invalid YAML: {message}", path.display())]
    Yaml {
        path: PathBuf,
        line: u64,
        column: u64,
        /// The parser's wording only, never the document's text.
        message: String,
    },
    #[error("{origin}: {key}: {reason}")]
    Invalid {
        /// A file (`… + secure.yaml` when merged) or `the environment`.
        origin: String,
        /// `clouds.<name>.auth.auth_url`, or `OS_AUTH_URL`.
        key: String,
        reason: String,
    },
}

fn list_paths(paths: &[PathBuf]) -> String {
    let v: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    v.join(", ")
}

fn list_names(names: &[String]) -> String {
    if names.is_empty() {
        return "none".into();
    }
    let v: Vec<String> = names.iter().map(|n| quote(n)).collect();
    v.join(", ")
}

/// A non-secret value for an error message: debug-quoted, shortened.
fn quote(s: &str) -> String {
    if s.chars().count() > MAX_QUOTED_VALUE {
        let head: String = s.chars().take(MAX_QUOTED_VALUE).collect();
        format!("{head:?}…")
    } else {
        format!("{s:?}")
    }
}

/// Loads the cloud named `cloud`, else `$OS_CLOUD`; without a name the
/// `OS_*` variables when `OS_AUTH_URL` is set, else the only cloud in the
/// clouds file. See the module documentation.
pub fn load_cloud(
    cloud: Option<&str>,
    sources: &ConfigSources,
) -> Result<CloudConfig, ConfigError> {
    load_cloud_in(cloud, sources, Path::new(SYSTEM_CONFIG_DIR))
}

/// [`load_cloud`] with the system directory as a parameter (tests).
fn load_cloud_in(
    cloud: Option<&str>,
    sources: &ConfigSources,
    system_dir: &Path,
) -> Result<CloudConfig, ConfigError> {
    let requested = cloud
        .filter(|c| !c.is_empty())
        .or_else(|| sources.var("OS_CLOUD"));
    if requested.is_none() && sources.var("OS_AUTH_URL").is_some() {
        return env_cloud(sources);
    }

    let dirs = search_dirs(sources, system_dir);
    let mut searched = Vec::new();
    let clouds_path = find_file(
        sources,
        &["OS_CLIENT_CONFIG_FILE"],
        "clouds",
        &dirs,
        &mut searched,
    )?;
    let secure_path = find_file(
        sources,
        &["OS_CLIENT_SECURE_FILE", "OS_SECURE_FILE"],
        "secure",
        &dirs,
        &mut Vec::new(),
    )?;
    let loaded = load_files(clouds_path, secure_path)?;

    match (requested, loaded) {
        (Some(name), Some(l)) => match l.clouds.get(name) {
            Some(tree) => {
                let naming = Naming::File {
                    cloud: name.to_owned(),
                };
                extract(name, tree, &l.origin, &naming, l.source.clone(), sources)
            }
            None if name == ENV_CLOUD_NAME => env_cloud(sources),
            None => Err(ConfigError::CloudNotFound {
                cloud: name.to_owned(),
                origin: l.origin,
                available: l.clouds.keys().cloned().collect(),
            }),
        },
        (Some(name), None) if name == ENV_CLOUD_NAME => env_cloud(sources),
        (Some(name), None) => Err(ConfigError::NoConfigFile {
            cloud: name.to_owned(),
            searched,
        }),
        (None, Some(l)) => {
            let mut clouds = l.clouds.iter();
            match (clouds.next(), clouds.next()) {
                (Some((name, tree)), None) => {
                    let naming = Naming::File {
                        cloud: name.clone(),
                    };
                    extract(name, tree, &l.origin, &naming, l.source.clone(), sources)
                }
                (None, _) => Err(ConfigError::NoClouds { origin: l.origin }),
                (Some(_), Some(_)) => Err(ConfigError::AmbiguousCloud {
                    origin: l.origin,
                    available: l.clouds.keys().cloned().collect(),
                }),
            }
        }
        (None, None) => Err(ConfigError::NoConfig { searched }),
    }
}

// ------------------------------------------------------------------ files

/// The directories searched, in order, without repeats.
fn search_dirs(sources: &ConfigSources, system_dir: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![sources.cwd.clone()];
    let home_config = sources.home.as_ref().map(|h| h.join(".config"));
    // XDG: a relative XDG_CONFIG_HOME is invalid and ignored.
    let xdg = sources
        .var("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| home_config.clone());
    for d in [xdg, home_config].into_iter().flatten() {
        dirs.push(d.join("openstack"));
    }
    dirs.push(system_dir.to_path_buf());
    let mut unique: Vec<PathBuf> = Vec::new();
    for d in dirs {
        if !unique.contains(&d) {
            unique.push(d);
        }
    }
    unique
}

/// The first variable of `vars` that is set names the only candidate
/// (it must exist); else the first `<stem>.<suffix>` found in `dirs`.
/// Every candidate looked at is appended to `searched`.
fn find_file(
    sources: &ConfigSources,
    vars: &[&'static str],
    stem: &str,
    dirs: &[PathBuf],
    searched: &mut Vec<PathBuf>,
) -> Result<Option<PathBuf>, ConfigError> {
    for var in vars {
        if let Some(v) = sources.var(var) {
            let path = sources.resolve(v);
            searched.push(path.clone());
            return if path.exists() {
                Ok(Some(path))
            } else {
                Err(ConfigError::EnvFileMissing { var, path })
            };
        }
    }
    for d in dirs {
        for suffix in FILE_SUFFIXES {
            let path = d.join(format!("{stem}.{suffix}"));
            searched.push(path.clone());
            if path.exists() {
                return Ok(Some(path));
            }
        }
    }
    Ok(None)
}

/// The clouds of the merged files.
struct Loaded {
    clouds: Map<String, Value>,
    origin: String,
    source: Option<PathBuf>,
}

fn load_files(
    clouds_path: Option<PathBuf>,
    secure_path: Option<PathBuf>,
) -> Result<Option<Loaded>, ConfigError> {
    let (mut doc, origin, source) = match (&clouds_path, &secure_path) {
        (None, None) => return Ok(None),
        (Some(c), None) => (read_document(c)?, c.display().to_string(), c.clone()),
        (None, Some(s)) => (read_document(s)?, s.display().to_string(), s.clone()),
        (Some(c), Some(s)) => {
            let mut doc = read_document(c)?;
            deep_merge(&mut doc, read_document(s)?);
            let origin = format!("{} + {}", c.display(), s.display());
            (doc, origin, c.clone())
        }
    };
    let clouds = match doc.remove("clouds") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(ConfigError::Invalid {
                origin,
                key: "clouds".into(),
                reason: "must be a mapping of cloud names to settings".into(),
            });
        }
    };
    Ok(Some(Loaded {
        clouds,
        origin,
        source: Some(source),
    }))
}

/// Reads and parses one file; its top level must be a mapping (an empty
/// file is an empty mapping).
fn read_document(path: &Path) -> Result<Map<String, Value>, ConfigError> {
    let read_err = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    // Bounded read: the size on disk is not trusted (FIFOs, growing files).
    file.take(MAX_CONFIG_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_CONFIG_FILE_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let text = String::from_utf8(bytes).map_err(|_| ConfigError::NotUtf8 {
        path: path.to_path_buf(),
    })?;
    match parse_yaml(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(_) => Err(ConfigError::Invalid {
            origin: path.display().to_string(),
            key: "(top level)".into(),
            reason: "must be a mapping with a `clouds` key".into(),
        }),
        Err(e) => Err(yaml_error(path, &text, &e)),
    }
}

/// `over` into `base`: maps merge recursively, anything else but null
/// replaces.
fn deep_merge(base: &mut Map<String, Value>, over: Map<String, Value>) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (_, Value::Null) => {}
            (Some(Value::Object(b)), Value::Object(o)) => deep_merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

// ------------------------------------------------------------------- YAML

/// A YAML node with its source position, so that a number can be read
/// back with its exact spelling (a numeric password must not become a
/// float).
enum Node {
    Null,
    Bool(bool),
    Str(String),
    /// The parsed number, formatted; used when the source text is unknown.
    Num(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(String, Spanned<Node>)>),
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Num(v.to_string()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Num(v.to_string()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Node, E> {
        Ok(Node::Num(v.to_string()))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Node, E> {
        Ok(Node::Num(v.to_string()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Num(v.to_string()))
    }
    fn visit_char<E>(self, v: char) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Node, E> {
        Ok(Node::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<String, Spanned<Node>>()? {
            entries.push(entry);
        }
        Ok(Node::Map(entries))
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_YAML_DEPTH;
    budget.flow_nesting_limit = MAX_YAML_DEPTH;
    serde_saphyr::options! {
        budget: Some(budget),
        // No source snippet in errors: it could show a secret.
        with_snippet: false,
        crop_radius: 0,
        // yes/no/on/off stay text (a region "NO", a password "on").
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::AsString,
        // PyYAML keeps the last of repeated keys.
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::LastWins,
    }
}

/// The document as a JSON-like tree; numbers become strings with their
/// source spelling, booleans stay booleans.
fn parse_yaml(text: &str) -> Result<Value, serde_saphyr::Error> {
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("clouds-yaml".into())
            .stack_size(PARSE_STACK_BYTES)
            .spawn_scoped(scope, || parse_yaml_here(text));
        match spawned {
            Ok(handle) => handle.join().unwrap_or_else(|_| {
                Err(<serde_saphyr::Error as de::Error>::custom(
                    "the YAML parser failed",
                ))
            }),
            // No thread to be had: the depth limit still bounds the stack.
            Err(_) => parse_yaml_here(text),
        }
    })
}

fn parse_yaml_here(text: &str) -> Result<Value, serde_saphyr::Error> {
    let root: Spanned<Node> = serde_saphyr::from_str_with_options(text, yaml_options())?;
    Ok(to_value(root, text))
}

fn to_value(node: Spanned<Node>, text: &str) -> Value {
    match node.value {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(b),
        Node::Str(s) => Value::String(s),
        Node::Num(formatted) => {
            // `defined`: for an alias or merge, where the value is written.
            let span = node.defined.span();
            let source = span
                .byte_offset()
                .zip(span.byte_len())
                .and_then(|(off, len)| {
                    let start = usize::try_from(off).ok()?;
                    let end = start.checked_add(usize::try_from(len).ok()?)?;
                    text.get(start..end)
                })
                .filter(|s| {
                    !s.is_empty()
                        && !s.starts_with(['"', '\'', '!', '*', '&'])
                        && !s.contains(char::is_whitespace)
                });
            Value::String(source.map_or(formatted, str::to_owned))
        }
        Node::Seq(items) => Value::Array(items.into_iter().map(|i| to_value(i, text)).collect()),
        Node::Map(entries) => Value::Object(
            entries
                .into_iter()
                .map(|(k, v)| (k, to_value(v, text)))
                .collect(),
        ),
    }
}

/// The parser's message without anything the document might have
/// contributed: quoted excerpts are dropped, and if a word of the lines
/// around the error still shows up, only the position is kept.
fn yaml_error(path: &Path, text: &str, err: &serde_saphyr::Error) -> ConfigError {
    let (line, column) = err.location().map_or((0, 0), |l| (l.line(), l.column()));
    let mut message = err.without_snippet().to_string();
    if let Some(i) = message.rfind(" at line ") {
        message.truncate(i);
    }
    // Hints meant for serde-saphyr's callers, not for the file's author.
    for hint in ["; use ", ", set ", ". If you"] {
        if let Some(i) = message.find(hint) {
            message.truncate(i);
        }
    }
    let mut message = strip_quoted(&message);
    let first = usize::try_from(line.saturating_sub(2)).unwrap_or(usize::MAX);
    let nearby: Vec<&str> = text.lines().skip(first).take(3).collect();
    let leaks = words(&message)
        .any(|w| w.chars().count() >= 4 && nearby.iter().any(|l| words(l).any(|lw| lw == w)));
    if leaks || message.trim().is_empty() {
        message = "syntax error".into();
    }
    if message.chars().count() > 200 {
        message = message.chars().take(200).collect::<String>() + "…";
    }
    ConfigError::Yaml {
        path: path.to_path_buf(),
        line,
        column,
        message,
    }
}

fn words(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
}

/// Replaces `…`, '…', "…" and `…' excerpts with `…`, drops control
/// characters.
fn strip_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        let closers: &[char] = match c {
            '`' => &['`', '\''],
            '"' => &['"'],
            '\'' => &['\''],
            c if c.is_control() => continue,
            c => {
                out.push(c);
                continue;
            }
        };
        out.push('…');
        for c in chars.by_ref() {
            if closers.contains(&c) {
                break;
            }
        }
    }
    out
}

// ------------------------------------------------------------ extraction

/// How keys are named in errors.
enum Naming {
    File { cloud: String },
    Env,
}

impl Naming {
    fn top(&self, key: &str) -> String {
        match self {
            Naming::File { cloud } => format!("clouds.{cloud}.{key}"),
            Naming::Env => format!("OS_{}", key.to_ascii_uppercase()),
        }
    }
    fn auth(&self, key: &str) -> String {
        match self {
            Naming::File { cloud } => format!("clouds.{cloud}.auth.{key}"),
            Naming::Env => format!("OS_{}", key.to_ascii_uppercase()),
        }
    }
}

/// The keys read from the environment: `OS_<KEY>` becomes `<key>`.
const ENV_KEYS: &[&str] = &[
    "auth_url",
    "username",
    "user_id",
    "password",
    "project_name",
    "project_id",
    "tenant_name",
    "tenant_id",
    "user_domain_name",
    "user_domain_id",
    "project_domain_name",
    "project_domain_id",
    "domain_name",
    "domain_id",
    "application_credential_id",
    "application_credential_name",
    "application_credential_secret",
    "auth_type",
    "region_name",
    "interface",
    "endpoint_type",
    "cacert",
    "insecure",
    "identity_api_version",
];

fn env_cloud(sources: &ConfigSources) -> Result<CloudConfig, ConfigError> {
    let mut tree = Map::new();
    for key in ENV_KEYS {
        if let Some(v) = sources.var(&format!("OS_{}", key.to_ascii_uppercase())) {
            tree.insert((*key).to_owned(), Value::String(v.to_owned()));
        }
    }
    extract(
        ENV_CLOUD_NAME,
        &Value::Object(tree),
        "the environment",
        &Naming::Env,
        None,
        sources,
    )
}

/// `-` in keys becomes `_` (openstacksdk's normalize_keys); a key
/// already spelt with `_` wins.
fn normalize_keys(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m.iter().filter(|(k, _)| !k.contains('-')) {
                out.insert(k.clone(), normalize_keys(v));
            }
            for (k, v) in m.iter().filter(|(k, _)| k.contains('-')) {
                out.entry(k.replace('-', "_"))
                    .or_insert_with(|| normalize_keys(v));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(normalize_keys).collect()),
        other => other.clone(),
    }
}

/// One cloud's settings, with errors naming their key.
struct Cloud<'a> {
    top: Map<String, Value>,
    auth: Map<String, Value>,
    origin: &'a str,
    naming: &'a Naming,
}

impl Cloud<'_> {
    fn invalid(&self, key: String, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.to_owned(),
            key,
            reason: reason.into(),
        }
    }

    /// A scalar as text; null and empty are absent. The value is never
    /// part of the error (it may be a secret).
    fn scalar(&self, v: Option<&Value>, key: String) -> Result<Option<String>, ConfigError> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Bool(b)) => Ok(Some(b.to_string())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(Value::Array(_) | Value::Object(_)) => {
                Err(self.invalid(key, "must be a single value, not a list or mapping"))
            }
        }
    }

    fn top_str(&self, key: &str) -> Result<Option<String>, ConfigError> {
        self.scalar(self.top.get(key), self.naming.top(key))
    }

    /// `auth.<key>`, else `<key>` at the cloud's top level (openstacksdk
    /// moves those into `auth`).
    fn auth_str(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.scalar(self.auth.get(key), self.naming.auth(key))? {
            Some(v) => Ok(Some(v)),
            None => self.scalar(self.top.get(key), self.naming.top(key)),
        }
    }

    fn name_or_id(
        &self,
        id_keys: &[&str],
        name_keys: &[&str],
    ) -> Result<Option<NameOrId>, ConfigError> {
        // An id wins over a name, as in keystoneauth.
        for k in id_keys {
            if let Some(v) = self.auth_str(k)? {
                return Ok(Some(NameOrId::Id(v)));
            }
        }
        for k in name_keys {
            if let Some(v) = self.auth_str(k)? {
                return Ok(Some(NameOrId::Name(v)));
            }
        }
        Ok(None)
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.top.get(key) {
            Some(Value::Bool(b)) => Ok(Some(*b)),
            other => match self.scalar(other, self.naming.top(key))? {
                None => Ok(None),
                Some(s) => match s.to_ascii_lowercase().as_str() {
                    "true" | "yes" | "on" | "1" => Ok(Some(true)),
                    "false" | "no" | "off" | "0" => Ok(Some(false)),
                    _ => Err(self.invalid(self.naming.top(key), "must be true or false")),
                },
            },
        }
    }
}

fn extract(
    name: &str,
    tree: &Value,
    origin: &str,
    naming: &Naming,
    source: Option<PathBuf>,
    sources: &ConfigSources,
) -> Result<CloudConfig, ConfigError> {
    let invalid = |key: String, reason: &str| ConfigError::Invalid {
        origin: origin.to_owned(),
        key,
        reason: reason.to_owned(),
    };
    let mut top = match normalize_keys(tree) {
        Value::Object(m) => m,
        _ => {
            return Err(invalid(
                format!("clouds.{name}"),
                "must be a mapping of settings",
            ));
        }
    };
    for key in ["profile", "cloud"] {
        match top.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(p)) => {
                return Err(invalid(
                    naming.top(key),
                    &format!(
                        "vendor profiles are not supported (profile {}); write the cloud's settings out in full",
                        quote(p)
                    ),
                ));
            }
            Some(_) => {
                return Err(invalid(
                    naming.top(key),
                    "vendor profiles are not supported",
                ));
            }
        }
    }

    let region = select_region(&top, naming, origin)?;
    if let Some((_, Some(values))) = &region {
        // A region's `values` override the cloud's settings.
        if let Value::Object(v) = normalize_keys(values) {
            deep_merge(&mut top, v);
        }
    }
    let region = region.map(|(r, _)| r);

    let auth = match top.remove("auth") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(invalid(naming.top("auth"), "must be a mapping")),
    };
    let c = Cloud {
        top,
        auth,
        origin,
        naming,
    };

    if let Some(v) = c.top_str("identity_api_version")? {
        let major = v.split('.').next().unwrap_or("");
        match major {
            "3" => {}
            "2" => {
                return Err(c.invalid(
                    naming.top("identity_api_version"),
                    "Keystone v2 is not supported (use 3)",
                ));
            }
            _ => {
                return Err(c.invalid(
                    naming.top("identity_api_version"),
                    format!("{} is not supported (use 3)", quote(&v)),
                ));
            }
        }
    }

    let interface = match (c.top_str("interface")?, c.top_str("endpoint_type")?) {
        (Some(v), _) => Some(("interface", v)),
        (None, Some(v)) => Some(("endpoint_type", v)),
        (None, None) => None,
    };
    let interface = match interface {
        None => Interface::default(),
        Some((key, v)) => Interface::parse(&v).ok_or_else(|| {
            c.invalid(
                naming.top(key),
                format!(
                    "{} is not an interface (use public, internal or admin)",
                    quote(&v)
                ),
            )
        })?,
    };

    let verify = c.bool("verify")?.unwrap_or(true) && !c.bool("insecure")?.unwrap_or(false);
    let cacert = c.top_str("cacert")?.map(|p| sources.resolve(&p));

    let auth = extract_auth(&c)?;
    Ok(CloudConfig {
        name: name.to_owned(),
        auth,
        region,
        interface,
        verify,
        cacert,
        source,
    })
}

/// `region_name` (the first of a comma-separated list), else the first
/// entry of `regions` (a name or `{name, values}`); with the chosen
/// `regions` entry's `values`.
fn select_region(
    top: &Map<String, Value>,
    naming: &Naming,
    origin: &str,
) -> Result<Option<(String, Option<Value>)>, ConfigError> {
    let invalid = |key: String, reason: &str| ConfigError::Invalid {
        origin: origin.to_owned(),
        key,
        reason: reason.to_owned(),
    };
    let entry_name = |i: usize, e: &Value| -> Result<(String, Option<Value>), ConfigError> {
        match e {
            Value::String(s) if !s.is_empty() => Ok((s.clone(), None)),
            Value::Object(m) => match m.get("name") {
                Some(Value::String(s)) if !s.is_empty() => {
                    Ok((s.clone(), m.get("values").cloned()))
                }
                _ => Err(invalid(
                    format!("{}[{i}].name", naming.top("regions")),
                    "is required and must be a string",
                )),
            },
            _ => Err(invalid(
                format!("{}[{i}]", naming.top("regions")),
                "must be a region name or a mapping with `name`",
            )),
        }
    };
    let regions: Vec<(String, Option<Value>)> = match top.get("regions") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, e)| entry_name(i, e))
            .collect::<Result<_, _>>()?,
        Some(Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| (s.to_owned(), None))
            .collect(),
        Some(_) => return Err(invalid(naming.top("regions"), "must be a list of regions")),
    };
    let named = match top.get("region_name") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .find(|s| !s.is_empty())
            .map(str::to_owned),
        Some(Value::Array(a)) => match a.first() {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            None => None,
            Some(_) => {
                return Err(invalid(naming.top("region_name"), "must be a region name"));
            }
        },
        Some(_) => return Err(invalid(naming.top("region_name"), "must be a region name")),
    };
    Ok(match named {
        Some(n) => {
            let values = regions
                .iter()
                .find(|(r, _)| *r == n)
                .and_then(|(_, v)| v.clone());
            Some((n, values))
        }
        None => regions.into_iter().next(),
    })
}

fn extract_auth(c: &Cloud<'_>) -> Result<Auth, ConfigError> {
    let naming = c.naming;
    let auth_url = c
        .auth_str("auth_url")?
        .ok_or_else(|| c.invalid(naming.auth("auth_url"), "is required"))?;
    let scheme_ok = auth_url
        .get(..8)
        .is_some_and(|p| p.eq_ignore_ascii_case("https://"))
        || auth_url
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("http://"));
    if !scheme_ok {
        return Err(c.invalid(
            naming.auth("auth_url"),
            "must be an http:// or https:// URL (the Keystone endpoint)",
        ));
    }

    let (type_key, auth_type) = match c.top_str("auth_type")? {
        Some(t) => ("auth_type", Some(t)),
        None => ("auth_plugin", c.top_str("auth_plugin")?),
    };
    let app_cred = match auth_type.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => ["secret", "id", "name"].iter().any(|k| {
            c.auth.contains_key(&format!("application_credential_{k}"))
                || c.top.contains_key(&format!("application_credential_{k}"))
        }),
        Some("password" | "v3password") => false,
        Some("v3applicationcredential" | "applicationcredential" | "application_credential") => {
            true
        }
        Some(_) => {
            let t = auth_type.as_deref().unwrap_or_default();
            return Err(c.invalid(
                naming.top(type_key),
                format!(
                    "auth_type {} is not supported (use password or v3applicationcredential)",
                    quote(t)
                ),
            ));
        }
    };

    let user = c.name_or_id(&["user_id"], &["username"])?;
    let user_domain = c.name_or_id(
        &["user_domain_id", "domain_id"],
        &["user_domain_name", "domain_name"],
    )?;
    // A user or project by name without a domain is left to the API
    // code, which uses Keystone's `default` domain as openstackclient does.

    if app_cred {
        let secret = c
            .auth_str("application_credential_secret")?
            .ok_or_else(|| {
                c.invalid(
                    naming.auth("application_credential_secret"),
                    "is required for application credential authentication",
                )
            })?;
        let id = c.auth_str("application_credential_id")?;
        let name = c.auth_str("application_credential_name")?;
        if id.is_none() {
            if name.is_none() {
                return Err(c.invalid(
                    naming.auth("application_credential_id"),
                    "is required (or application_credential_name with the user)",
                ));
            }
            if user.is_none() {
                return Err(c.invalid(
                    naming.auth("username"),
                    "is required with application_credential_name (or set user_id)",
                ));
            }
        }
        return Ok(Auth::ApplicationCredential {
            auth_url,
            id,
            name,
            user,
            user_domain,
            secret: Secret::new(secret),
        });
    }

    let user = user.ok_or_else(|| {
        c.invalid(
            naming.auth("username"),
            "is required for password authentication (or set user_id)",
        )
    })?;
    let password = c.auth_str("password")?.ok_or_else(|| {
        c.invalid(
            naming.auth("password"),
            "is required for password authentication",
        )
    })?;
    let project = c.name_or_id(
        &["project_id", "tenant_id"],
        &["project_name", "tenant_name"],
    )?;
    let project_domain = c.name_or_id(
        &["project_domain_id", "domain_id"],
        &["project_domain_name", "domain_name"],
    )?;
    Ok(Auth::Password {
        auth_url,
        user,
        user_domain,
        password: Secret::new(password),
        project,
        project_domain,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A unique marker: no error text or Debug output may contain it.
    const SECRET: &str = "Zq7-unique-S3cret-value-91";

    struct Env {
        dir: tempfile::TempDir,
        sources: ConfigSources,
    }

    impl Env {
        /// cwd = <tmp>/work, home = <tmp>/home, system dir = <tmp>/etc.
        fn new() -> Env {
            let dir = tempfile::tempdir().expect("tempdir");
            for d in ["work", "home", "etc"] {
                std::fs::create_dir_all(dir.path().join(d)).expect("mkdir");
            }
            let sources = ConfigSources {
                env: BTreeMap::new(),
                cwd: dir.path().join("work"),
                home: Some(dir.path().join("home")),
            };
            Env { dir, sources }
        }
        fn path(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }
        fn write(&self, rel: &str, text: &str) -> PathBuf {
            let p = self.path(rel);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).expect("mkdir");
            }
            std::fs::write(&p, text).expect("write");
            p
        }
        fn set(&mut self, k: &str, v: &str) {
            self.sources.env.insert(k.into(), v.into());
        }
        fn load(&self, cloud: Option<&str>) -> Result<CloudConfig, ConfigError> {
            load_cloud_in(cloud, &self.sources, &self.path("etc"))
        }
        fn err(&self, cloud: Option<&str>) -> ConfigError {
            match self.load(cloud) {
                Ok(c) => panic!("expected an error, got {c:?}"),
                Err(e) => {
                    assert_no_secret(&e);
                    e
                }
            }
        }
    }

    fn assert_no_secret(e: &ConfigError) {
        let shown = format!("{e} | {e:?}");
        assert!(!shown.contains(SECRET), "secret leaked: {shown}");
        assert!(!shown.contains("S3cret"), "secret leaked: {shown}");
    }

    fn password(c: &CloudConfig) -> &str {
        match &c.auth {
            Auth::Password { password, .. } => password.expose(),
            other => panic!("not password auth: {other:?}"),
        }
    }

    /// The shape scripts/openstack-aio.sh writes, with fake passwords.
    const AIO_CLOUDS: &str = r#"# Written by scripts/openstack-aio.sh start (all-in-one OpenStack Zed on 127.0.0.1).
clouds:
  ibkit-aio:
    auth:
      auth_url: http://127.0.0.1:5000/v3
      username: ibkit
      password: "fake-ibkit-password"
      project_name: ibkit
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    identity_api_version: 3
    interface: public
  ibkit-aio-admin:
    auth:
      auth_url: http://127.0.0.1:5000/v3
      username: admin
      password: "fake-admin-password"
      project_name: admin
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    identity_api_version: 3
    interface: public
"#;
    const AIO_SECURE: &str = r#"clouds:
  ibkit-aio:
    auth:
      password: "fake-ibkit-secure"
  ibkit-aio-admin:
    auth:
      password: "fake-admin-secure"
"#;

    #[test]
    fn aio_named_cloud_with_secure_file() {
        let mut env = Env::new();
        let clouds = env.write("state/clouds.yaml", AIO_CLOUDS);
        env.write("state/secure.yaml", AIO_SECURE);
        env.set("OS_CLIENT_CONFIG_FILE", &clouds.display().to_string());
        env.set(
            "OS_CLIENT_SECURE_FILE",
            &env.path("state/secure.yaml").display().to_string(),
        );
        let c = env.load(Some("ibkit-aio")).expect("load");
        assert_eq!(c.name, "ibkit-aio");
        assert_eq!(c.auth_url(), "http://127.0.0.1:5000/v3");
        assert_eq!(c.region.as_deref(), Some("RegionOne"));
        assert_eq!(c.interface, Interface::Public);
        assert_eq!(c.interface.as_str(), "public");
        assert!(c.verify);
        assert_eq!(c.cacert, None);
        assert_eq!(c.source.as_deref(), Some(clouds.as_path()));
        match &c.auth {
            Auth::Password {
                user,
                user_domain,
                password,
                project,
                project_domain,
                ..
            } => {
                assert_eq!(user, &NameOrId::Name("ibkit".into()));
                assert_eq!(user_domain, &Some(NameOrId::Name("Default".into())));
                assert_eq!(password.expose(), "fake-ibkit-secure");
                assert_eq!(project, &Some(NameOrId::Name("ibkit".into())));
                assert_eq!(project_domain, &Some(NameOrId::Name("Default".into())));
            }
            other => panic!("{other:?}"),
        }
        let admin = env.load(Some("ibkit-aio-admin")).expect("admin");
        assert_eq!(password(&admin), "fake-admin-secure");
        // Two clouds and no name: ambiguous, both listed.
        let e = env.err(None);
        assert!(matches!(e, ConfigError::AmbiguousCloud { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("\"ibkit-aio\"") && msg.contains("\"ibkit-aio-admin\""),
            "{msg}"
        );
        // OS_CLOUD names it.
        env.set("OS_CLOUD", "ibkit-aio-admin");
        assert_eq!(env.load(None).expect("os_cloud").name, "ibkit-aio-admin");
    }

    #[test]
    fn secure_yaml_supplies_the_password() {
        let env = Env::new();
        env.write(
            "work/clouds.yaml",
            "clouds:\n  c1:\n    auth:\n      auth_url: https://keystone.example:5000\n      username: u\n      user_domain_id: default\n      project_id: p123\n    region_name: R\n",
        );
        env.write(
            "home/.config/openstack/secure.yaml",
            "clouds:\n  c1:\n    auth:\n      password: from-secure\n      username: null\n    region_name: R2\n",
        );
        let c = env.load(Some("c1")).expect("load");
        assert_eq!(password(&c), "from-secure");
        // Scalars from secure.yaml win; the rest of auth is kept.
        assert_eq!(c.region.as_deref(), Some("R2"));
        assert_eq!(c.auth_url(), "https://keystone.example:5000");
        match &c.auth {
            Auth::Password {
                user_domain,
                project,
                project_domain,
                ..
            } => {
                assert_eq!(user_domain, &Some(NameOrId::Id("default".into())));
                assert_eq!(project, &Some(NameOrId::Id("p123".into())));
                assert_eq!(project_domain, &None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.source, Some(env.path("work/clouds.yaml")));
    }

    const ONE_CLOUD: &str = "clouds:\n  NAME:\n    auth:\n      auth_url: http://k:5000/v3\n      username: u\n      password: pw\n      domain_name: D\n      project_name: p\n";

    #[test]
    fn client_config_file_takes_precedence_and_must_exist() {
        let mut env = Env::new();
        env.write("work/clouds.yaml", &ONE_CLOUD.replace("NAME", "from-cwd"));
        let other = env.write("elsewhere/my.yaml", &ONE_CLOUD.replace("NAME", "from-var"));
        assert_eq!(env.load(None).expect("cwd").name, "from-cwd");
        env.set("OS_CLIENT_CONFIG_FILE", &other.display().to_string());
        let c = env.load(None).expect("var");
        assert_eq!(c.name, "from-var");
        assert_eq!(c.source, Some(other));
        // Only that file: the cwd cloud is not visible.
        let e = env.err(Some("from-cwd"));
        assert!(matches!(e, ConfigError::CloudNotFound { .. }), "{e}");
        env.set("OS_CLIENT_CONFIG_FILE", "~/missing.yaml");
        let e = env.err(None);
        let msg = e.to_string();
        assert!(msg.contains("OS_CLIENT_CONFIG_FILE"), "{msg}");
        assert!(
            msg.contains(&env.path("home/missing.yaml").display().to_string()),
            "{msg}"
        );
    }

    #[test]
    fn single_cloud_is_the_default_and_search_order() {
        let mut env = Env::new();
        env.write("etc/clouds.yaml", &ONE_CLOUD.replace("NAME", "system"));
        assert_eq!(env.load(None).expect("etc").name, "system");
        env.write(
            "home/.config/openstack/clouds.yml",
            &ONE_CLOUD.replace("NAME", "home-yml"),
        );
        assert_eq!(env.load(None).expect("home").name, "home-yml");
        env.write(
            "xdg/openstack/clouds.yaml",
            &ONE_CLOUD.replace("NAME", "xdg"),
        );
        env.set("XDG_CONFIG_HOME", &env.path("xdg").display().to_string());
        let c = env.load(None).expect("xdg");
        assert_eq!(c.name, "xdg");
        assert_eq!(c.source, Some(env.path("xdg/openstack/clouds.yaml")));
        match &c.auth {
            Auth::Password {
                user_domain,
                project_domain,
                ..
            } => {
                // domain_name stands for both.
                assert_eq!(user_domain, &Some(NameOrId::Name("D".into())));
                assert_eq!(project_domain, &Some(NameOrId::Name("D".into())));
            }
            other => panic!("{other:?}"),
        }
        env.write("work/clouds.json", &ONE_CLOUD.replace("NAME", "cwd-json"));
        assert_eq!(env.load(None).expect("cwd").name, "cwd-json");
    }

    fn set_env_auth(env: &mut Env) {
        env.set("OS_AUTH_URL", "https://id.example/v3");
        env.set("OS_USERNAME", "envuser");
        env.set("OS_PASSWORD", "envpass");
        env.set("OS_TENANT_NAME", "old-project");
        env.set("OS_PROJECT_NAME", "envproject");
        env.set("OS_USER_DOMAIN_NAME", "Default");
        env.set("OS_PROJECT_DOMAIN_ID", "default");
        env.set("OS_REGION_NAME", "EnvRegion");
        env.set("OS_ENDPOINT_TYPE", "internalURL");
        env.set("OS_CACERT", "~/ca.pem");
        env.set("OS_INSECURE", "false");
    }

    #[test]
    fn environment_cloud() {
        let mut env = Env::new();
        set_env_auth(&mut env);
        // Environment variables win over a lone cloud in a file (openstacksdk).
        env.write("work/clouds.yaml", &ONE_CLOUD.replace("NAME", "filecloud"));
        let c = env.load(None).expect("env");
        assert_eq!(c.name, ENV_CLOUD_NAME);
        assert_eq!(c.source, None);
        assert_eq!(c.auth_url(), "https://id.example/v3");
        assert_eq!(c.region.as_deref(), Some("EnvRegion"));
        assert_eq!(c.interface, Interface::Internal);
        assert!(c.verify);
        assert_eq!(c.cacert, Some(env.path("home/ca.pem")));
        match &c.auth {
            Auth::Password {
                user,
                user_domain,
                password,
                project,
                project_domain,
                ..
            } => {
                assert_eq!(user, &NameOrId::Name("envuser".into()));
                assert_eq!(user_domain, &Some(NameOrId::Name("Default".into())));
                assert_eq!(password.expose(), "envpass");
                assert_eq!(project, &Some(NameOrId::Name("envproject".into())));
                assert_eq!(project_domain, &Some(NameOrId::Id("default".into())));
            }
            other => panic!("{other:?}"),
        }
        // A named file cloud is used as written: no OS_* overrides.
        let f = env.load(Some("filecloud")).expect("file");
        assert_eq!(password(&f), "pw");
        assert_eq!(f.region, None);
        assert_eq!(f.interface, Interface::Public);
        // "envvars" by name, with no such cloud in the file.
        assert_eq!(env.load(Some("envvars")).expect("envvars").name, "envvars");
        env.set("OS_INSECURE", "true");
        assert!(!env.load(None).expect("insecure").verify);
        let shown = format!("{:?}", env.sources);
        assert!(
            shown.contains("\"OS_PASSWORD\": \"***\"") && !shown.contains("envpass"),
            "{shown}"
        );
        // Errors name the variable.
        env.sources.env.remove("OS_PASSWORD");
        let msg = env.err(None).to_string();
        assert!(
            msg.starts_with("the environment: OS_PASSWORD: is required"),
            "{msg}"
        );
    }

    #[test]
    fn application_credentials() {
        let env = Env::new();
        env.write(
            "work/clouds.yaml",
            r#"clouds:
  by-id:
    auth_type: v3applicationcredential
    auth:
      auth_url: https://k/v3
      application_credential_id: "abc123"
      application_credential_secret: 0123456
  by-name:
    auth:
      auth_url: https://k/v3
      application_credential_name: ci
      application_credential_secret: s
      username: bob
      user_domain_name: Default
  no-user:
    auth_type: applicationcredential
    auth:
      auth_url: https://k/v3
      application_credential_name: ci
      application_credential_secret: s
  no-secret:
    auth:
      auth_url: https://k/v3
      application_credential_id: abc
"#,
        );
        match env.load(Some("by-id")).expect("id").auth {
            Auth::ApplicationCredential {
                id,
                name,
                user,
                secret,
                ..
            } => {
                assert_eq!(id.as_deref(), Some("abc123"));
                assert_eq!(name, None);
                assert_eq!(user, None);
                assert_eq!(secret.expose(), "0123456");
            }
            other => panic!("{other:?}"),
        }
        match env.load(Some("by-name")).expect("name").auth {
            Auth::ApplicationCredential {
                id,
                name,
                user,
                user_domain,
                secret,
                ..
            } => {
                assert_eq!(id, None);
                assert_eq!(name.as_deref(), Some("ci"));
                assert_eq!(user, Some(NameOrId::Name("bob".into())));
                assert_eq!(user_domain, Some(NameOrId::Name("Default".into())));
                assert_eq!(secret.expose(), "s");
            }
            other => panic!("{other:?}"),
        }
        let msg = env.err(Some("no-user")).to_string();
        assert!(msg.contains("clouds.no-user.auth.username"), "{msg}");
        let msg = env.err(Some("no-secret")).to_string();
        assert!(
            msg.contains("clouds.no-secret.auth.application_credential_secret"),
            "{msg}"
        );
    }

    #[test]
    fn numeric_and_odd_scalars_keep_their_spelling() {
        let env = Env::new();
        let cloud = |name: &str, pw: &str| {
            format!(
                "  {name}:\n    auth:\n      auth_url: http://k/v3\n      user_id: 42\n      password: {pw}\n"
            )
        };
        let mut text = String::from("clouds:\n");
        for (n, pw) in [
            ("int", "12345"),
            ("big", "123456789012345678901234567890"),
            ("hex", "0x1F"),
            ("float", "1.10"),
            ("zero", "007"),
            ("bool", "yes"),
            ("true", "true"),
            ("exp", "1e5"),
            ("inf", ".inf"),
        ] {
            text.push_str(&cloud(n, pw));
        }
        text.push_str("  alias:\n    auth: {auth_url: 'http://k/v3', user_id: 1, password: &pw 98765432109876543210987}\n");
        text.push_str(
            "  alias2:\n    auth: {auth_url: 'http://k/v3', user_id: 1, password: *pw}\n",
        );
        env.write("work/clouds.yaml", &text);
        for (n, want) in [
            ("int", "12345"),
            ("big", "123456789012345678901234567890"),
            ("hex", "0x1F"),
            ("float", "1.10"),
            ("zero", "007"),
            ("bool", "yes"),
            ("true", "true"),
            ("exp", "1e5"),
            ("inf", ".inf"),
            ("alias", "98765432109876543210987"),
            ("alias2", "98765432109876543210987"),
        ] {
            let c = env.load(Some(n)).expect(n);
            assert_eq!(password(&c), want, "cloud {n}");
        }
        match env.load(Some("int")).expect("int").auth {
            Auth::Password { user, .. } => assert_eq!(user, NameOrId::Id("42".into())),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn regions_interface_and_tls() {
        let env = Env::new();
        env.write(
            "work/clouds.yaml",
            r#"clouds:
  list:
    regions: [First, Second]
    endpoint_type: adminURL
    auth: &a {auth_url: "http://k/v3", user_id: u, password: p}
  maps:
    regions:
      - name: R1
        values:
          interface: internal
      - {name: R2}
    auth: *a
  pick:
    region_name: R2
    regions: [R1, R2]
    insecure: true
    auth: *a
  comma:
    region_name: "West, East"
    verify: false
    cacert: certs/ca.pem
    auth: *a
  bad-interface:
    interface: sideways
    auth: *a
  bad-bool:
    insecure: maybe
    auth: *a
"#,
        );
        let c = env.load(Some("list")).expect("list");
        assert_eq!(c.region.as_deref(), Some("First"));
        assert_eq!(c.interface, Interface::Admin);
        let c = env.load(Some("maps")).expect("maps");
        assert_eq!(c.region.as_deref(), Some("R1"));
        assert_eq!(c.interface, Interface::Internal, "region values apply");
        let c = env.load(Some("pick")).expect("pick");
        assert_eq!(c.region.as_deref(), Some("R2"));
        assert!(!c.verify);
        let c = env.load(Some("comma")).expect("comma");
        assert_eq!(c.region.as_deref(), Some("West"));
        assert!(!c.verify);
        assert_eq!(c.cacert, Some(env.path("work/certs/ca.pem")));
        let msg = env.err(Some("bad-interface")).to_string();
        assert!(
            msg.contains("clouds.bad-interface.interface") && msg.contains("sideways"),
            "{msg}"
        );
        let msg = env.err(Some("bad-bool")).to_string();
        assert!(
            msg.contains("clouds.bad-bool.insecure: must be true or false"),
            "{msg}"
        );
    }

    #[test]
    fn refused_settings() {
        let env = Env::new();
        env.write(
            "work/clouds.yaml",
            r#"clouds:
  v2:
    identity_api_version: 2.0
    auth: {auth_url: "http://k/v2.0", username: u, password: p}
  v3-string:
    identity_api_version: "3"
    auth: {auth_url: "http://k/v3", user_id: u, password: p}
  token:
    auth_type: token
    auth: {auth_url: "http://k/v3", token: abc}
  oidc:
    auth_plugin: v3oidcpassword
    auth: {auth_url: "http://k/v3"}
  vendor:
    profile: vexxhost
    auth: {username: u, password: p}
  old-vendor:
    cloud: rackspace
"#,
        );
        let msg = env.err(Some("v2")).to_string();
        assert!(
            msg.contains("clouds.v2.identity_api_version: Keystone v2 is not supported"),
            "{msg}"
        );
        env.load(Some("v3-string")).expect("v3 as a string");
        let msg = env.err(Some("token")).to_string();
        assert!(
            msg.contains("clouds.token.auth_type: auth_type \"token\" is not supported (use password or v3applicationcredential)"),
            "{msg}"
        );
        let msg = env.err(Some("oidc")).to_string();
        assert!(
            msg.contains("clouds.oidc.auth_plugin") && msg.contains("v3oidcpassword"),
            "{msg}"
        );
        let msg = env.err(Some("vendor")).to_string();
        assert!(
            msg.contains("clouds.vendor.profile") && msg.contains("vexxhost"),
            "{msg}"
        );
        let msg = env.err(Some("old-vendor")).to_string();
        assert!(msg.contains("clouds.old-vendor.cloud"), "{msg}");
    }

    #[test]
    fn unknown_cloud_lists_names_and_file() {
        let env = Env::new();
        let p = env.write("work/clouds.yaml", AIO_CLOUDS);
        let e = env.err(Some("nope"));
        let msg = e.to_string();
        assert!(msg.contains(&p.display().to_string()), "{msg}");
        assert!(msg.contains("clouds.nope: no such cloud"), "{msg}");
        assert!(msg.contains("\"ibkit-aio\", \"ibkit-aio-admin\""), "{msg}");
        assert!(!msg.contains("fake-"), "{msg}");
    }

    #[test]
    fn missing_and_bad_auth_settings_name_their_key() {
        let env = Env::new();
        let p = env.write(
            "work/clouds.yaml",
            &format!(
                r#"clouds:
  X:
    auth:
      username: u
      password: {SECRET}
  scheme:
    auth:
      auth_url: {SECRET}
      username: u
      password: {SECRET}
  nouser:
    auth: {{auth_url: "http://k", password: {SECRET}}}
  nopass:
    auth: {{auth_url: "http://k", user_id: u}}
  nodomain:
    auth: {{auth_url: "http://k", username: u, password: {SECRET}}}
  noprojdomain:
    auth: {{auth_url: "http://k", user_id: u, password: {SECRET}, project_name: p}}
  listpw:
    auth: {{auth_url: "http://k", user_id: u, password: [{SECRET}]}}
  top-level-auth:
    auth_url: "http://k"
    user-id: u
    password: {SECRET}
  notmap: {SECRET}
"#
            ),
        );
        let msg = env.err(Some("X")).to_string();
        assert_eq!(
            msg,
            format!("{}: clouds.X.auth.auth_url: is required", p.display())
        );
        let msg = env.err(Some("scheme")).to_string();
        assert!(
            msg.contains("clouds.scheme.auth.auth_url: must be an http:// or https:// URL"),
            "{msg}"
        );
        let msg = env.err(Some("nouser")).to_string();
        assert!(
            msg.contains("clouds.nouser.auth.username: is required"),
            "{msg}"
        );
        let msg = env.err(Some("nopass")).to_string();
        assert!(
            msg.contains("clouds.nopass.auth.password: is required"),
            "{msg}"
        );
        // Names without domains are left to the API code (`default`).
        match env.load(Some("nodomain")).expect("nodomain").auth {
            Auth::Password { user_domain, .. } => assert_eq!(user_domain, None),
            other => panic!("{other:?}"),
        }
        match env.load(Some("noprojdomain")).expect("noprojdomain").auth {
            Auth::Password {
                project,
                project_domain,
                ..
            } => {
                assert_eq!(project, Some(NameOrId::Name("p".into())));
                assert_eq!(project_domain, None);
            }
            other => panic!("{other:?}"),
        }
        let msg = env.err(Some("listpw")).to_string();
        assert!(
            msg.contains("clouds.listpw.auth.password: must be a single value"),
            "{msg}"
        );
        let msg = env.err(Some("notmap")).to_string();
        assert!(msg.contains("clouds.notmap: must be a mapping"), "{msg}");
        // Auth keys at the cloud's top level (and spelt with '-') count.
        let c = env.load(Some("top-level-auth")).expect("top-level auth");
        assert_eq!(password(&c), SECRET);
        // A successful load's Debug output hides the secret too.
        assert!(!format!("{c:?}").contains(SECRET));
    }

    #[test]
    fn yaml_errors_never_echo_the_document() {
        let env = Env::new();
        let p = env.path("work/clouds.yaml");
        for (i, text) in [
            format!("clouds:\n  c:\n    auth:\n      password: {SECRET}: x\n"),
            format!("clouds:\n  c:\n    auth:\n      password: \"{SECRET}\n"),
            format!("clouds:\n  c:\n    auth: [{SECRET}\n"),
            format!("clouds:\n  c:\n    auth:\n      password: *{SECRET}\n"),
            format!("clouds:\n  c:\n    auth:\n      password: {SECRET}\n     bad: @x\n"),
            format!("clouds:\n  c:\n    auth:\n      password: !!int {SECRET}\n"),
            format!("clouds:\n  c:\n    auth:\n      password: !!binary {SECRET}\n"),
            format!("clouds: {{{SECRET}: 1, {SECRET}: [}}\n"),
            format!("{SECRET}\n---\n{SECRET}\n"),
            format!("\t{SECRET}: %{SECRET}\n"),
            format!("? [{SECRET}]\n: x\n"),
            format!("clouds:\n  c:\n    auth:\n      password: {SECRET}\n    auth: 1\n  c: [\n"),
        ]
        .iter()
        .enumerate()
        {
            std::fs::write(&p, text).expect("write");
            let e = env.err(Some("c"));
            match &e {
                ConfigError::Yaml { path, line, .. } => {
                    assert_eq!(path, &p, "case {i}");
                    assert!(*line > 0, "case {i}: {e}");
                }
                other => panic!("case {i}: not a YAML error: {other}"),
            }
        }
        // Garbage: the position and the parser's wording.
        std::fs::write(&p, "clouds:\n  c:\n    auth: a: b\n").expect("write");
        let msg = env.err(Some("c")).to_string();
        assert_eq!(
            msg,
            format!(
                "{}:3:12: invalid YAML: mapping values are not allowed in this context",
                p.display()
            )
        );
        // Not a mapping at the top.
        std::fs::write(&p, "- a\n- b\n").expect("write");
        let msg = env.err(None).to_string();
        assert!(msg.contains("(top level): must be a mapping"), "{msg}");
        // Empty: no clouds.
        std::fs::write(&p, "# nothing\n").expect("write");
        assert!(matches!(env.err(None), ConfigError::NoClouds { .. }));
        // Repeated keys: the last wins, as in PyYAML.
        std::fs::write(
            &p,
            "clouds:\n  c:\n    auth: {auth_url: 'http://k', user_id: u, password: first, password: last}\n",
        )
        .expect("write");
        assert_eq!(password(&env.load(None).expect("dup")), "last");
    }

    #[test]
    fn oversize_deep_and_binary_files() {
        let env = Env::new();
        let p = env.path("work/clouds.yaml");
        let mut big = String::from("clouds: {}\n");
        while big.len() as u64 <= MAX_CONFIG_FILE_BYTES {
            big.push_str("# padding padding padding padding padding padding padding\n");
        }
        std::fs::write(&p, &big).expect("write");
        let e = env.err(None);
        assert!(matches!(e, ConfigError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains(&p.display().to_string()));

        std::fs::write(&p, [0xff_u8, 0xfe, 0x00, 0x41]).expect("write");
        assert!(matches!(env.err(None), ConfigError::NotUtf8 { .. }));

        // Deep nesting is refused by the parser's budget, not the stack.
        let deep = format!("clouds: {}{}\n", "[".repeat(5000), "]".repeat(5000));
        std::fs::write(&p, deep).expect("write");
        assert!(matches!(env.err(None), ConfigError::Yaml { .. }));
        let block: String = (0..300).map(|i| format!("{}k:\n", " ".repeat(i))).collect();
        std::fs::write(&p, block).expect("write");
        assert!(matches!(env.err(None), ConfigError::Yaml { .. }));
        let n = MAX_YAML_DEPTH + 1;
        let flow = format!("clouds: {}{}\n", "[".repeat(n), "]".repeat(n));
        std::fs::write(&p, flow).expect("write");
        assert!(matches!(env.err(None), ConfigError::Yaml { .. }));
        let n = MAX_YAML_DEPTH - 1;
        let ok = format!(
            "x: {}{}\n{}",
            "[".repeat(n),
            "]".repeat(n),
            ONE_CLOUD.replace("NAME", "n")
        );
        std::fs::write(&p, ok).expect("write");
        assert_eq!(env.load(None).expect("nested").name, "n");
    }

    #[test]
    fn deepest_accepted_document_fits_a_small_stack() {
        // The parser runs on its own thread: the caller's stack is small.
        let handle = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(|| {
                let n = MAX_YAML_DEPTH - 1;
                let flow = format!("x: {}{}\n", "[".repeat(n), "]".repeat(n));
                let block: String = (0..n).map(|i| format!("{}k:\n", "  ".repeat(i))).collect();
                (parse_yaml(&flow).is_ok(), parse_yaml(&block).is_ok())
            })
            .expect("spawn");
        assert_eq!(handle.join().expect("join"), (true, true));
    }

    #[test]
    fn nothing_configured_lists_every_path() {
        let mut env = Env::new();
        let e = env.err(None);
        let msg = e.to_string();
        assert!(matches!(e, ConfigError::NoConfig { .. }), "{msg}");
        assert!(msg.contains("OS_AUTH_URL is not set"), "{msg}");
        for rel in [
            "work/clouds.yaml",
            "work/clouds.yml",
            "work/clouds.json",
            "home/.config/openstack/clouds.yaml",
            "home/.config/openstack/clouds.json",
            "etc/clouds.yaml",
            "etc/clouds.json",
        ] {
            assert!(
                msg.contains(&env.path(rel).display().to_string()),
                "{rel}: {msg}"
            );
        }
        let e = env.err(Some("named"));
        assert!(matches!(e, ConfigError::NoConfigFile { .. }), "{e}");
        assert!(e.to_string().contains("\"named\""));
        // OS_* variables without OS_AUTH_URL are not a cloud.
        env.set("OS_USERNAME", "u");
        assert!(matches!(env.err(None), ConfigError::NoConfig { .. }));
    }

    #[test]
    fn sources_from_env_and_paths() {
        // Only checks that it does not fail; the values are the process's.
        let s = ConfigSources::from_env();
        assert!(
            s.env
                .keys()
                .all(|k| k.starts_with("OS_") || k == "XDG_CONFIG_HOME")
        );
        let s = ConfigSources {
            env: BTreeMap::new(),
            cwd: PathBuf::from("/w"),
            home: Some(PathBuf::from("/h")),
        };
        assert_eq!(s.resolve("~"), PathBuf::from("/h"));
        assert_eq!(s.resolve("~/a/b"), PathBuf::from("/h/a/b"));
        assert_eq!(s.resolve("~other/a"), PathBuf::from("/w/~other/a"));
        assert_eq!(s.resolve("rel"), PathBuf::from("/w/rel"));
        assert_eq!(s.resolve("/abs"), PathBuf::from("/abs"));
        assert_eq!(
            strip_quoted("unexpected character: `@' here"),
            "unexpected character: … here"
        );
        assert_eq!(strip_quoted("a \"b\" c 'd"), "a … c …");
    }
}

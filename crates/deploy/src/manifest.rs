//! The deployment manifest: what `ibkit deploy up MANIFEST` deploys.
//!
//! A TOML file modelled on the platform's resources: the instance and its
//! retry budget, the hosts (image, flavor, cloud-init user data), the script
//! groups and health checks exactly as `ibkit serve` takes them
//! ([`ibkit_api::GroupSpec`], [`ibkit_api::HealthCheck`]), the outputs shown
//! to the buyer, and the auto-recovery policy. Unknown keys are refused.
//!
//! ```toml
//! [instance]
//! name = "pgcluster"          # [A-Za-z0-9_-]{1,63}; names the VMs
//! # id = "0c943e02-…"         # optional: the service's instance id (a package's instance_uuid)
//! max_attempts = 3            # default 3: a failed deployment is retried,
//!                             # each attempt recreating the VMs
//! attempt_timeout = "30m"     # default 30m: one attempt, groups + health
//! health_timeout = "10m"      # default 10m: readiness gate after the groups
//!
//! [[hosts]]
//! name = "primary"
//! image = "images/app.qcow2"  # relative to this file (QEMU) or an image name (OpenStack)
//! flavor = { vcpus = 2, memory_mib = 2048, disk_gib = 10 }   # default 1 / 1024 / 10
//! os_flavor = "m1.medium"     # OpenStack: this flavor instead of the smallest that fits
//! ports = [80, 443]           # OpenStack: open in the host's security group (SSH always)
//! [hosts.user_data]
//! install_agent = true        # default; false = the agent is baked into the image
//! agent_memory_max = "512M"   # default: the platform's cap for the agent and its scripts
//! ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample ops@example"]
//! packages = ["jq"]
//! per_boot = ["echo boot >> /var/log/boot.log"]   # shell scripts, run by cloud-init
//! per_instance = ["echo first boot of this VM > /etc/motd"]
//! per_once = ["touch /var/lib/first-ever-boot"]
//! cloud_config = """
//! timezone: Europe/Berlin
//! """                         # extra #cloud-config YAML, its own MIME part
//! # The marketplace API key in a file the agent keeps current (VK's
//! # token_file_path, token_file_owner, token_file_group, token_rotate).
//! billing_token = { path = "/opt/agent/xaas-secret-auth-token.key", owner = "root", group = "root", rotate = true }
//!
//! [[hosts]]
//! name = "replica"
//! image = "images/app.qcow2"
//!
//! [[groups]]
//! name = "init"
//! hosts = ["primary"]
//! [[groups.steps]]
//! index = 1
//! type = "bash"
//! content = "printf '{\"token\":\"%s\"}' \"$(openssl rand -hex 16)\" > /tmp/init.json"
//! options = { structured_result_file = "/tmp/init.json" }
//!
//! [[groups]]
//! name = "join"
//! hosts = ["replica"]
//! depends_on = ["init"]
//! [[groups.steps]]
//! index = 1
//! content = "echo joining with {{ibkit.results.primary.init.1.structured.token}}"
//!
//! [[health_checks]]
//! name = "ssh"
//! kind = "port_health"
//! port = 22
//! period = "10s"
//!
//! [[outputs]]
//! name = "join_token"
//! value = "{{ibkit.results.primary.init.1.structured.token}}"
//! sensitive = true            # default false: masked unless asked for
//! description = "Token for joining more replicas"
//!
//! [recovery]
//! enabled = true              # default true
//! detection_timeout = "5m"    # default 5m: agent silent / health missing this long
//! backoff = "30s"             # default 30s, doubled per consecutive recovery of a host
//! max_backoff = "10m"         # default 10m
//! max_per_window = 3          # default 3 recoveries per host per window, then failed
//! window = "1h"               # default 1h
//! keep_evidence = true        # default true: keep the dead VM's serial log and disk
//!
//! [billing]
//! params = ["storage"]        # postpaid options usage may be pushed for (VK: resource_usages)
//! ```
//!
//! [`DeployManifest::validate`] reports every problem it finds, each with
//! its path (`hosts[1].flavor.vcpus: must be 1..=64`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ibkit_api::reference::{self, ReferenceTarget};
use ibkit_api::spec::MAX_BILLING_PARAMS;
use ibkit_api::step::sha256_hex;
use ibkit_api::{BillingSpec, Duration, GroupSpec, HealthCheck, HostSpec, InstanceSpec};
use ibkit_support::posix::{check_plain_file_path, is_account_name};
use serde::{Deserialize, Serialize};

/// Ports a host may open (each one a security group rule on OpenStack).
const MAX_PORTS: usize = 64;

/// Limits of a flavor, inclusive.
pub const VCPUS: std::ops::RangeInclusive<u32> = 1..=64;
pub const MEMORY_MIB: std::ops::RangeInclusive<u32> = 256..=262_144;
pub const DISK_GIB: std::ops::RangeInclusive<u32> = 1..=2048;
/// At most this many attempts of a deployment.
pub const MAX_ATTEMPTS: std::ops::RangeInclusive<u32> = 1..=20;
/// At most this many scripts per cloud-init frequency (`NN-` prefixes).
pub const MAX_SCRIPTS: usize = 99;

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployManifest {
    pub instance: InstanceSettings,
    pub hosts: Vec<HostDef>,
    #[serde(default)]
    pub groups: Vec<GroupSpec>,
    #[serde(default)]
    pub health_checks: Vec<HealthCheck>,
    #[serde(default)]
    pub outputs: Vec<OutputDef>,
    #[serde(default)]
    pub recovery: RecoveryPolicy,
    /// `[billing]`: the instance's postpaid options (VK's plan
    /// `resource_usages`), the usage the service accepts pushes for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing: Option<BillingSpec>,
    /// The directory relative image paths are resolved against.
    #[serde(skip)]
    base_dir: PathBuf,
}

/// `[instance]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSettings {
    pub name: String,
    /// The service's instance id to create it under (a package's
    /// marketplace `instance_uuid`, which its billing pushes name); default:
    /// the service picks one. Only the first `up` uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<ibkit_api::operator::InstanceId>,
    /// Attempts of a deployment before it is `failed`; each recreates the VMs.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Wall time of one attempt: the groups and the health gate.
    #[serde(default = "default_attempt_timeout")]
    pub attempt_timeout: Duration,
    /// After the groups, how long every health check may take to pass.
    #[serde(default = "default_health_timeout")]
    pub health_timeout: Duration,
}

fn default_max_attempts() -> u32 {
    3
}
fn default_attempt_timeout() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(10 * 60)
}

/// `[[hosts]]`: one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostDef {
    pub name: String,
    /// A path relative to the manifest (QEMU backend) or an image name or
    /// id (OpenStack backend).
    pub image: String,
    #[serde(default)]
    pub flavor: Flavor,
    /// OpenStack: this Nova flavor (name or id) instead of the smallest one
    /// that fits `flavor`; QEMU uses `flavor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_flavor: Option<String>,
    /// TCP ports open to anyone (OpenStack: the host's security group; SSH
    /// is always open). QEMU's private network has no firewall.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub user_data: UserDataSpec,
}

/// A VM's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Flavor {
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Size of the root disk; the image is grown to it (never shrunk).
    pub disk_gib: u32,
}

impl Default for Flavor {
    fn default() -> Self {
        Flavor {
            vcpus: 1,
            memory_mib: 1024,
            disk_gib: 10,
        }
    }
}

/// `[hosts.user_data]`: what the generated cloud-init user data does
/// besides installing the agent (see [`crate::userdata`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserDataSpec {
    /// Download the agent from the service and install it (true), or only
    /// configure, pair and start the agent baked into the image (false).
    pub install_agent: bool,
    /// `MemoryMax` of the agent's unit (the agent and its scripts).
    pub agent_memory_max: String,
    /// Keys for the image's default user.
    pub ssh_authorized_keys: Vec<String>,
    /// Installed by cloud-init before the scripts run.
    pub packages: Vec<String>,
    /// Scripts run at every boot (cloud-init `scripts-per-boot`).
    pub per_boot: Vec<String>,
    /// Scripts run on the first boot of each VM (`scripts-per-instance`).
    pub per_instance: Vec<String>,
    /// Scripts run once ever, even across instance-id changes (`scripts-per-once`).
    pub per_once: Vec<String>,
    /// Extra `#cloud-config` YAML, passed through as its own MIME part.
    pub cloud_config: Option<String>,
    /// The marketplace API key file the agent keeps current (VK's
    /// `ivkcs_user_data` `token_file_*`, `token_rotate`). Absent from the
    /// host's config hash when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub billing_token: Option<BillingTokenSpec>,
}

/// `billing_token = { path, owner, group, rotate }`: written into the
/// agent's config as its `[billing_token]` table (the same keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingTokenSpec {
    /// Absolute, without `.`/`..`; the agent creates missing directories.
    pub path: String,
    #[serde(default = "root_account")]
    pub owner: String,
    #[serde(default = "root_account")]
    pub group: String,
    /// Fetch a new key when the service says; false: fetch once.
    #[serde(default)]
    pub rotate: bool,
}

fn root_account() -> String {
    "root".into()
}

impl BillingTokenSpec {
    /// Every problem, each with its field (`path`, `owner`, `group`).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Err(e) = check_plain_file_path(&self.path) {
            out.push(("path", e));
        }
        for (field, name) in [("owner", &self.owner), ("group", &self.group)] {
            if !is_account_name(name) {
                out.push((
                    field,
                    format!("{name:?} is not a user or group name ([a-z_][a-z0-9_-]{{0,31}})"),
                ));
            }
        }
        out
    }
}

impl Default for UserDataSpec {
    fn default() -> Self {
        UserDataSpec {
            install_agent: true,
            agent_memory_max: "512M".into(),
            ssh_authorized_keys: Vec::new(),
            packages: Vec::new(),
            per_boot: Vec::new(),
            per_instance: Vec::new(),
            per_once: Vec::new(),
            cloud_config: None,
            billing_token: None,
        }
    }
}

/// `[[outputs]]`: a value shown to the buyer once the instance runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputDef {
    pub name: String,
    /// Text with result references (`{{ibkit.results.HOST.GROUP.INDEX…}}`).
    pub value: String,
    /// Kept out of logs and listings; shown on explicit request.
    #[serde(default)]
    pub sensitive: bool,
    #[serde(default)]
    pub description: Option<String>,
}

/// `[recovery]`: recreating VMs that died (see [`crate::recovery`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecoveryPolicy {
    pub enabled: bool,
    /// An agent silent or a health check missing this long marks the VM dead.
    pub detection_timeout: Duration,
    /// Wait before the first recreation; doubled per consecutive recovery of
    /// the same host, capped at `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Recoveries per host allowed within `window`; one more marks the
    /// instance `failed` instead.
    pub max_per_window: u32,
    pub window: Duration,
    /// Keep the dead VM's serial log and disk for a post-mortem.
    pub keep_evidence: bool,
}

impl Default for RecoveryPolicy {
    fn default() -> Self {
        RecoveryPolicy {
            enabled: true,
            detection_timeout: Duration::from_secs(5 * 60),
            backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(10 * 60),
            max_per_window: 3,
            window: Duration::from_secs(60 * 60),
            keep_evidence: true,
        }
    }
}

/// One problem, at a path such as `hosts[1].flavor.vcpus`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

/// Every problem found in a manifest, in document order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ValidationErrors {
    /// The paths, for tests and summaries.
    pub fn paths(&self) -> Vec<&str> {
        self.0.iter().map(|e| e.path.as_str()).collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin} is not a valid deployment manifest: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin} is not a valid deployment manifest:\n{errors}")]
    Invalid {
        origin: String,
        errors: ValidationErrors,
    },
}

impl FromStr for DeployManifest {
    type Err = ManifestError;

    /// Parses (does not validate) a manifest; relative image paths resolve
    /// against the current directory.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        DeployManifest::parse(text, Path::new("."), "the manifest")
    }
}

impl DeployManifest {
    /// Reads and parses (does not validate) a manifest file.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        Ok(DeployManifest::read(path)?.0)
    }

    /// [`DeployManifest::load`] then [`DeployManifest::validate`].
    pub fn load_validated(path: &Path) -> Result<Self, ManifestError> {
        Ok(DeployManifest::read_validated(path)?.0)
    }

    /// [`DeployManifest::load_validated`], with the text the manifest was
    /// parsed from (what a deployment records), read once.
    pub fn read_validated(path: &Path) -> Result<(Self, String), ManifestError> {
        let (m, text) = DeployManifest::read(path)?;
        m.validate().map_err(|errors| ManifestError::Invalid {
            origin: path.display().to_string(),
            errors,
        })?;
        Ok((m, text))
    }

    fn read(path: &Path) -> Result<(Self, String), ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.into(),
            source,
        })?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let m = DeployManifest::parse(&text, dir, &path.display().to_string())?;
        Ok((m, text))
    }

    /// Parses `text`; relative image paths resolve against `base_dir`.
    pub fn parse(text: &str, base_dir: &Path, origin: &str) -> Result<Self, ManifestError> {
        let mut m: DeployManifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        m.base_dir = base_dir.to_path_buf();
        Ok(m)
    }

    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    pub fn host(&self, name: &str) -> Option<&HostDef> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// The image of a host as a file: absolute as written, relative ones
    /// against the manifest's directory (QEMU backend).
    pub fn image_path(&self, host: &HostDef) -> PathBuf {
        let p = Path::new(&host.image);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// [`HostDef::config_hash`] of the host with that name.
    pub fn host_config_hash(&self, name: &str) -> Option<String> {
        self.host(name).map(HostDef::config_hash)
    }

    /// What `ibkit serve` gets: hosts by name, groups, health checks.
    pub fn to_instance_spec(&self) -> InstanceSpec {
        InstanceSpec {
            name: self.instance.name.clone(),
            hosts: self
                .hosts
                .iter()
                .map(|h| HostSpec {
                    name: h.name.clone(),
                })
                .collect(),
            groups: self.groups.clone(),
            health_checks: self.health_checks.clone(),
            // The service's monitor opens recovery requests after this.
            detection_timeout: Some(self.recovery.detection_timeout),
            billing: self.billing.clone(),
        }
    }

    /// Checks everything serde cannot; returns every problem found.
    ///
    /// The script groups and health checks are checked by
    /// [`InstanceSpec::validate`], which stops at its first problem.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = Errors::default();
        self.validate_instance(&mut errs);
        self.validate_hosts(&mut errs);
        // Before the spec's check, whose first problem is then a duplicate.
        self.validate_billing(&mut errs);
        if let Err(e) = self.to_instance_spec().validate() {
            let path = if e.at == "name" {
                "instance.name".to_string()
            } else {
                e.at
            };
            if !errs.0.iter().any(|x| x.path == path) {
                errs.push(path, e.message);
            }
        }
        self.validate_outputs(&mut errs);
        self.validate_recovery(&mut errs);
        if errs.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(errs.0))
        }
    }

    fn validate_instance(&self, errs: &mut Errors) {
        let i = &self.instance;
        if !ibkit_api::is_valid_name(&i.name) {
            errs.push(
                "instance.name",
                format!(
                    "{:?} is not a valid instance name ([A-Za-z0-9_-], 1-63 characters)",
                    i.name
                ),
            );
        }
        if !MAX_ATTEMPTS.contains(&i.max_attempts) {
            errs.push(
                "instance.max_attempts",
                format!("must be {}..={}", MAX_ATTEMPTS.start(), MAX_ATTEMPTS.end()),
            );
        }
        if i.attempt_timeout == Duration::ZERO {
            errs.push("instance.attempt_timeout", "must be longer than 0s");
        }
        if i.health_timeout == Duration::ZERO {
            errs.push("instance.health_timeout", "must be longer than 0s");
        } else if i.health_timeout > i.attempt_timeout && i.attempt_timeout != Duration::ZERO {
            errs.push(
                "instance.health_timeout",
                format!(
                    "{} is longer than attempt_timeout ({}), which includes it",
                    i.health_timeout, i.attempt_timeout
                ),
            );
        }
    }

    fn validate_hosts(&self, errs: &mut Errors) {
        if self.hosts.is_empty() {
            errs.push("hosts", "a deployment needs at least one host");
        }
        let mut seen = BTreeSet::new();
        for (i, h) in self.hosts.iter().enumerate() {
            let at = format!("hosts[{i}]");
            if !ibkit_api::is_valid_name(&h.name) || h.name == "self" {
                errs.push(
                    format!("{at}.name"),
                    format!(
                        "{:?} is not a valid host name ([A-Za-z0-9_-], 1-63 characters, not \"self\")",
                        h.name
                    ),
                );
            } else if !seen.insert(h.name.as_str()) {
                errs.push(format!("{at}.name"), format!("duplicate host {:?}", h.name));
            }
            if h.image.trim().is_empty() {
                errs.push(format!("{at}.image"), "must not be empty");
            } else if h.image.chars().any(char::is_control) {
                errs.push(format!("{at}.image"), "must not contain control characters");
            }
            let f = &h.flavor;
            for (field, value, range) in [
                ("vcpus", f.vcpus, &VCPUS),
                ("memory_mib", f.memory_mib, &MEMORY_MIB),
                ("disk_gib", f.disk_gib, &DISK_GIB),
            ] {
                if !range.contains(&value) {
                    errs.push(
                        format!("{at}.flavor.{field}"),
                        format!(
                            "must be {}..={} (found {value})",
                            range.start(),
                            range.end()
                        ),
                    );
                }
            }
            if let Some(f) = &h.os_flavor
                && (f.trim().is_empty() || f.len() > 255 || f.chars().any(char::is_control))
            {
                errs.push(
                    format!("{at}.os_flavor"),
                    "must be a flavor name or id (1-255 characters, no control characters)",
                );
            }
            let mut ports = BTreeSet::new();
            if h.ports.len() > MAX_PORTS {
                errs.push(format!("{at}.ports"), format!("at most {MAX_PORTS} ports"));
            }
            for (j, p) in h.ports.iter().enumerate() {
                if *p == 0 {
                    errs.push(format!("{at}.ports[{j}]"), "must be 1..=65535");
                } else if !ports.insert(*p) {
                    errs.push(format!("{at}.ports[{j}]"), format!("duplicate port {p}"));
                }
            }
            validate_user_data(&h.user_data, &format!("{at}.user_data"), errs);
        }
    }

    fn validate_outputs(&self, errs: &mut Errors) {
        let hosts: BTreeSet<&str> = self.hosts.iter().map(|h| h.name.as_str()).collect();
        let groups: BTreeMap<&str, &GroupSpec> =
            self.groups.iter().map(|g| (g.name.as_str(), g)).collect();
        let mut names = BTreeSet::new();
        for (i, o) in self.outputs.iter().enumerate() {
            let at = format!("outputs[{i}]");
            if !ibkit_api::is_valid_name(&o.name) {
                errs.push(
                    format!("{at}.name"),
                    format!("{:?} is not a valid output name ([A-Za-z0-9_-])", o.name),
                );
            } else if !names.insert(o.name.as_str()) {
                errs.push(
                    format!("{at}.name"),
                    format!("duplicate output {:?}", o.name),
                );
            }
            if o.value.is_empty() {
                errs.push(format!("{at}.value"), "must not be empty");
                continue;
            }
            let refs = match reference::find_references(&o.value) {
                Ok(r) => r,
                Err(m) => {
                    errs.push(format!("{at}.value"), m);
                    continue;
                }
            };
            for r in refs {
                let problem = if r.host == "self" {
                    Some("outputs belong to no host: name the host instead of \"self\"".to_string())
                } else if !hosts.contains(r.host.as_str()) {
                    Some(format!("unknown host {:?}", r.host))
                } else if let Some(g) = groups.get(r.group.as_str()) {
                    match g.steps.iter().find(|s| s.index == r.index) {
                        None => Some(format!("group {:?} has no step {}", r.group, r.index)),
                        Some(_) if !g.hosts.contains(&r.host) => Some(format!(
                            "group {:?} does not run on host {:?}",
                            r.group, r.host
                        )),
                        Some(s)
                            if matches!(r.target, ReferenceTarget::Structured(_))
                                && s.options.structured_result_file.is_none() =>
                        {
                            Some(format!(
                                "step {}/{} has no structured_result_file",
                                r.group, r.index
                            ))
                        }
                        Some(_) => None,
                    }
                } else {
                    Some(format!("unknown group {:?}", r.group))
                };
                if let Some(p) = problem {
                    errs.push(format!("{at}.value"), format!("reference {r}: {p}"));
                }
            }
        }
    }

    /// Every problem of `[billing]` (the spec's own check stops at the
    /// first).
    fn validate_billing(&self, errs: &mut Errors) {
        let Some(b) = &self.billing else { return };
        if b.params.is_empty() {
            errs.push(
                "billing.params",
                "name at least one option (leave [billing] out for none)",
            );
        } else if b.params.len() > MAX_BILLING_PARAMS {
            errs.push(
                "billing.params",
                format!("at most {MAX_BILLING_PARAMS} options"),
            );
        }
        let mut seen = BTreeSet::new();
        for (i, p) in b.params.iter().enumerate() {
            if !BillingSpec::is_valid_param(p) {
                errs.push(
                    format!("billing.params[{i}]"),
                    format!(
                        "{p:?} is not an option name ([A-Za-z0-9_-], 1-{} characters)",
                        BillingSpec::MAX_PARAM_LEN
                    ),
                );
            } else if !seen.insert(p.as_str()) {
                errs.push(
                    format!("billing.params[{i}]"),
                    format!("duplicate option {p:?}"),
                );
            }
        }
    }

    fn validate_recovery(&self, errs: &mut Errors) {
        let r = &self.recovery;
        for (field, d) in [
            ("detection_timeout", r.detection_timeout),
            ("backoff", r.backoff),
            ("max_backoff", r.max_backoff),
            ("window", r.window),
        ] {
            if d == Duration::ZERO {
                errs.push(format!("recovery.{field}"), "must be longer than 0s");
            }
        }
        if r.max_backoff < r.backoff {
            errs.push(
                "recovery.max_backoff",
                format!("{} is shorter than backoff ({})", r.max_backoff, r.backoff),
            );
        }
        if r.max_per_window == 0 {
            errs.push(
                "recovery.max_per_window",
                "must be at least 1 (use enabled = false to turn recovery off)",
            );
        }
        // A check must pass at least twice per detection_timeout: with one
        // pass per detection_timeout, one late result (a busy VM, the
        // agent's own scheduling) already reads as "health missing" and
        // recreates a healthy VM.
        for (i, c) in self.health_checks.iter().enumerate() {
            if r.detection_timeout > Duration::ZERO
                && c.period.to_std() * 2 > r.detection_timeout.to_std()
            {
                errs.push(
                    format!("health_checks[{i}].period"),
                    format!(
                        "{} (check {:?}) leaves no slack before recovery.detection_timeout ({}): one late result would open a recovery; use a period of at most half of it",
                        c.period, c.name, r.detection_timeout
                    ),
                );
            }
        }
    }
}

fn validate_user_data(u: &UserDataSpec, at: &str, errs: &mut Errors) {
    if !valid_memory_max(&u.agent_memory_max) {
        errs.push(
            format!("{at}.agent_memory_max"),
            format!(
                "{:?} is not a systemd MemoryMax size (e.g. 512M, 1G)",
                u.agent_memory_max
            ),
        );
    }
    for (i, k) in u.ssh_authorized_keys.iter().enumerate() {
        let fields = k.split_whitespace().count();
        if k.contains(['\n', '\r']) {
            errs.push(
                format!("{at}.ssh_authorized_keys[{i}]"),
                "must be a single line",
            );
        } else if fields < 2 {
            errs.push(
                format!("{at}.ssh_authorized_keys[{i}]"),
                "expected \"TYPE BASE64-KEY [COMMENT]\"",
            );
        }
    }
    for (i, p) in u.packages.iter().enumerate() {
        if p.is_empty() || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
            errs.push(
                format!("{at}.packages[{i}]"),
                format!("{p:?} is not a package name"),
            );
        }
    }
    for (field, scripts) in [
        ("per_boot", &u.per_boot),
        ("per_instance", &u.per_instance),
        ("per_once", &u.per_once),
    ] {
        if scripts.len() > MAX_SCRIPTS {
            errs.push(
                format!("{at}.{field}"),
                format!("at most {MAX_SCRIPTS} scripts"),
            );
        }
        for (i, s) in scripts.iter().enumerate() {
            if s.trim().is_empty() {
                errs.push(format!("{at}.{field}[{i}]"), "must not be empty");
            } else if s.contains('\0') {
                errs.push(format!("{at}.{field}[{i}]"), "must not contain NUL");
            }
        }
    }
    if let Some(c) = &u.cloud_config {
        if c.trim().is_empty() {
            errs.push(format!("{at}.cloud_config"), "must not be empty when set");
        } else if c.contains('\0') {
            errs.push(format!("{at}.cloud_config"), "must not contain NUL");
        }
    }
    if let Some(b) = &u.billing_token {
        for (field, message) in b.problems() {
            errs.push(format!("{at}.billing_token.{field}"), message);
        }
    }
}

/// `512M`, `1G`, `1073741824`, `infinity`, and what install.sh accepts.
fn valid_memory_max(s: &str) -> bool {
    if s == "infinity" {
        return true;
    }
    let digits = s.trim_end_matches(['K', 'M', 'G', 'T']);
    s.len() - digits.len() <= 1
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.bytes().any(|b| b != b'0')
}

impl HostDef {
    /// A stable hash of what a VM is made from: image, flavor and user
    /// data (defaults filled in, so writing a default explicitly changes
    /// nothing). A host whose hash differs from the running VM's is
    /// recreated by `up`; script groups are not part of it (changed steps
    /// rerun on the running VM instead).
    ///
    /// Lowercase hex SHA-256 of `ibkit-host-v1\n` and the compact JSON
    /// `{"image":…,"flavor":{…},"user_data":{…}}`. The image is hashed as
    /// written, not its content.
    pub fn config_hash(&self) -> String {
        #[derive(Serialize)]
        struct HashInput<'a> {
            image: &'a str,
            flavor: &'a Flavor,
            // Absent when unset: hashes of manifests without it stay.
            #[serde(skip_serializing_if = "Option::is_none")]
            os_flavor: Option<&'a str>,
            user_data: &'a UserDataSpec,
        }
        let json = serde_json::to_string(&HashInput {
            image: &self.image,
            flavor: &self.flavor,
            os_flavor: self.os_flavor.as_deref(),
            user_data: &self.user_data,
        })
        .unwrap_or_default();
        let mut input = b"ibkit-host-v1\n".to_vec();
        input.extend_from_slice(json.as_bytes());
        sha256_hex(&input)
    }
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[instance]
name = "x"
[[hosts]]
name = "a"
image = "a.qcow2"
"#;

    fn parse(text: &str) -> DeployManifest {
        text.parse().expect("parses")
    }

    #[test]
    fn minimal_manifest_gets_the_defaults() {
        let m = parse(MINIMAL);
        m.validate().expect("valid");
        assert_eq!(m.instance.max_attempts, 3);
        assert_eq!(m.instance.attempt_timeout.to_string(), "30m");
        assert_eq!(m.instance.health_timeout.to_string(), "10m");
        assert_eq!(m.hosts[0].flavor, Flavor::default());
        assert!(m.hosts[0].user_data.install_agent);
        assert_eq!(m.hosts[0].user_data.agent_memory_max, "512M");
        assert_eq!(m.recovery, RecoveryPolicy::default());
        assert_eq!(m.image_path(&m.hosts[0]), Path::new("./a.qcow2"));
    }

    #[test]
    fn the_module_doc_example_is_valid() {
        let source = include_str!("manifest.rs");
        let text: String = source
            .lines()
            .skip_while(|l| *l != "//! ```toml")
            .skip(1)
            .take_while(|l| *l != "//! ```")
            .map(|l| {
                format!(
                    "{}\n",
                    l.strip_prefix("//! ")
                        .or_else(|| l.strip_prefix("//!"))
                        .unwrap_or(l)
                )
            })
            .collect();
        assert!(text.contains("[recovery]"), "{text}");
        let m = parse(&text);
        if let Err(e) = m.validate() {
            panic!("{text}\n---\n{e}");
        }
        assert_eq!(m.outputs[0].name, "join_token");
        assert!(
            !m.hosts[0]
                .user_data
                .cloud_config
                .as_deref()
                .unwrap_or("")
                .is_empty()
        );
    }

    #[test]
    fn memory_max_spellings() {
        for ok in ["512M", "1G", "1073741824", "infinity", "2T"] {
            assert!(valid_memory_max(ok), "{ok}");
        }
        for bad in ["", "M", "0", "512MB", "1.5G", "-1", "512 M", "512m"] {
            assert!(!valid_memory_max(bad), "{bad}");
        }
    }

    #[test]
    fn config_hash_ignores_explicit_defaults_and_sees_changes() {
        let base = parse(MINIMAL);
        let explicit = parse(
            r#"
[instance]
name = "x"
[[hosts]]
name = "a"
image = "a.qcow2"
flavor = { vcpus = 1, memory_mib = 1024, disk_gib = 10 }
[hosts.user_data]
install_agent = true
agent_memory_max = "512M"
packages = []
"#,
        );
        let h = base.host_config_hash("a").expect("host a");
        assert_eq!(h.len(), 64);
        assert_eq!(Some(h.clone()), explicit.host_config_hash("a"));
        let mut changed = base.clone();
        changed.hosts[0].flavor.memory_mib = 2048;
        assert_ne!(Some(h.clone()), changed.host_config_hash("a"));
        let mut changed = base.clone();
        changed.hosts[0].user_data.per_boot.push("true".into());
        assert_ne!(Some(h.clone()), changed.host_config_hash("a"));
        let mut renamed = base.clone();
        renamed.instance.name = "y".into();
        assert_eq!(Some(h.clone()), renamed.host_config_hash("a"));
        // A named flavor makes another VM; opening a port does not (the
        // security group changes in place).
        let mut named = base.clone();
        named.hosts[0].os_flavor = Some("m1.small".into());
        assert_ne!(Some(h.clone()), named.host_config_hash("a"));
        let mut ported = base.clone();
        ported.hosts[0].ports = vec![443];
        assert_eq!(Some(h), ported.host_config_hash("a"));
        assert_eq!(base.host_config_hash("nope"), None);
    }

    #[test]
    fn billing_token_and_billing_params() {
        let m = parse(&format!(
            "{MINIMAL}[hosts.user_data]\nbilling_token = {{ path = \"/opt/agent/t.key\", rotate = true }}\n[billing]\nparams = [\"storage\", \"cpu_hours\"]\n"
        ));
        m.validate().expect("valid");
        let b = m.hosts[0].user_data.billing_token.clone().expect("set");
        assert_eq!(
            (
                b.path.as_str(),
                b.owner.as_str(),
                b.group.as_str(),
                b.rotate
            ),
            ("/opt/agent/t.key", "root", "root", true)
        );
        assert_eq!(
            m.to_instance_spec().billing,
            Some(BillingSpec {
                params: vec!["storage".into(), "cpu_hours".into()]
            })
        );
        assert_eq!(parse(MINIMAL).to_instance_spec().billing, None);
        // The token file is part of what the VM is made from.
        assert_ne!(
            m.host_config_hash("a"),
            parse(MINIMAL).host_config_hash("a")
        );

        let m = parse(&format!(
            "{MINIMAL}[hosts.user_data]\nbilling_token = {{ path = \"opt/../t\", owner = \"Root\", group = \"a b\" }}\n[billing]\nparams = [\"ok\", \"a b\", \"ok\", \"{}\"]\n",
            "p".repeat(65)
        ));
        let errs = m.validate().expect_err("refused");
        assert_eq!(
            errs.paths(),
            [
                "hosts[0].user_data.billing_token.path",
                "hosts[0].user_data.billing_token.owner",
                "hosts[0].user_data.billing_token.group",
                "billing.params[1]",
                "billing.params[2]",
                "billing.params[3]",
            ],
            "{errs}"
        );
        for bad in ["/opt/./t", "/opt/t/", "/"] {
            let m = parse(&format!(
                "{MINIMAL}[hosts.user_data]\nbilling_token = {{ path = \"{bad}\" }}\n"
            ));
            assert!(m.validate().is_err(), "{bad}");
        }
        let empty = parse(&format!("{MINIMAL}[billing]\nparams = []\n"));
        assert_eq!(
            empty.validate().expect_err("empty").paths(),
            ["billing.params"]
        );
        assert!(
            DeployManifest::parse(
                &format!("{MINIMAL}[hosts.user_data]\nbilling_token = {{ path = \"/t\", mode = \"0600\" }}\n"),
                Path::new("."),
                "test"
            )
            .is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn ports_and_os_flavor_are_checked() {
        let m = DeployManifest::parse(
            "[instance]\nname = \"x\"\n[[hosts]]\nname = \"a\"\nimage = \"a.qcow2\"\nports = [80, 0, 80]\nos_flavor = \" \"\n",
            Path::new("."),
            "test",
        )
        .expect("parses");
        let errs = m.validate().expect_err("refused").to_string();
        assert!(
            errs.contains("hosts[0].ports[1]: must be 1..=65535"),
            "{errs}"
        );
        assert!(
            errs.contains("hosts[0].ports[2]: duplicate port 80"),
            "{errs}"
        );
        assert!(errs.contains("hosts[0].os_flavor"), "{errs}");
    }

    #[test]
    fn a_check_must_run_twice_per_detection_timeout() {
        let with = |period: &str, detection: &str| {
            parse(&format!(
                "{MINIMAL}[[health_checks]]\nname = \"ssh\"\nkind = \"port_health\"\nport = 22\nperiod = \"{period}\"\n[recovery]\ndetection_timeout = \"{detection}\"\n"
            ))
            .validate()
        };
        // The example's old pair: one pass per detection_timeout, no slack.
        let e = with("30s", "30s").expect_err("no slack").to_string();
        assert!(
            e.contains("health_checks[0].period: 30s (check \"ssh\") leaves no slack"),
            "{e}"
        );
        assert!(with("10s", "30s").is_ok());
        assert!(with("15s", "30s").is_ok());
        assert!(with("16s", "30s").is_err());
    }
}

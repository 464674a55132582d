//! Per-host cloud-init user data: a MIME multipart message (RFC 2046).
//!
//! ```text
//! Content-Type: multipart/mixed; boundary="==ibkit-<random>=="
//! MIME-Version: 1.0
//!
//! part 1  text/cloud-config   ibkit-cloud-config.yaml
//!         #cloud-config + JSON (JSON is YAML): ssh_authorized_keys, packages
//!         (with package_update), write_files placing the per_boot /
//!         per_instance / per_once scripts as
//!         /var/lib/cloud/scripts/per-{boot,instance,once}/NN-ibkit-per-*.sh
//!         (0755); cloud-init's scripts-per-* modules run them in the final
//!         stage. This works on cloud-init 22.4, which lacks the
//!         text/x-shellscript-per-* MIME types.
//! part 2  text/x-shellscript  ibkit-agent-bootstrap.sh
//!         install_agent = true: fetches install.sh from the service with
//!         curl (retries, certificate pin) and runs it with the instance id,
//!         host, memory cap and the pairing key in a 0600 file
//!         (`--pairing-key-file`); five rounds, 10 s apart.
//!         install_agent = false: writes the key to /etc/ibkit/pairing-key
//!         (0600) and /etc/ibkit/agent.toml (`pairing_key_file`) for the
//!         agent baked into the image, writes its unit if the image has
//!         none, and a drop-in with the memory cap, runs `ibkit-agent
//!         pair`, enables and (re)starts the unit.
//!         Neither puts the key on a command line; the agent deletes the
//!         key file once it paired.
//!         billing_token set: its `[billing_token]` table is appended to
//!         the agent's config (install_agent = true: after the installer
//!         wrote it, then the unit is restarted to read it).
//!         Runs once per instance (scripts-user, after the per-* scripts).
//! part 3  text/cloud-config   vendor-cloud-config.yaml   (only if set)
//!         the vendor's cloud_config as written, with
//!         `Merge-Type: list(append)+dict(recurse_array)+str()` so its lists
//!         (packages, write_files, runcmd…) extend part 1's instead of
//!         replacing them.
//! ```
//!
//! The boundary is random and checked against every part. The pairing key
//! is a [`Secret`]: it is in the user data (that is how it reaches the VM)
//! but never in `Debug` output.

use ibkit_api::is_valid_name;
use serde_json::{Map, Value, json};

use crate::manifest::{BillingTokenSpec, HostDef, UserDataSpec};

/// The bootstrap script's file name in the MIME message.
pub const AGENT_PART_FILENAME: &str = "ibkit-agent-bootstrap.sh";
pub const CLOUD_CONFIG_FILENAME: &str = "ibkit-cloud-config.yaml";
pub const VENDOR_CLOUD_CONFIG_FILENAME: &str = "vendor-cloud-config.yaml";
/// How the vendor's cloud-config merges into ours (cloud-init `Merge-Type`).
pub const VENDOR_MERGE_TYPE: &str = "list(append)+dict(recurse_array)+str()";
/// Nova refuses user data over 65535 bytes once base64-encoded.
pub const OPENSTACK_USER_DATA_MAX_BASE64: usize = 65_535;

pub use ibkit_support::secret::Secret;

/// What a VM needs to reach the service and pair its agent; from
/// `ibkit serve` (URL and pins) and `POST /v1/instances` (id, pairing key).
#[derive(Debug, Clone)]
pub struct AgentBootstrap {
    /// The service as reachable from the VM, e.g. `https://10.0.2.2:8443`.
    pub service_url: String,
    /// Hex SHA-256 of the service certificate (DER): the agent's
    /// `server_cert_sha256`. Empty: the system's CA roots verify it.
    pub cert_sha256_hex: String,
    /// curl's public-key pin `sha256//BASE64` (SHA-256 of the certificate's
    /// SubjectPublicKeyInfo, as `ibkit serve` computes it). Empty: the
    /// system's CA roots verify the service.
    pub curl_pin: String,
    pub instance_id: uuid::Uuid,
    pub host: String,
    pub pairing_key: Secret,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserDataError {
    #[error("{field}: {why}")]
    Invalid { field: &'static str, why: String },
    #[error("the bootstrap is for host {bootstrap:?}, not {host:?}")]
    HostMismatch { host: String, bootstrap: String },
    #[error("no MIME boundary found that occurs in no part")]
    Boundary,
}

fn invalid(field: &'static str, why: impl Into<String>) -> UserDataError {
    UserDataError::Invalid {
        field,
        why: why.into(),
    }
}

impl AgentBootstrap {
    /// Checks every value that ends up in a shell script or TOML file: each
    /// is limited to characters that need no quoting there.
    pub fn validate(&self) -> Result<(), UserDataError> {
        let url = &self.service_url;
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| invalid("service_url", format!("{url:?} is not an http(s) URL")))?;
        let url_ok = |c: char| c.is_ascii_alphanumeric() || "-._~:/[]%@".contains(c);
        if rest.is_empty() || !rest.chars().all(url_ok) {
            return Err(invalid(
                "service_url",
                format!("{url:?}: only [A-Za-z0-9-._~:/[]%@] after the scheme"),
            ));
        }
        let hex = normalized_hex(&self.cert_sha256_hex);
        if !(hex.is_empty() || hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(invalid(
                "cert_sha256_hex",
                "expected 64 hex digits (or empty)",
            ));
        }
        let pin = &self.curl_pin;
        let pin_ok = pin.split(';').all(|p| {
            p.strip_prefix("sha256//").is_some_and(|b64| {
                !b64.is_empty()
                    && b64
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
            })
        });
        if !(pin.is_empty() || pin_ok) {
            return Err(invalid(
                "curl_pin",
                "expected sha256//BASE64[;sha256//BASE64…] (or empty)",
            ));
        }
        if !is_valid_name(&self.host) {
            return Err(invalid(
                "host",
                format!("{:?} is not a host name", self.host),
            ));
        }
        let key = self.pairing_key.expose();
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            // The key itself stays out of the message.
            return Err(invalid(
                "pairing_key",
                "must be non-empty [A-Za-z0-9_.-] (what install.sh accepts)",
            ));
        }
        Ok(())
    }
}

/// `AB:12:…` to `ab12…`, as the agent accepts it.
fn normalized_hex(s: &str) -> String {
    s.trim().replace(':', "").to_ascii_lowercase()
}

/// One part of the message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Part {
    content_type: &'static str,
    filename: &'static str,
    extra_headers: Vec<(&'static str, String)>,
    body: String,
}

/// The user data of one host, ready for the backend (NoCloud seed or Nova).
pub fn render_user_data(host: &HostDef, boot: &AgentBootstrap) -> Result<Vec<u8>, UserDataError> {
    if host.name != boot.host {
        return Err(UserDataError::HostMismatch {
            host: host.name.clone(),
            bootstrap: boot.host.clone(),
        });
    }
    boot.validate()?;
    let parts = parts(&host.user_data, boot);
    assemble(&parts, &mut random_boundary)
}

/// Whether Nova will take this user data (base64 at most 65535 bytes).
pub fn fits_openstack(user_data: &[u8]) -> bool {
    user_data.len().div_ceil(3) * 4 <= OPENSTACK_USER_DATA_MAX_BASE64
}

fn random_boundary() -> String {
    format!("==ibkit-{:032x}==", rand::random::<u128>())
}

fn parts(spec: &UserDataSpec, boot: &AgentBootstrap) -> Vec<Part> {
    let mut parts = vec![
        Part {
            content_type: "text/cloud-config",
            filename: CLOUD_CONFIG_FILENAME,
            extra_headers: Vec::new(),
            body: cloud_config(spec),
        },
        Part {
            content_type: "text/x-shellscript",
            filename: AGENT_PART_FILENAME,
            extra_headers: Vec::new(),
            body: if spec.install_agent {
                install_script(spec, boot)
            } else {
                baked_agent_script(spec, boot)
            },
        },
    ];
    if let Some(vendor) = &spec.cloud_config {
        parts.push(Part {
            content_type: "text/cloud-config",
            filename: VENDOR_CLOUD_CONFIG_FILENAME,
            extra_headers: vec![("Merge-Type", VENDOR_MERGE_TYPE.to_string())],
            body: vendor.clone(),
        });
    }
    parts
}

/// Part 1: `#cloud-config` followed by JSON (a YAML flow mapping).
fn cloud_config(spec: &UserDataSpec) -> String {
    let mut cfg = Map::new();
    if !spec.ssh_authorized_keys.is_empty() {
        cfg.insert(
            "ssh_authorized_keys".into(),
            json!(spec.ssh_authorized_keys),
        );
    }
    if !spec.packages.is_empty() {
        cfg.insert("package_update".into(), Value::Bool(true));
        cfg.insert("packages".into(), json!(spec.packages));
    }
    let mut files = Vec::new();
    for (dir, scripts) in [
        ("per-boot", &spec.per_boot),
        ("per-instance", &spec.per_instance),
        ("per-once", &spec.per_once),
    ] {
        for (i, script) in scripts.iter().enumerate() {
            let content = if script.starts_with("#!") {
                script.clone()
            } else {
                format!("#!/bin/bash\n{script}")
            };
            files.push(json!({
                "path": format!("/var/lib/cloud/scripts/{dir}/{:02}-ibkit-{dir}.sh", i + 1),
                "content": content,
                "permissions": "0755",
                "owner": "root:root",
            }));
        }
    }
    if !files.is_empty() {
        cfg.insert("write_files".into(), Value::Array(files));
    }
    let json = serde_json::to_string_pretty(&Value::Object(cfg)).unwrap_or_else(|_| "{}".into());
    format!("#cloud-config\n{json}\n")
}

/// Single-quotes a value for the shell.
fn sq(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The common start of both bootstrap scripts, with the shell variables
/// each needs (`cert` for the agent's config, `pin` and `memory_max` for
/// the installer).
fn script_header(what: &str, boot: &AgentBootstrap, vars: &[(&str, String)]) -> String {
    let mut s = format!(
        r#"#!/bin/bash
# ibkit: {what}
# Generated by ibkit deploy for host {host} of instance {id}; cloud-init runs
# it once per instance (scripts-user). Its output is in
# /var/log/cloud-init-output.log. IBKIT_ROOT=DIR works below DIR and
# IBKIT_NO_SYSTEMD=1 skips systemd (tests); IBKIT_RETRY_PAUSE=SECONDS.
set -u
service_url={url}
instance={id_q}
host={host_q}
pairing_key={key}
"#,
        host = boot.host,
        id = boot.instance_id,
        url = sq(boot.service_url.trim_end_matches('/')),
        id_q = sq(&boot.instance_id.to_string()),
        host_q = sq(&boot.host),
        key = sq(boot.pairing_key.expose()),
    );
    for (name, value) in vars {
        s.push_str(&format!("{name}={}\n", sq(value)));
    }
    s.push_str(
        r#"pause="${IBKIT_RETRY_PAUSE:-10}"
root="${IBKIT_ROOT:-}"

log() { echo "ibkit bootstrap: $*" >&2; }
"#,
    );
    s
}

/// Part 2 when the agent is installed from the service.
fn install_script(spec: &UserDataSpec, boot: &AgentBootstrap) -> String {
    let mut s = script_header(
        "download the agent installer from the configuration service and run it",
        boot,
        &[
            ("curl_pin", boot.curl_pin.clone()),
            ("memory_max", spec.agent_memory_max.clone()),
        ],
    );
    s.push_str(
        r#"
curl_opts=(-fsS --retry 30 --retry-delay 5)
if curl --help all 2>/dev/null | grep -q -e '--retry-all-errors'; then
  curl_opts+=(--retry-all-errors)
else
  curl_opts+=(--retry-connrefused) # curl older than 7.71
fi
if [ -n "$curl_pin" ]; then
  # The service's certificate is self-signed: pin its public key instead.
  curl_opts+=(-k --pinnedpubkey "$curl_pin")
fi

umask 077
installer=$(mktemp) || exit 1
# The key goes to the installer in a file (0600), never as an argument:
# every local user can read a process's arguments.
key_file=$(mktemp) || exit 1
trap 'rm -f "$installer" "$key_file"' EXIT
printf '%s\n' "$pairing_key" > "$key_file" || exit 1
rounds=5
for round in $(seq 1 "$rounds"); do
  if curl "${curl_opts[@]}" -o "$installer" "$service_url/v1/agent/install.sh"; then
    # --server-url: the VM may reach the service at another address than
    # the service's public URL (a private bridge).
    if IBKIT_ROOT="$root" sh "$installer" --server-url "$service_url" --instance "$instance" \
        --host "$host" --pairing-key-file "$key_file" --memory-max "$memory_max"; then
@@billing token@@      log "the agent is installed, paired and running"
      exit 0
    fi
    log "the installer failed (round $round of $rounds)"
  else
    log "cannot download $service_url/v1/agent/install.sh (round $round of $rounds)"
  fi
  if [ "$round" -lt "$rounds" ]; then
    sleep "$pause"
  fi
done
log "giving up: the agent is not installed"
exit 1
"#,
    );
    let billing = match &spec.billing_token {
        // The installer wrote the config and started the agent: add the
        // table, then restart the agent so it reads it.
        Some(b) => format!(
            r#"      if ! printf '\n%s' {toml} >> "$root/etc/ibkit/agent.toml"; then
        log "cannot add the billing token file to the agent's config"
        exit 1
      fi
      if [ -z "${{IBKIT_NO_SYSTEMD:-}}" ]; then
        systemctl restart ibkit-agent.service
      fi
      log "the agent keeps the billing token file "{path}
"#,
            toml = sq(&billing_token_toml(b)),
            path = sq(&b.path),
        ),
        None => String::new(),
    };
    s.replace("@@billing token@@", &billing)
}

/// The agent config's `[billing_token]` table (the manifest's keys are
/// the agent's).
fn billing_token_toml(b: &BillingTokenSpec) -> String {
    #[derive(serde::Serialize)]
    struct Table<'a> {
        billing_token: &'a BillingTokenSpec,
    }
    toml::to_string(&Table { billing_token: b }).unwrap_or_default()
}

/// Part 2 when the agent is baked into the image.
fn baked_agent_script(spec: &UserDataSpec, boot: &AgentBootstrap) -> String {
    let mut s = script_header(
        "configure, pair and start the ibkit agent baked into the image",
        boot,
        &[("cert_sha256", normalized_hex(&boot.cert_sha256_hex))],
    );
    s.push_str(
        r#"
agent=''
for candidate in "$root/usr/local/bin/ibkit-agent" "$root/usr/bin/ibkit-agent"; do
  if [ -x "$candidate" ]; then
    agent=$candidate
    break
  fi
done
if [ -z "$agent" ]; then
  log "install_agent = false, but the image has no ibkit-agent in /usr/local/bin or /usr/bin"
  exit 1
fi
config="$root/etc/ibkit/agent.toml"
key_file="$root/etc/ibkit/pairing-key"
state="$root/var/lib/ibkit-agent"
umask 077
mkdir -p "$root/etc/ibkit" "$state" || exit 1
# Which key this configuration pairs with (its SHA-256; the key itself is
# single-use and only in key_file, which the agent deletes once paired): a
# new key makes a new configuration, so the state below is reset.
key_sum=$(printf '%s' "$pairing_key" | sha256sum | cut -d' ' -f1)
new_config=$(mktemp "$root/etc/ibkit/.agent.toml.XXXXXX") || exit 1
cat > "$new_config" <<CONFIG
# Written by the ibkit deploy user data (pairing key sha256 $key_sum).
server_url = "$service_url"
server_cert_sha256 = "$cert_sha256"
instance = "$instance"
host = "$host"
pairing_key_file = "$key_file"
state_dir = "$state"
CONFIG
@@billing token@@if [ -s "$state/credential" ] && ! cmp -s "$new_config" "$config"; then
  # A credential of another deployment (or of the image build) would be
  # used instead of pairing: start from an empty state.
  if [ -z "${IBKIT_NO_SYSTEMD:-}" ]; then
    systemctl stop ibkit-agent.service 2>/dev/null
  fi
  log "removing the agent state left in the image ($state)"
  find "$state" -mindepth 1 -delete
fi
mv -f "$new_config" "$config" || exit 1
printf '%s\n' "$pairing_key" > "$key_file" || exit 1

if [ -z "${IBKIT_NO_SYSTEMD:-}" ] && ! systemctl cat ibkit-agent.service >/dev/null 2>&1; then
  log "the image has no ibkit-agent.service: installing it"
  umask 022
  cat > "$root/etc/systemd/system/ibkit-agent.service" <<'UNIT'
@UNIT@
UNIT
  sed -i "s#^ExecStart=/usr/local/bin/ibkit-agent #ExecStart=${agent#"$root"} #" \
    "$root/etc/systemd/system/ibkit-agent.service"
fi
if [ -z "${IBKIT_NO_SYSTEMD:-}" ]; then
  # The deployment's memory cap, whatever the image's unit says.
  umask 022
  mkdir -p "$root/etc/systemd/system/ibkit-agent.service.d"
  cat > "$root/etc/systemd/system/ibkit-agent.service.d/ibkit-deploy.conf" <<'DROPIN'
[Service]
MemoryMax=@MEMORY_MAX@
DROPIN
fi

paired=''
rounds=12
for round in $(seq 1 "$rounds"); do
  if "$agent" pair --config "$config"; then
    paired=yes
    break
  fi
  if [ "$round" -lt "$rounds" ]; then
    sleep "$pause"
  fi
done
if [ -z "$paired" ]; then
  log "not paired yet; the agent keeps trying once it runs"
fi
if [ -n "${IBKIT_NO_SYSTEMD:-}" ]; then
  log "done (no systemd unit, IBKIT_NO_SYSTEMD is set)"
  exit 0
fi
systemctl daemon-reload
systemctl enable ibkit-agent.service
systemctl restart ibkit-agent.service
log "ibkit-agent is running"
"#,
    );
    s.replace(
        "@UNIT@",
        ibkit_api::dist::agent_unit(&spec.agent_memory_max).trim_end(),
    )
    .replace("@MEMORY_MAX@", &spec.agent_memory_max)
    .replace(
        "@@billing token@@",
        &match &spec.billing_token {
            Some(b) => format!(
                "printf '\\n%s' {} >> \"$new_config\" || exit 1\n",
                sq(&billing_token_toml(b))
            ),
            None => String::new(),
        },
    )
}

/// Joins the parts under a boundary that none of them contains.
fn assemble(
    parts: &[Part],
    next_boundary: &mut dyn FnMut() -> String,
) -> Result<Vec<u8>, UserDataError> {
    let boundary = (0..16)
        .map(|_| next_boundary())
        .find(|b| {
            parts.iter().all(|p| {
                !p.body.contains(b.as_str())
                    && !p.extra_headers.iter().any(|(_, v)| v.contains(b.as_str()))
            })
        })
        .ok_or(UserDataError::Boundary)?;
    let mut out = String::new();
    out.push_str(&format!(
        "Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n"
    ));
    for p in parts {
        let encoding = if p.body.is_ascii() { "7bit" } else { "8bit" };
        out.push_str(&format!("--{boundary}\n"));
        out.push_str(&format!(
            "Content-Type: {}; charset=\"utf-8\"\n",
            p.content_type
        ));
        out.push_str("MIME-Version: 1.0\n");
        out.push_str(&format!("Content-Transfer-Encoding: {encoding}\n"));
        for (name, value) in &p.extra_headers {
            out.push_str(&format!("{name}: {value}\n"));
        }
        out.push_str(&format!(
            "Content-Disposition: attachment; filename=\"{}\"\n\n",
            p.filename
        ));
        out.push_str(&p.body);
        // The line break before a boundary belongs to the boundary
        // (RFC 2046 §5.1.1): the body keeps its own final newline.
        out.push('\n');
    }
    out.push_str(&format!("--{boundary}--\n"));
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(body: &str) -> Part {
        Part {
            content_type: "text/plain",
            filename: "x",
            extra_headers: Vec::new(),
            body: body.into(),
        }
    }

    #[test]
    fn a_boundary_found_in_a_part_is_not_used() {
        let mut candidates = vec!["B2".to_string(), "B1".to_string()];
        let mut next = || candidates.pop().unwrap_or_default();
        let out = assemble(&[part("has B1 inside\n")], &mut next).expect("assembles");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.starts_with("Content-Type: multipart/mixed; boundary=\"B2\"\n"));
        assert!(text.ends_with("\n--B2--\n"));
        let mut always = || "x".to_string();
        assert_eq!(
            assemble(&[part("x")], &mut always),
            Err(UserDataError::Boundary)
        );
    }

    #[test]
    fn random_boundaries_differ() {
        assert_ne!(random_boundary(), random_boundary());
    }

    #[test]
    fn openstack_size_limit() {
        assert!(fits_openstack(&vec![0; 49_149]));
        assert!(!fits_openstack(&vec![0; 49_152]));
    }

    /// A host with a billing token file, its path chosen to need quoting.
    fn billing_host(install_agent: bool) -> (HostDef, AgentBootstrap) {
        let mut spec = UserDataSpec {
            install_agent,
            ..UserDataSpec::default()
        };
        spec.billing_token = Some(BillingTokenSpec {
            path: BILLING_PATH.into(),
            owner: "app".into(),
            group: "app-readers".into(),
            rotate: true,
        });
        let host = HostDef {
            name: "h1".into(),
            image: "x.qcow2".into(),
            flavor: crate::manifest::Flavor::default(),
            os_flavor: None,
            ports: Vec::new(),
            user_data: spec,
        };
        let boot = AgentBootstrap {
            service_url: "https://10.0.2.2:8443".into(),
            cert_sha256_hex: String::new(),
            curl_pin: String::new(),
            instance_id: uuid::Uuid::nil(),
            host: "h1".into(),
            pairing_key: Secret::new("key-1"),
        };
        (host, boot)
    }

    const BILLING_PATH: &str = r#"/opt/agent dir/it's $HOME `x` "q" \.key"#;

    /// Runs a bootstrap script below `root` with `bin` first in PATH, and
    /// shellcheck on it when installed (Debian: shellcheck).
    fn run_script(script: &str, root: &std::path::Path, bin: &std::path::Path) {
        use std::process::{Command, Stdio};
        let out = Command::new("bash")
            .arg("-c")
            .arg(script)
            .env("IBKIT_ROOT", root)
            .env("IBKIT_NO_SYSTEMD", "1")
            .env("IBKIT_RETRY_PAUSE", "0")
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    bin.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "{}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Ok(mut child) = Command::new("shellcheck")
            .args(["-s", "bash", "-S", "warning", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
        {
            use std::io::Write as _;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(script.as_bytes()).expect("write");
            }
            let out = child.wait_with_output().expect("shellcheck");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }

    fn write_exe(path: &std::path::Path, text: &str) {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::write(path, text).expect("write");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    /// The `[billing_token]` table of the agent's config the script left.
    fn billing_table(root: &std::path::Path) -> Option<toml::Table> {
        let text = std::fs::read_to_string(root.join("etc/ibkit/agent.toml")).expect("config");
        let parsed: toml::Table = toml::from_str(&text).expect("TOML");
        assert_eq!(parsed["host"].as_str(), Some("h1"), "{text}");
        parsed
            .get("billing_token")
            .and_then(|t| t.as_table())
            .cloned()
    }

    fn expected_table() -> toml::Table {
        let mut t = toml::Table::new();
        t.insert("path".into(), BILLING_PATH.into());
        t.insert("owner".into(), "app".into());
        t.insert("group".into(), "app-readers".into());
        t.insert("rotate".into(), true.into());
        t
    }

    #[test]
    fn baked_agent_config_gets_the_billing_token_table() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("usr/local/bin")).expect("mkdir");
        write_exe(
            &root.join("usr/local/bin/ibkit-agent"),
            "#!/bin/bash\nexit 0\n",
        );
        let (host, boot) = billing_host(false);
        run_script(
            &baked_agent_script(&host.user_data, &boot),
            &root,
            dir.path(),
        );
        assert_eq!(billing_table(&root), Some(expected_table()));
        // Without it: no table.
        let (mut host, boot) = billing_host(false);
        host.user_data.billing_token = None;
        run_script(
            &baked_agent_script(&host.user_data, &boot),
            &root,
            dir.path(),
        );
        assert_eq!(billing_table(&root), None);
    }

    #[test]
    fn installed_agent_config_gets_the_billing_token_table() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().join("root");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        // curl "downloads" an installer that writes the config as
        // install.sh does (replacing any earlier one).
        write_exe(
            &bin.join("curl"),
            r#"#!/bin/bash
if [ "${1:-}" = "--help" ]; then exit 0; fi
out=''
while [ $# -gt 0 ]; do case "$1" in -o) out="$2"; shift 2 ;; *) shift ;; esac; done
cat > "$out" <<'EOF'
mkdir -p "$IBKIT_ROOT/etc/ibkit"
printf 'server_url = "https://x"\ninstance = "i"\nhost = "h1"\n' > "$IBKIT_ROOT/etc/ibkit/agent.toml"
EOF
"#,
        );
        let (host, boot) = billing_host(true);
        run_script(&install_script(&host.user_data, &boot), &root, &bin);
        assert_eq!(billing_table(&root), Some(expected_table()));
        // Run again (the installer rewrites the config): one table.
        run_script(&install_script(&host.user_data, &boot), &root, &bin);
        assert_eq!(billing_table(&root), Some(expected_table()));
    }

    #[test]
    fn quoting() {
        assert_eq!(sq("a'b"), r"'a'\''b'");
        assert_eq!(normalized_hex("AB:cd"), "abcd");
    }
}

//! What the providers would compute, emulated: generated secrets (kept
//! across runs in [`Generated`], so a redeploy does not rotate them),
//! ids, a VM's address (a run-time reference to a step ibkit adds), the
//! user data handle, script results (run-time references), and
//! placeholders for the resources ibkit does not emulate.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::tf::eval::{InstanceKey, Provider};
use crate::tf::value::Value;
use crate::tf::{EvalError, config::Resource};

/// The group ibkit adds to learn a VM's address, when the configuration
/// uses `access_ip_v4` or a network's `fixed_ip_v4`.
pub const ADDRESS_GROUP: &str = "ibkit-address";

/// The prefix of the handle `ivkcs_user_data.X.user_data[i]` evaluates to.
pub const USER_DATA_HANDLE: &str = "ibkit-user-data:";

/// The prefix of a VM's id (`vkcs_compute_instance.X.id`).
pub const HOST_ID: &str = "ibkit-host:";

/// Resources whose effect ibkit does not reproduce; their attributes are
/// placeholders and the deploy warns, naming them.
pub const NOT_EMULATED: &[(&str, &[&str])] = &[
    ("ivkcs_dns", &["id", "name", "domain", "ip", "fqdn"]),
    (
        "ivkcs_s3",
        &["id", "name", "access", "secret", "endpoint", "bucket"],
    ),
    (
        "ivkcs_cert",
        &["id", "cert", "key", "ca", "certificate", "private_key"],
    ),
    (
        "ivkcs_monitoring_user",
        &["id", "login", "password", "username", "url", "endpoint"],
    ),
];

/// Values generated once per deployment and kept with it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Generated {
    /// The marketplace's `instance_uuid` for this deployment.
    pub instance_uuid: String,
    /// Per resource instance address (and its settings, so a changed
    /// `length` regenerates): the generated attributes.
    #[serde(default)]
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
}

impl Generated {
    pub fn new() -> Result<Generated, EvalError> {
        let mut b = [0u8; 16];
        fill(&mut b)?;
        Ok(Generated {
            instance_uuid: uuid::Builder::from_random_bytes(b).into_uuid().to_string(),
            secrets: BTreeMap::new(),
        })
    }
}

fn fill(buf: &mut [u8]) -> Result<(), EvalError> {
    getrandom::fill(buf).map_err(|e| EvalError::msg(format!("no randomness: {e}")))
}

/// The provider ibkit's package deploy evaluates with.
pub struct PackageProvider {
    pub generated: Generated,
}

/// The reference text of a host's address.
pub fn address_reference(host: &str) -> String {
    format!("{{{{ibkit.results.{host}.{ADDRESS_GROUP}.1.raw}}}}")
}

fn arg_str(args: &BTreeMap<String, Value>, k: &str) -> Option<String> {
    match args.get(k) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(crate::tf::value::format_number(*n)),
        _ => None,
    }
}

fn arg_num(args: &BTreeMap<String, Value>, k: &str) -> Option<f64> {
    args.get(k).and_then(|v| v.as_number().ok())
}

fn arg_bool(args: &BTreeMap<String, Value>, k: &str, default: bool) -> bool {
    args.get(k)
        .and_then(|v| v.as_bool().ok())
        .unwrap_or(default)
}

impl PackageProvider {
    fn secret(
        &mut self,
        key: String,
        make: impl FnOnce() -> Result<BTreeMap<String, String>, EvalError>,
    ) -> Result<BTreeMap<String, Value>, EvalError> {
        let values = match self.generated.secrets.get(&key) {
            Some(v) => v.clone(),
            None => {
                let v = make()?;
                self.generated.secrets.insert(key, v.clone());
                v
            }
        };
        Ok(values
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect())
    }
}

impl Provider for PackageProvider {
    fn computed(
        &mut self,
        r: &Resource,
        key: &InstanceKey,
        args: &BTreeMap<String, Value>,
    ) -> Result<BTreeMap<String, Value>, EvalError> {
        let address = format!("{}{}", r.address(), key.suffix());
        let mut out = BTreeMap::new();
        out.insert("id".to_string(), Value::String(address.clone()));
        match (r.data, r.kind.as_str()) {
            (false, "vkcs_compute_instance") => {
                let name = arg_str(args, "name").ok_or_else(|| {
                    EvalError::msg("vkcs_compute_instance: name is required (it names the host)")
                })?;
                let addr = address_reference(&name);
                out.insert("id".into(), Value::String(format!("{HOST_ID}{name}")));
                out.insert("access_ip_v4".into(), Value::String(addr.clone()));
                let mut networks = match args.get("network") {
                    Some(Value::List(l)) => l.clone(),
                    _ => vec![Value::Map(BTreeMap::new())],
                };
                for (i, n) in networks.iter_mut().enumerate() {
                    if let Value::Map(m) = n {
                        let v = if i == 0 {
                            addr.clone()
                        } else {
                            format!("{address}.network[{i}].fixed_ip_v4")
                        };
                        m.entry("fixed_ip_v4".into()).or_insert(Value::String(v));
                    }
                }
                out.insert("network".into(), Value::List(networks));
            }
            (false, "ivkcs_user_data") => {
                let hosts = match args.get("hosts") {
                    Some(Value::List(l)) => l.len(),
                    _ => 0,
                };
                out.insert(
                    "user_data".into(),
                    Value::List(
                        (0..hosts)
                            .map(|i| Value::String(format!("{USER_DATA_HANDLE}{address}:{i}")))
                            .collect(),
                    ),
                );
            }
            (false, "ivkcs_ssh_keypair") => {
                let bits = arg_num(args, "bit_size").map_or(2048, |b| b as usize);
                if !(1024..=8192).contains(&bits) {
                    return Err(EvalError::msg(format!(
                        "bit_size {bits}: must be 1024..=8192"
                    )));
                }
                let generated =
                    self.secret(format!("{address}#rsa{bits}"), || rsa_keypair(bits))?;
                out.extend(generated);
            }
            (false, "random_password" | "random_string") => {
                let length = arg_num(args, "length").unwrap_or(16.0);
                if !(1.0..=512.0).contains(&length) {
                    return Err(EvalError::msg(format!("length {length}: must be 1..=512")));
                }
                let mut alphabet = String::new();
                if arg_bool(args, "upper", true) {
                    alphabet.push_str("ABCDEFGHIJKLMNOPQRSTUVWXYZ");
                }
                if arg_bool(args, "lower", true) {
                    alphabet.push_str("abcdefghijklmnopqrstuvwxyz");
                }
                if arg_bool(args, "numeric", arg_bool(args, "number", true)) {
                    alphabet.push_str("0123456789");
                }
                if arg_bool(args, "special", r.kind == "random_password") {
                    alphabet.push_str(
                        &arg_str(args, "override_special")
                            .unwrap_or_else(|| "!@#$%&*()-_=+[]{}<>:?".into()),
                    );
                }
                if alphabet.is_empty() {
                    return Err(EvalError::msg("no characters left to choose from"));
                }
                let key = format!("{address}#{}#{alphabet}", length as usize);
                let generated = self.secret(key, || {
                    let chars: Vec<char> = alphabet.chars().collect();
                    let mut s = String::new();
                    let mut buf = vec![0u8; length as usize * 2];
                    fill(&mut buf)?;
                    for pair in buf.chunks(2).take(length as usize) {
                        let n = usize::from(u16::from_le_bytes([pair[0], pair[1]]));
                        s.push(chars[n % chars.len()]);
                    }
                    let mut m = BTreeMap::new();
                    m.insert("result".to_string(), s.clone());
                    if r.kind == "random_password" {
                        // Terraform's bcrypt_hash is not reproduced.
                        m.insert("id".to_string(), "none".to_string());
                    }
                    Ok(m)
                })?;
                out.extend(generated);
            }
            (false, "random_uuid") => {
                out.extend(self.secret(address.clone(), || {
                    let g = Generated::new()?;
                    Ok(BTreeMap::from([("result".to_string(), g.instance_uuid)]))
                })?);
            }
            (false, "random_integer") => {
                let (min, max) = (
                    arg_num(args, "min").unwrap_or(0.0),
                    arg_num(args, "max").unwrap_or(0.0),
                );
                if max < min {
                    return Err(EvalError::msg("random_integer: max < min"));
                }
                let key = format!("{address}#{min}#{max}");
                let generated = self.secret(key, || {
                    let mut b = [0u8; 8];
                    fill(&mut b)?;
                    let span = (max - min) as u64 + 1;
                    let n = min as i64 + (u64::from_le_bytes(b) % span) as i64;
                    Ok(BTreeMap::from([("result".to_string(), n.to_string())]))
                })?;
                for (k, v) in generated {
                    out.insert(k, Value::Number(v.to_text()?.parse().unwrap_or(0.0)));
                }
            }
            (false, "random_id") => {
                let n = arg_num(args, "byte_length").unwrap_or(8.0);
                if !(1.0..=256.0).contains(&n) {
                    return Err(EvalError::msg("random_id: byte_length must be 1..=256"));
                }
                let key = format!("{address}#{n}");
                let generated = self.secret(key, || {
                    let mut b = vec![0u8; n as usize];
                    fill(&mut b)?;
                    use base64::Engine as _;
                    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
                    Ok(BTreeMap::from([
                        ("hex".to_string(), hex),
                        (
                            "b64_std".to_string(),
                            base64::engine::general_purpose::STANDARD.encode(&b),
                        ),
                        (
                            "b64_url".to_string(),
                            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&b),
                        ),
                    ]))
                })?;
                out.extend(generated);
            }
            (true, "ivkcs_agent_script_result") => {
                let host =
                    arg_str(args, "host").ok_or_else(|| EvalError::msg("host is required"))?;
                let group =
                    arg_str(args, "group").ok_or_else(|| EvalError::msg("group is required"))?;
                let index =
                    arg_num(args, "index").ok_or_else(|| EvalError::msg("index is required"))?;
                let base = format!("{{{{ibkit.results.{host}.{group}.{}", index as u32);
                out.insert("result".into(), Value::String(format!("{base}.raw}}}}")));
                out.insert(
                    "structured_result".into(),
                    Value::String(format!("{base}.structured}}}}")),
                );
            }
            (true, "vkcs_images_image") => {
                // The image's key for --map: its name as the data source asks.
                let name = arg_str(args, "name").unwrap_or_else(|| r.name.clone());
                out.insert("id".into(), Value::String(name.clone()));
                out.entry("name".into()).or_insert(Value::String(name));
            }
            (true, "vkcs_compute_flavor") => {
                let name = arg_str(args, "name")
                    .or_else(|| arg_str(args, "flavor_id"))
                    .unwrap_or_else(|| r.name.clone());
                out.insert("id".into(), Value::String(name));
            }
            (true, "vkcs_networking_subnet" | "vkcs_networking_network") => {
                out.insert("sdn".into(), Value::str("neutron"));
                out.insert(
                    "network_id".into(),
                    Value::String(format!("{address}.network_id")),
                );
            }
            (_, kind) => {
                if let Some((_, attrs)) = NOT_EMULATED.iter().find(|(k, _)| *k == kind) {
                    for a in *attrs {
                        out.entry(a.to_string())
                            .or_insert(Value::String(format!("not-emulated:{address}.{a}")));
                    }
                }
                if kind == "vkcs_networking_floatingip" {
                    out.insert(
                        "address".into(),
                        Value::String(format!("not-emulated:{address}.address")),
                    );
                }
            }
        }
        // Arguments win over placeholders (an s3 `name` is the one given),
        // except for what only the provider knows.
        const OWNED: &[&str] = &[
            "id",
            "result",
            "structured_result",
            "access_ip_v4",
            "user_data",
            "public_key",
            "private_key",
            "network",
            "hex",
            "b64_std",
            "b64_url",
        ];
        out.retain(|k, _| OWNED.contains(&k.as_str()) || !args.contains_key(k));
        Ok(out)
    }
}

/// An RSA key pair: OpenSSH public key and PEM (OpenSSH format) private key.
fn rsa_keypair(bits: usize) -> Result<BTreeMap<String, String>, EvalError> {
    let mut rng = getrandom::rand_core::UnwrapErr(getrandom::SysRng);
    let pair = ssh_key::private::RsaKeypair::random(&mut rng, bits)
        .map_err(|e| EvalError::msg(format!("RSA key generation: {e}")))?;
    let private = ssh_key::PrivateKey::from(pair);
    let pem = private
        .to_openssh(ssh_key::LineEnding::LF)
        .map_err(|e| EvalError::msg(format!("RSA key encoding: {e}")))?;
    let public = private
        .public_key()
        .to_openssh()
        .map_err(|e| EvalError::msg(format!("RSA key encoding: {e}")))?;
    Ok(BTreeMap::from([
        ("private_key".to_string(), pem.to_string()),
        ("public_key".to_string(), public),
    ]))
}

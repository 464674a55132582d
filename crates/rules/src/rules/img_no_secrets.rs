//! IMG-NO-SECRETS: no keys, credentials, tokens or leftover instance data.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use ibkit_image::fs::FileKind;
use regex::bytes::Regex;

use super::util::{fingerprint, names};
use crate::context::Context;
use crate::model::{Evidence, Outcome, Severity};
use crate::rule::RuleDef;

/// Credential files relative to a home directory.
pub const HOME_CREDENTIAL_FILES: &[(&str, &str, &[&str])] = &[
    (
        ".ssh/authorized_keys",
        "SSH authorized keys (grants the key's owner access to every instance)",
        &[],
    ),
    (
        ".ssh/authorized_keys2",
        "SSH authorized keys (grants the key's owner access to every instance)",
        &[],
    ),
    (
        ".aws/credentials",
        "AWS credentials",
        &["aws_secret_access_key", "aws_session_token"],
    ),
    (
        ".docker/config.json",
        "Docker registry credentials",
        &["\"auth\"", "identitytoken"],
    ),
    (".git-credentials", "git credentials", &["@"]),
    (".pgpass", "PostgreSQL passwords", &[":"]),
    (".netrc", "netrc login passwords", &["password"]),
    (".my.cnf", "MySQL client credentials", &["password"]),
    (
        ".config/openstack/clouds.yaml",
        "OpenStack credentials",
        &["password", "application_credential_secret", "token"],
    ),
    (
        ".config/openstack/secure.yaml",
        "OpenStack credentials",
        &["password", "application_credential_secret", "token"],
    ),
    (
        ".kube/config",
        "Kubernetes credentials",
        &["token", "client-key-data", "password"],
    ),
    (
        ".config/gcloud/credentials.db",
        "Google Cloud credentials",
        &[],
    ),
    (".azure/accessTokens.json", "Azure tokens", &[]),
    (".vault-token", "HashiCorp Vault token", &[]),
    (
        ".npmrc",
        "npm registry token",
        &["_authToken", "_auth", "_password"],
    ),
    (".pypirc", "PyPI credentials", &["password"]),
];

/// Directories whose files' contents are scanned for secrets (plus homes).
const CONTENT_DIRS: &[&str] = &[
    "/etc",
    "/opt",
    "/srv",
    "/usr/local/etc",
    "/var/lib/cloud",
    "/tmp",
    "/var/tmp",
    "/var/www",
];
/// Largest file whose content is scanned.
const MAX_SCAN_FILE: u64 = 1 << 20;
/// Total bytes scanned before giving up (keeps `check` fast on big images).
const SCAN_BUDGET: u64 = 96 << 20;
/// Files visited at most.
const MAX_FILES: usize = 50_000;
/// Directory depth at most.
const MAX_DEPTH: usize = 12;

struct Pattern {
    name: &'static str,
    re: Regex,
}

fn patterns() -> &'static [Pattern] {
    static P: OnceLock<Vec<Pattern>> = OnceLock::new();
    P.get_or_init(|| {
        let mk = |name, re: &str| Pattern {
            name,
            re: Regex::new(re).expect("static pattern compiles (tested)"),
        };
        vec![
            mk("PEM private key", r"-----BEGIN (?:RSA |DSA |EC |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----"),
            mk("AWS access key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
            mk("GitHub token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{60,})\b"),
            mk("GitLab token", r"\bglpat-[A-Za-z0-9_\-]{20}\b"),
            mk("Slack token", r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b"),
            mk("Google API key", r"\bAIza[0-9A-Za-z_\-]{35}\b"),
            mk("OpenStack password", r##"(?m)^\s*(?:password|application_credential_secret)\s*:\s*['"]?[^\s'"#]{4,}"##),
        ]
    })
}

/// The rule.
pub static RULE: RuleDef = RuleDef {
    id: "IMG-NO-SECRETS",
    title: "No secrets or leftover instance data",
    requirement: "The image must contain no sensitive data (keys, credentials, tokens, leftover cloud-init instance data, ...).",
    severity: Severity::Error,
    doc: r#"## What it checks
Path rules, in every home from `/etc/passwd` and `/root`: `.ssh/authorized_keys`,
private keys `.ssh/id_*`, `.aws/credentials`, `.docker/config.json`,
`.git-credentials`, `.pgpass`, `.netrc`, `.my.cnf`, `clouds.yaml`,
`.kube/config` and more; system-wide: SSH host keys `/etc/ssh/ssh_host_*_key`,
cloud-init instance data `/var/lib/cloud/instances/*`, a non-empty
`/etc/machine-id` (and `/var/lib/dbus/machine-id`), DHCP leases.
Content rules over homes, `/etc`, `/opt`, `/srv`, `/var/lib/cloud`, `/tmp`:
PEM private keys, AWS access keys, GitHub/GitLab/Slack tokens, Google API
keys, OpenStack passwords in YAML.

## Why
Every buyer gets a copy of the image. A key or token in it is a key or token
for everyone; an `authorized_keys` entry is a backdoor; a shared machine-id
makes every instance look the same to systemd, DHCP and monitoring.

## Evidence
Offline: the path and line, the kind of secret, and a fingerprint (length and
the first SHA-256 digits). The secret itself is never printed.

## Remediation
Delete the files, truncate `/etc/machine-id` to zero bytes (keep the file),
`cloud-init clean --logs --seed`, remove SSH host keys (cloud-init
regenerates them), and rotate every credential that was in the image.

## Traps
Printing the secret into the report (we show a fingerprint). SSH host keys
that cloud-init deletes and regenerates at first boot (`ssh_deletekeys`,
on by default) are a warning, not a failure; without cloud-init they are
shared by every instance and fail.
"#,
    remediation: "Delete the listed files, empty /etc/machine-id, run `cloud-init clean`, and rotate any credential that was in the image.",
    check,
};

/// True if cloud-init will delete and regenerate SSH host keys at first boot.
fn host_keys_regenerated(cx: &Context) -> bool {
    let installed = cx.packages().get("cloud-init").is_some()
        || super::util::find_binary(cx, &["cloud-init"]).is_some();
    if !installed || cx.guest.exists("/etc/cloud/cloud-init.disabled") {
        return false;
    }
    let cc = cx.cloud();
    let delete = cc.bool("ssh_deletekeys").unwrap_or(true);
    let ssh_module = cc
        .names("cloud_init_modules")
        .map(|m| m.iter().any(|n| n == "ssh" || n == "cc_ssh"))
        .unwrap_or(true);
    delete && ssh_module
}

fn check(cx: &Context) -> Outcome {
    let mut o = Outcome::default();
    let mut reported: BTreeSet<String> = BTreeSet::new();

    // Homes.
    for (home, user) in cx.accounts().homes() {
        if !matches!(cx.guest.stat(&home), Ok(Some(m)) if m.kind == FileKind::Dir) {
            continue;
        }
        let who = user
            .map(|u| u.name.clone())
            .unwrap_or_else(|| "root".into());
        for (rel, what, markers) in HOME_CREDENTIAL_FILES {
            let p = format!("{home}/{rel}");
            match cx.guest.stat(&p) {
                Ok(Some(m)) if m.kind == FileKind::File && m.size > 0 => {
                    let head = cx.guest.read_head(&p, MAX_SCAN_FILE).ok().flatten();
                    // Files that may hold plain settings only count when a
                    // credential marker is in them (a registry URL is no secret).
                    if let (false, Some(b)) = (markers.is_empty(), &head) {
                        let text = String::from_utf8_lossy(b);
                        if !markers.iter().any(|k| text.contains(k)) {
                            continue;
                        }
                    }
                    let detail = match head {
                        Some(b) => {
                            let lines = b
                                .split(|&c| c == b'\n')
                                .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
                                .count();
                            format!("{what}; {lines} entries, {}", fingerprint(&b))
                        }
                        None => what.to_string(),
                    };
                    o.fail(
                        "credential-file",
                        format!("{what} of {who}: {p}"),
                        Evidence::at(p.clone(), detail),
                    );
                    reported.insert(p);
                }
                _ => {}
            }
        }
        for n in names(cx, &format!("{home}/.ssh")) {
            if n.starts_with("id_") && !n.ends_with(".pub")
                || n.ends_with(".pem")
                || n.ends_with("_key") && !n.ends_with(".pub")
            {
                let p = format!("{home}/.ssh/{n}");
                if let Ok(Some(b)) = cx.guest.read_head(&p, MAX_SCAN_FILE)
                    && !b.is_empty()
                {
                    o.fail(
                        "private-key-file",
                        format!("SSH private key of {who}: {p}"),
                        Evidence::at(p.clone(), format!("private key, {}", fingerprint(&b))),
                    );
                    reported.insert(p);
                }
            }
        }
    }

    // SSH host keys.
    let regenerated = host_keys_regenerated(cx);
    for n in names(cx, "/etc/ssh") {
        if n.starts_with("ssh_host_") && n.ends_with("_key") {
            let p = format!("/etc/ssh/{n}");
            if cx.guest.is_file(&p) {
                reported.insert(p.clone());
                if regenerated {
                    o.warn(
                        "host-key",
                        format!("SSH host key in the image: {p}"),
                        Evidence::at(p, "cloud-init deletes and regenerates host keys at first boot (ssh_deletekeys); remove it anyway"),
                    );
                } else {
                    o.fail(
                        "host-key",
                        format!("SSH host key shared by every instance: {p}"),
                        Evidence::at(p, "nothing regenerates it at first boot (no cloud-init ssh module with ssh_deletekeys)"),
                    );
                }
            }
        }
    }

    // cloud-init leftovers.
    let instances = names(cx, "/var/lib/cloud/instances");
    if !instances.is_empty() {
        o.fail(
            "cloudinit-instance-data",
            "leftover cloud-init instance data",
            Evidence::at(
                "/var/lib/cloud/instances",
                format!(
                    "{} instance directories (user data, network config of the build VM)",
                    instances.len()
                ),
            ),
        );
        reported.insert("/var/lib/cloud".into());
    }
    if let Ok(Some(t)) = cx.guest.read_link("/var/lib/cloud/instance") {
        o.fail(
            "cloudinit-instance-data",
            "leftover cloud-init instance link",
            Evidence::at(
                "/var/lib/cloud/instance",
                format!("-> {}", String::from_utf8_lossy(&t)),
            ),
        );
    }

    // machine-id.
    for p in ["/etc/machine-id", "/var/lib/dbus/machine-id"] {
        if matches!(cx.guest.lstat(p), Ok(Some(m)) if m.kind == FileKind::Symlink) {
            continue;
        }
        if let Ok(Some(b)) = cx.guest.read_head(p, 4096) {
            let t = String::from_utf8_lossy(&b).trim().to_owned();
            if !t.is_empty() && t != "uninitialized" {
                o.fail(
                    "machine-id",
                    format!("{p} is set: every instance would share it"),
                    Evidence::at(
                        p,
                        format!("{} hex characters (truncate to an empty file)", t.len()),
                    ),
                );
            }
        }
    }

    // DHCP leases.
    for dir in [
        "/var/lib/dhcp",
        "/var/lib/dhclient",
        "/var/lib/NetworkManager",
        "/var/lib/dhcpcd",
        "/var/lib/dhcpcd5",
    ] {
        for n in names(cx, dir) {
            if n.contains(".lease") || n.ends_with(".leases") {
                let p = format!("{dir}/{n}");
                if matches!(cx.guest.stat(&p), Ok(Some(m)) if m.kind == FileKind::File && m.size > 0)
                {
                    o.warn(
                        "dhcp-lease",
                        format!("DHCP lease of the build machine: {p}"),
                        Evidence::at(p, "leftover lease (addresses of the build network)"),
                    );
                }
            }
        }
    }

    // Content scan.
    let mut budget = ScanBudget {
        bytes: 0,
        files: 0,
        exhausted: false,
    };
    let mut roots: Vec<String> = cx
        .accounts()
        .homes()
        .into_iter()
        .map(|(h, _)| h)
        .filter(|h| h != "/" && !h.is_empty())
        .collect();
    roots.extend(CONTENT_DIRS.iter().map(|s| s.to_string()));
    let mut seen_roots = BTreeSet::new();
    for root in roots {
        let Ok(r) = cx.guest.resolve(&root, true) else {
            continue;
        };
        if r.meta.is_none_or(|m| m.kind != FileKind::Dir) || !seen_roots.insert(r.path.clone()) {
            continue;
        }
        let real = String::from_utf8_lossy(&r.path).into_owned();
        if seen_roots.iter().any(|s: &Vec<u8>| {
            s != &r.path && r.path.starts_with(s) && r.path.get(s.len()) == Some(&b'/')
        }) {
            continue;
        }
        scan_dir(cx, &real, 0, &mut budget, &mut reported, &mut o);
    }
    if budget.exhausted {
        o.unverified(format!(
            "content scan stopped after {} files / {} MiB; the rest was not searched for secrets",
            budget.files,
            budget.bytes >> 20
        ));
    }
    if o.findings.is_empty() {
        o.proof(Evidence::note(format!(
            "no credential files, host keys, instance data or machine-id; {} files ({} KiB) scanned for keys and tokens",
            budget.files,
            budget.bytes >> 10
        )));
    }
    o
}

struct ScanBudget {
    bytes: u64,
    files: usize,
    exhausted: bool,
}

fn scan_dir(
    cx: &Context,
    dir: &str,
    depth: usize,
    budget: &mut ScanBudget,
    reported: &mut BTreeSet<String>,
    o: &mut Outcome,
) {
    if depth > MAX_DEPTH || budget.exhausted {
        return;
    }
    // Not secrets: the host's trust store, docs, locale and binary caches.
    if matches!(
        dir,
        "/etc/ssl/certs"
            | "/etc/pki/ca-trust"
            | "/etc/pki/tls/certs"
            | "/etc/alternatives"
            | "/etc/ld.so.cache"
            | "/etc/selinux"
    ) {
        return;
    }
    let entries = match cx.guest.read_dir(dir) {
        Ok(Some(e)) => e,
        _ => return,
    };
    for e in entries {
        let name = String::from_utf8_lossy(&e.name).into_owned();
        let path = if dir == "/" {
            format!("/{name}")
        } else {
            format!("{dir}/{name}")
        };
        match e.kind {
            FileKind::Dir => scan_dir(cx, &path, depth + 1, budget, reported, o),
            FileKind::File => {
                if budget.files >= MAX_FILES || budget.bytes >= SCAN_BUDGET {
                    budget.exhausted = true;
                    return;
                }
                if reported.contains(&path)
                    || reported.iter().any(|r| path.starts_with(&format!("{r}/")))
                {
                    continue;
                }
                if path.ends_with(".pub")
                    || path.ends_with(".crt")
                    || path.ends_with(".pem") && path.starts_with("/etc/ssl/certs")
                {
                    continue;
                }
                let Ok(Some(data)) = cx.guest.read_head(&path, MAX_SCAN_FILE) else {
                    continue;
                };
                budget.files += 1;
                budget.bytes += data.len() as u64;
                scan_content(&path, &data, reported, o);
            }
            _ => {}
        }
    }
}

fn scan_content(path: &str, data: &[u8], reported: &mut BTreeSet<String>, o: &mut Outcome) {
    // Binary files (NULs early on) are skipped: keys and tokens are text.
    if data.iter().take(4096).any(|&b| b == 0) {
        return;
    }
    let yaml_like = path.ends_with(".yaml") || path.ends_with(".yml");
    for p in patterns() {
        if p.name == "OpenStack password" && !(yaml_like && path.contains("clouds")) {
            continue;
        }
        let Some(m) = p.re.find(data) else { continue };
        let line = data[..m.start()].iter().filter(|&&b| b == b'\n').count() + 1;
        // Fingerprint the whole matched line (the key or token), not the header.
        let end = data[m.start()..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|e| m.start() + e)
            .unwrap_or(data.len());
        let secret = if p.name == "PEM private key" {
            data
        } else {
            &data[m.start()..end]
        };
        let snakeoil = path.contains("snakeoil");
        let message = format!("{} in {path}", p.name);
        let ev = Evidence::at_line(path, line, format!("{}, {}", p.name, fingerprint(secret)));
        if snakeoil {
            o.warn(
                "snakeoil-key",
                format!("{message} (the ssl-cert snakeoil key; regenerate it at first boot)"),
                ev,
            );
        } else {
            o.fail("secret-content", message, ev);
        }
        reported.insert(path.to_owned());
        return;
    }
}

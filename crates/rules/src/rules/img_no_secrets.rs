//! IMG-NO-SECRETS: no keys, credentials, tokens or leftover instance data.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use ibkit_image::fs::FileKind;
use ibkit_image::guest::{Visit, WalkEntry, WalkLimits, Walker};
use regex::bytes::Regex;

use super::util::{fingerprint, names};
use crate::context::Context;
use crate::facts::homes::Home;
use crate::model::{Evidence, Level, Outcome, Severity};
use crate::rule::RuleDef;
use crate::rule_id::RuleId;

/// Credential files relative to a home directory: path, what it is, and
/// the markers one of which a non-comment line must contain for a file that
/// may hold plain settings only (none: any content counts).
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
        &["password:", "application_credential_secret:", "token:"],
    ),
    (
        ".config/openstack/secure.yaml",
        "OpenStack credentials",
        &["password:", "application_credential_secret:", "token:"],
    ),
    (
        ".kube/config",
        "Kubernetes credentials",
        &["token:", "client-key-data:", "password:"],
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
/// Bytes read first to tell a binary file (skipped) from text.
const SNIFF: u64 = 4096;
/// Total bytes scanned before giving up (keeps `check` fast on big images).
const SCAN_BUDGET: u64 = 96 << 20;
/// Files visited at most.
const MAX_FILES: usize = 50_000;
/// Directories listed at most by the content scan (a directory reached by
/// several paths, a hard link or a loop counts once and is listed once).
pub const MAX_DIRS: usize = 20_000;
/// Directory entries of every kind looked at, at most.
const MAX_ENTRIES: usize = 1_000_000;
/// Directory depth at most.
const MAX_DEPTH: usize = 12;

struct Pattern {
    name: &'static str,
    re: Regex,
}

const PEM_PRIVATE_KEY: &str = "PEM private key";

fn patterns() -> &'static [Pattern] {
    static P: OnceLock<Vec<Pattern>> = OnceLock::new();
    P.get_or_init(|| {
        let mk = |name, re: &str| Pattern {
            name,
            re: Regex::new(re).expect("static pattern compiles (tested)"),
        };
        vec![
            mk(PEM_PRIVATE_KEY, r"-----BEGIN (?:RSA |DSA |EC |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----"),
            mk("SSH2 private key", r"---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----"),
            mk("PuTTY private key", r"(?m)^PuTTY-User-Key-File-[23]: "),
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
    id: RuleId::IMG_NO_SECRETS,
    title: "No secrets or leftover instance data",
    requirement: "The image must contain no sensitive data (keys, credentials, tokens, leftover cloud-init instance data, ...).",
    severity: Severity::Error,
    doc: r#"## What it checks
Every home directory, whether or not an account owns it: each home named in
`/etc/passwd`, `/root`, every directory directly under `/home` (and under the
home roots set by `HOME=` in `/etc/default/useradd` and `DHOME=` in
`/etc/adduser.conf`), and service homes (directories directly under
`/var/lib`, `/srv`, `/opt` holding a home's dot-files such as `.ssh`,
`.bash_history`, `.aws`, `.config`; a bounded number is examined).

Path rules in each home: `.ssh/authorized_keys`, private keys in `.ssh`
(`id_*`, `*_key`, `*.pem` unless they hold a public key or certificate;
any other file there by a private-key header),
`.aws/credentials`, `.docker/config.json`, `.git-credentials`, `.pgpass`,
`.netrc`, `.my.cnf`, `clouds.yaml`, `.kube/config` and more; system-wide:
SSH host keys `/etc/ssh/ssh_host_*_key`, cloud-init instance data
`/var/lib/cloud/instances/*`, a non-empty `/etc/machine-id` (and
`/var/lib/dbus/machine-id`), DHCP leases.

Content rules over every home (so a private key anywhere in it, whatever
its name) and `/etc`, `/opt`, `/srv`, `/usr/local/etc`, `/var/lib/cloud`,
`/tmp`, `/var/tmp`, `/var/www`: PEM, SSH2 and PuTTY private keys, AWS access
keys, GitHub/GitLab/Slack tokens, Google API keys, OpenStack passwords in
YAML, and credentials with a value in `.env` files (`DB_PASSWORD=…`,
`API_TOKEN=…`).

## Why
Every buyer gets a copy of the image. A key or token in it is a key or token
for everyone; an `authorized_keys` entry is a backdoor; a shared machine-id
makes every instance look the same to systemd, DHCP and monitoring.

## Evidence
Offline: the path and line, the kind of secret, a fingerprint (length and
the first SHA-256 digits), and for a home whose it is: `of user alice`, or
`of uid 1001 (no account in /etc/passwd)` for a home left behind by
`userdel` without `-r` or prepared before its user exists. The secret itself
is never printed.

## Remediation
Delete the files, truncate `/etc/machine-id` to zero bytes (keep the file),
`cloud-init clean --logs --seed`, remove SSH host keys (cloud-init
regenerates them), delete the homes of removed users (`userdel -r`), and
rotate every credential that was in the image.

## Traps
Printing the secret into the report (we show a fingerprint). Searching only
the homes in `/etc/passwd` misses the homes of removed users. SSH host keys
that cloud-init deletes and regenerates at first boot (`ssh_deletekeys`,
on by default) are a warning, not a failure; without cloud-init they are
shared by every instance and fail. Harmless look-alikes pass: public keys
(`id_ed25519.pub`, a `BEGIN PUBLIC KEY` or certificate), an empty or
comment-only `authorized_keys`, a `.pgpass`/`.my.cnf`/`.netrc` with the
credential only in a comment, a kubeconfig that gets its token from a
command, `.env` settings without a credential value (empty, `${VAR}`),
`.env.example`, an empty machine-id, lease file or host key file.
A hostile or broken filesystem with directories hard-linked to themselves
or to an ancestor: each directory is scanned once (and the result says a
directory was reached again); the scan is bounded in files, bytes,
directories and entries, and says which budget stopped it.
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

/// Lines that say something: not blank, not a `#` or `;` comment.
fn meaningful_lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|&c| c == b'\n').filter(|l| {
        let t = l.trim_ascii();
        !t.is_empty() && !t.starts_with(b"#") && !t.starts_with(b";")
    })
}

/// True if the data holds a private key (PEM, SSH2 or PuTTY).
fn private_key(data: &[u8]) -> bool {
    patterns()
        .iter()
        .filter(|p| p.name.contains("private key"))
        .any(|p| p.re.is_match(data))
}

/// True if a file under a private key's name holds a public key or a
/// certificate only (`ssh-ed25519 AAAA…`, `BEGIN PUBLIC KEY`).
fn public_only(data: &[u8]) -> bool {
    if private_key(data) {
        return false;
    }
    // Every line is a public key (`ssh-ed25519 AAAA…`), or inside a
    // `BEGIN … PUBLIC KEY` / `BEGIN CERTIFICATE` block.
    let mut in_block = false;
    let mut any = false;
    for l in meaningful_lines(data) {
        let l = l.trim_ascii();
        any = true;
        let has = |w: &[u8]| l.windows(w.len()).any(|x| x == w);
        if l.starts_with(b"----") && has(b"BEGIN") {
            if !(has(b"PUBLIC KEY") || has(b"CERTIFICATE")) {
                return false;
            }
            in_block = true;
        } else if l.starts_with(b"----") && has(b"END") {
            in_block = false;
        } else if !in_block
            && !["ssh-", "ecdsa-", "sk-ssh-", "sk-ecdsa-"]
                .iter()
                .any(|p| l.starts_with(p.as_bytes()))
        {
            return false;
        }
    }
    any
}

fn check_home(cx: &Context, home: &Home, reported: &mut BTreeSet<String>, o: &mut Outcome) {
    let who = home.whose();
    for (rel, what, markers) in HOME_CREDENTIAL_FILES {
        let p = home.join(rel);
        let Ok(Some(m)) = cx.guest.stat(&p) else {
            continue;
        };
        if m.kind != FileKind::File || m.size == 0 {
            continue;
        }
        let head = cx.guest.read_head(&p, MAX_SCAN_FILE).ok().flatten();
        if let Some(b) = &head {
            // An empty or comment-only file holds nothing; one that may hold
            // plain settings only counts with a credential marker outside
            // comments (a registry URL is no secret).
            let mut lines = meaningful_lines(b).peekable();
            if lines.peek().is_none() {
                continue;
            }
            if !markers.is_empty()
                && !lines.any(|l| {
                    let l = String::from_utf8_lossy(l);
                    markers.iter().any(|k| l.contains(k))
                })
            {
                continue;
            }
        }
        let detail = match head {
            Some(b) => format!(
                "{what}; {} entries, {}; {}",
                meaningful_lines(&b).count(),
                fingerprint(&b),
                home.how()
            ),
            None => format!("{what}; {}", home.how()),
        };
        o.fail(
            "credential-file",
            format!("{what} {who}: {p}"),
            Evidence::at(p.clone(), detail),
        );
        reported.insert(p);
    }
    for n in names(cx, &home.join(".ssh")) {
        if n.ends_with(".pub")
            || n.starts_with("authorized_keys")
            || n.starts_with("known_hosts")
            || matches!(n.as_str(), "config" | "environment" | "rc")
        {
            continue;
        }
        // Named like a private key: anything but a public key counts. Any
        // other file in .ssh: a private key by its content.
        let by_name = n.starts_with("id_") || n.ends_with(".pem") || n.ends_with("_key");
        let p = home.join(&format!(".ssh/{n}"));
        if let Ok(Some(b)) = cx.guest.read_head(&p, MAX_SCAN_FILE)
            && meaningful_lines(&b).next().is_some()
            && (by_name && !public_only(&b) || !by_name && private_key(&b))
        {
            o.fail(
                "private-key-file",
                format!("SSH private key {who}: {p}"),
                Evidence::at(
                    p.clone(),
                    format!("private key, {}; {}", fingerprint(&b), home.how()),
                ),
            );
            reported.insert(p);
        }
    }
}

fn check(cx: &Context) -> Outcome {
    let mut o = Outcome::default();
    let mut reported: BTreeSet<String> = BTreeSet::new();

    // Homes.
    let homes = cx.homes();
    for p in &homes.problems {
        o.unverified(p.clone());
    }
    for home in &homes.list {
        check_home(cx, home, &mut reported, &mut o);
    }

    // SSH host keys.
    let regenerated = host_keys_regenerated(cx);
    for n in names(cx, "/etc/ssh") {
        if n.starts_with("ssh_host_") && n.ends_with("_key") {
            let p = format!("/etc/ssh/{n}");
            // An empty file is no key (and nothing to share).
            if matches!(cx.guest.stat(&p), Ok(Some(m)) if m.kind == FileKind::File && m.size > 0) {
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

    // Content scan: homes first (findings name their owner), then the
    // system directories; a directory is scanned once whichever way leads
    // to it.
    let mut scan = Scan {
        cx,
        bytes: 0,
        files: 0,
        exhausted: false,
        roots: BTreeSet::new(),
        reported,
    };
    let mut walker = Walker::new(
        cx.guest,
        WalkLimits {
            max_dirs: MAX_DIRS,
            max_entries: MAX_ENTRIES,
            max_depth: MAX_DEPTH,
        },
    );
    let mut roots: Vec<(String, Option<&Home>)> = homes
        .list
        .iter()
        .filter(|h| !h.system)
        .map(|h| (h.real.clone(), Some(h)))
        .collect();
    roots.extend(CONTENT_DIRS.iter().map(|s| (s.to_string(), None)));
    let mut order = Vec::new();
    for (root, home) in roots {
        let Ok(r) = cx.guest.resolve(&root, true) else {
            continue;
        };
        if r.meta.is_none_or(|m| m.kind != FileKind::Dir) {
            continue;
        }
        let real = String::from_utf8_lossy(&r.path).into_owned();
        if real.is_empty() || real == "/" || !scan.roots.insert(real.clone()) {
            continue;
        }
        order.push((real, home));
    }
    for (real, home) in &order {
        // A root inside another is scanned on its own (homes first), so
        // the outer walk skips it: see `Scan::visit`. The walker lists a
        // directory once however many paths lead to it.
        walker.walk(real, |e| scan.visit(e, *home, &mut o));
    }
    // How the scan fell short, if it did: said in the result (and, for a
    // budget, in the report's notes: the check is incomplete).
    let mut stopped = None;
    if scan.exhausted {
        stopped = Some(format!(
            "content scan stopped early at its file/byte budget ({MAX_FILES} files, {} MiB) after {} files / {} MiB; the rest was not searched for secrets",
            SCAN_BUDGET >> 20,
            scan.files,
            scan.bytes >> 20
        ));
    } else if let Some(budget) = walker.exhausted() {
        stopped = Some(format!(
            "content scan stopped early at its {budget} after {} directories and {} files; the rest was not searched for secrets",
            walker.dirs(),
            scan.files
        ));
    }
    if let Some(why) = &stopped {
        o.unverified(why.clone());
        cx.note(format!("IMG-NO-SECRETS: {why}"));
    }
    if let Some(why) = walker.too_deep_note() {
        o.unverified(format!("content scan: {why}"));
    }
    if let Some(why) = walker.revisit_note() {
        let (_, first) = walker.revisits();
        o.info(
            "directory-loop",
            format!("content scan: {why}"),
            Evidence::at(
                first.unwrap_or_default(),
                "a directory hard-linked to itself or to an ancestor (filesystem damage or a crafted image)",
            ),
        );
    }
    if !o.findings.iter().any(|f| f.level > Level::Info) {
        let mut proof = format!(
            "no credential files, host keys, instance data or machine-id; searched {}; {} files ({} KiB) in {} directories scanned for keys and tokens",
            homes.summary(),
            scan.files,
            scan.bytes >> 10,
            walker.dirs()
        );
        for why in stopped.iter().chain(walker.revisit_note().as_ref()) {
            proof.push_str("; ");
            proof.push_str(why);
        }
        o.proof(Evidence::note(proof));
    }
    o
}

/// The content scan's state.
struct Scan<'a, 'c> {
    cx: &'a Context<'c>,
    bytes: u64,
    files: usize,
    exhausted: bool,
    /// Real paths of every root: a walk does not enter another root.
    roots: BTreeSet<String>,
    /// Paths already reported (by path rules or an earlier match).
    reported: BTreeSet<String>,
}

impl Scan<'_, '_> {
    /// One entry of the walk: prune what is not ours to scan, scan the
    /// content of regular files.
    fn visit(&mut self, e: &WalkEntry<'_>, home: Option<&Home>, o: &mut Outcome) -> Visit {
        let path = e.path_lossy();
        match e.kind {
            FileKind::Dir => {
                // Another root (scanned on its own), or not secrets: the
                // host's trust store, docs, locale and binary caches.
                let skip = self.roots.contains(&path)
                    || matches!(
                        path.as_str(),
                        "/etc/ssl/certs"
                            | "/etc/pki/ca-trust"
                            | "/etc/pki/tls/certs"
                            | "/etc/alternatives"
                            | "/etc/ld.so.cache"
                            | "/etc/selinux"
                    );
                if skip { Visit::Prune } else { Visit::Descend }
            }
            FileKind::File => {
                if self.files >= MAX_FILES || self.bytes >= SCAN_BUDGET {
                    self.exhausted = true;
                    return Visit::Stop;
                }
                let name = String::from_utf8_lossy(e.name).into_owned();
                self.file(path, &name, home, o);
                Visit::Descend
            }
            _ => Visit::Descend,
        }
    }

    fn file(&mut self, path: String, name: &str, home: Option<&Home>, o: &mut Outcome) {
        if self.reported.contains(&path)
            || self
                .reported
                .iter()
                .any(|r| path.starts_with(&format!("{r}/")))
        {
            return;
        }
        if name.ends_with(".pub")
            || name.ends_with(".crt")
            || name.ends_with(".pem") && path.starts_with("/etc/ssl/certs")
        {
            return;
        }
        // Binary files (NULs early on) are skipped: keys and tokens are
        // text. Sniff first so a large binary costs a few KiB, not the
        // whole cap.
        let Ok(Some(sniff)) = self.cx.guest.read_head(&path, SNIFF) else {
            return;
        };
        self.files += 1;
        if sniff.contains(&0) {
            self.bytes += sniff.len() as u64;
            return;
        }
        let data = if sniff.len() as u64 == SNIFF {
            match self.cx.guest.read_head(&path, MAX_SCAN_FILE) {
                Ok(Some(d)) => d,
                _ => sniff,
            }
        } else {
            sniff
        };
        self.bytes += data.len() as u64;
        if scan_content(&path, name, &data, home, o) {
            self.reported.insert(path);
        }
    }
}

/// Names of `.env` files that hold real settings (not examples).
fn is_env_file(name: &str) -> bool {
    name == ".env"
        || name.strip_prefix(".env.").is_some_and(|rest| {
            !matches!(
                rest,
                "example" | "sample" | "template" | "dist" | "defaults" | "default" | "tmpl"
            ) && !rest.ends_with(".example")
        })
}

/// In a `.env` file, the first `KEY=value` whose key names a credential and
/// whose value is set (not empty, not a `$VAR` reference, not a `<…>`
/// placeholder): `(line, key, value)`.
fn env_credential(data: &[u8]) -> Option<(usize, String, Vec<u8>)> {
    const KEYS: &[&str] = &[
        "PASSWORD",
        "PASSWD",
        "PASS",
        "SECRET",
        "TOKEN",
        "API_KEY",
        "APIKEY",
        "PRIVATE_KEY",
        "SECRET_KEY",
        "ACCESS_KEY",
        "AUTH_KEY",
        "CREDENTIALS",
    ];
    for (i, raw) in data.split(|&c| c == b'\n').enumerate() {
        let line = String::from_utf8_lossy(raw);
        let t = line.trim();
        if t.starts_with('#') {
            continue;
        }
        let t = t.strip_prefix("export ").unwrap_or(t);
        let Some((k, v)) = t.split_once('=') else {
            continue;
        };
        let key = k.trim().to_ascii_uppercase();
        let credential = KEYS
            .iter()
            .any(|w| key == *w || key.ends_with(&format!("_{w}")));
        let v = v.trim();
        // An inline comment after an unquoted value is not part of it.
        let v = if v.starts_with(['"', '\'']) {
            v.trim_matches(|c| c == '"' || c == '\'')
        } else {
            v.split(" #").next().unwrap_or(v).trim()
        };
        let placeholder =
            v.is_empty() || v.starts_with('$') || v.starts_with('<') && v.ends_with('>');
        if credential && !placeholder {
            return Some((i + 1, k.trim().to_owned(), v.as_bytes().to_vec()));
        }
    }
    None
}

/// Look for secrets in one file's content; true if one was reported.
fn scan_content(path: &str, name: &str, data: &[u8], home: Option<&Home>, o: &mut Outcome) -> bool {
    let whose = home.map(|h| (h.whose(), h.how()));
    let place = |p: &str| match &whose {
        Some((w, _)) => format!("{p} in the home {w}: {path}"),
        None => format!("{p} in {path}"),
    };
    let detail = |d: String| match &whose {
        Some((_, how)) => format!("{d}; {how}"),
        None => d,
    };
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
        let secret = if p.name.contains("private key") {
            data
        } else {
            &data[m.start()..end]
        };
        let ev = Evidence::at_line(
            path,
            line,
            detail(format!("{}, {}", p.name, fingerprint(secret))),
        );
        if path.contains("snakeoil") {
            o.warn(
                "snakeoil-key",
                format!(
                    "{} (the ssl-cert snakeoil key; regenerate it at first boot)",
                    place(p.name)
                ),
                ev,
            );
        } else {
            o.fail("secret-content", place(p.name), ev);
        }
        return true;
    }
    if is_env_file(name)
        && let Some((line, key, value)) = env_credential(data)
    {
        o.fail(
            "secret-content",
            place(&format!("credential {key} set in a .env file")),
            Evidence::at_line(
                path,
                line,
                detail(format!("{key}=…, {}", fingerprint(&value))),
            ),
        );
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_keys_are_not_private() {
        assert!(public_only(b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI x@y\n"));
        assert!(public_only(
            b"-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n"
        ));
        assert!(!public_only(
            b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
        ));
        assert!(!public_only(b"not a key at all, some text\n"));
        assert!(!public_only(b""));
    }

    #[test]
    fn env_files() {
        assert!(is_env_file(".env") && is_env_file(".env.production"));
        assert!(!is_env_file(".env.example") && !is_env_file(".envrc"));
        assert_eq!(
            env_credential(b"DEBUG=true\nDB_PASSWORD=\nAPI_TOKEN=${API_TOKEN}\n# SECRET_KEY=abc\nKEY_PATH=/x\nSMTP_PASS=<your password>\n"),
            None
        );
        let (line, key, value) =
            env_credential(b"DEBUG=1\nexport DB_PASSWORD=\"s3cr3t\" \n").expect("found");
        assert_eq!(
            (line, key.as_str(), value.as_slice()),
            (2, "DB_PASSWORD", &b"s3cr3t"[..])
        );
    }

    #[test]
    fn home_markers_cover_the_credential_and_history_files() {
        let first = |p: &str| p.split('/').next().unwrap_or(p).to_owned();
        let files = HOME_CREDENTIAL_FILES
            .iter()
            .map(|(p, _, _)| *p)
            .chain(crate::facts::homes::HISTORY_FILES.iter().copied());
        for p in files {
            assert!(crate::facts::homes::is_home_marker(&first(p)), "{p}");
        }
        assert!(!crate::facts::homes::is_home_marker(".nothing"));
    }

    #[test]
    fn patterns_compile() {
        assert!(patterns().len() >= 9);
    }
}

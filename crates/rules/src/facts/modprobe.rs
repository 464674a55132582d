//! modprobe configuration (modprobe.d(5), as kmod reads it): which modules
//! are blacklisted, and which have their loading replaced by an `install`
//! command. Read from the image's root filesystem ([`load`]) and from the
//! files an initramfs carries ([`from_files`]).
//!
//! kmod reads `*.conf` from [`DIRS`]; all files are taken together in file
//! name order, and a name in an earlier directory hides the same name in a
//! later one (a link to `/dev/null` hides it with nothing). Lines ending in
//! `\` continue; a line whose first non-blank character is `#` is a comment.
//! Module names compare with `-` and `_` alike. `blacklist NAME` is an exact
//! name; `install PATTERN COMMAND` matches with shell wildcards, and the
//! first matching `install` wins.

use std::collections::BTreeMap;

use ibkit_image::fs::FileKind;

use crate::context::Context;
use crate::facts::initramfs::normalise_module;

/// kmod's configuration directories, highest priority first.
pub const DIRS: &[&str] = &[
    "/etc/modprobe.d",
    "/run/modprobe.d",
    "/usr/local/lib/modprobe.d",
    "/usr/lib/modprobe.d",
    "/lib/modprobe.d",
];

/// Largest configuration file read.
pub const MAX_FILE: u64 = 1 << 20;
/// Most configuration files read from one place.
pub const MAX_FILES: usize = 512;

/// One directive: where it is and what it says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directive {
    /// Guest path of the file (inside the initramfs for [`from_files`]).
    pub path: String,
    /// 1-based line (of the first physical line of a continued line).
    pub line: usize,
    /// The directive as written, whitespace collapsed.
    pub text: String,
}

/// What an `install` command does to a module load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstallEffect {
    /// The command runs `modprobe`/`insmod`: the module is still loaded.
    Loads,
    /// A command that does nothing or fails (`/bin/false`, `/bin/true`,
    /// `exit 1`, `:`, `echo …`): the module is never loaded.
    Blocks,
    /// Some other program: it may or may not load the module.
    Unknown,
}

/// The parsed configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Modprobe {
    /// Files read, in the order kmod reads them.
    pub files: Vec<String>,
    /// `blacklist` directives by normalised module name (the first one).
    pub blacklist: BTreeMap<String, Directive>,
    /// `install` directives in file order: normalised pattern, command,
    /// where.
    pub install: Vec<(String, String, Directive)>,
    /// Files that could not be read.
    pub problems: Vec<String>,
}

impl Modprobe {
    /// The `blacklist` line for `module`, if any.
    pub fn blacklisted(&self, module: &str) -> Option<&Directive> {
        self.blacklist.get(&normalise_module(module))
    }

    /// The `install` command kmod runs instead of loading `module` (the first
    /// whose pattern matches), with its effect.
    pub fn install_for(&self, module: &str) -> Option<(&Directive, InstallEffect)> {
        let m = normalise_module(module);
        self.install
            .iter()
            .find(|(pat, _, _)| glob(pat.as_bytes(), m.as_bytes()))
            .map(|(_, cmd, d)| (d, install_effect(cmd)))
    }
}

/// What an `install` command does: see [`InstallEffect`].
pub fn install_effect(command: &str) -> InstallEffect {
    let words: Vec<&str> = command
        .split(|c: char| c.is_whitespace() || matches!(c, ';' | '&' | '|' | '(' | ')' | '`'))
        .filter(|w| !w.is_empty())
        .collect();
    let base = |w: &str| w.rsplit('/').next().unwrap_or(w).to_owned();
    if words
        .iter()
        .any(|w| matches!(base(w).as_str(), "modprobe" | "insmod"))
    {
        return InstallEffect::Loads;
    }
    let first = words.first().map(|w| base(w)).unwrap_or_default();
    if matches!(first.as_str(), "false" | "true" | "exit" | ":" | "echo") {
        InstallEffect::Blocks
    } else {
        InstallEffect::Unknown
    }
}

/// Shell-style wildcard match (`*`, `?`, `[…]`), as fnmatch(3) without flags.
fn glob(pat: &[u8], s: &[u8]) -> bool {
    // Iterative with one backtrack point for `*`: linear in practice and
    // never recursive, whatever the pattern.
    let (mut p, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() {
            match pat[p] {
                b'*' => {
                    star = Some((p, i));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    i += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(&pat[p..], s[i]) {
                        if matched {
                            p += next;
                            i += 1;
                            continue;
                        }
                    } else if s[i] == b'[' {
                        p += 1;
                        i += 1;
                        continue;
                    }
                }
                c if c == s[i] => {
                    p += 1;
                    i += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, si)) => {
                p = sp + 1;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            None => return false,
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// A `[…]` class at the start of `pat`: whether `c` matches, and its length.
/// `None` if the class is not closed (then `[` is literal).
fn class(pat: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut j = 1;
    let negate = matches!(pat.get(j), Some(b'!') | Some(b'^'));
    if negate {
        j += 1;
    }
    let mut matched = false;
    let mut first = true;
    while j < pat.len() {
        if pat[j] == b']' && !first {
            return Some((matched != negate, j + 1));
        }
        first = false;
        if pat.get(j + 1) == Some(&b'-') && pat.get(j + 2).is_some_and(|&e| e != b']') {
            if (pat[j]..=pat[j + 2]).contains(&c) {
                matched = true;
            }
            j += 3;
        } else {
            if pat[j] == c {
                matched = true;
            }
            j += 1;
        }
    }
    None
}

/// Parse one file's text into `out`.
pub fn parse_into(out: &mut Modprobe, path: &str, text: &str) {
    let mut logical = String::new();
    let mut start = 0usize;
    for (i, raw) in text.lines().enumerate() {
        if logical.is_empty() {
            start = i + 1;
        }
        if let Some(head) = raw.strip_suffix('\\') {
            logical.push_str(head);
            logical.push(' ');
            continue;
        }
        logical.push_str(raw);
        let line = std::mem::take(&mut logical);
        directive(out, path, start, &line);
    }
    if !logical.is_empty() {
        directive(out, path, start, &logical);
    }
}

fn directive(out: &mut Modprobe, path: &str, line: usize, text: &str) {
    let t = text.trim();
    if t.is_empty() || t.starts_with('#') {
        return;
    }
    let mut words = t.split_whitespace();
    let (Some(cmd), Some(name)) = (words.next(), words.next()) else {
        return;
    };
    let shown: String = t.split_whitespace().collect::<Vec<_>>().join(" ");
    let d = Directive {
        path: path.to_owned(),
        line,
        text: shown.chars().take(200).collect(),
    };
    match cmd {
        "blacklist" => {
            out.blacklist.entry(normalise_module(name)).or_insert(d);
        }
        "install" => {
            let rest: Vec<&str> = words.collect();
            out.install
                .push((normalise_module(name), rest.join(" "), d));
        }
        _ => {}
    }
}

/// The files kmod reads, in its order: `(dir rank, file name, payload)` of
/// every candidate in; for each file name the payload of the highest-ranked
/// directory out, sorted by file name.
pub fn select<T>(mut candidates: Vec<(usize, String, T)>) -> Vec<(String, T)> {
    candidates.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut by_name: BTreeMap<String, T> = BTreeMap::new();
    for (_, name, payload) in candidates {
        by_name.entry(name).or_insert(payload);
    }
    by_name.into_iter().collect()
}

/// The image's own configuration.
pub fn load(cx: &Context) -> Modprobe {
    let mut out = Modprobe::default();
    let mut candidates = Vec::new();
    let mut seen_dirs = Vec::new();
    for (rank, dir) in DIRS.iter().enumerate() {
        let Ok(r) = cx.guest.resolve(dir, true) else {
            continue;
        };
        if r.meta.is_none_or(|m| m.kind != FileKind::Dir) || seen_dirs.contains(&r.path) {
            continue; // missing, or /lib -> /usr/lib seen already
        }
        seen_dirs.push(r.path);
        for e in cx.list_dir(dir) {
            let name = String::from_utf8_lossy(&e.name).into_owned();
            if name.ends_with(".conf") && !matches!(e.kind, FileKind::Dir) {
                candidates.push((rank, name.clone(), format!("{dir}/{name}")));
            }
        }
    }
    let chosen = select(candidates);
    if chosen.len() > MAX_FILES {
        out.problems.push(format!(
            "{} modprobe.d files; only the first {MAX_FILES} were read",
            chosen.len()
        ));
    }
    for (_, path) in chosen.into_iter().take(MAX_FILES) {
        out.files.push(path.clone());
        // A link to /dev/null (or anything but a file) hides the name with
        // nothing: kmod reads it as empty.
        match cx.guest.read_capped(&path, MAX_FILE) {
            Ok(Some(b)) => parse_into(&mut out, &path, &String::from_utf8_lossy(&b)),
            Ok(None) => {}
            Err(e) => out.problems.push(format!("cannot read {path}: {e}")),
        }
    }
    out
}

/// Directories inside an initramfs that hold modprobe configuration, highest
/// priority first (paths relative to the archive root). `conf/modprobe.d` is
/// where some initramfs generators put the copy of the host's files.
pub const INITRAMFS_DIRS: &[&str] = &[
    "etc/modprobe.d",
    "run/modprobe.d",
    "usr/local/lib/modprobe.d",
    "usr/lib/modprobe.d",
    "lib/modprobe.d",
    "conf/modprobe.d",
];

/// If `path` (relative, inside an initramfs) is a modprobe configuration
/// file, its directory's rank and its file name.
pub fn initramfs_config(path: &str) -> Option<(usize, &str)> {
    let (dir, name) = path.rsplit_once('/')?;
    let rank = INITRAMFS_DIRS.iter().position(|d| *d == dir)?;
    name.ends_with(".conf").then_some((rank, name))
}

/// The configuration carried by an initramfs: `(path inside, content)` of
/// each configuration file (empty for a link to `/dev/null`). Paths in the
/// result start with `/` and are inside the archive.
pub fn from_files(files: &[(String, Vec<u8>)]) -> Modprobe {
    let mut out = Modprobe::default();
    let candidates = files
        .iter()
        .filter_map(|(p, data)| {
            initramfs_config(p).map(|(rank, name)| (rank, name.to_owned(), (p, data)))
        })
        .collect();
    for (_, (p, data)) in select(candidates) {
        let shown = format!("/{p}");
        out.files.push(shown.clone());
        parse_into(&mut out, &shown, &String::from_utf8_lossy(data));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob(b"virtio_net", b"virtio_net"));
        assert!(glob(b"virtio*", b"virtio_blk"));
        assert!(glob(b"virtio_?et", b"virtio_net"));
        assert!(glob(b"virtio_[bn]*", b"virtio_net"));
        assert!(!glob(b"virtio_[!bn]*", b"virtio_net"));
        assert!(!glob(b"virtio", b"virtio_net"));
        assert!(!glob(b"virtio_net", b"virtio"));
        assert!(glob(b"*", b""));
        assert!(!glob(b"a[", b"ab"));
    }

    #[test]
    fn install_effects() {
        assert_eq!(install_effect("/bin/false"), InstallEffect::Blocks);
        assert_eq!(install_effect("/bin/true"), InstallEffect::Blocks);
        assert_eq!(install_effect("exit 1"), InstallEffect::Blocks);
        assert_eq!(
            install_effect("/sbin/modprobe --ignore-install virtio_net && echo hi"),
            InstallEffect::Loads
        );
        assert_eq!(
            install_effect("/usr/local/bin/setup-nic"),
            InstallEffect::Unknown
        );
    }

    #[test]
    fn parses_and_selects() {
        let mut m = Modprobe::default();
        parse_into(
            &mut m,
            "/etc/modprobe.d/x.conf",
            "# blacklist virtio_net\n  blacklist virtio-blk\ninstall virtio_net \\\n /bin/false\nblacklist\noptions virtio_net napi_tx=1\n",
        );
        assert!(m.blacklisted("virtio_net").is_none());
        assert_eq!(m.blacklisted("virtio_blk").map(|d| d.line), Some(2));
        let (d, e) = m.install_for("virtio-net").expect("install");
        assert_eq!((d.line, e), (3, InstallEffect::Blocks));
        assert_eq!(d.text, "install virtio_net /bin/false");

        let chosen = select(vec![
            (3, "a.conf".to_owned(), "/usr/lib/modprobe.d/a.conf"),
            (0, "a.conf".to_owned(), "/etc/modprobe.d/a.conf"),
            (3, "0.conf".to_owned(), "/usr/lib/modprobe.d/0.conf"),
        ]);
        let paths: Vec<&str> = chosen.iter().map(|(_, p)| *p).collect();
        assert_eq!(
            paths,
            ["/usr/lib/modprobe.d/0.conf", "/etc/modprobe.d/a.conf"]
        );
    }
}

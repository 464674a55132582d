//! Home directories: every place a person's or a service's files can be,
//! whether or not an account in `/etc/passwd` still owns it (a user removed
//! with `userdel` without `-r` leaves the home behind; a provisioning script
//! may prepare a home before the user exists).
//!
//! Candidates, in this order; the first candidate for a real directory wins,
//! so a directory is listed once however many ways lead to it:
//!
//! 1. each home named in `/etc/passwd`;
//! 2. `/root`;
//! 3. every directory directly under `/home`, and under the roots where new
//!    homes are made (`HOME=` in `/etc/default/useradd`, `DHOME=` in
//!    `/etc/adduser.conf`);
//! 4. service homes: directories directly under `/var/lib`, `/srv` and `/opt`
//!    that hold a home's dot-files ([`HOME_MARKERS`]: `.ssh`, `.bash_history`,
//!    `.aws`, `.config`, ...).
//!
//! Each root is examined up to [`MAX_DIRS_PER_ROOT`] entries. Symlinked homes
//! are resolved inside the guest (the guest view never leaves the image).
//!
//! Owner: the account whose passwd home it is; else the account whose uid
//! owns the directory's inode; else the uid alone, "no account in
//! /etc/passwd".

use std::collections::BTreeSet;

use ibkit_image::fs::FileKind;

use crate::context::Context;

/// History files of shells, REPLs and tools that record what was typed
/// (IMG-NO-HISTORY looks for them; each one's first component also marks a
/// directory as a home).
pub const HISTORY_FILES: &[&str] = &[
    ".bash_history",
    ".zsh_history",
    ".sh_history",
    ".ash_history",
    ".ksh_history",
    ".histfile",
    ".python_history",
    ".mysql_history",
    ".mariadb_history",
    ".psql_history",
    ".sqlite_history",
    ".rediscli_history",
    ".node_repl_history",
    ".irb_history",
    ".lesshst",
    ".viminfo",
    ".local/share/fish/fish_history",
    ".config/fish/fish_history",
    ".local/share/nvim/shada/main.shada",
];

/// True if an entry named `name` makes its directory a home: one of
/// [`HOME_MARKERS`] or a history file.
pub fn is_home_marker(name: &str) -> bool {
    HOME_MARKERS.contains(&name)
        || HISTORY_FILES
            .iter()
            .any(|h| h.split('/').next() == Some(name))
}

/// Dot-files and dot-directories (besides [`HISTORY_FILES`]) that make a
/// directory under `/var/lib`, `/srv` or `/opt` a home: shell start-up
/// files and the credential stores the secret rules look for (a test in
/// `rules::img_no_secrets` keeps this list a superset of theirs).
pub const HOME_MARKERS: &[&str] = &[
    ".ssh",
    ".profile",
    ".bashrc",
    ".bash_profile",
    ".bash_logout",
    ".zshrc",
    ".cshrc",
    ".config",
    ".local",
    ".cache",
    ".gnupg",
    ".aws",
    ".azure",
    ".docker",
    ".kube",
    ".git-credentials",
    ".gitconfig",
    ".pgpass",
    ".netrc",
    ".my.cnf",
    ".vault-token",
    ".npmrc",
    ".pypirc",
];

/// Most entries examined under each home root (`/home`, `/var/lib`, ...).
pub const MAX_DIRS_PER_ROOT: usize = 2048;

/// Roots whose subdirectories are service homes when they hold dot-files.
pub const SERVICE_ROOTS: &[&str] = &["/var/lib", "/srv", "/opt"];

/// Who a home belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// The passwd account whose home it is.
    Account {
        /// Login name.
        name: String,
        /// Its uid.
        uid: u32,
    },
    /// Not a passwd home, but the directory is owned by an account's uid.
    UidOf {
        /// The directory's owner uid.
        uid: u32,
        /// The account with that uid.
        name: String,
        /// That account's home in `/etc/passwd`.
        passwd_home: String,
    },
    /// No account: the directory's owner uid is in no passwd entry (or the
    /// uid is not known).
    NoAccount {
        /// The directory's owner uid, if the filesystem records one.
        uid: Option<u32>,
    },
}

impl Owner {
    /// `user alice`, `uid 1001 (no account in /etc/passwd)`, ...
    pub fn describe(&self) -> String {
        match self {
            Owner::Account { name, .. } => format!("user {name}"),
            Owner::UidOf {
                uid,
                name,
                passwd_home,
            } => format!("uid {uid} (user {name}, whose home in /etc/passwd is {passwd_home})"),
            Owner::NoAccount { uid: Some(uid) } => {
                format!("uid {uid} (no account in /etc/passwd)")
            }
            Owner::NoAccount { uid: None } => "no account in /etc/passwd".to_owned(),
        }
    }
}

/// How a home was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// The account's home field in `/etc/passwd`.
    Passwd {
        /// 1-based line in `/etc/passwd`.
        line: usize,
    },
    /// `/root`.
    Root,
    /// A directory directly under a home root (`/home`, or one configured).
    UnderHomeRoot {
        /// The root (`/home`).
        root: String,
        /// Where the root is configured (`/etc/adduser.conf:12`), if not the
        /// default `/home`.
        configured: Option<String>,
    },
    /// A directory under `/var/lib`, `/srv` or `/opt` with a home's dot-files.
    Service {
        /// The root (`/var/lib`).
        root: String,
        /// The first marker seen (`.ssh`).
        marker: String,
    },
}

/// One home directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Home {
    /// Guest path as found (`/home/alice`).
    pub path: String,
    /// The directory it resolves to inside the guest.
    pub real: String,
    /// Who it belongs to.
    pub owner: Owner,
    /// How it was found.
    pub found: Found,
    /// A system directory used as an account's home (`/`, `/usr/sbin`,
    /// `/dev`, `/run/…`): only its dot-files are looked at, it is not
    /// searched as a whole.
    pub system: bool,
}

impl Home {
    /// `of user alice`, `of uid 1001 (no account in /etc/passwd)`.
    pub fn whose(&self) -> String {
        match &self.owner {
            Owner::NoAccount { uid: None } => "with no account in /etc/passwd".to_owned(),
            o => format!("of {}", o.describe()),
        }
    }

    /// One line for evidence: where the home is and how it was found.
    pub fn how(&self) -> String {
        let at = if self.real == self.path {
            self.path.clone()
        } else {
            format!("{} (-> {})", self.path, self.real)
        };
        match &self.found {
            Found::Passwd { line } => format!("home {at}, /etc/passwd line {line}"),
            Found::Root => format!("home {at}"),
            Found::UnderHomeRoot {
                root,
                configured: None,
            } => format!("home {at}, a directory under {root}"),
            Found::UnderHomeRoot {
                root,
                configured: Some(c),
            } => format!("home {at}, a directory under {root} (home root set in {c})"),
            Found::Service { root, marker } => {
                format!("home {at}, a directory under {root} holding {marker}")
            }
        }
    }

    /// `path/rel`, also when the home is `/`.
    pub fn join(&self, rel: &str) -> String {
        if self.path == "/" {
            format!("/{rel}")
        } else {
            format!("{}/{rel}", self.path)
        }
    }
}

/// Every home directory of the guest.
#[derive(Clone, Debug, Default)]
pub struct Homes {
    /// Homes in discovery order (passwd, `/root`, home roots, services).
    pub list: Vec<Home>,
    /// Home roots examined (`/home`, and configured ones).
    pub roots: Vec<String>,
    /// What could not be examined (a root with too many entries, a loop).
    pub problems: Vec<String>,
}

impl Homes {
    /// For evidence: the homes searched as a whole, then how many system
    /// directories named as homes were only looked at for dot-files
    /// (`/root, /home/alice, /var/lib/postgresql; and 5 system directories`).
    pub fn summary(&self) -> String {
        let homes: Vec<&str> = self
            .list
            .iter()
            .filter(|h| !h.system)
            .map(|h| h.path.as_str())
            .collect();
        let system = self.list.len() - homes.len();
        let mut s = if homes.is_empty() {
            "no home directory".to_owned()
        } else {
            format!("{} home directories ({})", homes.len(), homes.join(", "))
        };
        if system > 0 {
            s.push_str(&format!(
                ", and the dot-files of {system} system directories named as homes in /etc/passwd"
            ));
        }
        s
    }
}

/// True for directories that are never a person's files even when passwd
/// names them as a home (`daemon:/usr/sbin`, `sys:/dev`, `nobody:/nonexistent`).
fn system_dir(real: &str) -> bool {
    const EXACT: &[&str] = &[
        "/",
        "/bin",
        "/sbin",
        "/usr",
        "/usr/bin",
        "/usr/sbin",
        "/usr/games",
        "/lib",
        "/lib64",
        "/etc",
        "/boot",
        "/var",
    ];
    EXACT.contains(&real)
        || ["/dev", "/proc", "/sys", "/run", "/usr/share", "/usr/lib"]
            .iter()
            .any(|p| real.starts_with(&format!("{p}/")) || real == *p)
}

/// Home roots configured for `useradd` and `adduser`, with where they are set.
fn configured_roots(cx: &Context) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, key) in [
        ("/etc/default/useradd", "HOME"),
        ("/etc/adduser.conf", "DHOME"),
    ] {
        let Some(text) = cx.read_text(path) else {
            continue;
        };
        for (i, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.starts_with('#') {
                continue;
            }
            let Some((k, v)) = t.split_once('=') else {
                continue;
            };
            if k.trim() != key {
                continue;
            }
            let v = v
                .trim()
                .trim_matches(|c| c == '"' || c == '\'')
                .trim_end_matches('/');
            if v.starts_with('/') && v.len() > 1 && !v.contains('$') {
                out.push((v.to_owned(), format!("{path}:{}", i + 1)));
            }
        }
    }
    out
}

/// Resolve `path` to a directory inside the guest; `None` if it is not one.
fn real_dir(cx: &Context, path: &str, problems: &mut Vec<String>) -> Option<(String, u32)> {
    match cx.guest.resolve(path, true) {
        Ok(r) => match r.meta {
            Some(m) if m.kind == FileKind::Dir => {
                let p = String::from_utf8_lossy(&r.path).into_owned();
                Some((if p.is_empty() { "/".to_owned() } else { p }, m.uid))
            }
            _ => None,
        },
        Err(e) => {
            problems.push(format!("cannot resolve {path}: {e}"));
            None
        }
    }
}

/// Find every home.
pub fn load(cx: &Context) -> Homes {
    let acc = cx.accounts();
    let mut h = Homes::default();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let owner_of_uid = |uid: u32| -> Owner {
        match acc.users.iter().find(|u| u.uid == uid) {
            Some(u) => Owner::UidOf {
                uid,
                name: u.name.clone(),
                passwd_home: u.home.clone(),
            },
            None => Owner::NoAccount { uid: Some(uid) },
        }
    };

    // 1. passwd homes.
    for u in &acc.users {
        let home = u.home.trim();
        if !home.starts_with('/') {
            continue;
        }
        let Some((real, _)) = real_dir(cx, home, &mut h.problems) else {
            continue;
        };
        if !seen.insert(real.clone()) {
            continue;
        }
        let path = if home.len() > 1 {
            home.trim_end_matches('/').to_owned()
        } else {
            "/".to_owned()
        };
        h.list.push(Home {
            system: system_dir(&real),
            path,
            real,
            owner: Owner::Account {
                name: u.name.clone(),
                uid: u.uid,
            },
            found: Found::Passwd { line: u.line },
        });
    }

    // 2. /root, when passwd does not name it (or is missing).
    if let Some((real, uid)) = real_dir(cx, "/root", &mut h.problems)
        && seen.insert(real.clone())
    {
        h.list.push(Home {
            system: false,
            path: "/root".into(),
            real,
            owner: owner_of_uid(uid),
            found: Found::Root,
        });
    }

    // 3. Directories under the home roots.
    let mut roots: Vec<(String, Option<String>)> = vec![("/home".into(), None)];
    for (r, at) in configured_roots(cx) {
        if !roots.iter().any(|(x, _)| *x == r) {
            roots.push((r, Some(at)));
        }
    }
    let mut seen_roots = BTreeSet::new();
    for (root, configured) in roots {
        let Some((real_root, _)) = real_dir(cx, &root, &mut h.problems) else {
            continue;
        };
        if !seen_roots.insert(real_root) {
            continue;
        }
        h.roots.push(root.clone());
        for (path, real, uid, _) in subdirs(cx, &root, &mut h.problems, false) {
            if !seen.insert(real.clone()) {
                continue;
            }
            h.list.push(Home {
                system: system_dir(&real),
                path,
                real,
                owner: owner_of_uid(uid),
                found: Found::UnderHomeRoot {
                    root: root.clone(),
                    configured: configured.clone(),
                },
            });
        }
    }

    // 4. Service homes.
    for root in SERVICE_ROOTS {
        for (path, real, uid, marker) in subdirs(cx, root, &mut h.problems, true) {
            let Some(marker) = marker else { continue };
            if !seen.insert(real.clone()) {
                continue;
            }
            h.list.push(Home {
                system: system_dir(&real),
                path,
                real,
                owner: owner_of_uid(uid),
                found: Found::Service {
                    root: (*root).to_owned(),
                    marker,
                },
            });
        }
    }
    h
}

/// Directories directly under `root` (directories and symlinks to them):
/// `(path, real path, owner uid, first home marker if `markers`)`, at most
/// [`MAX_DIRS_PER_ROOT`] entries examined.
fn subdirs(
    cx: &Context,
    root: &str,
    problems: &mut Vec<String>,
    markers: bool,
) -> Vec<(String, String, u32, Option<String>)> {
    let entries = cx.list_dir(root);
    if entries.len() > MAX_DIRS_PER_ROOT {
        problems.push(format!(
            "{root} has {} entries; only the first {MAX_DIRS_PER_ROOT} were examined as homes",
            entries.len()
        ));
    }
    let mut out = Vec::new();
    for e in entries.into_iter().take(MAX_DIRS_PER_ROOT) {
        if !matches!(e.kind, FileKind::Dir | FileKind::Symlink) {
            continue;
        }
        let name = String::from_utf8_lossy(&e.name).into_owned();
        let path = format!("{root}/{name}");
        let Some((real, uid)) = real_dir(cx, &path, problems) else {
            continue;
        };
        let marker = if markers {
            cx.list_dir(&real)
                .into_iter()
                .map(|e| String::from_utf8_lossy(&e.name).into_owned())
                .find(|n| is_home_marker(n))
        } else {
            None
        };
        out.push((path, real, uid, marker));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_dirs() {
        for d in [
            "/",
            "/usr/sbin",
            "/bin",
            "/dev",
            "/run/sshd",
            "/nonexistent/x",
        ] {
            assert_eq!(system_dir(d), d != "/nonexistent/x", "{d}");
        }
        for d in [
            "/home/alice",
            "/var/lib/postgresql",
            "/root",
            "/srv/app",
            "/var/www",
        ] {
            assert!(!system_dir(d), "{d}");
        }
    }

    #[test]
    fn owners_describe_themselves() {
        let a = Owner::Account {
            name: "alice".into(),
            uid: 1000,
        };
        assert_eq!(a.describe(), "user alice");
        let n = Owner::NoAccount { uid: Some(1001) };
        assert_eq!(n.describe(), "uid 1001 (no account in /etc/passwd)");
    }
}

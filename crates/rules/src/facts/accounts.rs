//! Accounts: `/etc/passwd`, `/etc/shadow`, `/etc/group`.

use crate::context::Context;

/// One `/etc/passwd` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Password field of passwd (`x` when shadowed).
    pub passwd_field: String,
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Home directory.
    pub home: String,
    /// Login shell.
    pub shell: String,
    /// Line in /etc/passwd.
    pub line: usize,
}

impl User {
    /// True if the shell lets the user log in interactively.
    pub fn has_login_shell(&self) -> bool {
        !(self.shell.ends_with("/nologin")
            || self.shell.ends_with("/false")
            || self.shell.is_empty() && self.uid != 0)
    }
}

/// One `/etc/shadow` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowEntry {
    /// Login name.
    pub name: String,
    /// The hash field, verbatim.
    pub hash: String,
    /// Line in /etc/shadow.
    pub line: usize,
}

/// The accounts of the guest.
#[derive(Clone, Debug, Default)]
pub struct Accounts {
    /// `/etc/passwd` entries, in file order.
    pub users: Vec<User>,
    /// `/etc/shadow` entries, if readable.
    pub shadow: Vec<ShadowEntry>,
    /// False if /etc/passwd is missing.
    pub has_passwd: bool,
    /// False if /etc/shadow is missing.
    pub has_shadow: bool,
}

impl Accounts {
    /// A user by name.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }
    // Home directories are their own fact: `crate::facts::homes` (passwd
    // homes, /root, /home/*, service homes, with their owners).
}

/// Load the account files.
pub fn load(cx: &Context) -> Accounts {
    let mut acc = Accounts::default();
    if let Some(text) = cx.read_text("/etc/passwd") {
        acc.has_passwd = true;
        for (i, line) in text.lines().enumerate() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7
                || line.starts_with('#')
                || line.starts_with('+')
                || line.starts_with('-')
            {
                continue;
            }
            acc.users.push(User {
                name: f[0].to_owned(),
                passwd_field: f[1].to_owned(),
                uid: f[2].parse().unwrap_or(u32::MAX),
                gid: f[3].parse().unwrap_or(u32::MAX),
                home: f[5].to_owned(),
                shell: f[6].to_owned(),
                line: i + 1,
            });
        }
    }
    if let Some(text) = cx.read_text("/etc/shadow") {
        acc.has_shadow = true;
        acc.shadow = super::password::shadow_lines(&text)
            .map(|l| ShadowEntry {
                name: l.user.to_owned(),
                hash: l.hash.to_owned(),
                line: l.line,
            })
            .collect();
    }
    acc
}

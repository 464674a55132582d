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

/// What a password field means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordState {
    /// Empty: login without a password.
    Empty,
    /// `*`, `!`, `!!`, `!*`, `x`...: no password can match.
    Locked,
    /// A crypt hash that some password matches.
    Usable,
}

/// Classify a shadow (or passwd) password field.
pub fn password_state(field: &str) -> PasswordState {
    if field.is_empty() {
        PasswordState::Empty
    } else if field.starts_with('!')
        || field.starts_with('*')
        || field == "x"
        || !field.starts_with('$') && field.len() != 13
    {
        // Traditional DES hashes are 13 characters; anything else that does
        // not start with `$` cannot be produced by crypt().
        PasswordState::Locked
    } else {
        PasswordState::Usable
    }
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
    /// Home directories to inspect: every user's home from /etc/passwd, plus
    /// `/root`, deduplicated, skipping `/` and `/nonexistent`-style paths that
    /// do not exist.
    pub fn homes(&self) -> Vec<(String, Option<&User>)> {
        let mut out: Vec<(String, Option<&User>)> = Vec::new();
        for u in &self.users {
            let h = u.home.trim_end_matches('/');
            if h.is_empty() {
                continue;
            }
            if !out.iter().any(|(p, _)| p == h) {
                out.push((h.to_owned(), Some(u)));
            }
        }
        if !out.iter().any(|(p, _)| p == "/root") {
            out.push(("/root".to_owned(), None));
        }
        out
    }
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
        for (i, line) in text.lines().enumerate() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 2 || line.starts_with('#') {
                continue;
            }
            acc.shadow.push(ShadowEntry {
                name: f[0].to_owned(),
                hash: f[1].to_owned(),
                line: i + 1,
            });
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states() {
        assert_eq!(password_state(""), PasswordState::Empty);
        assert_eq!(password_state("*"), PasswordState::Locked);
        assert_eq!(password_state("!"), PasswordState::Locked);
        assert_eq!(password_state("!$6$abc$def"), PasswordState::Locked);
        assert_eq!(password_state("$6$salt$hash"), PasswordState::Usable);
        assert_eq!(password_state("$y$j9T$salt$hash"), PasswordState::Usable);
        assert_eq!(password_state("abcdefghijklm"), PasswordState::Usable);
        assert_eq!(password_state("x"), PasswordState::Locked);
    }
}

//! One judgement of a password field (`/etc/shadow`, or a password left in
//! `/etc/passwd`), shared by `ibkit check` (APP-NOPASS offline) and
//! `ibkit boot-test` (the live `/etc/shadow` after first boot), so the two
//! can never disagree about what a hash means.

use std::fmt;

/// The crypt(3) scheme of a hash, from its prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HashScheme {
    /// Traditional DES: 13 characters of `[./0-9A-Za-z]`.
    Des,
    /// BSDi extended DES: `_` and 19 characters.
    BsdiDes,
    /// `$1$`.
    Md5,
    /// `$5$`.
    Sha256,
    /// `$6$`.
    Sha512,
    /// `$y$` (Debian 11+, Fedora 35+ default).
    Yescrypt,
    /// `$gy$`.
    GostYescrypt,
    /// `$2a$`, `$2b$`, `$2x$`, `$2y$`.
    Bcrypt,
    /// `$7$`.
    Scrypt,
    /// `$sha1$` (NetBSD).
    Sha1,
    /// `$md5$` / `$md5,` (Sun MD5).
    SunMd5,
    /// `$id$…` with an id libxcrypt does not know: it cannot verify any
    /// password today, but a future or patched crypt might; it is counted as
    /// a password, not as locked.
    Unknown,
}

impl HashScheme {
    /// How reports name the scheme.
    pub fn label(self) -> &'static str {
        match self {
            HashScheme::Des => "DES crypt",
            HashScheme::BsdiDes => "BSDi DES crypt",
            HashScheme::Md5 => "MD5 crypt ($1$)",
            HashScheme::Sha256 => "SHA-256 crypt ($5$)",
            HashScheme::Sha512 => "SHA-512 crypt ($6$)",
            HashScheme::Yescrypt => "yescrypt ($y$)",
            HashScheme::GostYescrypt => "gost-yescrypt ($gy$)",
            HashScheme::Bcrypt => "bcrypt ($2b$)",
            HashScheme::Scrypt => "scrypt ($7$)",
            HashScheme::Sha1 => "SHA-1 crypt ($sha1$)",
            HashScheme::SunMd5 => "Sun MD5 crypt ($md5$)",
            HashScheme::Unknown => "unknown $id$ scheme",
        }
    }

    /// Deliberately slow schemes: only the first few well-known passwords
    /// are tried (yescrypt costs ~70 ms a try in a debug build).
    fn is_slow(self) -> bool {
        matches!(
            self,
            HashScheme::Yescrypt | HashScheme::Bcrypt | HashScheme::Scrypt
        )
    }

    /// Whether [`well_known_password`] can test candidates against it.
    pub fn verifiable(self) -> bool {
        !matches!(
            self,
            HashScheme::GostYescrypt
                | HashScheme::Scrypt
                | HashScheme::SunMd5
                | HashScheme::Unknown
        )
    }
}

impl fmt::Display for HashScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// What a password field means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordState {
    /// Empty: login without a password.
    Empty,
    /// `*`, `!`, `!!`, `!$6$…`, `x`, or anything crypt() cannot produce:
    /// no password matches.
    Locked,
    /// A hash that some password matches.
    Usable(HashScheme),
}

const CRYPT_ALPHABET: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn all_crypt_chars(s: &str) -> bool {
    s.bytes().all(|b| CRYPT_ALPHABET.contains(&b))
}

/// Classify a shadow (or passwd) password field.
pub fn password_state(field: &str) -> PasswordState {
    if field.is_empty() {
        return PasswordState::Empty;
    }
    if field.starts_with('!') || field.starts_with('*') {
        return PasswordState::Locked;
    }
    if let Some(rest) = field.strip_prefix('$') {
        let (id, tail) = rest.split_once('$').unwrap_or((rest, ""));
        let scheme = match id {
            "1" => HashScheme::Md5,
            "5" => HashScheme::Sha256,
            "6" => HashScheme::Sha512,
            "y" => HashScheme::Yescrypt,
            "gy" => HashScheme::GostYescrypt,
            "2a" | "2b" | "2x" | "2y" => HashScheme::Bcrypt,
            "7" => HashScheme::Scrypt,
            "sha1" => HashScheme::Sha1,
            _ if id == "md5" || id.starts_with("md5,") => HashScheme::SunMd5,
            // `$` alone or `$$`: no scheme, crypt() rejects it.
            "" => return PasswordState::Locked,
            _ => HashScheme::Unknown,
        };
        // A scheme prefix with nothing after it cannot match anything.
        if tail.is_empty() {
            return PasswordState::Locked;
        }
        return PasswordState::Usable(scheme);
    }
    if field.len() == 13 && all_crypt_chars(field) {
        return PasswordState::Usable(HashScheme::Des);
    }
    if field.len() == 20 && field.starts_with('_') && all_crypt_chars(&field[1..]) {
        return PasswordState::Usable(HashScheme::BsdiDes);
    }
    PasswordState::Locked
}

/// Passwords tried against every usable hash (plus the account's own name).
/// Short on purpose: slow schemes cost ~70 ms per try.
pub const WELL_KNOWN_PASSWORDS: &[&str] = &[
    "password",
    "123456",
    "root",
    "toor",
    "admin",
    "changeme",
    "debian",
    "ubuntu",
    "centos",
    "almalinux",
    "qwerty",
    "passw0rd",
    "P@ssw0rd",
    "12345678",
    "letmein",
];

/// How many of the list are tried against slow (yescrypt/bcrypt) hashes.
const SLOW_HASH_TRIES: usize = 4;

fn verify(scheme: HashScheme, hash: &str, candidate: &str) -> bool {
    match scheme {
        HashScheme::Yescrypt => {
            use yescrypt::PasswordVerifier;
            yescrypt::Yescrypt::default()
                .verify_password(candidate.as_bytes(), hash)
                .is_ok()
        }
        s if s.verifiable() => pwhash::unix::verify(candidate, hash),
        _ => false,
    }
}

/// Which well-known password (or the account's name) a hash is, if any,
/// redacted (`p******d`): enough to recognise, never the hash or the password.
pub fn well_known_password(hash: &str, user: &str) -> Option<String> {
    let PasswordState::Usable(scheme) = password_state(hash) else {
        return None;
    };
    if !scheme.verifiable() {
        return None;
    }
    let n = if scheme.is_slow() {
        SLOW_HASH_TRIES
    } else {
        WELL_KNOWN_PASSWORDS.len()
    };
    std::iter::once(user)
        .chain(WELL_KNOWN_PASSWORDS.iter().take(n).copied())
        .find(|c| verify(scheme, hash, c))
        .map(redact)
}

/// `password` -> `p******d`.
fn redact(p: &str) -> String {
    let chars: Vec<char> = p.chars().collect();
    match chars.len() {
        0..=2 => "*".repeat(chars.len()),
        n => format!("{}{}{}", chars[0], "*".repeat(n - 2), chars[n - 1]),
    }
}

/// The verdict on one account's password field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswordJudgement {
    pub state: PasswordState,
    /// For a usable hash: the redacted well-known password it matches.
    pub well_known: Option<String>,
}

impl PasswordJudgement {
    /// A password anyone may log in with, or one a buyer did not choose.
    pub fn is_problem(&self) -> bool {
        !matches!(self.state, PasswordState::Locked)
    }

    /// One phrase for reports: `empty password field`, `usable SHA-512
    /// crypt ($6$) hash of a well-known password (r**t)`.
    pub fn describe(&self) -> String {
        match (&self.state, &self.well_known) {
            (PasswordState::Empty, _) => "empty password field".into(),
            (PasswordState::Locked, _) => "locked".into(),
            (PasswordState::Usable(s), Some(p)) => {
                format!("usable {s} hash of a well-known password ({p})")
            }
            (PasswordState::Usable(s), None) if !s.verifiable() => {
                format!("usable {s} hash (not tried against well-known passwords)")
            }
            (PasswordState::Usable(s), None) => format!("usable {s} hash"),
        }
    }
}

/// Judge one password field of account `user`.
pub fn judge(field: &str, user: &str) -> PasswordJudgement {
    let state = password_state(field);
    let well_known = match state {
        PasswordState::Usable(_) => well_known_password(field, user),
        _ => None,
    };
    PasswordJudgement { state, well_known }
}

/// One `name:hash` pair of a shadow file, with its 1-based line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowLine<'a> {
    pub user: &'a str,
    pub hash: &'a str,
    pub line: usize,
}

/// The accounts of a shadow file, comments and malformed lines skipped.
pub fn shadow_lines(text: &str) -> impl Iterator<Item = ShadowLine<'_>> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let mut f = line.split(':');
        let (user, hash) = (f.next()?, f.next()?);
        if user.is_empty() || user.starts_with('#') {
            return None;
        }
        Some(ShadowLine {
            user,
            hash,
            line: i + 1,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_of_every_scheme() {
        use HashScheme::*;
        use PasswordState::*;
        let cases: &[(&str, PasswordState)] = &[
            ("", Empty),
            ("*", Locked),
            ("!", Locked),
            ("!!", Locked),
            ("!$6$abc$def", Locked),
            ("*LK*", Locked),
            ("x", Locked),
            ("$", Locked),
            ("$6$", Locked),
            ("not a hash at all", Locked),
            ("abcdefghijkl!", Locked),
            ("abcdefghijklm", Usable(Des)),
            ("_J9..CCCCXBrJUJV154M", Usable(BsdiDes)),
            ("$1$salt$hash", Usable(Md5)),
            ("$5$salt$hash", Usable(Sha256)),
            ("$6$salt$hash", Usable(Sha512)),
            ("$y$j9T$salt$hash", Usable(Yescrypt)),
            ("$gy$j9T$salt$hash", Usable(GostYescrypt)),
            ("$2b$05$abcdefghijklmnopqrstuu", Usable(Bcrypt)),
            ("$2y$05$abcdefghijklmnopqrstuu", Usable(Bcrypt)),
            ("$7$CU..../....salt$hash", Usable(Scrypt)),
            ("$sha1$19703$salt$hash", Usable(Sha1)),
            ("$md5,rounds=5000$salt$$hash", Usable(SunMd5)),
            ("$zz$salt$hash", Usable(Unknown)),
        ];
        for (field, want) in cases {
            assert_eq!(password_state(field), *want, "{field:?}");
        }
    }

    #[test]
    fn well_known_passwords_are_found_in_each_verifiable_scheme() {
        // Hashes made by glibc's crypt (python3's crypt module) and
        // mkpasswd, one per verifiable scheme: "password" or "root".
        let cases = [
            ("DES", "abJnggxhB/yWI", "p******d"),
            ("BSDi", "_J9..saltJW8FtKdEkNM", "p******d"),
            ("MD5", "$1$saltsalt$qjXMvbEw8oaL.CzflDtaK/", "p******d"),
            (
                "SHA-256",
                "$5$saltsalt$gOjOtoMpVhru2uyjeJSEc/JaLQWOXMNmlOnj6T4AtC.",
                "p******d",
            ),
            (
                "SHA-512",
                "$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/",
                "p******d",
            ),
            (
                "bcrypt",
                "$2b$05$abcdefghijklmnopqrstuuJ/uqQnGWb.PIEKF.YYD7e.M1.rwki5y",
                "r**t",
            ),
            (
                "yescrypt",
                "$y$j9T$pw9slprcavQYv53Erfo0R.$CZqBd2kXthiCOf0p6Bpu.PN7XYGcjS33QwWh88zYAK/",
                "p******d",
            ),
        ];
        for (name, hash, redacted) in cases {
            assert_eq!(
                well_known_password(hash, "nobody").as_deref(),
                Some(redacted),
                "{name}"
            );
        }
        // The account's own name is tried too; a random password is not found.
        // DES of "root" (python3 -c 'import crypt; print(crypt.crypt("root","ab"))').
        assert_eq!(
            well_known_password("ab6TRGT20sY26", "root").as_deref(),
            Some("r**t")
        );
        let strong = pwhash::sha512_crypt::hash("c0rrect-h0rse-battery").expect("hash");
        assert_eq!(well_known_password(&strong, "root"), None);
        let j = judge(&strong, "root");
        assert!(j.is_problem(), "a preset password is a default password");
        assert_eq!(j.describe(), "usable SHA-512 crypt ($6$) hash");
    }

    #[test]
    fn redacts() {
        assert_eq!(redact("password"), "p******d");
        assert_eq!(redact("ab"), "**");
    }

    #[test]
    fn shadow_lines_skip_comments_and_short_lines() {
        let text = "# comment\nroot:!:19000::::::\nbroken\nalice::19000:0:99999:7:::\n";
        let got: Vec<_> = shadow_lines(text)
            .map(|l| (l.user, l.hash, l.line))
            .collect();
        assert_eq!(got, vec![("root", "!", 2), ("alice", "", 4)]);
    }
}

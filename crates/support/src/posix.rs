//! Names a VM's files and accounts must follow, checked the same way where
//! they are written (the deploy manifest) and where they are used (the
//! agent).

use std::path::{Component, Path};

/// Longest path accepted (`PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;

/// `[a-z_][a-z0-9_-]{0,31}`: a portable user or group name (useradd's
/// default rule, without the trailing `$`).
pub fn is_account_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-'))
}

/// An absolute path of plain components naming a file: no `.` or `..`, no
/// trailing `/`, no control characters, at most [`MAX_PATH_BYTES`].
pub fn check_plain_file_path(text: &str) -> Result<(), String> {
    let path = Path::new(text);
    if !path.is_absolute() {
        return Err(format!("{text:?} is not absolute"));
    }
    if text.len() > MAX_PATH_BYTES {
        return Err(format!("longer than {MAX_PATH_BYTES} bytes"));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("{text:?} has control characters"));
    }
    // Components drop `a/./b`'s dot: look at the text too.
    if text.split('/').any(|c| c == "." || c == "..") {
        return Err(format!("{text:?}: `.` and `..` are not allowed"));
    }
    let files = path
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count();
    if files == 0 || text.ends_with('/') {
        return Err(format!("{text:?} names no file"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names() {
        for ok in ["root", "_svc-1", "app9", &"a".repeat(32)] {
            assert!(is_account_name(ok), "{ok}");
        }
        for bad in ["", "Root", "1app", "a b", "app$", "-x", &"a".repeat(33)] {
            assert!(!is_account_name(bad), "{bad}");
        }
    }

    #[test]
    fn plain_file_paths() {
        for ok in ["/opt/agent/xaas-secret-auth-token.key", "/t", "//opt//t"] {
            assert_eq!(check_plain_file_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "t.key",
            "opt/t",
            "/opt/../etc/t",
            "/opt/./t",
            "/opt/t/..",
            "/",
            "/opt/",
            "/opt/t\n",
            &format!("/{}", "a".repeat(MAX_PATH_BYTES)),
        ] {
            assert!(check_plain_file_path(bad).is_err(), "{bad:?}");
        }
    }
}

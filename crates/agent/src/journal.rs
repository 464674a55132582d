//! The agent's state directory and its crash-safe JSON files.
//!
//! Layout (see `docs/agent.md`):
//!
//! ```text
//! STATE/credential                      bearer credential (0600)
//! STATE/executions/<exec>/exec.json     the Work and when it was received
//! STATE/executions/<exec>/attempts/<n>/ spec.json script runner.json stdout log exit.json runner.err structured
//! STATE/executions/<exec>/done.json     the final StepOutcome
//! STATE/outbox/<seq>.json               reports waiting for delivery
//! STATE/outbox/refused/<seq>.json       final reports the service refused for good
//! STATE/results/<instance>/<group>/<index>/{result,structured.json,hash}
//! STATE/health/<check>/                 the last script_health run
//! STATE/refs/<exec>/<NAME>              resolved result references, owned by the step's user
//! ```
//!
//! Every directory is 0700 and every file 0600 (or 0400), except `STATE`
//! and `STATE/refs`, which are 0711: a step running as another user must
//! reach its own `STATE/refs/<exec>` (0700, its own) but can list nothing.
//! Scripts reach their interpreter as an open file descriptor, not a path.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ibkit_support::fs::write_atomic;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// [`write_atomic`] of a value as pretty JSON, owner only.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let data = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    write_atomic(path, &data, 0o600)
}

/// Reads JSON; `Ok(None)` when the file does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| io::Error::other(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates a directory (and parents) with the given mode. Parents it
/// creates get `mode` too (less the umask), never the umask's default.
pub fn create_dir(path: &Path, mode: u32) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating) the state directory; see the module's doc for the
    /// modes. Directories an older agent left traversable (0711) are
    /// tightened.
    pub fn open(root: &Path) -> io::Result<Self> {
        for dir in [root.to_path_buf(), root.join("refs")] {
            create_dir(&dir, 0o711)?;
        }
        for dir in [
            root.join("executions"),
            root.join("outbox"),
            root.join("results"),
            root.join("health"),
        ] {
            create_dir(&dir, 0o700)?;
        }
        for sub in ["executions", "health"] {
            for entry in fs::read_dir(root.join(sub))? {
                let path = entry?.path();
                if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o700))?;
                }
            }
        }
        Ok(StateDir {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn credential_path(&self) -> PathBuf {
        self.root.join("credential")
    }

    pub fn outbox_dir(&self) -> PathBuf {
        self.root.join("outbox")
    }

    pub fn executions_dir(&self) -> PathBuf {
        self.root.join("executions")
    }

    /// Where a step finds its resolved references (`IBKIT_RESULTS_DIR`).
    pub fn refs_dir(&self, exec_id: &str) -> PathBuf {
        self.root.join("refs").join(safe_name(exec_id))
    }

    pub fn health_dir(&self, check: &str) -> PathBuf {
        self.root.join("health").join(safe_name(check))
    }

    /// The directory of one execution; ids that are not plain names are
    /// hashed so a hostile id cannot escape the state directory.
    pub fn exec_dir(&self, exec_id: &str) -> PathBuf {
        self.executions_dir().join(safe_name(exec_id))
    }

    pub fn result_dir(&self, instance: &str, group: &str, index: u32) -> PathBuf {
        self.root
            .join("results")
            .join(safe_name(instance))
            .join(safe_name(group))
            .join(index.to_string())
    }
}

/// `name` when it is a plain file name, else `h-<sha256>`.
pub fn safe_name(name: &str) -> String {
    let plain = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if plain {
        name.to_string()
    } else {
        format!("h-{}", ibkit_api::step::sha256_hex(name.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_names() {
        assert_eq!(safe_name("abc-1.2_x"), "abc-1.2_x");
        assert!(safe_name("../etc").starts_with("h-"));
        assert!(safe_name("..").starts_with("h-"));
        assert!(safe_name("").starts_with("h-"));
    }
}

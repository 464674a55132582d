//! Why a boot test could not run (rule failures are not errors).

use std::path::Path;

/// A boot test that could not run at all; exit code 2 at the CLI.
#[derive(Debug, thiserror::Error)]
pub enum BootTestError {
    /// The image could not be opened or read.
    #[error("cannot read the image: {0}")]
    Image(String),
    /// Work directory, key, seed.
    #[error("cannot prepare the test: {0}")]
    Setup(String),
    /// QEMU or virtiofsd could not start.
    #[error("cannot start the VM: {0}")]
    Vm(String),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

impl BootTestError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> BootTestError {
        BootTestError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

//! Errors of the image layer. Corrupt input, unsupported features, unsafe
//! constructs and host I/O failures are distinct, and each names the file.

use std::path::{Path, PathBuf};

/// Why an image could not be opened or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// Reading a host file failed.
    #[error("cannot read {}", path.display())]
    Io {
        /// Host path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The image's structures are inconsistent.
    #[error("{}: corrupt image: {what}", path.display())]
    Corrupt {
        /// Host path.
        path: PathBuf,
        /// What is wrong, and where.
        what: String,
    },
    /// A valid image that uses something we do not read.
    #[error("{}: unsupported: {what}", path.display())]
    Unsupported {
        /// Host path.
        path: PathBuf,
        /// The feature.
        what: String,
    },
    /// The image asks for something we refuse to do (open a host file it names, loop).
    #[error("{}: refused: {what}", path.display())]
    Unsafe {
        /// Host path.
        path: PathBuf,
        /// What was refused.
        what: String,
    },
    /// A backing file named by a qcow2 header could not be opened.
    #[error("{}: cannot open backing file {backing:?}", path.display())]
    Backing {
        /// The image naming it.
        path: PathBuf,
        /// The name in the header.
        backing: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// No filesystem with `/etc/os-release` (or `/usr/lib/os-release`) was found.
    #[error("{}: no root filesystem found ({what})", path.display())]
    NoRoot {
        /// Host path.
        path: PathBuf,
        /// What was seen instead.
        what: String,
    },
}

impl ImageError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        ImageError::Io {
            path: path.to_owned(),
            source,
        }
    }
    pub(crate) fn corrupt(path: &Path, what: &str) -> Self {
        ImageError::Corrupt {
            path: path.to_owned(),
            what: what.to_owned(),
        }
    }
}

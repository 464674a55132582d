//! `qemu-img` for tests that craft qcow2 chains.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `qemu-img ARGS`, panicking with its stderr on failure; returns stdout.
pub fn qemu_img(args: &[&str]) -> Vec<u8> {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img runs");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A qcow2 (`top.qcow2`) over a 4 MiB raw base (`base.raw`), both in `dir`,
/// the base's format declared in the header. Returns (top, base).
pub fn qcow2_over_raw(dir: &Path) -> (PathBuf, PathBuf) {
    let base = dir.join("base.raw");
    std::fs::write(&base, vec![0u8; 4 << 20]).expect("base");
    let top = dir.join("top.qcow2");
    let top_str = top.to_str().expect("a UTF-8 temporary path");
    qemu_img(&[
        "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "base.raw", top_str,
    ]);
    (top, base)
}

/// A 16 MiB qcow2 at `top` whose header names `backing` (declared raw),
/// made without qemu-img opening it (`-u`): how a crafted image points at
/// a file of the host's choosing.
pub fn qcow2_naming_backing(top: &Path, backing: &str) {
    let top_str = top.to_str().expect("a UTF-8 temporary path");
    qemu_img(&[
        "create", "-q", "-u", "-f", "qcow2", "-F", "raw", "-b", backing, top_str, "16M",
    ]);
}

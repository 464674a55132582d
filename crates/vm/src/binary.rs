//! Where the QEMU programs are: one home for both the VM runner
//! ([`crate::qemu`]) and the KVM probe ([`crate::accel`]).

use std::path::{Path, PathBuf};

/// The QEMU system emulator: `$IBKIT_QEMU_SYSTEM` or `qemu-system-x86_64`.
pub fn qemu_binary() -> PathBuf {
    std::env::var_os("IBKIT_QEMU_SYSTEM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"))
}

/// `qemu-img`: `$IBKIT_QEMU_IMG` or `qemu-img`.
pub fn qemu_img_binary() -> PathBuf {
    std::env::var_os("IBKIT_QEMU_IMG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("qemu-img"))
}

/// Whether `p` is a file with an execute bit.
pub(crate) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `NAME` in each directory of `PATH`, in order (found or not).
pub(crate) fn path_candidates(name: &str) -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .collect()
}

/// `socat`, the relay a [`GuestForward`](crate::qemu::GuestForward) runs
/// for each guest connection: `$IBKIT_SOCAT`, else the first `socat` on
/// `PATH`. The error names the package.
pub fn socat_binary() -> Result<PathBuf, String> {
    if let Some(v) = std::env::var_os("IBKIT_SOCAT") {
        return Ok(PathBuf::from(v));
    }
    path_candidates("socat")
        .into_iter()
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            "socat not found on PATH: a guest forward (the billing emulator's) needs it \
             (apt install socat)"
                .to_string()
        })
}

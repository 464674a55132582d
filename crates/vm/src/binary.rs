//! Where the QEMU programs are: one home for both the VM runner
//! ([`crate::qemu`]) and the KVM probe ([`crate::accel`]).

use std::path::PathBuf;

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

/// `socat`, the relay a [`GuestForward`](crate::qemu::GuestForward) runs
/// for each guest connection: `$IBKIT_SOCAT`, else the first `socat` on
/// `PATH`. The error names the package.
pub fn socat_binary() -> Result<PathBuf, String> {
    if let Some(v) = std::env::var_os("IBKIT_SOCAT") {
        return Ok(PathBuf::from(v));
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("socat"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "socat not found on PATH: a guest forward (the billing emulator's) needs it \
             (apt install socat)"
                .to_string()
        })
}

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

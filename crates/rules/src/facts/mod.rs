//! Facts the rules read from the guest, each parsed once.

pub mod accounts;
pub mod boot;
pub mod cloudinit;
pub mod homes;
pub mod initramfs;
pub mod kernel;
pub mod modprobe;
pub mod os_release;
pub mod packages;
pub mod password;
pub mod systemd;

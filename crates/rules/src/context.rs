//! The context a rule runs in: the guest, the inspection, the manifest, and
//! facts loaded on first use and shared by all rules.

use std::sync::{Mutex, OnceLock};

use ibkit_image::Guest;
use ibkit_image::inspect::Inspection;

use crate::facts;
use crate::manifest::Manifest;

/// Everything a rule may look at.
pub struct Context<'a> {
    /// The guest's files.
    pub guest: &'a Guest,
    /// How the image was assembled (partitions, mounts); `None` in unit tests
    /// that build a guest directly.
    pub inspection: Option<&'a Inspection>,
    /// The vendor's app manifest, if given.
    pub manifest: Option<&'a Manifest>,
    os_release: OnceLock<facts::os_release::OsRelease>,
    accounts: OnceLock<facts::accounts::Accounts>,
    packages: OnceLock<facts::packages::Packages>,
    units: OnceLock<facts::systemd::Units>,
    boot: OnceLock<facts::boot::BootConfig>,
    kernels: OnceLock<Vec<facts::kernel::Kernel>>,
    cloud: OnceLock<facts::cloudinit::CloudConfig>,
    homes: OnceLock<facts::homes::Homes>,
    modprobe: OnceLock<facts::modprobe::Modprobe>,
    notes: Mutex<Vec<String>>,
}

impl<'a> Context<'a> {
    /// A context over `guest`.
    pub fn new(
        guest: &'a Guest,
        inspection: Option<&'a Inspection>,
        manifest: Option<&'a Manifest>,
    ) -> Self {
        Context {
            guest,
            inspection,
            manifest,
            os_release: OnceLock::new(),
            accounts: OnceLock::new(),
            packages: OnceLock::new(),
            units: OnceLock::new(),
            boot: OnceLock::new(),
            kernels: OnceLock::new(),
            cloud: OnceLock::new(),
            homes: OnceLock::new(),
            modprobe: OnceLock::new(),
            notes: Mutex::new(Vec::new()),
        }
    }

    /// Record a problem reading the guest that makes the check incomplete.
    pub fn note(&self, text: impl Into<String>) {
        if let Ok(mut n) = self.notes.lock() {
            let text = text.into();
            if !n.contains(&text) {
                n.push(text);
            }
        }
    }

    /// Notes recorded so far.
    pub fn notes(&self) -> Vec<String> {
        self.notes.lock().map(|n| n.clone()).unwrap_or_default()
    }

    /// Read a text file; a read error is noted and treated as absent.
    pub fn read_text(&self, path: &str) -> Option<String> {
        match self.guest.read_text(path) {
            Ok(t) => t,
            Err(e) => {
                self.note(format!("cannot read {path}: {e}"));
                None
            }
        }
    }

    /// Names in a directory (following symlinks), sorted; empty if absent.
    pub fn list_dir(&self, path: &str) -> Vec<ibkit_image::fs::DirEntry> {
        match self.guest.read_dir(path) {
            Ok(Some(e)) => e,
            Ok(None) => Vec::new(),
            Err(e) => {
                self.note(format!("cannot list {path}: {e}"));
                Vec::new()
            }
        }
    }

    /// `/etc/os-release`.
    pub fn os_release(&self) -> &facts::os_release::OsRelease {
        self.os_release
            .get_or_init(|| facts::os_release::load(self))
    }
    /// `/etc/passwd`, `/etc/shadow`, `/etc/group`.
    pub fn accounts(&self) -> &facts::accounts::Accounts {
        self.accounts.get_or_init(|| facts::accounts::load(self))
    }
    /// The package database.
    pub fn packages(&self) -> &facts::packages::Packages {
        self.packages
            .get_or_init(|| facts::packages::load(self.guest))
    }
    /// systemd units and what the default target pulls in.
    pub fn units(&self) -> &facts::systemd::Units {
        self.units.get_or_init(|| facts::systemd::load(self))
    }
    /// Boot loader configuration and kernel command lines.
    pub fn boot(&self) -> &facts::boot::BootConfig {
        self.boot.get_or_init(|| facts::boot::load(self))
    }
    /// Installed kernels, their modules and initramfs.
    pub fn kernels(&self) -> &[facts::kernel::Kernel] {
        self.kernels.get_or_init(|| facts::kernel::load(self.guest))
    }
    /// cloud-init's merged configuration.
    pub fn cloud(&self) -> &facts::cloudinit::CloudConfig {
        self.cloud.get_or_init(|| facts::cloudinit::load(self))
    }
    /// Every home directory: passwd homes, `/root`, `/home/*`, service homes.
    pub fn homes(&self) -> &facts::homes::Homes {
        self.homes.get_or_init(|| facts::homes::load(self))
    }
    /// The root filesystem's modprobe.d configuration.
    pub fn modprobe(&self) -> &facts::modprobe::Modprobe {
        self.modprobe.get_or_init(|| facts::modprobe::load(self))
    }
}

//! Installed packages, read from the guest's package database without
//! running anything and without writing anything:
//!
//! - dpkg: `/var/lib/dpkg/status` plus the pending journal in
//!   `/var/lib/dpkg/updates/` (Debian, Ubuntu, Astra Linux);
//! - RPM sqlite: `rpmdb.sqlite` in `/var/lib/rpm` (RHEL/Alma/Rocky 9, Alt) or
//!   `/usr/lib/sysimage/rpm` (Fedora 36+, openSUSE Tumbleweed), opened as an
//!   in-memory copy, with committed transactions still in `rpmdb.sqlite-wal`
//!   applied;
//! - RPM BerkeleyDB: `/var/lib/rpm/Packages` (CentOS 7/8, RHEL 7/8, RedOS 7,
//!   older Alt), walked like rpm's own read-only `bdb_ro` backend;
//! - RPM ndb: `Packages.db` (SLES 15, openSUSE Leap 15).
//!
//! Which dpkg states count as installed: every state in which the package's
//! files are (at least partly) on disk — `installed`, `half-configured`,
//! `unpacked`, `half-installed`, `triggers-awaited`, `triggers-pending`.
//! `config-files` (removed, only conffiles left) and `not-installed` do not
//! count. A half-installed debugger is still a debugger on disk.

mod bdb;
mod dpkg;
mod ndb;
mod rpmhdr;
mod sqlite;

use std::collections::BTreeMap;

use ibkit_image::Guest;

pub use dpkg::{ON_DISK_STATES, parse_status as parse_dpkg_status};
pub use rpmhdr::parse_header as parse_rpm_header;

/// Largest RPM database file read (RHEL 9's is 10-30 MB, big hosts ~200 MB).
pub const RPMDB_READ_CAP: u64 = 512 * 1024 * 1024;
/// Largest dpkg status file read (Debian's is 1-3 MB, a big desktop ~15 MB).
pub const DPKG_READ_CAP: u64 = 256 * 1024 * 1024;

/// `/var/lib/dpkg/status`.
pub const DPKG_STATUS: &str = "/var/lib/dpkg/status";
/// dpkg's journal of status changes not yet merged into `status`.
pub const DPKG_UPDATES: &str = "/var/lib/dpkg/updates";
/// RPM sqlite databases, in order of preference.
pub const RPM_SQLITE_PATHS: [&str; 2] = [
    "/var/lib/rpm/rpmdb.sqlite",
    "/usr/lib/sysimage/rpm/rpmdb.sqlite",
];
/// RPM BerkeleyDB `Packages` files.
pub const RPM_BDB_PATHS: [&str; 2] = ["/var/lib/rpm/Packages", "/usr/lib/sysimage/rpm/Packages"];
/// RPM ndb `Packages.db` files.
pub const RPM_NDB_PATHS: [&str; 2] = [
    "/var/lib/rpm/Packages.db",
    "/usr/lib/sysimage/rpm/Packages.db",
];

/// Which database the packages came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PackageDbKind {
    /// `/var/lib/dpkg/status`.
    Dpkg,
    /// RPM's `rpmdb.sqlite`.
    RpmSqlite,
    /// RPM's BerkeleyDB `Packages` (rpm < 4.16, or distributions that kept it).
    RpmBdb,
    /// RPM's ndb `Packages.db` (SUSE).
    RpmNdb,
}

impl PackageDbKind {
    /// Short name for reports (`dpkg`, `rpm-sqlite`, `rpm-bdb`, `rpm-ndb`).
    pub fn as_str(self) -> &'static str {
        match self {
            PackageDbKind::Dpkg => "dpkg",
            PackageDbKind::RpmSqlite => "rpm-sqlite",
            PackageDbKind::RpmBdb => "rpm-bdb",
            PackageDbKind::RpmNdb => "rpm-ndb",
        }
    }
}

impl std::fmt::Display for PackageDbKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One installed package.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Package {
    /// Name.
    pub name: String,
    /// Version: dpkg's `Version` (`[epoch:]upstream[-revision]`); for RPM
    /// `[epoch:]version-release`, the epoch shown only when non-zero.
    pub version: String,
    /// Architecture (`amd64`, `all`, `x86_64`, `noarch`); empty when the
    /// database records none (RPM's `gpg-pubkey` entries).
    pub arch: String,
    /// dpkg's state (the third word of `Status`: `installed`, `unpacked`,
    /// ...); `installed` for RPM.
    pub state: String,
    /// Source package name (dpkg's `Source` without its version, RPM's
    /// `SOURCERPM` without `-version-release.src.rpm`), if recorded.
    pub source: Option<String>,
    /// Names of the virtual packages / capabilities it provides (versions
    /// dropped): dpkg's `Provides`, RPM's `PROVIDENAME`.
    pub provides: Vec<String>,
}

impl Package {
    /// `name` for the usual instance, `name:arch` style for reports: dpkg's
    /// `name:arch`, RPM's `name.arch`.
    pub fn display_name(&self, kind: Option<PackageDbKind>) -> String {
        if self.arch.is_empty() {
            return self.name.clone();
        }
        match kind {
            Some(PackageDbKind::Dpkg) => format!("{}:{}", self.name, self.arch),
            _ => format!("{}.{}", self.name, self.arch),
        }
    }
}

/// The installed packages.
#[derive(Clone, Debug, Default)]
pub struct Packages {
    /// Database kind, `None` if none was found.
    pub kind: Option<PackageDbKind>,
    /// Guest path of the database.
    pub path: Option<String>,
    /// Installed packages by name: one instance per name (the native
    /// architecture's, else `all`/`noarch`, else the first; for RPM the most
    /// recently installed of those).
    pub list: BTreeMap<String, Package>,
    /// Why the database could not be read, or could be read only in part
    /// (`list` then holds what was read).
    pub error: Option<String>,
    /// Further installed instances of names already in `list`: other
    /// architectures (dpkg multi-arch `libc6:i386`, RPM multilib
    /// `glibc.i686`) and other versions (several RPM kernels, `gpg-pubkey`).
    pub others: Vec<Package>,
    /// Things that do not make the list unreliable but belong in a report
    /// (another package database was present, WAL content applied, ...).
    pub warnings: Vec<String>,
}

impl Packages {
    /// The installed package `name`.
    pub fn get(&self, name: &str) -> Option<&Package> {
        self.list.get(name)
    }
    /// True if a database was read.
    pub fn known(&self) -> bool {
        self.kind.is_some() && self.error.is_none()
    }
    /// Every installed instance of `name` (all architectures and versions),
    /// the one in `list` first.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Package> + 'a {
        self.list
            .get(name)
            .into_iter()
            .chain(self.others.iter().filter(move |p| p.name == name))
    }
    /// True if a package `name` is installed.
    pub fn contains(&self, name: &str) -> bool {
        self.list.contains_key(name)
    }
    /// Every installed package instance: `list` in name order, then `others`.
    pub fn iter(&self) -> impl Iterator<Item = &Package> {
        self.list.values().chain(self.others.iter())
    }
    /// Number of installed package instances (`list` plus `others`).
    pub fn len(&self) -> usize {
        self.list.len() + self.others.len()
    }
    /// True if no package is installed (or none could be read).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
    /// The installed packages that are named `name` or provide it (dpkg
    /// virtual packages, RPM capabilities), the one named `name` first.
    pub fn providers<'a>(&'a self, name: &'a str) -> Vec<&'a Package> {
        let mut out: Vec<&Package> = self.get_all(name).collect();
        for p in self.iter() {
            if p.name != name && p.provides.iter().any(|n| n == name) {
                out.push(p);
            }
        }
        out
    }

    /// Build from the instances read from a database, in database order.
    /// The instance kept in `list` for a name is the one of the native
    /// architecture (that of `dpkg` or `rpm` itself, else the most common
    /// one), else an architecture-independent one, else the first; for RPM,
    /// the last installed of equals (the newest kernel).
    pub fn from_instances(
        kind: PackageDbKind,
        path: Option<String>,
        instances: Vec<Package>,
    ) -> Packages {
        let native = native_arch(kind, &instances);
        let prefer_last = kind != PackageDbKind::Dpkg;
        let rank = |p: &Package| -> u8 {
            if native.as_deref() == Some(p.arch.as_str()) {
                2
            } else if matches!(p.arch.as_str(), "all" | "noarch") {
                1
            } else {
                0
            }
        };
        // Index of the chosen instance per name.
        let mut chosen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, p) in instances.iter().enumerate() {
            match chosen.get_mut(p.name.as_str()) {
                None => {
                    chosen.insert(p.name.as_str(), i);
                }
                Some(c) => {
                    let (old, new) = (rank(&instances[*c]), rank(p));
                    if new > old || (new == old && prefer_last) {
                        *c = i;
                    }
                }
            }
        }
        let mut keep = vec![false; instances.len()];
        for &i in chosen.values() {
            keep[i] = true;
        }
        let mut list = BTreeMap::new();
        let mut others = Vec::new();
        for (p, k) in instances.into_iter().zip(keep) {
            if k {
                list.insert(p.name.clone(), p);
            } else {
                others.push(p);
            }
        }
        Packages {
            kind: Some(kind),
            path,
            list,
            error: None,
            others,
            warnings: Vec::new(),
        }
    }
}

/// The architecture of the package manager itself, else the most common one
/// (ignoring `all`/`noarch`/none).
fn native_arch(kind: PackageDbKind, instances: &[Package]) -> Option<String> {
    let manager = if kind == PackageDbKind::Dpkg {
        "dpkg"
    } else {
        "rpm"
    };
    if let Some(p) = instances
        .iter()
        .find(|p| p.name == manager && !p.arch.is_empty())
    {
        return Some(p.arch.clone());
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for p in instances {
        if !matches!(p.arch.as_str(), "" | "all" | "noarch") {
            *counts.entry(p.arch.as_str()).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|&(_, n)| n)
        .map(|(a, _)| a.to_owned())
}

/// What reading one database produced.
#[derive(Debug, Default)]
struct DbRead {
    /// Instances in database order.
    packages: Vec<Package>,
    /// The database was only partly readable, or not at all.
    error: Option<String>,
    /// Notes for the report.
    warnings: Vec<String>,
}

impl DbRead {
    fn failed(error: String) -> Self {
        DbRead {
            error: Some(error),
            ..DbRead::default()
        }
    }
}

/// Read the package database of `guest`.
///
/// Every database present is read. Reported is dpkg's or the newest RPM
/// backend's that reads cleanly, whichever lists more packages; another
/// non-empty one is mentioned in `warnings`.
/// Never panics on hostile content: problems end up in `error`.
pub fn load(guest: &Guest) -> Packages {
    let mut found: Vec<(PackageDbKind, String, DbRead)> = Vec::new();
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let present = |path: &str, seen: &mut Vec<Vec<u8>>| -> bool {
        // The same file reached through /var/lib/rpm -> /usr/lib/sysimage/rpm
        // is read once.
        match guest.resolve(path, true) {
            Ok(r) if r.meta.is_some() => {
                if seen.contains(&r.path) {
                    return false;
                }
                seen.push(r.path);
                true
            }
            Ok(_) => false,
            // Unresolvable (symlink loop, fs error): let the reader report it.
            Err(_) => true,
        }
    };
    if present(DPKG_STATUS, &mut seen) {
        found.push((PackageDbKind::Dpkg, DPKG_STATUS.into(), dpkg::read(guest)));
    }
    for path in RPM_SQLITE_PATHS {
        if present(path, &mut seen) {
            found.push((
                PackageDbKind::RpmSqlite,
                path.into(),
                sqlite::read(guest, path),
            ));
        }
    }
    // RPM backends newest first: a conversion (bdb -> sqlite on RHEL 9 and
    // Fedora, bdb -> ndb on SUSE 15, ndb -> sqlite on Tumbleweed) may leave
    // the old file behind, and rpm itself uses the configured, newer one.
    for path in RPM_NDB_PATHS {
        if present(path, &mut seen) {
            found.push((PackageDbKind::RpmNdb, path.into(), ndb::read(guest, path)));
        }
    }
    for path in RPM_BDB_PATHS {
        if present(path, &mut seen) {
            found.push((PackageDbKind::RpmBdb, path.into(), bdb::read(guest, path)));
        }
    }
    choose(found)
}

/// Pick the database to report. Among RPM databases, the first (newest
/// backend) that read without error and lists packages, else the one with
/// the most packages. Between that and dpkg's, the error-free non-empty one
/// with the most packages; failing that, the one with the most packages;
/// failing that, the first found.
fn choose(found: Vec<(PackageDbKind, String, DbRead)>) -> Packages {
    if found.is_empty() {
        return Packages::default();
    }
    let usable = |r: &DbRead| r.error.is_none() && !r.packages.is_empty();
    let score = |r: &DbRead| (usable(r), r.packages.len());
    let mut candidates: Vec<usize> = Vec::new();
    // dpkg, if present, is first in `found`.
    if found[0].0 == PackageDbKind::Dpkg {
        candidates.push(0);
    }
    let rpm: Vec<usize> = (0..found.len())
        .filter(|&i| found[i].0 != PackageDbKind::Dpkg)
        .collect();
    let rpm_best = rpm
        .iter()
        .copied()
        .find(|&i| usable(&found[i].2))
        .or_else(|| {
            // max_by_key keeps the last of equals: iterate in reverse so the
            // first found wins ties.
            rpm.iter()
                .rev()
                .copied()
                .max_by_key(|&i| found[i].2.packages.len())
        });
    candidates.extend(rpm_best);
    let mut best = candidates.first().copied().unwrap_or(0);
    for &i in &candidates {
        if score(&found[i].2) > score(&found[best].2) {
            best = i;
        }
    }
    let mut warnings = Vec::new();
    for (i, (kind, path, r)) in found.iter().enumerate() {
        if i != best && !r.packages.is_empty() {
            warnings.push(format!(
                "another package database, {path} ({kind}), lists {} packages; they are not included",
                r.packages.len()
            ));
        }
    }
    let Some((kind, path, read)) = found.into_iter().nth(best) else {
        return Packages::default();
    };
    let mut out = Packages::from_instances(kind, Some(path), read.packages);
    out.error = read.error;
    out.warnings = read.warnings;
    out.warnings.extend(warnings);
    out
}

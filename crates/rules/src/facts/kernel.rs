//! Installed kernels: config, built-in and loadable modules, initramfs.
//!
//! A kernel is found by its modules directory (`/lib/modules/<version>` or
//! `/usr/lib/modules/<version>`, the same directory counted once on
//! merged-/usr systems) or by its image (`/boot/vmlinuz-<version>`; an image
//! with no modules directory is still a kernel). For each one:
//!
//! - config: `/boot/config-<version>`, else `<modules dir>/config` (where
//!   Fedora and RHEL keep it);
//! - built-in modules: `<modules dir>/modules.builtin`;
//! - loadable modules: the module paths `modules.dep` names (depmod writes
//!   one line per module it found, and it is what `modprobe` goes by, so no
//!   directory walk is needed; the files of the virtio modules are checked
//!   to exist, the others are trusted), else (no or an empty `modules.dep`)
//!   a bounded walk of the modules directory;
//! - initramfs: `/boot/initrd.img-<v>` (Debian, Ubuntu),
//!   `/boot/initramfs-<v>.img` (RHEL family, Arch), `/boot/initrd-<v>` (SUSE,
//!   Alt), a Boot Loader Spec entry's `initrd`, or a version-less link
//!   (`/boot/initrd.img`, `/initrd.img`, …) that resolves to a file named
//!   for this version; read with [`crate::facts::initramfs::load`].
//!
//! Which kernel boots by default is the boot loader's business
//! ([`crate::facts::boot`]); [`newest`] gives the highest version.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use ibkit_image::Guest;
use ibkit_image::fs::FileKind;
use ibkit_image::guest::{Visit, WalkLimits, Walker};

use crate::facts::initramfs::{
    self, MODULE_SUFFIXES, module_name, normalise_module, parse_builtin,
};

/// One installed kernel.
#[derive(Clone, Debug, Default)]
pub struct Kernel {
    /// `uname -r` version.
    pub version: String,
    /// `CONFIG_*` values from its config file (`CONFIG_VIRTIO_BLK` → `y`,
    /// `m`, a number or a string without its quotes; `# CONFIG_X is not set`
    /// → `n`).
    pub config: BTreeMap<String, String>,
    /// Guest path of the config file.
    pub config_path: Option<String>,
    /// Built-in module names (normalised `-` to `_`).
    pub builtin: BTreeSet<String>,
    /// Loadable modules: name to guest path.
    pub modules: BTreeMap<String, String>,
    /// Its initramfs.
    pub initramfs: Option<crate::facts::initramfs::Initramfs>,
    /// Guest path of the kernel image (`/boot/vmlinuz-<version>`, or
    /// `<modules dir>/vmlinuz`).
    pub image: Option<String>,
    /// The version written inside the image (x86 bzImage header), when it
    /// could be read. It differs from [`Kernel::version`] for images named
    /// otherwise (`vmlinuz-0-rescue-<machine-id>` on RHEL, which is a copy
    /// of an installed kernel: its config and modules are that kernel's).
    pub image_version: Option<String>,
    /// Guest path of the modules directory (`/lib/modules/<version>`).
    pub modules_dir: Option<String>,
    /// Guest path of `modules.builtin`, if read.
    pub builtin_path: Option<String>,
    /// Where [`Kernel::modules`] came from: the `modules.dep` path, or
    /// `walk of <modules dir>`.
    pub modules_source: Option<String>,
    /// Problems that make the facts incomplete (unreadable files, a walk cut
    /// short by its bounds).
    pub problems: Vec<String>,
}

/// Whether a kernel has a driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriverState {
    /// Built into the kernel; the evidence (`CONFIG_VIRTIO_BLK=y in
    /// /boot/config-…`, or `virtio_blk in …/modules.builtin`).
    BuiltIn(String),
    /// A loadable module; the guest path of its file.
    Module(String),
    /// Neither.
    Missing,
}

impl Kernel {
    /// A config value; `symbol` with or without its `CONFIG_` prefix.
    pub fn config_value(&self, symbol: &str) -> Option<&str> {
        let key = if symbol.starts_with("CONFIG_") {
            symbol.to_owned()
        } else {
            format!("CONFIG_{symbol}")
        };
        self.config.get(&key).map(String::as_str)
    }

    /// Whether the kernel has the driver `module` (`virtio_blk`; `-` and
    /// `_` alike) whose config symbol is `config_symbol` (`VIRTIO_BLK` or
    /// `CONFIG_VIRTIO_BLK`): built in if the config says `=y` or
    /// `modules.builtin` lists it, a module if its file is there, else
    /// missing. A config saying `=m` without the module file is missing
    /// (the file is what `modprobe` needs).
    pub fn driver(&self, module: &str, config_symbol: &str) -> DriverState {
        let module = normalise_module(module);
        if !config_symbol.is_empty() && self.config_value(config_symbol) == Some("y") {
            let symbol = config_symbol
                .strip_prefix("CONFIG_")
                .unwrap_or(config_symbol);
            let path = self.config_path.as_deref().unwrap_or("the kernel config");
            return DriverState::BuiltIn(format!("CONFIG_{symbol}=y in {path}"));
        }
        if self.builtin.contains(&module) {
            let path = self.builtin_path.as_deref().unwrap_or("modules.builtin");
            return DriverState::BuiltIn(format!("{module} listed in {path}"));
        }
        match self.modules.get(&module) {
            Some(path) => DriverState::Module(path.clone()),
            None => DriverState::Missing,
        }
    }

    /// Whether the initramfs holds the module file for `module`. `None` if
    /// the kernel has no initramfs, or it could not be read completely and
    /// the module was not in the part that was read. A built-in driver needs
    /// no module: ask [`Kernel::driver`] first.
    pub fn in_initramfs(&self, module: &str) -> Option<bool> {
        let init = self.initramfs.as_ref()?;
        if init.has_module(module) {
            Some(true)
        } else if init.error.is_some() {
            None
        } else {
            Some(false)
        }
    }
}

/// The kernel with the highest version ([`compare_versions`]), preferring
/// kernels with an image (a modules directory left behind by a removed
/// kernel cannot boot).
pub fn newest(kernels: &[Kernel]) -> Option<&Kernel> {
    let with_image = kernels.iter().any(|k| k.image.is_some());
    kernels
        .iter()
        .filter(|k| !with_image || k.image.is_some())
        .max_by(|a, b| compare_versions(&a.version, &b.version))
}

/// Compare kernel versions component-wise: runs of digits numerically (any
/// length), other runs as strings; a number sorts after a word, and a
/// version that is a prefix of another sorts first. `6.1.0-13-amd64` >
/// `6.1.0-9-amd64`, `5.14.0-427.el9` > `5.14.0-70.el9`.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn tokens(s: &str) -> Vec<&str> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push(&s[start..i]);
                start = i;
            }
        }
        out
    }
    let (ta, tb) = (tokens(a), tokens(b));
    for (x, y) in ta.iter().zip(tb.iter()) {
        let xd = x.as_bytes().first().is_some_and(u8::is_ascii_digit);
        let yd = y.as_bytes().first().is_some_and(u8::is_ascii_digit);
        let ord = match (xd, yd) {
            (true, true) => {
                let x = x.trim_start_matches('0');
                let y = y.trim_start_matches('0');
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => x.cmp(y),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    ta.len().cmp(&tb.len()).then_with(|| a.cmp(b))
}

/// Parse a kernel `.config`.
pub fn parse_config(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("# ") {
            if let Some(sym) = rest.strip_suffix(" is not set")
                && sym.starts_with("CONFIG_")
            {
                out.insert(sym.to_owned(), "n".to_owned());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once('=')
            && k.starts_with("CONFIG_")
        {
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            out.insert(k.to_owned(), v.to_owned());
        }
    }
    out
}

/// Largest config, `modules.builtin` or BLS entry read.
const TEXT_CAP: u64 = 8 << 20;
/// Largest `modules.dep` read.
const DEP_CAP: u64 = 32 << 20;
/// Deepest directory the walk enters below the modules directory.
const WALK_MAX_DEPTH: usize = 16;
/// Most directory entries (and directories) one walk looks at.
const WALK_MAX_ENTRIES: usize = 200_000;
/// Most directory entries walked for all kernels together.
const WALK_BUDGET: usize = 500_000;
/// Most initramfs bytes decompressed for all kernels together.
const INITRAMFS_BUDGET: u64 = 4 << 30;

/// Most kernels considered.
const MAX_KERNELS: usize = 64;
/// Most BLS entries read.
const MAX_BLS: usize = 256;

/// What one [`load`] may still spend, so that a hostile image with many
/// kernels cannot multiply the per-kernel bounds.
struct Budget {
    walk_entries: usize,
    initramfs_bytes: u64,
}

/// Read every installed kernel, sorted by version (oldest first).
pub fn load(guest: &Guest) -> Vec<Kernel> {
    let mut problems_all: Vec<String> = Vec::new();
    // version -> kernel under construction
    let mut found: BTreeMap<String, Kernel> = BTreeMap::new();
    let mut seen_dirs: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut pkgbase: BTreeMap<String, String> = BTreeMap::new();

    for base in ["/lib/modules", "/usr/lib/modules"] {
        let entries = match guest.read_dir(base) {
            Ok(Some(e)) => e,
            Ok(None) => continue,
            Err(e) => {
                problems_all.push(format!("cannot list {base}: {e}"));
                continue;
            }
        };
        for entry in entries {
            if !matches!(entry.kind, FileKind::Dir | FileKind::Symlink)
                || found.len() >= MAX_KERNELS
            {
                continue;
            }
            let Ok(version) = String::from_utf8(entry.name.clone()) else {
                continue;
            };
            let dir = format!("{base}/{version}");
            let resolved = match guest.resolve(&dir, true) {
                Ok(r) if r.meta.is_some_and(|m| m.kind == FileKind::Dir) => r.path,
                _ => continue,
            };
            if !seen_dirs.insert(resolved) {
                continue;
            }
            let k = found.entry(version.clone()).or_insert_with(|| Kernel {
                version: version.clone(),
                ..Kernel::default()
            });
            if k.modules_dir.is_some() {
                k.problems.push(format!(
                    "{dir} is a second modules directory for {version}: ignored"
                ));
                continue;
            }
            k.modules_dir = Some(dir.clone());
            // Arch names its image and initramfs after the package.
            if let Ok(Some(text)) = guest.read_head(format!("{dir}/pkgbase"), 256) {
                let name = String::from_utf8_lossy(&text).trim().to_owned();
                if !name.is_empty() {
                    pkgbase.insert(name, version.clone());
                }
            }
        }
    }

    let boot = match guest.read_dir("/boot") {
        Ok(Some(e)) => e,
        Ok(None) => Vec::new(),
        Err(e) => {
            problems_all.push(format!("cannot list /boot: {e}"));
            Vec::new()
        }
    };
    let boot_names: BTreeSet<String> = boot
        .iter()
        .filter(|e| matches!(e.kind, FileKind::File | FileKind::Symlink))
        .filter_map(|e| String::from_utf8(e.name.clone()).ok())
        .collect();
    for name in &boot_names {
        let rest = name.strip_prefix("vmlinuz-").or_else(|| {
            name.strip_prefix("vmlinux-")
                .map(|r| r.strip_suffix(".gz").unwrap_or(r))
        });
        let Some(rest) = rest.filter(|r| !r.is_empty()) else {
            continue;
        };
        let version = pkgbase
            .get(rest)
            .cloned()
            .unwrap_or_else(|| rest.to_owned());
        if !found.contains_key(&version) && found.len() >= MAX_KERNELS {
            continue;
        }
        let path = format!("/boot/{name}");
        if !guest.is_file(&path) {
            continue;
        }
        let k = found.entry(version.clone()).or_insert_with(|| Kernel {
            version,
            ..Kernel::default()
        });
        k.image.get_or_insert(path);
    }

    let bls = read_bls(guest, &mut problems_all);
    for entry in &bls {
        let Some(version) = entry.version.clone() else {
            continue;
        };
        if let Some(k) = found.get_mut(&version) {
            if k.image.is_none() {
                k.image = entry.linux.clone();
            }
        } else if let Some(image) = entry.linux.clone()
            && found.len() < MAX_KERNELS
        {
            found.insert(
                version.clone(),
                Kernel {
                    version,
                    image: Some(image),
                    ..Kernel::default()
                },
            );
        }
    }

    let dirs: BTreeMap<String, String> = found
        .iter()
        .filter_map(|(v, k)| k.modules_dir.clone().map(|d| (v.clone(), d)))
        .collect();
    let mut budget = Budget {
        walk_entries: WALK_BUDGET,
        initramfs_bytes: INITRAMFS_BUDGET,
    };
    let mut kernels = Vec::new();
    for (_, mut k) in found {
        if let Some(image) = &k.image {
            k.image_version = image_version(guest, image);
        }
        // An image named otherwise (a rescue copy) uses the modules of the
        // version inside it.
        if k.modules_dir.is_none()
            && let Some(v) = &k.image_version
        {
            k.modules_dir = dirs.get(v).cloned();
        }
        fill(guest, &mut k, &pkgbase, &bls, &mut budget);
        let empty = k.image.is_none()
            && k.config_path.is_none()
            && k.builtin_path.is_none()
            && k.modules.is_empty()
            && k.initramfs.is_none();
        if empty {
            continue;
        }
        kernels.push(k);
    }
    kernels.sort_by(|a, b| compare_versions(&a.version, &b.version));
    // Problems finding kernels concern all of them.
    for k in &mut kernels {
        k.problems.extend(problems_all.iter().cloned());
    }
    kernels
}

/// The version string of an x86 bzImage: the setup header (`HdrS` at
/// 0x202) points at it through the `kernel_version` field (0x20e, plus
/// 0x200); it reads `6.1.0-13-amd64 (debian-kernel@…) #1 SMP …`.
pub fn image_version(guest: &Guest, path: &str) -> Option<String> {
    let head = guest.read_head(path, 0x1_0000).ok()??;
    bzimage_version(&head)
}

/// [`image_version`] on the first bytes of an image.
pub fn bzimage_version(head: &[u8]) -> Option<String> {
    if head.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let protocol = u16::from_le_bytes([*head.get(0x206)?, *head.get(0x207)?]);
    if protocol < 0x0200 {
        return None;
    }
    let ptr = u16::from_le_bytes([*head.get(0x20e)?, *head.get(0x20f)?]);
    if ptr == 0 {
        return None;
    }
    let start = usize::from(ptr) + 0x200;
    let text = head.get(start..)?;
    let end = text
        .iter()
        .position(|&b| b == 0 || b == b' ')
        .unwrap_or(text.len())
        .min(256);
    let v = std::str::from_utf8(&text[..end]).ok()?;
    let ok = !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| v.to_owned())
}

fn read_text(guest: &Guest, path: &str, cap: u64, problems: &mut Vec<String>) -> Option<String> {
    match guest.read_capped(path, cap) {
        Ok(Some(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
        Ok(None) => None,
        Err(e) => {
            problems.push(format!("cannot read {path}: {e}"));
            None
        }
    }
}

/// Config, modules, initramfs of one kernel.
fn fill(
    guest: &Guest,
    k: &mut Kernel,
    pkgbase: &BTreeMap<String, String>,
    bls: &[BlsEntry],
    budget: &mut Budget,
) {
    let ver = k.version.clone();
    let dir = k.modules_dir.clone();
    let mut problems = Vec::new();

    if k.image.is_none()
        && let Some(dir) = &dir
    {
        let p = format!("{dir}/vmlinuz");
        if guest.is_file(&p) {
            k.image_version = image_version(guest, &p);
            k.image = Some(p);
        }
    }

    let mut config_paths = vec![format!("/boot/config-{ver}")];
    if let Some(iv) = k.image_version.as_ref().filter(|iv| **iv != ver) {
        config_paths.push(format!("/boot/config-{iv}"));
    }
    if let Some(dir) = &dir {
        config_paths.push(format!("{dir}/config"));
    }
    for p in config_paths {
        if let Some(text) = read_text(guest, &p, TEXT_CAP, &mut problems) {
            k.config = parse_config(&text);
            k.config_path = Some(p);
            break;
        }
    }

    if let Some(dir) = &dir {
        let p = format!("{dir}/modules.builtin");
        if let Some(text) = read_text(guest, &p, TEXT_CAP, &mut problems) {
            k.builtin = parse_builtin(&text).collect();
            k.builtin_path = Some(p);
        }
        let dep = format!("{dir}/modules.dep");
        // An empty modules.dep (depmod failed or was cut short) says
        // nothing about the files: walk then.
        let listed = read_text(guest, &dep, DEP_CAP, &mut problems)
            .map(|text| modules_from_dep(dir, &text))
            .filter(|m| !m.is_empty());
        if let Some(modules) = listed {
            k.modules = modules;
            k.modules_source = Some(dep);
            // Trust depmod's list, but make sure the files the rules ask
            // about were not deleted after it ran (a stat each; checking all
            // of them would cost more than walking).
            k.modules.retain(|name, path| {
                if !checked_module(name) || guest.is_file(path.as_str()) {
                    return true;
                }
                problems.push(format!("modules.dep lists {path}, which is missing"));
                false
            });
        } else {
            k.modules = walk_modules(guest, dir, &mut budget.walk_entries, &mut problems);
            k.modules_source = Some(format!("walk of {dir}"));
        }
    }

    if let Some(path) = initramfs_path(guest, &ver, pkgbase, bls) {
        k.initramfs = Some(if budget.initramfs_bytes == 0 {
            initramfs::Initramfs {
                error: Some(format!(
                    "{path}: not read: the initramfs of other kernels used up the {INITRAMFS_BUDGET}-byte budget"
                )),
                path,
                ..Default::default()
            }
        } else {
            let limits = initramfs::Limits {
                max_decompressed: initramfs::DEFAULT_LIMITS
                    .max_decompressed
                    .min(budget.initramfs_bytes),
                ..initramfs::DEFAULT_LIMITS
            };
            let init = initramfs::load_with(guest, &path, &limits);
            budget.initramfs_bytes = budget.initramfs_bytes.saturating_sub(init.bytes);
            init
        });
    }
    k.problems.extend(problems);
}

/// Modules whose files are checked when `modules.dep` names them: the
/// virtio family and what virtiofs and virtio_net depend on.
fn checked_module(name: &str) -> bool {
    name.starts_with("virtio") || matches!(name, "fuse" | "failover" | "net_failover")
}

/// Lower is preferred when two files provide the same module: depmod's
/// default search order puts `updates/` first and the kernel's own last.
fn rank(rel: &str) -> u8 {
    if rel.starts_with("updates/") {
        0
    } else if rel.starts_with("kernel/") {
        2
    } else {
        1
    }
}

fn add_module(modules: &mut BTreeMap<String, (u8, String)>, rel: &str, path: String) {
    let Some(name) = module_name(rel) else {
        return;
    };
    let r = rank(rel);
    match modules.get(&name) {
        Some((old, _)) if *old <= r => {}
        _ => {
            modules.insert(name, (r, path));
        }
    }
}

/// Module paths from `modules.dep`: each line is `path: deps…`, the path
/// relative to the modules directory (absolute in very old depmods).
pub fn modules_from_dep(dir: &str, text: &str) -> BTreeMap<String, String> {
    let mut modules = BTreeMap::new();
    for line in text.lines() {
        let Some((path, _)) = line.split_once(':') else {
            continue;
        };
        let path = path.trim();
        if path.is_empty() {
            continue;
        }
        let (rel, full) = match path.strip_prefix('/') {
            Some(_) => {
                let rel = path
                    .strip_prefix(dir)
                    .map(|r| r.trim_start_matches('/'))
                    .unwrap_or(path);
                (rel, path.to_owned())
            }
            None => (path, format!("{dir}/{path}")),
        };
        add_module(&mut modules, rel, full);
    }
    modules.into_iter().map(|(k, (_, p))| (k, p)).collect()
}

/// Every module file below `dir`, bounded in depth, directories and
/// entries; only real directories are entered (not `build` and `source`,
/// which link to headers), each once (a directory hard-linked to an
/// ancestor is a loop the walker notices).
fn walk_modules(
    guest: &Guest,
    dir: &str,
    budget: &mut usize,
    problems: &mut Vec<String>,
) -> BTreeMap<String, String> {
    let mut modules = BTreeMap::new();
    // Paths are reported under `dir` as named (`/lib/modules/…` on a merged
    // /usr), while the walk goes through the resolved directory.
    let root = match guest.resolve(dir, true) {
        Ok(r) if r.meta.is_some_and(|m| m.kind == FileKind::Dir) => r.path,
        Ok(_) => return BTreeMap::new(),
        Err(e) => {
            problems.push(format!("cannot list {dir}: {e}"));
            return BTreeMap::new();
        }
    };
    let limit = WALK_MAX_ENTRIES.min(*budget);
    let mut walker = Walker::new(
        guest,
        WalkLimits {
            max_dirs: limit,
            max_entries: limit,
            max_depth: WALK_MAX_DEPTH,
        },
    );
    walker.walk(&root, |e| {
        let Ok(name) = std::str::from_utf8(e.name) else {
            return Visit::Prune;
        };
        let rel = e
            .path
            .get(root.len()..)
            .map(|r| {
                String::from_utf8_lossy(r)
                    .trim_start_matches('/')
                    .to_owned()
            })
            .unwrap_or_default();
        if matches!(e.kind, FileKind::File | FileKind::Symlink)
            && MODULE_SUFFIXES.iter().any(|s| name.ends_with(s))
        {
            let full = format!("{dir}/{rel}");
            add_module(&mut modules, &rel, full);
        }
        Visit::Descend
    });
    *budget = budget.saturating_sub(walker.entries());
    if let Some(b) = walker.exhausted() {
        problems.push(format!(
            "{dir}: module walk stopped early at its {b}; module list incomplete"
        ));
    }
    let (errors, more) = walker.errors();
    for e in errors {
        problems.push(format!("cannot list: {e}"));
    }
    if more > 0 {
        problems.push(format!(
            "{dir}: {more} more directories could not be listed"
        ));
    }
    for note in [walker.too_deep_note(), walker.revisit_note()]
        .into_iter()
        .flatten()
    {
        problems.push(format!("{dir}: {note}"));
    }
    modules.into_iter().map(|(k, (_, p))| (k, p)).collect()
}

/// The initramfs for `ver`, if one exists.
fn initramfs_path(
    guest: &Guest,
    ver: &str,
    pkgbase: &BTreeMap<String, String>,
    bls: &[BlsEntry],
) -> Option<String> {
    let mut candidates = vec![
        format!("/boot/initrd.img-{ver}"),
        format!("/boot/initramfs-{ver}.img"),
        format!("/boot/initrd-{ver}"),
        format!("/boot/initrd-{ver}.img"),
        format!("/boot/initramfs-{ver}"),
    ];
    for (base, v) in pkgbase {
        if v == ver {
            candidates.push(format!("/boot/initramfs-{base}.img"));
        }
    }
    for e in bls {
        if e.version.as_deref() == Some(ver)
            && let Some(p) = &e.initrd
        {
            candidates.push(p.clone());
        }
    }
    if let Some(p) = candidates.into_iter().find(|p| guest.is_file(p)) {
        return Some(p);
    }
    // Version-less links, when they point at a file named for this version.
    for p in [
        "/boot/initrd.img",
        "/initrd.img",
        "/boot/initrd",
        "/boot/initramfs.img",
    ] {
        let Ok(r) = guest.resolve(p, true) else {
            continue;
        };
        if r.meta.is_some_and(|m| m.kind == FileKind::File) {
            let target = String::from_utf8_lossy(&r.path).into_owned();
            let file = target.rsplit('/').next().unwrap_or("");
            if file.contains(ver) {
                return Some(p.to_owned());
            }
        }
    }
    None
}

/// One Boot Loader Specification entry (`/boot/loader/entries/*.conf`).
#[derive(Clone, Debug, Default)]
struct BlsEntry {
    version: Option<String>,
    /// Guest path of the `linux` file, if it exists.
    linux: Option<String>,
    /// Guest path of the first `initrd` file, if it exists.
    initrd: Option<String>,
}

/// BLS paths are relative to the partition holding the entries: `/boot`
/// when that is its own filesystem, `/` otherwise.
fn bls_path(guest: &Guest, p: &str) -> Option<String> {
    let p = p.trim();
    if p.is_empty() || p.starts_with('$') {
        return None;
    }
    let p = if p.starts_with('/') {
        p.to_owned()
    } else {
        format!("/{p}")
    };
    let mut options = Vec::new();
    if !p.starts_with("/boot/") {
        options.push(format!("/boot{p}"));
    }
    options.push(p);
    options.into_iter().find(|c| guest.is_file(c))
}

fn read_bls(guest: &Guest, problems: &mut Vec<String>) -> Vec<BlsEntry> {
    let dir = "/boot/loader/entries";
    let entries = match guest.read_dir(dir) {
        Ok(Some(e)) => e,
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for e in entries.iter().take(MAX_BLS) {
        let Ok(name) = std::str::from_utf8(&e.name) else {
            continue;
        };
        if !name.ends_with(".conf") {
            continue;
        }
        let path = format!("{dir}/{name}");
        let Some(text) = read_text(guest, &path, TEXT_CAP, problems) else {
            continue;
        };
        let mut entry = BlsEntry::default();
        let mut linux_raw = None;
        for line in text.lines() {
            let line = line.trim();
            let Some((key, value)) = line.split_once(char::is_whitespace) else {
                continue;
            };
            let value = value.trim();
            match key {
                "version" => entry.version = Some(value.to_owned()),
                "linux" => {
                    linux_raw = Some(value.to_owned());
                    entry.linux = bls_path(guest, value);
                }
                "initrd" if entry.initrd.is_none() => {
                    entry.initrd = value.split_whitespace().find_map(|v| bls_path(guest, v));
                }
                _ => {}
            }
        }
        if entry.version.is_none()
            && let Some(raw) = linux_raw
        {
            let file = raw.rsplit('/').next().unwrap_or("");
            entry.version = file.strip_prefix("vmlinuz-").map(str::to_owned);
        }
        out.push(entry);
    }
    out
}

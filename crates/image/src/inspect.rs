//! Turn an input (disk image file or unpacked directory) into a [`Guest`]:
//! open the container, read the partition table, descend into LVM, probe
//! every volume, pick the root filesystem (the one with `os-release`) and
//! mount what its `/etc/fstab` names.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::ImageError;
use crate::container::{BackingPolicy, Layer, open_disk};
use crate::fs::dir::DirFs;
use crate::fs::ext4::Ext4;
use crate::fs::vfat::Vfat;
use crate::fs::xfs::XfsFs;
use crate::fs::{FileSystem, FsError};
use crate::guest::Guest;
use crate::limits::MAX_FSTAB_ENTRIES;
use crate::partition::{Partition, TableKind, read_table};
use crate::probe::{Probe, VolumeKind, probe};
use crate::source::{Source, Window};

/// Options for [`inspect`].
#[derive(Clone, Debug, Default)]
pub struct InspectOptions {
    /// Where backing files may be opened from.
    pub backing: BackingPolicy,
}

/// One volume found on the disk.
#[derive(Clone, Debug)]
pub struct VolumeInfo {
    /// Short name: `disk`, `p1`, `vg/lv`.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// The partition it is (or the PV it lives on is).
    pub partition: Option<Partition>,
    /// LVM `(vg, lv)` if it is a logical volume.
    pub lvm: Option<(String, String)>,
    /// What the superblock says.
    pub probe: Probe,
}

/// A mounted filesystem in the assembled guest.
#[derive(Clone, Debug)]
pub struct MountInfo {
    /// Guest mount point.
    pub point: String,
    /// Volume name (see [`VolumeInfo::name`]).
    pub volume: String,
    /// Filesystem type.
    pub fs_type: String,
    /// The fstab source field that named it (`UUID=...`), if any.
    pub fstab_spec: Option<String>,
}

/// Where the input came from.
#[derive(Clone, Debug)]
pub enum InputKind {
    /// A directory holding an unpacked root filesystem.
    Directory,
    /// A disk image; top layer first.
    Disk {
        /// The layers (top image, then backing files).
        layers: Vec<Layer>,
        /// Guest-visible size in bytes.
        virtual_size: u64,
    },
}

/// The result of inspecting an input.
pub struct Inspection {
    /// The input path.
    pub path: PathBuf,
    /// Directory or disk.
    pub input: InputKind,
    /// Partition table kind, if any.
    pub table: Option<TableKind>,
    /// Every volume found.
    pub volumes: Vec<VolumeInfo>,
    /// Index of the root volume in `volumes` (None for a directory input).
    pub root: Option<usize>,
    /// What is mounted where.
    pub mounts: Vec<MountInfo>,
    /// Non-fatal problems: the guest view may be incomplete.
    pub notes: Vec<String>,
    /// The guest's files.
    pub guest: Guest,
}

struct Found {
    info: VolumeInfo,
    fs: Option<Arc<dyn FileSystem>>,
}

/// Open a filesystem of a probed kind.
pub fn open_filesystem(kind: VolumeKind, source: Source) -> Result<Arc<dyn FileSystem>, FsError> {
    match kind {
        VolumeKind::Ext => Ok(Arc::new(Ext4::open(source)?)),
        VolumeKind::Xfs => Ok(Arc::new(XfsFs::open(source)?)),
        VolumeKind::Vfat => Ok(Arc::new(Vfat::open(source)?)),
        other => Err(FsError::Unsupported(format!(
            "{} filesystems",
            other.name()
        ))),
    }
}

/// Inspect a disk image or a directory.
pub fn inspect(path: &Path, opts: &InspectOptions) -> Result<Inspection, ImageError> {
    let meta = std::fs::metadata(path).map_err(|e| ImageError::io(path, e))?;
    if meta.is_dir() {
        let fs: Arc<dyn FileSystem> = Arc::new(DirFs::new(path));
        if fs.lstat(b"/etc/os-release").ok().flatten().is_none()
            && fs.lstat(b"/usr/lib/os-release").ok().flatten().is_none()
        {
            return Err(ImageError::NoRoot {
                path: path.to_owned(),
                what: "the directory has neither etc/os-release nor usr/lib/os-release".into(),
            });
        }
        return Ok(Inspection {
            path: path.to_owned(),
            input: InputKind::Directory,
            table: None,
            volumes: Vec::new(),
            root: None,
            mounts: vec![MountInfo {
                point: "/".into(),
                volume: "directory".into(),
                fs_type: "dir".into(),
                fstab_spec: None,
            }],
            notes: Vec::new(),
            guest: Guest::new(fs, format!("directory {}", path.display())),
        });
    }

    let disk = open_disk(path, &opts.backing)?;
    let virtual_size = disk.source.size();
    let mut notes = Vec::new();
    let table = read_table(disk.source.as_ref()).map_err(|e| ImageError::io(path, e))?;
    let mut found: Vec<Found> = Vec::new();
    let table_kind = table.as_ref().map(|t| t.kind);
    match table {
        Some(t) => {
            notes.extend(t.warnings.iter().map(|w| format!("partition table: {w}")));
            for p in t.partitions {
                let src: Source = Arc::new(Window::new(disk.source.clone(), p.offset, p.len));
                add_volume(
                    &mut found,
                    &mut notes,
                    format!("p{}", p.number),
                    src,
                    Some(p),
                    None,
                );
            }
        }
        None => add_volume(
            &mut found,
            &mut notes,
            "disk".into(),
            disk.source.clone(),
            None,
            None,
        ),
    }

    // Root: a filesystem with os-release.
    let candidates: Vec<usize> = found
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            f.fs.as_ref().is_some_and(|fs| {
                fs.lstat(b"/etc/os-release").ok().flatten().is_some()
                    || fs.lstat(b"/usr/lib/os-release").ok().flatten().is_some()
            })
        })
        .map(|(i, _)| i)
        .collect();
    let Some(&root_idx) = candidates.first() else {
        let seen: Vec<String> = found
            .iter()
            .map(|f| format!("{} {}", f.info.name, f.info.probe.kind.name()))
            .collect();
        let mut what = if seen.is_empty() {
            "no volumes".to_string()
        } else {
            format!("volumes: {}", seen.join(", "))
        };
        if !notes.is_empty() {
            what.push_str(&format!("; {}", notes.join("; ")));
        }
        return Err(ImageError::NoRoot {
            path: path.to_owned(),
            what,
        });
    };
    if candidates.len() > 1 {
        let names: Vec<&str> = candidates
            .iter()
            .map(|&i| found[i].info.name.as_str())
            .collect();
        notes.push(format!(
            "several volumes carry os-release ({}); using {} as root",
            names.join(", "),
            found[root_idx].info.name
        ));
    }
    let root_fs = found[root_idx]
        .fs
        .clone()
        .ok_or_else(|| ImageError::corrupt(path, "root lost"))?;
    let mut guest = Guest::new(root_fs.clone(), describe(&found[root_idx].info));
    let mut mounts = vec![MountInfo {
        point: "/".into(),
        volume: found[root_idx].info.name.clone(),
        fs_type: root_fs.type_name().into(),
        fstab_spec: None,
    }];

    // fstab, read through the root-only guest so its symlinks resolve.
    match guest.read_text("/etc/fstab") {
        Ok(Some(text)) => {
            for entry in parse_fstab(&text).into_iter().take(MAX_FSTAB_ENTRIES) {
                if entry.point == "/" {
                    if let Some(i) = match_spec(&found, &entry.spec)
                        && i != root_idx
                    {
                        notes.push(format!(
                            "fstab mounts / from {} but os-release was found on {}",
                            found[i].info.name, found[root_idx].info.name
                        ));
                    }
                    mounts[0].fstab_spec = Some(entry.spec.clone());
                    continue;
                }
                if !entry.point.starts_with('/') || is_virtual_fs(&entry.fs_type) {
                    continue;
                }
                match match_spec(&found, &entry.spec) {
                    Some(i) => match &found[i].fs {
                        Some(fs) => {
                            guest.mount(entry.point.as_bytes(), fs.clone(), describe(&found[i].info));
                            mounts.push(MountInfo {
                                point: entry.point.clone(),
                                volume: found[i].info.name.clone(),
                                fs_type: fs.type_name().into(),
                                fstab_spec: Some(entry.spec.clone()),
                            });
                        }
                        None => notes.push(format!(
                            "fstab: {} on {} is a {} volume that cannot be read; its files are not checked",
                            entry.spec,
                            entry.point,
                            found[i].info.probe.kind.name()
                        )),
                    },
                    None => notes.push(format!(
                        "fstab: {} for {} is not on this disk; its files are not checked",
                        entry.spec, entry.point
                    )),
                }
            }
        }
        Ok(None) => {}
        Err(e) => notes.push(format!("cannot read /etc/fstab: {e}")),
    }

    Ok(Inspection {
        path: path.to_owned(),
        input: InputKind::Disk {
            layers: disk.layers,
            virtual_size,
        },
        table: table_kind,
        volumes: found.into_iter().map(|f| f.info).collect(),
        root: Some(root_idx),
        mounts,
        notes,
        guest,
    })
}

fn describe(v: &VolumeInfo) -> String {
    let mut s = format!("{} ({}", v.name, v.probe.kind.name());
    if let Some(u) = &v.probe.uuid {
        s.push_str(&format!(", UUID={u}"));
    }
    s.push(')');
    s
}

fn add_volume(
    found: &mut Vec<Found>,
    notes: &mut Vec<String>,
    name: String,
    source: Source,
    partition: Option<Partition>,
    lvm: Option<(String, String)>,
) {
    let p = probe(source.as_ref());
    if p.kind == VolumeKind::LvmPv && lvm.is_none() {
        match crate::lvm::logical_volumes(&source) {
            Ok(lvs) => {
                for lv in lvs {
                    add_volume(
                        found,
                        notes,
                        format!("{}/{}", lv.vg, lv.name),
                        lv.source,
                        partition.clone(),
                        Some((lv.vg, lv.name)),
                    );
                }
            }
            Err(e) => notes.push(format!("{name}: LVM physical volume unreadable: {e}")),
        }
    }
    let fs = match p.kind {
        VolumeKind::Ext | VolumeKind::Xfs | VolumeKind::Vfat => {
            match open_filesystem(p.kind, source.clone()) {
                Ok(fs) => Some(fs),
                Err(e) => {
                    notes.push(format!(
                        "{name}: {} filesystem unreadable: {e}",
                        p.kind.name()
                    ));
                    None
                }
            }
        }
        VolumeKind::Btrfs => {
            notes.push(format!(
                "{name}: btrfs is not supported yet; its files are not checked"
            ));
            None
        }
        VolumeKind::Luks => {
            notes.push(format!(
                "{name}: LUKS-encrypted volume cannot be inspected offline"
            ));
            None
        }
        _ => None,
    };
    let size = source.size();
    found.push(Found {
        info: VolumeInfo {
            name,
            size,
            partition,
            lvm,
            probe: p,
        },
        fs,
    });
}

/// One `/etc/fstab` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FstabEntry {
    /// First field (`UUID=...`, `/dev/vda1`).
    pub spec: String,
    /// Mount point.
    pub point: String,
    /// Filesystem type.
    pub fs_type: String,
    /// Options.
    pub options: String,
    /// 1-based line number.
    pub line: usize,
}

/// Parse fstab text (octal escapes like `\040` decoded in the mount point).
pub fn parse_fstab(text: &str) -> Vec<FstabEntry> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 2 {
            continue;
        }
        out.push(FstabEntry {
            spec: f[0].to_string(),
            point: unescape_octal(f[1]),
            fs_type: f.get(2).unwrap_or(&"auto").to_string(),
            options: f.get(3).unwrap_or(&"defaults").to_string(),
            line: i + 1,
        });
    }
    out
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_virtual_fs(t: &str) -> bool {
    matches!(
        t,
        "swap"
            | "proc"
            | "sysfs"
            | "tmpfs"
            | "devpts"
            | "devtmpfs"
            | "none"
            | "nfs"
            | "nfs4"
            | "cifs"
            | "smb3"
            | "9p"
            | "virtiofs"
            | "fuse"
            | "cgroup"
            | "cgroup2"
            | "securityfs"
            | "debugfs"
            | "efivarfs"
            | "hugetlbfs"
            | "mqueue"
            | "binfmt_misc"
            | "bind"
    )
}

/// Which found volume an fstab source names.
fn match_spec(found: &[Found], spec: &str) -> Option<usize> {
    let (key, value) = if let Some(v) = spec.strip_prefix("UUID=") {
        ("uuid", v)
    } else if let Some(v) = spec.strip_prefix("LABEL=") {
        ("label", v)
    } else if let Some(v) = spec.strip_prefix("PARTUUID=") {
        ("partuuid", v)
    } else if let Some(v) = spec.strip_prefix("PARTLABEL=") {
        ("partlabel", v)
    } else if let Some(v) = spec.strip_prefix("/dev/disk/by-uuid/") {
        ("uuid", v)
    } else if let Some(v) = spec.strip_prefix("/dev/disk/by-label/") {
        ("label", v)
    } else if let Some(v) = spec.strip_prefix("/dev/disk/by-partuuid/") {
        ("partuuid", v)
    } else if let Some(v) = spec.strip_prefix("/dev/disk/by-partlabel/") {
        ("partlabel", v)
    } else if let Some(v) = spec.strip_prefix("/dev/mapper/") {
        ("mapper", v)
    } else if spec.starts_with("/dev/") {
        ("dev", spec)
    } else {
        return None;
    };
    let value = value.trim_matches('"');
    let is_fs = |f: &Found| !matches!(f.info.probe.kind, VolumeKind::LvmPv | VolumeKind::Unknown);
    found.iter().position(|f| {
        let part_ok = f.info.lvm.is_none();
        match key {
            "uuid" => {
                is_fs(f)
                    && f.info
                        .probe
                        .uuid
                        .as_deref()
                        .is_some_and(|u| u.eq_ignore_ascii_case(value))
            }
            "label" => is_fs(f) && f.info.probe.label.as_deref() == Some(value),
            "partuuid" => {
                part_ok
                    && f.info
                        .partition
                        .as_ref()
                        .and_then(|p| p.part_uuid.as_deref())
                        .is_some_and(|u| u.eq_ignore_ascii_case(value))
            }
            "partlabel" => {
                part_ok && f.info.partition.as_ref().and_then(|p| p.name.as_deref()) == Some(value)
            }
            "mapper" => f.info.lvm.as_ref().is_some_and(|(vg, lv)| {
                format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--")) == value
            }),
            _ => dev_matches(f, value),
        }
    })
}

/// `/dev/vg/lv`, `/dev/vda2`, `/dev/sda2`, `/dev/nvme0n1p2`, `/dev/xvda2`.
fn dev_matches(f: &Found, dev: &str) -> bool {
    let rest = &dev[5..];
    if let Some((vg, lv)) = &f.info.lvm {
        return rest == format!("{vg}/{lv}");
    }
    let Some(p) = &f.info.partition else {
        return false;
    };
    for prefix in ["vda", "sda", "xvda", "hda", "nvme0n1p", "mmcblk0p"] {
        if let Some(num) = rest.strip_prefix(prefix) {
            return num.parse::<u32>().ok() == Some(p.number);
        }
    }
    false
}

//! Content hash of a layout: a canonical serialisation fed to SHA-256.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::spec::{FsType, GptPart, Layout, PartTable, Volume};

/// A SHA-256 fed with tagged, length-prefixed fields, so that no two different
/// specs serialise to the same bytes.
pub(crate) struct Canon(Sha256);

impl Canon {
    pub(crate) fn new(domain: &str) -> Canon {
        let mut c = Canon(Sha256::new());
        c.str(domain);
        c
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.update((b.len() as u64).to_le_bytes());
        self.0.update(b);
        self
    }

    pub(crate) fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.update(v.to_le_bytes());
        self
    }

    pub(crate) fn opt(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            None => self.u64(0),
            Some(s) => self.u64(1).str(s),
        }
    }

    pub(crate) fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hashes a host directory: every entry walked in sorted (byte) order with
/// its relative path, type, mode, uid/gid, symlink target or file bytes, or
/// device numbers. Timestamps are left out on purpose.
pub(crate) fn tree(c: &mut Canon, root: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(root)
        .with_context(|| format!("volume tree {} does not exist", root.display()))?;
    if !meta.is_dir() {
        bail!("volume tree {} is not a directory", root.display());
    }
    entry(c, root, "", &meta)
}

fn entry(c: &mut Canon, host: &Path, rel: &str, m: &fs::Metadata) -> Result<()> {
    c.str(rel)
        .u64(u64::from(m.mode()))
        .u64(u64::from(m.uid()))
        .u64(u64::from(m.gid()));
    let ft = m.file_type();
    if ft.is_dir() {
        c.str("d");
        let mut names: Vec<_> = fs::read_dir(host)
            .with_context(|| format!("reading directory {}", host.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("reading directory {}", host.display()))?;
        names.sort();
        c.u64(names.len() as u64);
        for name in names {
            let p = host.join(&name);
            let name = name
                .to_str()
                .with_context(|| format!("file name {} is not UTF-8", p.display()))?;
            let m = fs::symlink_metadata(&p).with_context(|| format!("stat {}", p.display()))?;
            entry(c, &p, &format!("{rel}/{name}"), &m)?;
        }
    } else if ft.is_symlink() {
        let t = fs::read_link(host).with_context(|| format!("readlink {}", host.display()))?;
        c.str("l").bytes(t.as_os_str().as_encoded_bytes());
    } else if ft.is_file() {
        c.str("f").u64(m.len());
        let mut f = fs::File::open(host).with_context(|| format!("opening {}", host.display()))?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f
                .read(&mut buf)
                .with_context(|| format!("reading {}", host.display()))?;
            if n == 0 {
                break;
            }
            c.0.update(&buf[..n]);
        }
    } else if ft.is_block_device() || ft.is_char_device() {
        c.str(if ft.is_block_device() { "b" } else { "c" })
            .u64(m.rdev());
    } else if ft.is_fifo() {
        c.str("p");
    } else {
        c.str("s");
    }
    Ok(())
}

fn volume(c: &mut Canon, v: &Volume) -> Result<()> {
    c.str("volume");
    match &v.fs {
        FsType::Ext4 => {
            c.str("ext4");
        }
        FsType::Ext4With(f) => {
            c.str("ext4with").u64(f.len() as u64);
            for f in f {
                c.str(f);
            }
        }
        FsType::Ext2 => {
            c.str("ext2");
        }
        FsType::Xfs => {
            c.str("xfs");
        }
        FsType::Vfat => {
            c.str("vfat");
        }
        FsType::Swap => {
            c.str("swap");
        }
    }
    c.u64(v.size_mib)
        .opt(v.label.as_deref())
        .opt(v.uuid.as_deref());
    match &v.tree {
        None => {
            c.u64(0);
        }
        Some(t) => {
            c.u64(1);
            tree(c, t)?;
        }
    }
    Ok(())
}

/// The hash of a layout alone (what the raw disk's bytes depend on).
pub(crate) fn layout(l: &Layout) -> Result<[u8; 32]> {
    let mut c = Canon::new("ibkit-test-utils layout");
    c.str(crate::BUILDER_VERSION);
    match l {
        Layout::Bare(v) => {
            c.str("bare");
            volume(&mut c, v)?;
        }
        Layout::Mbr(vs) => {
            c.str("mbr").u64(vs.len() as u64);
            for v in vs {
                volume(&mut c, v)?;
            }
        }
        Layout::MbrExtended { primary, logical } => {
            c.str("mbrext").u64(primary.len() as u64);
            for v in primary {
                volume(&mut c, v)?;
            }
            c.u64(logical.len() as u64);
            for v in logical {
                volume(&mut c, v)?;
            }
        }
        Layout::Gpt(ps) => {
            c.str("gpt");
            gpt_parts(&mut c, ps)?;
        }
        Layout::GptLvm { parts, vg, lvs } => {
            c.str("gptlvm");
            gpt_parts(&mut c, parts)?;
            lvm(&mut c, vg, lvs)?;
        }
        Layout::Lvm {
            boot,
            vg,
            lvs,
            table,
        } => {
            c.str("lvm").str(match table {
                PartTable::Mbr => "mbr",
                PartTable::Gpt => "gpt",
            });
            match boot {
                None => {
                    c.u64(0);
                }
                Some(v) => {
                    c.u64(1);
                    volume(&mut c, v)?;
                }
            }
            lvm(&mut c, vg, lvs)?;
        }
    }
    Ok(c.finish())
}

fn gpt_parts(c: &mut Canon, ps: &[GptPart]) -> Result<()> {
    c.u64(ps.len() as u64);
    for p in ps {
        c.str(&p.type_code)
            .str(&p.name)
            .opt(p.part_uuid.as_deref())
            .u64(p.part_size_mib());
        match &p.volume {
            None => {
                c.u64(0);
            }
            Some(v) => {
                c.u64(1);
                volume(c, v)?;
            }
        }
    }
    Ok(())
}

fn lvm(c: &mut Canon, vg: &str, lvs: &[(String, Volume)]) -> Result<()> {
    c.str(vg).u64(lvs.len() as u64);
    for (name, v) in lvs {
        c.str(name);
        volume(c, v)?;
    }
    Ok(())
}

/// A stable identifier derived from the layout hash, for defaults (UUIDs).
pub(crate) fn derive(layout_hash: &[u8; 32], what: &str, index: usize) -> [u8; 32] {
    let mut c = Canon::new("ibkit-test-utils derive");
    c.bytes(layout_hash).str(what).u64(index as u64);
    c.finish()
}

/// A version-4-shaped UUID string from hash bytes.
pub(crate) fn uuid_from(b: &[u8; 32]) -> String {
    let mut u = [0u8; 16];
    u.copy_from_slice(&b[..16]);
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    let h = hex(&u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

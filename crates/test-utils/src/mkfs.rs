//! Making one filesystem, populated from a tree, in a file of its own, without
//! mounting anything.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

use crate::cmd::run;
use crate::spec::{FsType, Volume};

/// A fixed timestamp for the tools that take one, so builds are reproducible.
pub(crate) const FAKE_TIME: &str = "1700000000";

/// Below this size mkfs.xfs 6.1 refuses to make a filesystem (and wants a log
/// of at least 64 MiB) unless it believes it runs under fstests.
pub(crate) const XFS_MIN_MIB: u64 = 300;

/// Builds `vol` into `out` (created, `vol.size_mib` MiB, sparse).
/// `default_uuid` is a UUID-shaped string used when the volume has none.
pub(crate) fn make(vol: &Volume, default_uuid: &str, out: &Path) -> Result<()> {
    ensure!(vol.size_mib > 0, "a volume needs a size (size_mib = 0)");
    let f = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    f.set_len(vol.size_mib << 20)
        .with_context(|| format!("sizing {}", out.display()))?;
    drop(f);
    let uuid = vol.uuid.clone().unwrap_or_else(|| default_uuid.to_owned());
    let label = vol.label.as_deref();
    if let Some(t) = &vol.tree {
        ensure!(t.is_dir(), "volume tree {} is not a directory", t.display());
    }
    match &vol.fs {
        FsType::Ext4 | FsType::Ext4With(_) | FsType::Ext2 => ext(vol, &uuid, label, out),
        FsType::Xfs => xfs(vol, &uuid, label, out),
        FsType::Vfat => vfat(vol, &uuid, label, out),
        FsType::Swap => {
            ensure!(vol.tree.is_none(), "a swap volume cannot have a tree");
            check_label(label, 16, "swap")?;
            let mut c = Command::new("mkswap");
            c.arg("-U").arg(&uuid);
            if let Some(l) = label {
                c.arg("-L").arg(l);
            }
            c.arg(out);
            run(&mut c, None)?;
            Ok(())
        }
    }
}

fn check_label(label: Option<&str>, max: usize, fs: &str) -> Result<()> {
    if let Some(l) = label {
        ensure!(
            l.len() <= max,
            "label {l:?} is longer than {max} bytes, the most {fs} allows"
        );
    }
    Ok(())
}

fn ext(vol: &Volume, uuid: &str, label: Option<&str>, out: &Path) -> Result<()> {
    check_label(label, 16, "ext2/3/4")?;
    let mut c = Command::new("mke2fs");
    c.env("E2FSPROGS_FAKE_TIME", FAKE_TIME)
        .env("SOURCE_DATE_EPOCH", FAKE_TIME)
        .env_remove("MKE2FS_CONFIG")
        .arg("-q")
        .arg("-F")
        .arg("-t")
        .arg(if vol.fs == FsType::Ext2 {
            "ext2"
        } else {
            "ext4"
        })
        .arg("-b")
        .arg("4096")
        .arg("-U")
        .arg(uuid)
        .arg("-E")
        .arg(format!("hash_seed={uuid}"));
    if let Some(l) = label {
        c.arg("-L").arg(l);
    }
    if let FsType::Ext4With(features) = &vol.fs
        && !features.is_empty()
    {
        c.arg("-O").arg(features.join(","));
    }
    if let Some(t) = &vol.tree {
        c.arg("-d").arg(t);
    }
    c.arg(out);
    run(&mut c, None)?;
    Ok(())
}

fn xfs(vol: &Volume, uuid: &str, label: Option<&str>, out: &Path) -> Result<()> {
    check_label(label, 12, "XFS")?;
    let mut c = Command::new("mkfs.xfs");
    if vol.size_mib < XFS_MIN_MIB {
        // xfsprogs ≥ 5.19 refuses filesystems under 300 MiB and logs under
        // 64 MiB, except under its own test suite, which it recognises by
        // these three variables; with them it makes a valid small filesystem.
        c.env("TEST_DIR", "1")
            .env("TEST_DEV", "1")
            .env("QA_CHECK_FS", "1");
    }
    c.arg("-q")
        .arg("-f")
        .arg("-K")
        .arg("-m")
        .arg(format!("uuid={uuid}"));
    if let Some(l) = label {
        c.arg("-L").arg(l);
    }
    let mut sticky = Vec::new();
    let proto_path = out.with_extension("proto");
    if let Some(t) = &vol.tree {
        let proto = protofile(t, &mut sticky)?;
        fs::write(&proto_path, proto)
            .with_context(|| format!("writing {}", proto_path.display()))?;
        c.arg("-p").arg(&proto_path);
    }
    c.arg(out);
    run(&mut c, None)?;
    if !sticky.is_empty() {
        // The protofile's mode field has no sticky bit: set it with xfs_db.
        let mut db = Command::new("xfs_db");
        db.arg("-x");
        for (path, mode) in &sticky {
            db.arg("-c")
                .arg(format!("path {path}"))
                .arg("-c")
                .arg(format!("write core.mode 0{mode:o}"));
        }
        db.arg(out);
        run(&mut db, None)?;
    }
    let _ = fs::remove_file(&proto_path);
    Ok(())
}

fn proto_token_ok(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c == ':' || c == '$')
}

/// An mkfs.xfs protofile for the tree at `root`. Entries whose mode has the
/// sticky bit are added to `sticky` (guest path, full mode) for fixing up.
fn protofile(root: &Path, sticky: &mut Vec<(String, u32)>) -> Result<String> {
    let m = fs::metadata(root).with_context(|| format!("stat {}", root.display()))?;
    let mut s = String::from("ibkit\n0 0\n");
    let _ = writeln!(s, "{} {} {}", proto_mode('d', m.mode()), m.uid(), m.gid());
    if m.mode() & 0o1000 != 0 {
        sticky.push(("/".into(), m.mode() & 0o177777));
    }
    proto_dir(root, "", &mut s, sticky)?;
    s.push_str("$\n");
    Ok(s)
}

fn proto_mode(t: char, mode: u32) -> String {
    format!(
        "{t}{}{}{:03o}",
        if mode & 0o4000 != 0 { 'u' } else { '-' },
        if mode & 0o2000 != 0 { 'g' } else { '-' },
        mode & 0o777
    )
}

fn proto_dir(
    dir: &Path,
    guest: &str,
    s: &mut String,
    sticky: &mut Vec<(String, u32)>,
) -> Result<()> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    names.sort();
    for name in names {
        let host = dir.join(&name);
        let name = name
            .to_str()
            .with_context(|| format!("{}: file name is not UTF-8", host.display()))?;
        if !proto_token_ok(name) {
            bail!(
                "{}: XFS fixtures cannot hold names with whitespace, ':' or '$' \
                 (mkfs.xfs protofile syntax)",
                host.display()
            );
        }
        let gpath = format!("{guest}/{name}");
        let m = fs::symlink_metadata(&host).with_context(|| format!("stat {}", host.display()))?;
        let ft = m.file_type();
        let (uid, gid, mode) = (m.uid(), m.gid(), m.mode());
        if mode & 0o1000 != 0 && !ft.is_symlink() {
            sticky.push((gpath.clone(), mode & 0o177777));
        }
        if ft.is_dir() {
            let _ = writeln!(s, "{name} {} {uid} {gid}", proto_mode('d', mode));
            proto_dir(&host, &gpath, s, sticky)?;
            s.push_str("$\n");
        } else if ft.is_file() {
            let src = host
                .to_str()
                .filter(|p| proto_token_ok(p))
                .with_context(|| {
                    format!(
                        "{}: the host path of an XFS fixture file may not contain whitespace, \
                         ':' or '$' (set TMPDIR to a plain path)",
                        host.display()
                    )
                })?;
            let _ = writeln!(s, "{name} {} {uid} {gid} {src}", proto_mode('-', mode));
        } else if ft.is_symlink() {
            let t = fs::read_link(&host).with_context(|| format!("readlink {}", host.display()))?;
            let t = t.to_str().filter(|t| proto_token_ok(t)).with_context(|| {
                format!(
                    "{}: XFS fixture symlink targets may not contain whitespace, ':' or '$'",
                    host.display()
                )
            })?;
            let _ = writeln!(s, "{name} {} {uid} {gid} {t}", proto_mode('l', mode));
        } else if ft.is_block_device() || ft.is_char_device() {
            let rdev = m.rdev();
            let major = ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff);
            let minor = ((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff);
            let t = if ft.is_block_device() { 'b' } else { 'c' };
            let _ = writeln!(
                s,
                "{name} {} {uid} {gid} {major} {minor}",
                proto_mode(t, mode)
            );
        } else if ft.is_fifo() {
            let _ = writeln!(s, "{name} {} {uid} {gid}", proto_mode('p', mode));
        } else {
            bail!("{}: sockets cannot go into an XFS fixture", host.display());
        }
    }
    Ok(())
}

/// `"1234-ABCD"` or `"1234abcd"` -> `"1234ABCD"`.
fn vfat_serial(uuid: &str) -> Result<String> {
    let s: String = uuid.chars().filter(|c| *c != '-').collect();
    ensure!(
        s.len() == 8 && s.chars().all(|c| c.is_ascii_hexdigit()),
        "a vfat volume id must be 8 hex digits like \"1234-ABCD\", not {uuid:?}"
    );
    Ok(s.to_ascii_uppercase())
}

fn vfat(vol: &Volume, uuid: &str, label: Option<&str>, out: &Path) -> Result<()> {
    check_label(label, 11, "vfat")?;
    let serial = if vol.uuid.is_some() {
        vfat_serial(uuid)?
    } else {
        uuid[..8].to_ascii_uppercase()
    };
    let mut c = Command::new("mkfs.vfat");
    c.env("SOURCE_DATE_EPOCH", FAKE_TIME)
        .arg("--invariant")
        .arg("-i")
        .arg(&serial);
    if let Some(l) = label {
        c.arg("-n").arg(l);
    }
    c.arg(out);
    run(&mut c, None)?;
    let Some(tree) = &vol.tree else {
        return Ok(());
    };
    let mut names: Vec<_> = fs::read_dir(tree)
        .with_context(|| format!("reading {}", tree.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", tree.display()))?;
    names.sort();
    if names.is_empty() {
        return Ok(());
    }
    check_no_symlinks(tree)?;
    let mut c = Command::new("mcopy");
    c.env("MTOOLS_SKIP_CHECK", "1")
        .env("MTOOLS_NO_VFAT", "0")
        .arg("-s") // recursive
        .arg("-p") // keep attributes
        .arg("-m") // keep modification times
        .arg("-Q") // stop at the first error
        .arg("-i")
        .arg(out)
        .args(&names)
        .arg("::/");
    run(&mut c, None)?;
    Ok(())
}

fn check_no_symlinks(dir: &Path) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        let ft = e.file_type()?;
        if ft.is_symlink() {
            bail!(
                "{}: a vfat filesystem cannot hold symlinks",
                e.path().display()
            );
        } else if ft.is_dir() {
            check_no_symlinks(&e.path())?;
        } else if !ft.is_file() {
            bail!(
                "{}: a vfat filesystem can only hold files and directories",
                e.path().display()
            );
        }
    }
    Ok(())
}

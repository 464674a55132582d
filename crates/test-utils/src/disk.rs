//! Assembling a raw disk: partition table, filesystems, LVM.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

use crate::cmd::run;
use crate::hash::{derive, uuid_from};
use crate::lvm::{self, EXTENT_BYTES, LvSpec, PE_START, PvSpec};
use crate::spec::{FsType, GptPart, Layout, PartTable, Volume};
use crate::{GPT_DISK_GUID, MBR_DISK_ID, mkfs};

const MIB: u64 = 1 << 20;

/// What goes at an offset of the disk.
enum Content<'a> {
    /// Volume and its index in the layout (for default UUIDs).
    Fs(&'a Volume, usize),
    /// The first `PE_START` bytes of an LVM PV.
    Bytes(Vec<u8>),
}

struct Plan<'a> {
    size: u64,
    /// sfdisk script, if the disk has a partition table.
    table: Option<String>,
    writes: Vec<(u64, Content<'a>)>,
}

/// `ef00` and friends -> type GUID; a GUID is passed through.
pub(crate) fn gpt_type(code: &str) -> Result<String> {
    let guid = match code.to_ascii_lowercase().as_str() {
        "ef02" => "21686148-6449-6E6F-744E-656564454649",
        "ef00" => "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
        "8300" => "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
        "8304" => "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
        "8302" => "933AC7E1-2EB4-4F13-B844-0E14E2AEF915",
        "8200" => "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
        "8e00" => "E6D6D379-F507-44C2-A23C-238F2A3DF928",
        "fd00" => "A19D880F-05FC-4D3B-A006-743F0F84911E",
        "0700" => "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
        "ea00" => "BC13C2FF-59E6-4262-A352-B275FD6F7172",
        _ if is_guid(code) => return Ok(code.to_ascii_uppercase()),
        _ => bail!(
            "unknown GPT partition type {code:?}: give a type GUID or one of \
             ef02 ef00 8300 8304 8302 8200 8e00 fd00 0700 ea00"
        ),
    };
    Ok(guid.to_owned())
}

fn is_guid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

fn mbr_type(v: &Volume) -> &'static str {
    match v.fs {
        FsType::Vfat => "c",
        FsType::Swap => "82",
        _ => "83",
    }
}

fn mbr_header() -> String {
    format!("label: dos\nlabel-id: {MBR_DISK_ID:#010x}\nunit: sectors\nsector-size: 512\n\n")
}

fn gpt_header(last_mib: u64) -> String {
    format!(
        "label: gpt\nlabel-id: {GPT_DISK_GUID}\nunit: sectors\nsector-size: 512\n\
         first-lba: 2048\nlast-lba: {}\n\n",
        last_mib * 2048 - 1
    )
}

fn check_size(v: &Volume) -> Result<()> {
    ensure!(v.size_mib > 0, "a volume needs a size (size_mib = 0)");
    Ok(())
}

/// A partition, whichever table it goes into.
struct Part<'a> {
    size_mib: u64,
    mbr_type: &'static str,
    gpt_code: &'a str,
    name: &'a str,
    part_uuid: Option<&'a str>,
    content: PartContent<'a>,
}

enum PartContent<'a> {
    Empty,
    Fs(&'a Volume),
    Pv {
        vg: &'a str,
        lvs: &'a [(String, Volume)],
    },
}

impl<'a> Part<'a> {
    fn vol(v: &'a Volume, gpt_code: &'a str, name: &'a str) -> Part<'a> {
        Part {
            size_mib: v.size_mib,
            mbr_type: mbr_type(v),
            gpt_code,
            name,
            part_uuid: None,
            content: PartContent::Fs(v),
        }
    }

    fn gpt(p: &'a GptPart) -> Part<'a> {
        Part {
            size_mib: p.part_size_mib(),
            mbr_type: "83",
            gpt_code: &p.type_code,
            name: &p.name,
            part_uuid: p.part_uuid.as_deref(),
            content: p
                .volume
                .as_ref()
                .map_or(PartContent::Empty, PartContent::Fs),
        }
    }
}

/// Places the partitions' contents and collects the writes.
struct Placer<'a, 'l> {
    lh: &'l [u8; 32],
    vol_index: usize,
    writes: Vec<(u64, Content<'a>)>,
}

impl<'a> Placer<'a, '_> {
    fn vol(&mut self, at: u64, v: &'a Volume) -> Result<()> {
        check_size(v)?;
        self.writes.push((at, Content::Fs(v, self.vol_index)));
        self.vol_index += 1;
        Ok(())
    }

    /// Lays out the PV of `size_mib` at byte `at`.
    fn pv(
        &mut self,
        at: u64,
        vg: &'a str,
        lvs: &'a [(String, Volume)],
        specs: Vec<LvSpec>,
        extents: u64,
    ) -> Result<()> {
        let pv = PvSpec {
            vg: vg.to_owned(),
            vg_id: lvm::lvm_id(&derive(self.lh, "vg", 0)),
            pv_id: lvm::lvm_id(&derive(self.lh, "pv", 0)),
            size: pv_mib(extents) * MIB,
            pe_count: extents,
            lvs: specs,
        };
        self.writes.push((at, Content::Bytes(lvm::pv_head(&pv)?)));
        for ((_, v), spec) in lvs.iter().zip(&pv.lvs) {
            self.vol(at + PE_START + spec.start_extent * EXTENT_BYTES, v)?;
        }
        Ok(())
    }

    fn content(&mut self, at: u64, c: &PartContent<'a>) -> Result<()> {
        match c {
            PartContent::Empty => Ok(()),
            PartContent::Fs(v) => self.vol(at, v),
            PartContent::Pv { vg, lvs } => {
                let (specs, extents) = lv_specs(self.lh, vg, lvs)?;
                self.pv(at, vg, lvs, specs, extents)
            }
        }
    }
}

/// The LVs' places on the PV, and the PV's extent count.
fn lv_specs(lh: &[u8; 32], vg: &str, lvs: &[(String, Volume)]) -> Result<(Vec<LvSpec>, u64)> {
    lvm::check_name("VG", vg)?;
    ensure!(!lvs.is_empty(), "an LVM layout needs at least one LV");
    let mut specs = Vec::new();
    let mut extent = 0;
    for (i, (name, v)) in lvs.iter().enumerate() {
        lvm::check_name("LV", name)?;
        ensure!(
            lvs.iter().filter(|(n, _)| n == name).count() == 1,
            "LV name {name:?} is used twice"
        );
        check_size(v)?;
        let n = (v.size_mib * MIB).div_ceil(EXTENT_BYTES);
        specs.push(LvSpec {
            name: name.clone(),
            id: lvm::lvm_id(&derive(lh, "lv", i)),
            start_extent: extent,
            extents: n,
        });
        extent += n;
    }
    Ok((specs, extent))
}

fn pv_mib(extents: u64) -> u64 {
    PE_START / MIB + extents * EXTENT_BYTES / MIB
}

fn pv_part<'a>(lh: &[u8; 32], vg: &'a str, lvs: &'a [(String, Volume)]) -> Result<Part<'a>> {
    let (_, extents) = lv_specs(lh, vg, lvs)?;
    Ok(Part {
        size_mib: pv_mib(extents),
        mbr_type: "8e",
        gpt_code: "8e00",
        name: "lvm",
        part_uuid: None,
        content: PartContent::Pv { vg, lvs },
    })
}

fn plan_mbr<'a>(parts: &[Part<'a>], logical: &'a [Volume], lh: &[u8; 32]) -> Result<Plan<'a>> {
    let mut s = mbr_header();
    let mut pl = Placer {
        lh,
        vol_index: 0,
        writes: Vec::new(),
    };
    let mut at = 1;
    for (i, p) in parts.iter().enumerate() {
        ensure!(p.size_mib > 0, "partition {} has size 0", i + 1);
        let _ = writeln!(
            s,
            "start={}, size={}, type={}{}",
            at * 2048,
            p.size_mib * 2048,
            p.mbr_type,
            if i == 0 { ", bootable" } else { "" }
        );
        pl.content(at * MIB, &p.content)?;
        at += p.size_mib;
    }
    if !logical.is_empty() {
        let ext_size: u64 = logical.iter().map(|v| v.size_mib + 1).sum();
        let _ = writeln!(s, "start={}, size={}, type=5", at * 2048, ext_size * 2048);
        for v in logical {
            at += 1; // the EBR's MiB
            let _ = writeln!(
                s,
                "start={}, size={}, type={}",
                at * 2048,
                v.size_mib * 2048,
                mbr_type(v)
            );
            pl.vol(at * MIB, v)?;
            at += v.size_mib;
        }
    }
    Ok(Plan {
        size: at * MIB,
        table: Some(s),
        writes: pl.writes,
    })
}

fn plan_gpt<'a>(parts: &[Part<'a>], lh: &[u8; 32]) -> Result<Plan<'a>> {
    ensure!(
        !parts.is_empty(),
        "a GPT layout needs at least one partition"
    );
    ensure!(parts.len() <= 128, "a GPT holds at most 128 partitions");
    let total: u64 = parts.iter().map(|p| p.size_mib).sum::<u64>() + 2;
    let mut s = gpt_header(total - 1);
    let mut pl = Placer {
        lh,
        vol_index: 0,
        writes: Vec::new(),
    };
    let mut at = 1;
    for (i, p) in parts.iter().enumerate() {
        ensure!(p.size_mib > 0, "GPT partition {} has size 0", i + 1);
        ensure!(
            !p.name.contains('"') && !p.name.contains('\n') && p.name.encode_utf16().count() <= 36,
            "GPT partition name {:?} may not contain '\"' nor exceed 36 characters",
            p.name
        );
        let uuid = match p.part_uuid {
            Some(u) => {
                ensure!(is_guid(u), "partition UUID {u:?} is not a GUID");
                u.to_owned()
            }
            None => uuid_from(&derive(lh, "partuuid", i)),
        };
        let _ = writeln!(
            s,
            "start={}, size={}, type={}, uuid={}, name=\"{}\"",
            at * 2048,
            p.size_mib * 2048,
            gpt_type(p.gpt_code)?,
            uuid.to_ascii_uppercase(),
            p.name
        );
        pl.content(at * MIB, &p.content)?;
        at += p.size_mib;
    }
    Ok(Plan {
        size: (at + 1) * MIB,
        table: Some(s),
        writes: pl.writes,
    })
}

fn plan<'a>(layout: &'a Layout, lh: &[u8; 32]) -> Result<Plan<'a>> {
    match layout {
        Layout::Bare(v) => {
            let mut pl = Placer {
                lh,
                vol_index: 0,
                writes: Vec::new(),
            };
            pl.vol(0, v)?;
            Ok(Plan {
                size: v.size_mib * MIB,
                table: None,
                writes: pl.writes,
            })
        }
        Layout::Mbr(vs) => {
            ensure!(!vs.is_empty(), "an MBR layout needs at least one volume");
            ensure!(
                vs.len() <= 4,
                "MBR holds at most 4 primary partitions (use Layout::MbrExtended)"
            );
            let parts: Vec<_> = vs.iter().map(|v| Part::vol(v, "8300", "")).collect();
            plan_mbr(&parts, &[], lh)
        }
        Layout::MbrExtended { primary, logical } => {
            ensure!(
                primary.len() <= 3,
                "MbrExtended holds at most 3 primary partitions"
            );
            ensure!(
                !logical.is_empty(),
                "MbrExtended needs at least one logical partition"
            );
            let parts: Vec<_> = primary.iter().map(|v| Part::vol(v, "8300", "")).collect();
            plan_mbr(&parts, logical, lh)
        }
        Layout::Gpt(ps) => {
            let parts: Vec<_> = ps.iter().map(Part::gpt).collect();
            plan_gpt(&parts, lh)
        }
        Layout::Lvm {
            boot,
            vg,
            lvs,
            table,
        } => {
            let mut parts = Vec::new();
            if let Some(b) = boot {
                parts.push(Part::vol(b, "8300", "boot"));
            }
            parts.push(pv_part(lh, vg, lvs)?);
            match table {
                PartTable::Mbr => plan_mbr(&parts, &[], lh),
                PartTable::Gpt => plan_gpt(&parts, lh),
            }
        }
        Layout::GptLvm { parts, vg, lvs } => {
            let mut all: Vec<_> = parts.iter().map(Part::gpt).collect();
            all.push(pv_part(lh, vg, lvs)?);
            plan_gpt(&all, lh)
        }
    }
}

/// The data extents of `f` (offset, length), from SEEK_DATA/SEEK_HOLE; the
/// whole file when the filesystem cannot tell.
fn data_extents(f: &File, len: u64) -> Vec<(u64, u64)> {
    use rustix::fs::{SeekFrom, seek};
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < len {
        let start = match seek(f, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => return vec![(0, len)],
        };
        let end = match seek(f, SeekFrom::Hole(start)) {
            Ok(e) => e.min(len),
            Err(_) => return vec![(0, len)],
        };
        if end <= start {
            break;
        }
        out.push((start, end - start));
        pos = end;
    }
    out
}

/// Copies `src` into `dst` at `offset`, skipping holes and all-zero 4 KiB
/// blocks (the destination is a fresh sparse file, so they are zeros already).
fn copy_sparse(src: &Path, dst: &File, offset: u64) -> Result<()> {
    const CHUNK: usize = 1 << 20;
    const BLOCK: usize = 4096;
    static ZERO: [u8; BLOCK] = [0; BLOCK];
    let f = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let len = f.metadata()?.len();
    let mut buf = vec![0u8; CHUNK];
    for (ext_start, ext_len) in data_extents(&f, len) {
        let mut pos = ext_start;
        let ext_end = ext_start + ext_len;
        while pos < ext_end {
            let n = CHUNK.min((ext_end - pos) as usize);
            f.read_exact_at(&mut buf[..n], pos)
                .with_context(|| format!("reading {}", src.display()))?;
            let mut i = 0;
            while i < n {
                let end = (i + BLOCK).min(n);
                if buf[i..end] == ZERO[..end - i] {
                    i = end;
                    continue;
                }
                // A run of non-zero blocks.
                let start = i;
                i = end;
                while i < n {
                    let end = (i + BLOCK).min(n);
                    if buf[i..end] == ZERO[..end - i] {
                        break;
                    }
                    i = end;
                }
                dst.write_all_at(&buf[start..i], offset + pos + start as u64)
                    .context("writing the disk image")?;
            }
            pos += n as u64;
        }
    }
    Ok(())
}

/// Builds the raw disk for `layout` at `out`, using `work` for scratch files.
pub(crate) fn build_raw(layout: &Layout, lh: &[u8; 32], work: &Path, out: &Path) -> Result<()> {
    let plan = plan(layout, lh)?;
    let disk = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    disk.set_len(plan.size)
        .with_context(|| format!("sizing {}", out.display()))?;
    if let Some(script) = &plan.table {
        let mut c = Command::new("sfdisk");
        c.arg("--quiet")
            .arg("--no-reread")
            .arg("--no-tell-kernel")
            .arg("--wipe")
            .arg("never")
            .arg(out);
        run(&mut c, Some(script.as_bytes()))?;
    }
    for (offset, content) in &plan.writes {
        match content {
            Content::Bytes(b) => disk
                .write_all_at(b, *offset)
                .context("writing the disk image")?,
            Content::Fs(v, i) => {
                let f = work.join(format!("vol{i}.img"));
                mkfs::make(v, &uuid_from(&derive(lh, "fsuuid", *i)), &f).with_context(|| {
                    format!("building volume {i} ({:?}, {} MiB)", v.fs, v.size_mib)
                })?;
                copy_sparse(&f, &disk, *offset)?;
                let _ = fs::remove_file(&f);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt_codes() {
        assert_eq!(
            gpt_type("EF00").ok().as_deref(),
            Some("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
        );
        assert!(gpt_type("0fc63daf-8483-4772-8e79-3d69d8477de4").is_ok());
        assert!(gpt_type("zz").is_err());
    }
}

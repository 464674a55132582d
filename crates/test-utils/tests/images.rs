//! Builds every layout in every container and checks the result with the
//! system's own tools (qemu-img, sfdisk, blkid, debugfs, xfs_db, mtools) and,
//! for LVM, with the lamlvm reader.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ibkit_test_utils::{
    Container, FsType, GPT_DISK_GUID, GptPart, Layout, MBR_DISK_ID, PartTable, Tree, Volume,
    build_image_in, build_overlay_in,
};
use serde_json::Value;

const ROOT_UUID: &str = "0b9e2f4e-7a3e-4c57-9a43-5d1c1e0f7a11";
const BOOT_UUID: &str = "5c1f3a60-2b4d-4e8f-8a71-0c2d9e6b4f22";
const XFS_UUID: &str = "7d2e4b81-3c5f-4a90-9b82-1d3e0f7c5a33";
const ESP_SERIAL: &str = "1B1C-0DE5";

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn json(cmd: &mut Command) -> Result<Value> {
    Ok(serde_json::from_str(&run(cmd)?)?)
}

fn root_tree() -> Tree {
    let mut t = Tree::new();
    t.file("/etc/hostname", "fixture\n")
        .file("/etc/machine-id", "")
        .file(
            "/etc/fstab",
            format!("UUID={ROOT_UUID} / ext4 defaults 0 1\n"),
        )
        .file_mode("/usr/bin/sudo", b"\x7fELF", 0o4755)
        .symlink("/etc/localtime", "/usr/share/zoneinfo/Etc/UTC")
        .dir_mode("/tmp", 0o1777)
        .dir_mode("/home/alice", 0o700)
        .file("/home/alice/.profile", "# hi\n")
        .owner("/home/alice", 1000, 1000)
        .owner("/home/alice/.profile", 1000, 1000)
        .dir("/var/empty");
    t
}

fn boot_tree() -> Tree {
    let mut t = Tree::new();
    t.file("/grub/grub.cfg", "set timeout=0\n")
        .file("/vmlinuz-6.1.0", vec![0x55u8; 100_000]);
    t
}

fn esp_tree() -> Tree {
    let mut t = Tree::new();
    t.file("/EFI/BOOT/BOOTX64.EFI", b"MZ fake efi")
        .file("/EFI/debian/grub.cfg", "search --fs-uuid\n")
        .file("/EFI/debian/.hidden", "dot file\n")
        .file(
            "/loader/entries/Long File Name With Spaces.conf",
            "title x\n",
        )
        .dir("/EFI/empty");
    t
}

/// Info about what a test expects at a partition (or the bare disk).
#[derive(Clone, Debug)]
enum Expect {
    Ext4 {
        uuid: Option<&'static str>,
        label: Option<&'static str>,
        file: Option<(&'static str, &'static str)>,
    },
    Ext2,
    Xfs {
        uuid: &'static str,
        label: &'static str,
    },
    Vfat {
        serial: &'static str,
        file: Option<(&'static str, &'static str)>,
    },
    Swap,
    Nothing,
    /// Not checked (an extended partition: its first sector is an EBR).
    Skip,
    Lvm {
        vg: &'static str,
        lvs: Vec<(&'static str, Expect)>,
    },
}

struct Case {
    name: &'static str,
    layout: Layout,
    /// "dos", "gpt" or "" (bare).
    table: &'static str,
    /// (partition number, type as sfdisk --json prints it, expectation)
    parts: Vec<(u32, &'static str, Expect)>,
}

/// The trees the cases' layouts point at (they must outlive the builds).
struct Trees {
    root: Tree,
    boot: Tree,
    esp: Tree,
}

fn cases(trees: &Trees) -> Vec<Case> {
    let Trees { root, boot, esp } = trees;
    let ext4_root = Volume::new(FsType::Ext4, 48)
        .with_tree(root)
        .with_label("rootfs")
        .with_uuid(ROOT_UUID);
    let ext4_expect = Expect::Ext4 {
        uuid: Some(ROOT_UUID),
        label: Some("rootfs"),
        file: Some(("/etc/hostname", "fixture\n")),
    };
    let boot_vol = Volume::new(FsType::Ext2, 16)
        .with_tree(boot)
        .with_uuid(BOOT_UUID);
    let esp_vol = Volume::new(FsType::Vfat, 33)
        .with_tree(esp)
        .with_label("ESP")
        .with_uuid(ESP_SERIAL);
    let esp_expect = Expect::Vfat {
        serial: ESP_SERIAL,
        file: Some(("/EFI/BOOT/BOOTX64.EFI", "MZ fake efi")),
    };
    let xfs_vol = Volume::new(FsType::Xfs, 300)
        .with_tree(root)
        .with_label("xroot")
        .with_uuid(XFS_UUID);
    let xfs_expect = Expect::Xfs {
        uuid: XFS_UUID,
        label: "xroot",
    };
    let cases = vec![
        Case {
            name: "bare-ext4",
            layout: Layout::Bare(ext4_root.clone()),
            table: "",
            parts: vec![(0, "", ext4_expect.clone())],
        },
        Case {
            name: "bare-xfs-small",
            layout: Layout::Bare(
                Volume::new(FsType::Xfs, 32)
                    .with_tree(root)
                    .with_label("small")
                    .with_uuid(XFS_UUID),
            ),
            table: "",
            parts: vec![(
                0,
                "",
                Expect::Xfs {
                    uuid: XFS_UUID,
                    label: "small",
                },
            )],
        },
        Case {
            name: "mbr",
            layout: Layout::Mbr(vec![
                boot_vol.clone(),
                ext4_root.clone(),
                Volume::new(FsType::Swap, 8),
                Volume::new(
                    FsType::Ext4With(vec!["^metadata_csum".into(), "^64bit".into()]),
                    8,
                ),
            ]),
            table: "dos",
            parts: vec![
                (1, "83", Expect::Ext2),
                (2, "83", ext4_expect.clone()),
                (3, "82", Expect::Swap),
                (
                    4,
                    "83",
                    Expect::Ext4 {
                        uuid: None,
                        label: None,
                        file: None,
                    },
                ),
            ],
        },
        Case {
            name: "mbr-extended",
            layout: Layout::MbrExtended {
                primary: vec![boot_vol.clone()],
                logical: vec![ext4_root.clone(), Volume::new(FsType::Swap, 4)],
            },
            table: "dos",
            parts: vec![
                (1, "83", Expect::Ext2),
                (2, "5", Expect::Skip),
                (5, "83", ext4_expect.clone()),
                (6, "82", Expect::Swap),
            ],
        },
        Case {
            name: "gpt",
            layout: Layout::Gpt(vec![
                GptPart::empty("ef02", "bios", 1),
                GptPart::new("ef00", "esp", esp_vol.clone()),
                GptPart::new("8300", "root", ext4_root.clone())
                    .with_part_uuid("6a1d2c3b-4e5f-4a6b-8c7d-9e0f1a2b3c4d"),
                GptPart::new("8300", "data", xfs_vol.clone()),
            ]),
            table: "gpt",
            parts: vec![
                (1, "21686148-6449-6E6F-744E-656564454649", Expect::Nothing),
                (
                    2,
                    "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
                    esp_expect.clone(),
                ),
                (
                    3,
                    "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
                    ext4_expect.clone(),
                ),
                (
                    4,
                    "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
                    xfs_expect.clone(),
                ),
            ],
        },
        Case {
            name: "lvm-mbr",
            layout: Layout::Lvm {
                boot: Some(boot_vol.clone()),
                vg: "vg0".into(),
                lvs: vec![
                    ("root".into(), ext4_root.clone()),
                    ("swap".into(), Volume::new(FsType::Swap, 6)),
                ],
                table: PartTable::Mbr,
            },
            table: "dos",
            parts: vec![
                (1, "83", Expect::Ext2),
                (
                    2,
                    "8e",
                    Expect::Lvm {
                        vg: "vg0",
                        lvs: vec![("root", ext4_expect.clone()), ("swap", Expect::Swap)],
                    },
                ),
            ],
        },
        Case {
            name: "lvm-gpt",
            layout: Layout::Lvm {
                boot: None,
                vg: "system".into(),
                lvs: vec![
                    ("root".into(), xfs_vol.clone()),
                    ("home".into(), ext4_root.clone()),
                ],
                table: PartTable::Gpt,
            },
            table: "gpt",
            parts: vec![(
                1,
                "E6D6D379-F507-44C2-A23C-238F2A3DF928",
                Expect::Lvm {
                    vg: "system",
                    lvs: vec![("root", xfs_expect.clone()), ("home", ext4_expect.clone())],
                },
            )],
        },
        Case {
            name: "gpt-lvm",
            layout: Layout::GptLvm {
                parts: vec![
                    GptPart::empty("ef02", "bios", 1),
                    GptPart::new("ef00", "EFI System Partition", esp_vol.clone()),
                    GptPart::new("8300", "boot", boot_vol.clone()),
                ],
                vg: "rhel".into(),
                lvs: vec![
                    ("root".into(), xfs_vol.clone()),
                    ("swap".into(), Volume::new(FsType::Swap, 8)),
                ],
            },
            table: "gpt",
            parts: vec![
                (1, "21686148-6449-6E6F-744E-656564454649", Expect::Nothing),
                (
                    2,
                    "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
                    esp_expect.clone(),
                ),
                (3, "0FC63DAF-8483-4772-8E79-3D69D8477DE4", Expect::Ext2),
                (
                    4,
                    "E6D6D379-F507-44C2-A23C-238F2A3DF928",
                    Expect::Lvm {
                        vg: "rhel",
                        lvs: vec![("root", xfs_expect.clone()), ("swap", Expect::Swap)],
                    },
                ),
            ],
        },
    ];
    cases
}

/// Reads `len` bytes at `offset`.
fn read_at(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    let f = File::open(path)?;
    let mut b = vec![0; len];
    f.read_exact_at(&mut b, offset)?;
    Ok(b)
}

/// Copies `len` bytes at `offset` of `src` into a new sparse file (qemu-img
/// skips holes, which reading them here would not).
fn extract(src: &Path, offset: u64, len: u64, dst: &Path) -> Result<()> {
    let spec = serde_json::json!({
        "driver": "raw",
        "offset": offset,
        "size": len,
        "file": { "driver": "file", "filename": src },
    });
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(format!("json:{spec}"))
        .arg(dst))?;
    Ok(())
}

fn blkid(path: &Path, offset: u64) -> Result<HashMap<String, String>> {
    let out = run(Command::new("blkid")
        .args(["-p", "-o", "export", "-O"])
        .arg(offset.to_string())
        .arg(path))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

fn check_fs(raw: &Path, offset: u64, size: u64, e: &Expect, scratch: &Path) -> Result<()> {
    match e {
        Expect::Skip => {}
        Expect::Nothing => {
            ensure!(
                read_at(raw, offset, 4096)?.iter().all(|b| *b == 0),
                "expected zeros"
            );
        }
        Expect::Ext4 { uuid, label, file } => {
            let id = blkid(raw, offset)?;
            ensure!(
                id.get("TYPE").map(String::as_str) == Some("ext4"),
                "blkid: {id:?}"
            );
            if let Some(u) = uuid {
                ensure!(
                    id.get("UUID").map(String::as_str) == Some(*u),
                    "blkid: {id:?}"
                );
            }
            if let Some(l) = label {
                ensure!(
                    id.get("LABEL").map(String::as_str) == Some(*l),
                    "blkid: {id:?}"
                );
            }
            let dev = format!("{}?offset={offset}", raw.display());
            let h = run(Command::new("dumpe2fs").arg("-h").arg(&dev))?;
            ensure!(h.contains("Block size:               4096"), "{h}");
            if let Some((path, want)) = file {
                let got = run(Command::new("debugfs")
                    .arg("-R")
                    .arg(format!("cat {path}"))
                    .arg(&dev))?;
                ensure!(got == *want, "{path}: {got:?}");
                let st = run(Command::new("debugfs")
                    .arg("-R")
                    .arg("stat /home/alice")
                    .arg(&dev))?;
                ensure!(st.contains("User:  1000   Group:  1000"), "{st}");
                ensure!(st.contains("Mode:  0700"), "{st}");
                let st = run(Command::new("debugfs").arg("-R").arg("stat /tmp").arg(&dev))?;
                ensure!(st.contains("Mode:  01777"), "{st}");
                let st = run(Command::new("debugfs")
                    .arg("-R")
                    .arg("stat /usr/bin/sudo")
                    .arg(&dev))?;
                ensure!(st.contains("Mode:  04755"), "{st}");
                let st = run(Command::new("debugfs").arg("-R").arg("stat /").arg(&dev))?;
                ensure!(st.contains("Mode:  0755"), "{st}");
            }
            run(Command::new("e2fsck").arg("-fn").arg(&dev))?;
        }
        Expect::Ext2 => {
            let id = blkid(raw, offset)?;
            ensure!(
                id.get("TYPE").map(String::as_str) == Some("ext2"),
                "blkid: {id:?}"
            );
            ensure!(
                id.get("UUID").map(String::as_str) == Some(BOOT_UUID),
                "blkid: {id:?}"
            );
            let dev = format!("{}?offset={offset}", raw.display());
            let got = run(Command::new("debugfs")
                .arg("-R")
                .arg("cat /grub/grub.cfg")
                .arg(&dev))?;
            ensure!(got == "set timeout=0\n", "{got:?}");
        }
        Expect::Swap => {
            let id = blkid(raw, offset)?;
            ensure!(
                id.get("TYPE").map(String::as_str) == Some("swap"),
                "blkid: {id:?}"
            );
        }
        Expect::Vfat { serial, file } => {
            let id = blkid(raw, offset)?;
            ensure!(
                id.get("TYPE").map(String::as_str) == Some("vfat"),
                "blkid: {id:?}"
            );
            ensure!(
                id.get("UUID").map(String::as_str) == Some(*serial),
                "blkid: {id:?}"
            );
            if let Some((path, want)) = file {
                let img = format!("{}@@{offset}", raw.display());
                let got = run(Command::new("mtype")
                    .env("MTOOLS_SKIP_CHECK", "1")
                    .arg("-i")
                    .arg(&img)
                    .arg(format!("::{path}")))?;
                ensure!(got == *want, "{path}: {got:?}");
                let dir = run(Command::new("mdir")
                    .env("MTOOLS_SKIP_CHECK", "1")
                    .args(["-b", "-i"])
                    .arg(&img)
                    .arg("::/EFI"))?;
                ensure!(dir.contains("empty"), "empty dir missing: {dir}");
                let got = run(Command::new("mtype")
                    .env("MTOOLS_SKIP_CHECK", "1")
                    .arg("-i")
                    .arg(&img)
                    .arg("::/EFI/debian/.hidden"))?;
                ensure!(got == "dot file\n", "{got:?}");
                let got = run(Command::new("mtype")
                    .env("MTOOLS_SKIP_CHECK", "1")
                    .arg("-i")
                    .arg(&img)
                    .arg("::/loader/entries/Long File Name With Spaces.conf"))?;
                ensure!(got == "title x\n", "{got:?}");
            }
        }
        Expect::Xfs { uuid, label } => {
            let id = blkid(raw, offset)?;
            ensure!(
                id.get("TYPE").map(String::as_str) == Some("xfs"),
                "blkid: {id:?}"
            );
            ensure!(
                id.get("UUID").map(String::as_str) == Some(*uuid),
                "blkid: {id:?}"
            );
            ensure!(
                id.get("LABEL").map(String::as_str) == Some(*label),
                "blkid: {id:?}"
            );
            let part = scratch.join(format!("xfs-{offset}.img"));
            extract(raw, offset, size, &part)?;
            run(Command::new("xfs_repair").arg("-n").arg(&part))?;
            let db = |cmds: &[&str]| -> Result<String> {
                let mut c = Command::new("xfs_db");
                c.arg("-r");
                for x in cmds {
                    c.arg("-c").arg(x);
                }
                run(c.arg(&part))
            };
            let ls = db(&["ls /etc"])?;
            ensure!(
                ls.contains("hostname") && ls.contains("localtime") && ls.contains("machine-id"),
                "{ls}"
            );
            let alice = db(&["path /home/alice", "p core.uid core.gid core.mode"])?;
            ensure!(
                alice.contains("core.uid = 1000") && alice.contains("core.gid = 1000"),
                "{alice}"
            );
            ensure!(alice.contains("core.mode = 040700"), "{alice}");
            let tmp = db(&["path /tmp", "p core.mode"])?;
            ensure!(tmp.contains("core.mode = 041777"), "{tmp}");
            let sudo = db(&["path /usr/bin/sudo", "p core.mode core.size"])?;
            ensure!(
                sudo.contains("core.mode = 0104755") && sudo.contains("core.size = 4"),
                "{sudo}"
            );
        }
        Expect::Lvm { vg, lvs } => check_lvm(raw, offset, vg, lvs, scratch)?,
    }
    Ok(())
}

/// A window of a file from `base` on, as an embedded-io reader for lamlvm.
struct Window {
    file: File,
    base: u64,
    pos: u64,
}

impl embedded_io::ErrorType for Window {
    type Error = std::io::Error;
}

impl embedded_io::Read for Window {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let n = self.file.read_at(buf, self.base + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl embedded_io::Seek for Window {
    fn seek(&mut self, pos: embedded_io::SeekFrom) -> Result<u64, Self::Error> {
        self.pos = match pos {
            embedded_io::SeekFrom::Start(p) => p,
            embedded_io::SeekFrom::Current(d) => self
                .pos
                .checked_add_signed(d)
                .ok_or_else(|| std::io::Error::other("seek"))?,
            embedded_io::SeekFrom::End(_) => return Err(std::io::Error::other("no SeekFrom::End")),
        };
        Ok(self.pos)
    }
}

fn check_lvm(
    raw: &Path,
    offset: u64,
    vg: &str,
    lvs: &[(&str, Expect)],
    scratch: &Path,
) -> Result<()> {
    use embedded_io::{Read, Seek, SeekFrom};
    let window = || -> Result<Window> {
        Ok(Window {
            file: File::open(raw)?,
            base: offset,
            pos: 0,
        })
    };
    let lvm = lamlvm::Lvm2::open(window()?).map_err(|e| anyhow::anyhow!("lamlvm: {e}"))?;
    ensure!(lvm.vg_name() == vg, "VG {}", lvm.vg_name());
    let names: Vec<&str> = lvm.lvs().map(|l| l.name()).collect();
    ensure!(names.len() == lvs.len(), "LVs {names:?}");
    let extent = lvm.extent_size();
    for (name, expect) in lvs {
        let lv = lvm
            .lvs()
            .find(|l| l.name() == *name)
            .context("LV missing")?;
        let size = lv.size_in_extents() * extent;
        let mut open = lvm
            .open_lv_by_name(name, window()?)
            .with_context(|| format!("LV {name} not found"))?;
        let mut head = vec![0u8; 8192];
        open.seek(SeekFrom::Start(0))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        open.read_exact(&mut head)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        match expect {
            Expect::Ext4 { .. } => ensure!(
                head[1080..1082] == [0x53, 0xef],
                "no ext4 magic in LV {name}"
            ),
            Expect::Xfs { .. } => ensure!(&head[0..4] == b"XFSB", "no XFS magic in LV {name}"),
            Expect::Swap => ensure!(
                &head[4086..4096] == b"SWAPSPACE2",
                "no swap magic in LV {name}"
            ),
            _ => {}
        }
        // Where the LV's first byte is on the disk: found by matching the head.
        let mut lv_off = None;
        let part_len = std::fs::metadata(raw)?.len() - offset;
        let mut at = 1 << 20;
        while at + 8192 <= part_len {
            if read_at(raw, offset + at, 8192)? == head {
                lv_off = Some(offset + at);
                break;
            }
            at += extent;
        }
        let lv_off = lv_off.context("LV data not found on the PV")?;
        check_fs(raw, lv_off, size, expect, scratch)?;
    }
    // LVM's own tool reads the metadata too.
    let pv = scratch.join(format!("pv-{offset}.img"));
    extract(raw, offset, 2 << 20, &pv)?;
    let dump = Command::new("pvck")
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .args(["--dump", "metadata"])
        .arg(&pv)
        .output()?;
    let text = String::from_utf8_lossy(&dump.stdout);
    ensure!(
        dump.status.success() && text.contains(&format!("{vg} {{")),
        "pvck: {text} {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    Ok(())
}

fn check_table(raw: &Path, case: &Case) -> Result<Vec<(u32, u64, u64)>> {
    if case.table.is_empty() {
        let size = std::fs::metadata(raw)?.len();
        return Ok(vec![(0, 0, size)]);
    }
    let j = json(Command::new("sfdisk").arg("--json").arg(raw))?;
    let t = &j["partitiontable"];
    ensure!(t["label"] == case.table, "label {}", t["label"]);
    let id = t["id"].as_str().unwrap_or_default().to_ascii_uppercase();
    if case.table == "gpt" {
        ensure!(id == GPT_DISK_GUID, "disk GUID {id}");
    } else {
        ensure!(id == format!("0X{MBR_DISK_ID:08X}"), "disk id {id}");
    }
    let parts = t["partitions"].as_array().context("no partitions")?;
    let mut out = Vec::new();
    ensure!(
        parts.len() == case.parts.len(),
        "{} partitions: {parts:?}",
        parts.len()
    );
    for (p, (num, ty, _)) in parts.iter().zip(&case.parts) {
        let node = p["node"].as_str().unwrap_or_default();
        ensure!(
            node.ends_with(&num.to_string()),
            "node {node} for partition {num}"
        );
        ensure!(
            p["type"]
                .as_str()
                .unwrap_or_default()
                .eq_ignore_ascii_case(ty),
            "type {} for {num}",
            p["type"]
        );
        let start = p["start"].as_u64().context("start")? * 512;
        let size = p["size"].as_u64().context("size")? * 512;
        ensure!(start % (1 << 20) == 0, "partition {num} not MiB-aligned");
        out.push((*num, start, size));
    }
    if case.table == "gpt" {
        let sg = run(Command::new("sgdisk").arg("-v").arg(raw))?;
        ensure!(sg.contains("No problems found"), "sgdisk -v: {sg}");
        ensure!(parts[0]["name"].as_str().is_some(), "GPT names");
    }
    Ok(out)
}

fn check_container(path: &Path, container: &Container, dir: &Path) -> Result<PathBuf> {
    let info = json(
        Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(path),
    )?;
    let fmt = info["format"].as_str().unwrap_or_default();
    let want = match container {
        Container::Raw => "raw",
        Container::Other(f) => f.as_str(),
        _ => "qcow2",
    };
    ensure!(fmt == want, "format {fmt}, want {want}");
    let backed = matches!(
        container,
        Container::Qcow2Backed | Container::Qcow2BackedRaw
    );
    if backed {
        let bf = info["backing-filename"]
            .as_str()
            .context("no backing file")?;
        ensure!(!bf.contains('/'), "backing file {bf} is not relative");
        ensure!(dir.join(bf).exists(), "backing file {bf} missing");
        let bfmt = info["backing-filename-format"].as_str().unwrap_or_default();
        let want = if *container == Container::Qcow2Backed {
            "qcow2"
        } else {
            "raw"
        };
        ensure!(bfmt == want, "backing format {bfmt}");
    } else {
        ensure!(
            info.get("backing-filename").is_none(),
            "unexpected backing file"
        );
    }
    if container == &Container::Raw {
        return Ok(path.to_owned());
    }
    // Convert back to raw (through the backing chain) for the content checks.
    let raw = dir.join(format!(
        "check-{}.raw",
        path.file_stem().and_then(|s| s.to_str()).unwrap_or("x")
    ));
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(path)
        .arg(&raw))?;
    Ok(raw)
}

fn containers() -> Vec<Container> {
    vec![
        Container::Raw,
        Container::Qcow2,
        Container::Qcow2Zlib,
        Container::Qcow2Zstd,
        Container::Qcow2Backed,
        Container::Qcow2BackedRaw,
    ]
}

fn check_case(case: &Case, all_containers: bool) -> Result<()> {
    let cache = tempfile::tempdir()?;
    let scratch = tempfile::tempdir()?;
    let list = if all_containers {
        containers()
    } else {
        vec![Container::Raw]
    };
    for container in list {
        let t = Instant::now();
        let path = build_image_in(cache.path(), &case.layout, container.clone())
            .with_context(|| format!("{}: building {container:?}", case.name))?;
        let built = t.elapsed();
        let t = Instant::now();
        let again = build_image_in(cache.path(), &case.layout, container.clone())?;
        let hit = t.elapsed();
        ensure!(again == path, "cache hit returned another path");
        let on_disk = std::fs::metadata(&path).map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.blocks() * 512
        })?;
        eprintln!(
            "{:>14} {:<16} build {:>7.1} ms, cache hit {:>5.2} ms, on disk {:>6} KiB",
            case.name,
            format!("{container:?}"),
            built.as_secs_f64() * 1e3,
            hit.as_secs_f64() * 1e3,
            on_disk / 1024
        );
        ensure!(hit < Duration::from_millis(50), "cache hit took {hit:?}");
        let raw = check_container(&path, &container, cache.path())
            .with_context(|| format!("{}: {container:?}", case.name))?;
        let parts =
            check_table(&raw, case).with_context(|| format!("{}: {container:?}", case.name))?;
        for ((_, start, size), (num, _, expect)) in parts.iter().zip(&case.parts) {
            check_fs(&raw, *start, *size, expect, scratch.path())
                .with_context(|| format!("{}: {container:?}: partition {num}", case.name))?;
        }
        if raw != path {
            std::fs::remove_file(&raw)?;
        }
    }
    Ok(())
}

fn case(name: &str) -> (Trees, Case) {
    let trees = Trees {
        root: root_tree(),
        boot: boot_tree(),
        esp: esp_tree(),
    };
    let c = cases(&trees)
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case {name}"));
    (trees, c)
}

#[test]
fn bare_ext4() -> Result<()> {
    {
        let (_t, c) = case("bare-ext4");
        check_case(&c, true)
    }
}

#[test]
fn bare_xfs_small() -> Result<()> {
    {
        let (_t, c) = case("bare-xfs-small");
        check_case(&c, false)
    }
}

#[test]
fn mbr() -> Result<()> {
    {
        let (_t, c) = case("mbr");
        check_case(&c, true)
    }
}

#[test]
fn mbr_extended() -> Result<()> {
    {
        let (_t, c) = case("mbr-extended");
        check_case(&c, true)
    }
}

#[test]
fn gpt() -> Result<()> {
    {
        let (_t, c) = case("gpt");
        check_case(&c, true)
    }
}

#[test]
fn lvm_mbr() -> Result<()> {
    {
        let (_t, c) = case("lvm-mbr");
        check_case(&c, true)
    }
}

#[test]
fn lvm_gpt() -> Result<()> {
    {
        let (_t, c) = case("lvm-gpt");
        check_case(&c, true)
    }
}

#[test]
fn gpt_lvm() -> Result<()> {
    let (_t, c) = case("gpt-lvm");
    check_case(&c, false)
}

#[test]
fn other_formats() -> Result<()> {
    let cache = tempfile::tempdir()?;
    let (_t, c) = case("bare-ext4");
    for f in ["vmdk", "vpc", "vhdx", "vdi"] {
        let p = build_image_in(cache.path(), &c.layout, Container::Other(f.into()))?;
        ensure!(p.extension().and_then(|e| e.to_str()) == Some(f));
        check_container(&p, &Container::Other(f.into()), cache.path())?;
    }
    Ok(())
}

#[test]
fn overlay_holds_the_difference() -> Result<()> {
    let cache = tempfile::tempdir()?;
    let mut a = Tree::new();
    a.file("/etc/hostname", "base\n")
        .file("/etc/motd", "hello\n");
    let mut b = a.clone();
    b.file("/etc/hostname", "top\n");
    let vol = |t: &Tree| {
        Volume::new(FsType::Ext4, 16)
            .with_tree(t)
            .with_uuid(ROOT_UUID)
    };
    let base = Layout::Mbr(vec![vol(&a)]);
    let top = Layout::Mbr(vec![vol(&b)]);
    let ov = build_overlay_in(cache.path(), &base, Container::Qcow2, &top)?;
    let info = json(
        Command::new("qemu-img")
            .args(["info", "--output=json", "--backing-chain"])
            .arg(&ov),
    )?;
    let chain = info.as_array().context("chain")?;
    ensure!(chain.len() == 2, "{info}");
    ensure!(
        !chain[0]["backing-filename"]
            .as_str()
            .unwrap_or("/")
            .contains('/')
    );
    let map = json(
        Command::new("qemu-img")
            .args(["map", "--output=json"])
            .arg(&ov),
    )?;
    let in_top: u64 = map
        .as_array()
        .context("map")?
        .iter()
        .filter(|m| m["depth"] == 0 && m["data"] == true)
        .map(|m| m["length"].as_u64().unwrap_or(0))
        .sum();
    ensure!(
        in_top > 0 && in_top < 4 << 20,
        "overlay holds {in_top} bytes"
    );
    let raw = cache.path().join("merged.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&ov)
        .arg(&raw))?;
    let dev = format!("{}?offset={}", raw.display(), 1 << 20);
    ensure!(
        run(Command::new("debugfs")
            .args(["-R", "cat /etc/hostname"])
            .arg(&dev))?
            == "top\n"
    );
    ensure!(
        run(Command::new("debugfs")
            .args(["-R", "cat /etc/motd"])
            .arg(&dev))?
            == "hello\n"
    );
    // The same overlay again is a cache hit.
    ensure!(build_overlay_in(cache.path(), &base, Container::Qcow2, &top)? == ov);
    Ok(())
}

#[test]
fn hash_follows_content_not_location() -> Result<()> {
    let cache = tempfile::tempdir()?;
    let mut a = Tree::new();
    a.file("/etc/hostname", "x\n");
    let b = a.clone();
    let l = |t: &Tree| Layout::Bare(Volume::new(FsType::Ext4, 8).with_tree(t));
    let pa = build_image_in(cache.path(), &l(&a), Container::Raw)?;
    ensure!(
        build_image_in(cache.path(), &l(&b), Container::Raw)? == pa,
        "same content, other dir"
    );
    let mut c = a.clone();
    c.chmod("/etc/hostname", 0o600);
    ensure!(
        build_image_in(cache.path(), &l(&c), Container::Raw)? != pa,
        "mode must count"
    );
    let mut d = a.clone();
    d.owner("/etc/hostname", 1, 1);
    ensure!(
        build_image_in(cache.path(), &l(&d), Container::Raw)? != pa,
        "owner must count"
    );
    let mut e = a.clone();
    e.file("/etc/hostname", "y\n");
    ensure!(
        build_image_in(cache.path(), &l(&e), Container::Raw)? != pa,
        "bytes must count"
    );
    let mut f = a.clone();
    f.symlink("/etc/l", "/a");
    let pf = build_image_in(cache.path(), &l(&f), Container::Raw)?;
    let mut g = a.clone();
    g.symlink("/etc/l", "/b");
    ensure!(
        build_image_in(cache.path(), &l(&g), Container::Raw)? != pf,
        "symlink target must count"
    );
    Ok(())
}

#[test]
fn concurrent_builds_of_one_image() -> Result<()> {
    let cache = tempfile::tempdir()?;
    let mut t = Tree::new();
    t.file("/etc/hostname", "race\n");
    let layout = Layout::Gpt(vec![GptPart::new(
        "8300",
        "root",
        Volume::new(FsType::Ext4, 16).with_tree(&t),
    )]);
    let paths: Vec<PathBuf> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| build_image_in(cache.path(), &layout, Container::Qcow2Backed)))
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("thread"))
            .collect::<Result<_>>()
    })?;
    ensure!(paths.windows(2).all(|w| w[0] == w[1]));
    let names: Vec<String> = std::fs::read_dir(cache.path())?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    ensure!(
        names.iter().all(|n| !n.starts_with(".tmp-")),
        "leftovers: {names:?}"
    );
    ensure!(names.len() == 3, "raw, qcow2 base, overlay: {names:?}");
    Ok(())
}

#[test]
fn errors_name_the_command() -> Result<()> {
    let cache = tempfile::tempdir()?;
    let l = Layout::Bare(Volume::new(
        FsType::Ext4With(vec!["no_such_feature".into()]),
        8,
    ));
    let Err(e) = build_image_in(cache.path(), &l, Container::Raw) else {
        bail!("a bad feature must fail")
    };
    let msg = format!("{e:#}");
    ensure!(
        msg.contains("mke2fs") && msg.contains("no_such_feature"),
        "{msg}"
    );
    let l = Layout::Bare(Volume::new(FsType::Xfs, 300).with_label("much-too-long-label"));
    ensure!(build_image_in(cache.path(), &l, Container::Raw).is_err());
    let l = Layout::Lvm {
        boot: None,
        vg: "bad name".into(),
        lvs: vec![("r".into(), Volume::new(FsType::Ext4, 8))],
        table: PartTable::Mbr,
    };
    ensure!(build_image_in(cache.path(), &l, Container::Raw).is_err());
    Ok(())
}

#[test]
fn default_cache_dir_is_in_target() {
    let d = ibkit_test_utils::cache_dir();
    if std::env::var_os("IBKIT_FIXTURE_DIR").is_none()
        && std::env::var_os("CARGO_TARGET_DIR").is_none()
    {
        assert!(d.ends_with("target/ibkit-fixtures"), "{}", d.display());
        assert!(!d.to_string_lossy().contains(".."), "{}", d.display());
    }
}

/// A window of a file, for the filesystem readers the checker uses.
#[derive(Clone)]
struct At {
    file: std::sync::Arc<File>,
    base: u64,
}

impl ext4_view::Ext4Read for At {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Ok(self.file.read_exact_at(dst, self.base + start_byte)?)
    }
}

impl lamxfs::BlockRead for At {
    type Error = std::io::Error;
    fn read_at(&mut self, offset_bytes: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.file.read_exact_at(buf, self.base + offset_bytes)
    }
}

/// The crates ibkit reads filesystems with (ext4-view, lamxfs) read these
/// fixtures: features mkfs enables by default are ones they support.
#[test]
fn workspace_readers_read_fixtures() -> Result<()> {
    let cache = tempfile::tempdir()?;
    let root = root_tree();
    let layout = Layout::Gpt(vec![
        GptPart::new(
            "8300",
            "ext4",
            Volume::new(FsType::Ext4, 16).with_tree(&root),
        ),
        GptPart::new(
            "8300",
            "xfs",
            Volume::new(FsType::Xfs, 300).with_tree(&root),
        ),
        GptPart::new(
            "8300",
            "xfs-small",
            Volume::new(FsType::Xfs, 16).with_tree(&root),
        ),
        GptPart::new(
            "8300",
            "ext2",
            Volume::new(FsType::Ext2, 8).with_tree(&root),
        ),
    ]);
    let raw = build_image_in(cache.path(), &layout, Container::Raw)?;
    let file = std::sync::Arc::new(File::open(&raw)?);
    let mib = 1u64 << 20;
    for base in [mib, 333 * mib] {
        let fs = ext4_view::Ext4::load(Box::new(At {
            file: file.clone(),
            base,
        }))
        .map_err(|e| anyhow::anyhow!("ext4-view: {e}"))?;
        let s = fs
            .read_to_string("/etc/hostname")
            .map_err(|e| anyhow::anyhow!("ext4-view: {e}"))?;
        ensure!(s == "fixture\n", "{s:?}");
        let m = fs
            .metadata("/home/alice")
            .map_err(|e| anyhow::anyhow!("ext4-view: {e}"))?;
        ensure!(
            m.uid() == 1000 && m.gid() == 1000,
            "owner {} {}",
            m.uid(),
            m.gid()
        );
    }
    for base in [17 * mib, 317 * mib] {
        let mut fs = lamxfs::Xfs::open(
            At {
                file: file.clone(),
                base,
            },
            0,
        )
        .map_err(|e| anyhow::anyhow!("lamxfs at {base}: {e:?}"))?;
        let b = fs
            .read_file(lamxfs::Path::new(b"/etc/hostname"))
            .map_err(|e| anyhow::anyhow!("lamxfs at {base}: {e:?}"))?;
        ensure!(b == b"fixture\n", "{b:?}");
    }
    Ok(())
}

//! Integration tests for the ext2/3/4 reader, on real images made by
//! e2fsprogs (`mke2fs -d`, `debugfs`). Needs root (to chown the source tree
//! and create a FIFO), as in CI.
#![allow(clippy::unwrap_used)]

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ibkit_image::fs::ext4::{Ext4, fuzz_one};
use ibkit_image::fs::{FileKind, FileSystem, FsError};
use ibkit_image::source::{RawFile, Source};
use ibkit_test_utils::with_deadline;

// ---------------------------------------------------------------------------
// helpers

/// Deterministic xorshift64* generator.
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng::new(seed);
    (0..len).map(|_| r.next() as u8).collect()
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(path, bytes).unwrap();
}

fn name(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

/// A scratch directory holding a source tree and images.
struct Scratch {
    dir: tempfile::TempDir,
}
impl Scratch {
    fn new() -> Self {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn tree(&self) -> PathBuf {
        let t = self.dir.path().join("tree");
        fs::create_dir_all(&t).unwrap();
        t
    }
    fn path(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }
}

/// `mke2fs -q -F <args> -d tree img size`.
fn mkfs(tree: &Path, img: &Path, args: &[&str], size: &str) {
    let out = Command::new("mke2fs")
        .args(["-q", "-F"])
        .args(args)
        .arg("-d")
        .arg(tree)
        .arg(img)
        .arg(size)
        .output()
        .expect("run mke2fs");
    assert!(
        out.status.success(),
        "mke2fs {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run debugfs commands (one per line) on `img`; returns stdout.
fn debugfs(img: &Path, cmds: &str, writable: bool) -> String {
    use std::io::Write;
    let mut cmd = Command::new("debugfs");
    if writable {
        cmd.arg("-w");
    }
    let mut child = cmd
        .arg("-f")
        .arg("-")
        .arg(img)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run debugfs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(cmds.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "debugfs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // With -f, debugfs echoes each command as "debugfs: cmd".
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("debugfs: "))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Byte offset of inode `path`'s on-disk record (via `debugfs imap`).
fn inode_offset(img: &Path, path: &str, bs: u64) -> u64 {
    let out = debugfs(img, &format!("imap {path}\n"), false);
    let rest = out.split("located at block ").nth(1).expect("imap output");
    let (blk, rest) = rest.split_once(", offset 0x").unwrap();
    let off: String = rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    blk.trim().parse::<u64>().unwrap() * bs + u64::from_str_radix(&off, 16).unwrap()
}

/// Physical blocks of `path` (via `debugfs blocks`).
fn blocks_of(img: &Path, path: &str) -> Vec<u64> {
    let out = debugfs(img, &format!("blocks {path}\n"), false);
    out.split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

fn open_img(img: &Path) -> Ext4 {
    let src: Source = Arc::new(RawFile::open(img).unwrap());
    Ext4::open(src).unwrap_or_else(|e| panic!("open {}: {e}", img.display()))
}

fn open_bytes(bytes: Vec<u8>) -> Result<Ext4, FsError> {
    Ext4::open(Arc::new(bytes))
}

fn read_all(fs: &Ext4, path: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    fs.open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", String::from_utf8_lossy(path)))
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn join(dir: &[u8], n: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if p.last() != Some(&b'/') {
        p.push(b'/');
    }
    p.extend_from_slice(n);
    p
}

fn host_kind(m: &fs::Metadata) -> FileKind {
    let t = m.file_type();
    if t.is_symlink() {
        FileKind::Symlink
    } else if t.is_dir() {
        FileKind::Dir
    } else if t.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    }
}

/// Set by the real-image comparison only (see `real_image`): debugfs rdump
/// skips device nodes and loses setuid/setgid/sticky bits.
static RDUMP_QUIRKS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Files larger than this are compared by size only (tests read them
/// specially).
const FULL_COMPARE_MAX: u64 = 64 << 20;

/// Assert the filesystem mirrors the host tree `host`: listings, kinds,
/// modes, owners, sizes, contents and link targets. Returns the number of
/// entries compared.
fn assert_tree_eq(fs: &Ext4, host: &Path) -> usize {
    compare_dir(fs, host, b"/", true)
}

fn compare_dir(fs: &Ext4, host: &Path, path: &[u8], root: bool) -> usize {
    let show = String::from_utf8_lossy(path).into_owned();
    let mut host_names: Vec<Vec<u8>> = fs::read_dir(host)
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    if root {
        host_names.retain(|n| n != b"lost+found");
    }
    host_names.sort();
    let mut entries = fs
        .read_dir(path)
        .unwrap_or_else(|e| panic!("read_dir {show}: {e}"));
    if root {
        entries.retain(|e| e.name != b"lost+found");
    }
    if RDUMP_QUIRKS.load(std::sync::atomic::Ordering::Relaxed) {
        // debugfs rdump does not recreate device nodes.
        entries.retain(|e| {
            e.kind != FileKind::Other || host.join(name(&e.name)).symlink_metadata().is_ok()
        });
    }
    let mut names: Vec<Vec<u8>> = entries.iter().map(|e| e.name.clone()).collect();
    names.sort();
    assert_eq!(names, host_names, "listing of {show}");
    let mut count = 0;
    for e in entries {
        count += 1;
        let hp = host.join(name(&e.name));
        let fp = join(path, &e.name);
        let fshow = String::from_utf8_lossy(&fp).into_owned();
        let hm = fs::symlink_metadata(&hp).unwrap();
        let m = fs
            .lstat(&fp)
            .unwrap_or_else(|err| panic!("lstat {fshow}: {err}"))
            .expect("entry exists");
        let kind = host_kind(&hm);
        assert_eq!(m.kind, kind, "kind of {fshow}");
        assert_eq!(e.kind, kind, "dirent kind of {fshow}");
        let mode_mask = if RDUMP_QUIRKS.load(std::sync::atomic::Ordering::Relaxed) {
            0o777
        } else {
            0o7777
        };
        assert_eq!(m.mode & mode_mask, hm.mode() & mode_mask, "mode of {fshow}");
        assert_eq!((m.uid, m.gid), (hm.uid(), hm.gid()), "owner of {fshow}");
        match kind {
            FileKind::File => {
                assert_eq!(m.size, hm.len(), "size of {fshow}");
                if hm.len() <= FULL_COMPARE_MAX {
                    assert!(
                        read_all(fs, &fp) == fs::read(&hp).unwrap(),
                        "contents of {fshow}"
                    );
                }
            }
            FileKind::Symlink => {
                let target = fs::read_link(&hp).unwrap();
                assert_eq!(
                    fs.read_link(&fp).unwrap(),
                    target.as_os_str().as_bytes(),
                    "target of {fshow}"
                );
                assert_eq!(
                    m.size,
                    target.as_os_str().len() as u64,
                    "symlink size of {fshow}"
                );
            }
            FileKind::Dir => count += compare_dir(fs, &hp, &fp, false),
            FileKind::Other => {}
        }
    }
    count
}

/// The standard test tree: small and odd-sized files, holes, nested and
/// non-UTF-8 names, short/long symlinks, special modes and owners, a FIFO.
fn build_tree(root: &Path) {
    build_tree_opts(root, true);
}

/// `trailing_holes`: include files ending in a hole (mke2fs 1.47 drops the
/// trailing hole from i_size when inline_data is enabled, so those tests
/// leave them out).
fn build_tree_opts(root: &Path, trailing_holes: bool) {
    write(&root.join("empty"), b"");
    write(&root.join("one"), b"x");
    for n in [
        59usize, 60, 61, 100, 1000, 1023, 1024, 1025, 4095, 4096, 4097, 70_000, 300_000,
    ] {
        write(&root.join(format!("f{n}")), &data(n as u64, n));
    }
    write(
        &root.join("etc/passwd"),
        b"root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/sh\n",
    );
    write(&root.join("etc/hostname"), b"testhost\n");
    write(&root.join("a/b/c/deep.txt"), b"deep\n");
    write(&root.join("a/b/sibling"), &data(7, 5000));
    // Holes: data at 0 and at 1 MiB + 123, 3 MiB long.
    {
        use std::os::unix::fs::FileExt;
        let f = fs::File::create(root.join("sparse")).unwrap();
        f.write_all_at(&data(11, 4096), 0).unwrap();
        f.write_all_at(&data(12, 5000), (1 << 20) + 123).unwrap();
        f.write_all_at(b"tail", (3 << 20) - 4).unwrap();
        if trailing_holes {
            let g = fs::File::create(root.join("holes_only")).unwrap();
            g.set_len(1 << 20).unwrap();
            let h = fs::File::create(root.join("trailing_hole")).unwrap();
            h.write_all_at(b"data", 0).unwrap();
            h.set_len(100_000).unwrap();
        }
    }
    symlink("etc/passwd", root.join("short")).unwrap();
    symlink("x".repeat(59), root.join("link59")).unwrap();
    symlink("y".repeat(60), root.join("link60")).unwrap();
    symlink(format!("/{}", "mid/".repeat(25)), root.join("midlink")).unwrap();
    symlink(format!("/{}", "long/".repeat(40)), root.join("long")).unwrap();
    symlink("/nonexistent/target", root.join("dangling")).unwrap();
    symlink("a/b", root.join("dirlink")).unwrap();
    // Non-UTF-8 names.
    write(&root.join(name(b"caf\xe9.txt")), b"latin1 name\n");
    write(
        &root.join(name(b"\xff\xfe")).join(name(b"\x80inner")),
        b"inner\n",
    );
    // Modes and owners (uids above 65535 exercise the high halves).
    write(&root.join("suid"), b"#!/bin/sh\n");
    fs::set_permissions(root.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    write(&root.join("private"), b"secret\n");
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir(root.join("dir700")).unwrap();
    fs::set_permissions(root.join("dir700"), fs::Permissions::from_mode(0o700)).unwrap();
    write(&root.join("user1000"), b"u\n");
    chown(root.join("user1000"), Some(1000), Some(1000)).unwrap();
    write(&root.join("bigid"), b"big ids\n");
    chown(root.join("bigid"), Some(70000), Some(70001)).unwrap();
    fs::create_dir(root.join("bigid_dir")).unwrap();
    chown(root.join("bigid_dir"), Some(123_456), Some(654_321)).unwrap();
    let st = Command::new("mkfifo")
        .arg(root.join("fifo"))
        .status()
        .unwrap();
    assert!(st.success());
    // Directory sizes around the inline-data boundary (56 bytes in i_block).
    write(&root.join("smalldir/x"), b"1");
    for i in 0..4 {
        write(
            &root.join(format!("middir/entry-number-{i:02}")),
            &data(100 + i, 10),
        );
    }
}

/// Make a directory with `n` files (an htree directory once large).
fn many_files(dir: &Path, n: usize) {
    fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        fs::write(dir.join(many_name(i)), format!("{i}\n")).unwrap();
    }
}

/// Long names, so that 3000 of them need a two-level htree with 1 KiB blocks.
fn many_name(i: usize) -> String {
    format!("file-with-a-rather-long-name-to-force-a-two-level-htree-index-{i:05}")
}

/// `e2fsck -fyD`: mke2fs -d writes linear directories; this indexes them.
fn index_directories(img: &Path) {
    let st = Command::new("e2fsck")
        .args(["-fyD"])
        .arg(img)
        .output()
        .unwrap();
    assert!(
        st.status.code().is_some_and(|c| c <= 1),
        "e2fsck -D: {}",
        String::from_utf8_lossy(&st.stdout)
    );
}

/// Build the standard tree, make an image with `args`, compare everything.
fn roundtrip(args: &[&str], size: &str) -> (Scratch, Ext4) {
    let s = Scratch::new();
    let tree = s.tree();
    build_tree_opts(&tree, !args.iter().any(|a| a.contains("inline_data")));
    let img = s.path("img");
    mkfs(&tree, &img, args, size);
    let fs = open_img(&img);
    let n = assert_tree_eq(&fs, &tree);
    assert!(n > 40, "compared only {n} entries");
    assert!(!fs.needs_recovery());
    (s, fs)
}

// ---------------------------------------------------------------------------
// feature matrix

#[test]
fn ext4_default_features() {
    let (s, fs) = roundtrip(
        &[
            "-t",
            "ext4",
            "-L",
            "rootfs",
            "-U",
            "0b3c5e7a-1111-4222-8333-944455556666",
        ],
        "32M",
    );
    assert_eq!(fs.type_name(), "ext4");
    assert_eq!(fs.label().as_deref(), Some("rootfs"));
    assert_eq!(
        fs.uuid(),
        Some([
            0x0b, 0x3c, 0x5e, 0x7a, 0x11, 0x11, 0x42, 0x22, 0x83, 0x33, 0x94, 0x44, 0x55, 0x55,
            0x66, 0x66
        ])
    );
    drop(s);
}

#[test]
fn ext4_block_sizes() {
    for bs in ["1024", "2048", "4096"] {
        let (_s, fs) = roundtrip(&["-t", "ext4", "-b", bs], "32M");
        assert_eq!(fs.block_size().to_string(), bs);
        assert_eq!(fs.label(), None);
    }
}

#[test]
fn ext4_64k_blocks() {
    let (_s, fs) = roundtrip(&["-t", "ext4", "-b", "65536"], "128M");
    assert_eq!(fs.block_size(), 65536);
}

#[test]
fn ext2() {
    let (_s, fs) = roundtrip(&["-t", "ext2"], "32M");
    assert_eq!(fs.type_name(), "ext2");
}

#[test]
fn ext3() {
    let (_s, fs) = roundtrip(&["-t", "ext3"], "32M");
    assert_eq!(fs.type_name(), "ext3");
}

#[test]
fn ext4_inode_128() {
    let (_s, fs) = roundtrip(&["-t", "ext4", "-I", "128"], "32M");
    assert_eq!(fs.type_name(), "ext4");
}

#[test]
fn ext4_32bit_descriptors() {
    roundtrip(&["-t", "ext4", "-O", "^64bit"], "32M");
}

#[test]
fn ext4_64bit() {
    roundtrip(&["-t", "ext4", "-O", "64bit", "-b", "4096"], "32M");
}

#[test]
fn ext4_no_filetype() {
    // Directory entries carry no type: kinds come from the inodes.
    roundtrip(&["-t", "ext4", "-O", "^filetype"], "32M");
}

#[test]
fn ext4_bigalloc() {
    roundtrip(&["-t", "ext4", "-O", "bigalloc", "-C", "16384"], "64M");
}

#[test]
fn ext4_misc_features() {
    // Features that change nothing for a reader must not be refused.
    roundtrip(
        &["-t", "ext4", "-O", "encrypt,casefold,project,quota"],
        "32M",
    );
}

#[test]
fn ext4_inline_data() {
    let (s, fs) = roundtrip(&["-t", "ext4", "-O", "inline_data"], "32M");
    let img = s.path("img");
    // Make sure the interesting cases really are inline.
    for p in ["/f59", "/f100", "/smalldir", "/midlink"] {
        let out = debugfs(&img, &format!("stat {p}\n"), false);
        assert!(
            out.contains("Flags: 0x10000000"),
            "{p} is not inline:\n{out}"
        );
    }
    // f100 continues past i_block into the system.data xattr.
    let out = debugfs(&img, "stat /f100\n", false);
    let inline: u64 = out
        .split("Size of inline data: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert_eq!(inline, 100);
    assert_eq!(fs.read_dir(b"/smalldir").unwrap().len(), 1);
    assert_eq!(
        fs.lstat(b"/smalldir/..").unwrap().unwrap().kind,
        FileKind::Dir
    );
    assert_eq!(read_all(&fs, b"/smalldir/../smalldir/x"), b"1");
}

/// mke2fs moves a full inline directory to a block rather than growing it
/// into the xattr (the kernel grows it): craft one whose entries continue
/// in `system.data`, and check debugfs agrees with us.
#[test]
fn ext4_inline_dir_continued_in_xattr() {
    let s = Scratch::new();
    let tree = s.tree();
    build_tree_opts(&tree, false);
    let img = s.path("img");
    mkfs(
        &tree,
        &img,
        &[
            "-t",
            "ext4",
            "-O",
            "inline_data,^metadata_csum",
            "-b",
            "4096",
            "-I",
            "256",
        ],
        "32M",
    );
    let ino_of = |p: &str| -> u32 {
        let out = debugfs(&img, &format!("stat {p}\n"), false);
        out.split("Inode: ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (host_ino, one_ino) = (ino_of("/etc/hostname"), ino_of("/one"));
    let off = inode_offset(&img, "/smalldir", 4096);
    let dirent = |ino: u32, rec: u16, name: &[u8]| -> Vec<u8> {
        let mut d = ino.to_le_bytes().to_vec();
        d.extend_from_slice(&rec.to_le_bytes());
        d.push(name.len() as u8);
        d.push(1);
        d.extend_from_slice(name);
        d.resize(rec as usize, 0);
        d
    };
    let value = [dirent(host_ino, 16, b"extra"), dirent(one_ino, 16, b"more")].concat();
    let mut area = 0xEA02_0000u32.to_le_bytes().to_vec();
    area.extend_from_slice(&[4, 7]); // name_len, name_index (system.)
    area.extend_from_slice(&24u16.to_le_bytes()); // value offset
    area.extend_from_slice(&0u32.to_le_bytes()); // value inode
    area.extend_from_slice(&(value.len() as u32).to_le_bytes());
    area.extend_from_slice(&0u32.to_le_bytes()); // hash (0: unchecked)
    area.extend_from_slice(b"data");
    area.extend_from_slice(&[0; 4]); // end of entries
    area.extend_from_slice(&value);
    let extra_isize = {
        let raw = read_block(&img, off / 4096, 4096);
        let at = (off % 4096) as usize + 0x80;
        u16::from_le_bytes([raw[at], raw[at + 1]]) as u64
    };
    patch(&img, off + 128 + extra_isize, &area);
    patch(&img, off + 4, &(60 + value.len() as u32).to_le_bytes()); // i_size
    let ls = debugfs(&img, "ls /smalldir\n", false);
    assert!(
        ls.contains("extra") && ls.contains("more"),
        "debugfs disagrees:\n{ls}"
    );
    let fs = open_img(&img);
    let mut names: Vec<_> = fs
        .read_dir(b"/smalldir")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![b"extra".to_vec(), b"more".to_vec(), b"x".to_vec()]
    );
    assert_eq!(read_all(&fs, b"/smalldir/extra"), b"testhost\n");
    assert_eq!(read_all(&fs, b"/smalldir/more"), b"x");
}

#[test]
fn ext4_inline_data_1k_blocks_and_big_inodes() {
    roundtrip(
        &[
            "-t",
            "ext4",
            "-O",
            "inline_data",
            "-b",
            "1024",
            "-I",
            "1024",
        ],
        "32M",
    );
}

#[test]
fn meta_bg() {
    for extra in [
        &["-O", "meta_bg,^resize_inode"][..],
        &["-O", "meta_bg,^resize_inode,^64bit"][..],
    ] {
        let s = Scratch::new();
        let tree = s.tree();
        build_tree(&tree);
        // 600 inodes spread over 128 groups of 1 MiB: descriptors live in
        // 4 or 8 meta groups, and inodes in most groups are used.
        many_files(&tree.join("many"), 600);
        let img = s.path("img");
        let mut args = vec!["-t", "ext4", "-b", "1024", "-g", "1024", "-N", "1024"];
        args.extend_from_slice(extra);
        mkfs(&tree, &img, &args, "128M");
        let out = Command::new("dumpe2fs")
            .arg("-h")
            .arg(&img)
            .output()
            .unwrap();
        let hdr = String::from_utf8_lossy(&out.stdout);
        assert!(hdr.contains("meta_bg"), "{hdr}");
        let fs = open_img(&img);
        assert_tree_eq(&fs, &tree);
        // Inodes really are spread across meta groups.
        let high = debugfs(&img, &format!("stat /many/{}\n", many_name(599)), false);
        let ino: u64 = high
            .split("Inode: ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(ino > 16 * 8 * 2, "inode {ino} is in an early group");
    }
}

#[test]
fn block_map_double_and_triple_indirect() {
    let s = Scratch::new();
    let tree = s.tree();
    build_tree(&tree);
    // 1 KiB blocks: 12 direct + 256 single + 65536 double; 2 MiB uses double
    // indirection, data at 80 MiB needs triple.
    write(&tree.join("big2m"), &data(99, 2 << 20));
    {
        use std::os::unix::fs::FileExt;
        let f = fs::File::create(tree.join("triple")).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(&data(5, 3000), 80 << 20).unwrap();
    }
    let img = s.path("img");
    mkfs(&tree, &img, &["-t", "ext3", "-b", "1024"], "32M");
    let fs = open_img(&img);
    assert_eq!(fs.type_name(), "ext3");
    assert_tree_eq(&fs, &tree);
    let st = debugfs(&img, "stat /triple\n", false);
    assert!(st.contains("(TIND)"), "{st}");
    let st = debugfs(&img, "stat /big2m\n", false);
    assert!(st.contains("(DIND)"), "{st}");
    // Read the tail of the triple-indirect file by seeking.
    let mut f = fs.open_file(b"/triple").unwrap();
    assert_eq!(f.size(), (80 << 20) + 3000);
    let mut head = [0u8; 4];
    f.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"head");
    f.seek(SeekFrom::Start((80 << 20) - 100)).unwrap();
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).unwrap();
    assert_eq!(tail.len(), 3100);
    assert!(tail[..100].iter().all(|&b| b == 0));
    assert_eq!(&tail[100..], &data(5, 3000)[..]);
    // Same thing streamed (80 MiB of holes through the Read interface).
    let t = Instant::now();
    let all = read_all(&fs, b"/triple");
    assert_eq!(all.len(), (80 << 20) + 3000);
    assert_eq!(&all[80 << 20..], &data(5, 3000)[..]);
    eprintln!(
        "streamed 80 MiB sparse block-mapped file in {:?}",
        t.elapsed()
    );
}

#[test]
fn ext4_no_extents_4k() {
    roundtrip(&["-t", "ext4", "-O", "^extent,^64bit", "-b", "4096"], "32M");
}

#[test]
fn htree_directories() {
    for args in [
        &["-t", "ext4", "-b", "1024"][..],
        &["-t", "ext4", "-O", "large_dir,inline_data", "-b", "4096"][..],
        &["-t", "ext3", "-b", "1024"][..],
    ] {
        let s = Scratch::new();
        let tree = s.tree();
        many_files(&tree.join("big"), 3000);
        write(&tree.join("other/file"), b"x");
        let img = s.path("img");
        mkfs(&tree, &img, args, "64M");
        index_directories(&img);
        let st = debugfs(&img, "stat /big\n", false);
        assert!(
            st.contains("Flags: 0x1000") || st.contains("Flags: 0x81000"),
            "not an htree dir ({args:?}):\n{st}"
        );
        let htree = debugfs(&img, "htree_dump /big\n", false);
        assert!(htree.contains("Number of entries"), "{htree}");
        if args.contains(&"1024") {
            assert!(
                htree.contains("Indirect levels: 1"),
                "{args:?}: expected a two-level htree"
            );
        }
        let fs = open_img(&img);
        let entries = fs.read_dir(b"/big").unwrap();
        // Exactly the 3000 names: no fake entries from the index blocks.
        assert_eq!(entries.len(), 3000, "{args:?}");
        let mut names: Vec<_> = entries
            .iter()
            .map(|e| String::from_utf8(e.name.clone()).unwrap())
            .collect();
        names.sort();
        let want: Vec<_> = (0..3000).map(many_name).collect();
        assert_eq!(names, want);
        assert!(entries.iter().all(|e| e.kind == FileKind::File));
        assert_eq!(
            read_all(&fs, format!("/big/{}", many_name(2999)).as_bytes()),
            b"2999\n"
        );
        assert_eq!(
            read_all(&fs, format!("/big/{}", many_name(0)).as_bytes()),
            b"0\n"
        );
        assert_eq!(fs.lstat(b"/big/nope").unwrap(), None);
        assert_tree_eq(&fs, &tree);
    }
}

#[test]
fn sparse_file_over_4gib() {
    let s = Scratch::new();
    let tree = s.tree();
    let size: u64 = (5 << 30) + 12345;
    {
        use std::os::unix::fs::FileExt;
        let f = fs::File::create(tree.join("huge")).unwrap();
        f.write_all_at(b"BEGIN", 0).unwrap();
        f.write_all_at(b"MIDDLE", 1 << 32).unwrap();
        f.write_all_at(b"END", size - 3).unwrap();
    }
    let img = s.path("img");
    mkfs(&tree, &img, &["-t", "ext4"], "32M");
    let fs = open_img(&img);
    let m = fs.lstat(b"/huge").unwrap().unwrap();
    assert_eq!(m.size, size);
    let mut head = Vec::new();
    fs.open(b"/huge")
        .unwrap()
        .take(1 << 20)
        .read_to_end(&mut head)
        .unwrap();
    assert_eq!(head.len(), 1 << 20);
    assert_eq!(&head[..5], b"BEGIN");
    assert!(head[5..].iter().all(|&b| b == 0));
    let mut f = fs.open_file(b"/huge").unwrap();
    f.seek(SeekFrom::Start((1 << 32) - 2)).unwrap();
    let mut mid = [0xAAu8; 8];
    f.read_exact(&mut mid).unwrap();
    assert_eq!(&mid, b"\0\0MIDDLE");
    f.seek(SeekFrom::End(-10)).unwrap();
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, b"\0\0\0\0\0\0\0END");
    // Reading past the end yields nothing.
    f.seek(SeekFrom::Start(size + 100)).unwrap();
    assert_eq!(f.read(&mut mid).unwrap(), 0);
}

#[test]
fn uninitialized_extents_read_as_zeros() {
    let s = Scratch::new();
    let tree = s.tree();
    let f = fs::File::create(tree.join("prealloc")).unwrap();
    f.set_len(64 << 10).unwrap();
    write(&tree.join("keep"), b"keep\n");
    let img = s.path("img");
    mkfs(&tree, &img, &["-t", "ext4", "-b", "4096"], "32M");
    debugfs(&img, "fallocate /prealloc 0 15\n", true);
    let ex = debugfs(&img, "ex /prealloc\n", false);
    assert!(ex.contains("Uninit"), "{ex}");
    // Make the uninitialized blocks non-zero on disk: they must still read
    // as zeros.
    let blocks = blocks_of(&img, "/prealloc");
    assert!(!blocks.is_empty());
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&img).unwrap();
        for b in &blocks {
            f.write_all_at(&[0xEE; 4096], b * 4096).unwrap();
        }
    }
    let fs = open_img(&img);
    let all = read_all(&fs, b"/prealloc");
    assert_eq!(all.len(), 64 << 10);
    assert!(all.iter().all(|&b| b == 0));
    assert_eq!(read_all(&fs, b"/keep"), b"keep\n");
}

#[test]
fn path_semantics() {
    let (s, fs) = roundtrip(&["-t", "ext4"], "32M");
    let _ = s;
    let passwd = read_all(&fs, b"/etc/passwd");
    for p in [
        &b"//etc//passwd"[..],
        b"/./etc/./passwd",
        b"etc/passwd",
        b"/etc/../etc/passwd",
    ] {
        assert_eq!(read_all(&fs, p), passwd, "{}", String::from_utf8_lossy(p));
    }
    assert_eq!(fs.lstat(b"/etc/").unwrap().unwrap().kind, FileKind::Dir);
    assert_eq!(fs.lstat(b"/").unwrap().unwrap().kind, FileKind::Dir);
    assert_eq!(fs.lstat(b"").unwrap().unwrap().kind, FileKind::Dir);
    assert_eq!(fs.lstat(b"/nope").unwrap(), None);
    assert_eq!(fs.lstat(b"/etc/nope").unwrap(), None);
    assert!(matches!(
        fs.lstat(b"/etc/passwd/x"),
        Err(FsError::NotADirectory)
    ));
    // A symlink as an intermediate component is not followed.
    assert!(matches!(
        fs.lstat(b"/dirlink/c"),
        Err(FsError::NotADirectory)
    ));
    assert_eq!(
        fs.lstat(b"/dirlink").unwrap().unwrap().kind,
        FileKind::Symlink
    );
    assert!(matches!(
        fs.read_dir(b"/etc/passwd"),
        Err(FsError::NotADirectory)
    ));
    assert!(matches!(fs.read_dir(b"/nope"), Err(FsError::NotFound)));
    assert!(matches!(fs.open(b"/etc"), Err(FsError::WrongKind)));
    assert!(matches!(fs.open(b"/short"), Err(FsError::WrongKind)));
    assert!(matches!(fs.open(b"/fifo"), Err(FsError::WrongKind)));
    assert!(matches!(
        fs.read_link(b"/etc/passwd"),
        Err(FsError::WrongKind)
    ));
    assert!(fs.open(b"/nope").is_err());
    // `.` and `..` are never listed.
    for e in fs.read_dir(b"/a").unwrap() {
        assert!(e.name != b"." && e.name != b"..");
    }
    let long = vec![b'z'; 300];
    assert_eq!(fs.lstat(&join(b"/", &long)).unwrap(), None);
}

#[test]
fn probe_and_non_ext() {
    let s = Scratch::new();
    let tree = s.tree();
    write(&tree.join("x"), b"x");
    let img = s.path("img");
    mkfs(&tree, &img, &["-t", "ext4"], "8M");
    let raw = RawFile::open(&img).unwrap();
    assert!(Ext4::probe(&raw));
    let zeros = vec![0u8; 1 << 20];
    assert!(!Ext4::probe(&zeros));
    assert!(matches!(open_bytes(zeros), Err(FsError::Corrupt(_))));
    assert!(!Ext4::probe(&Vec::new()));
    assert!(open_bytes(Vec::new()).is_err());
}

#[test]
fn unsupported_features() {
    let s = Scratch::new();
    let tree = s.tree();
    build_tree(&tree);
    let img = s.path("img");
    mkfs(&tree, &img, &["-t", "ext4", "-O", "encrypt"], "16M");
    // An encrypted inode: metadata is fine, contents are refused.
    debugfs(
        &img,
        "sif /f100 flags 0x80800\nsif /a flags 0x80800\n",
        true,
    );
    let fs = open_img(&img);
    assert_eq!(fs.lstat(b"/f100").unwrap().unwrap().size, 100);
    assert!(matches!(fs.open(b"/f100"), Err(FsError::Unsupported(f)) if f.contains("encrypt")));
    assert!(matches!(fs.read_dir(b"/a"), Err(FsError::Unsupported(f)) if f.contains("encrypt")));
    assert_eq!(read_all(&fs, b"/f1000"), data(1000, 1000));
    drop(fs);
    // compression and unknown incompat features refuse the filesystem.
    let mut bytes = fs::read(&img).unwrap();
    let incompat = u32::from_le_bytes(bytes[1024 + 0x60..1024 + 0x64].try_into().unwrap());
    for (bit, want) in [
        (0x1u32, "compression"),
        (0x0080_0000, "incompat feature 0x800000"),
    ] {
        bytes[1024 + 0x60..1024 + 0x64].copy_from_slice(&(incompat | bit).to_le_bytes());
        match open_bytes(bytes.clone()) {
            Err(FsError::Unsupported(f)) => assert!(f.contains(want), "{f}"),
            other => panic!("bit {bit:#x}: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// journal replay

/// Make a small ext4 image with a known file; returns (scratch, tree, img).
fn journal_image(extra: &[&str]) -> (Scratch, PathBuf, PathBuf) {
    let s = Scratch::new();
    let tree = s.tree();
    write(&tree.join("a.txt"), b"hello\n");
    write(&tree.join("d/b.txt"), b"world\n");
    write(&tree.join("d/c.txt"), b"third\n");
    let img = s.path("img");
    let mut args = vec!["-b", "4096", "-L", "before"];
    if !extra.contains(&"-t") {
        args.extend_from_slice(&["-t", "ext4"]);
    }
    args.extend_from_slice(extra);
    mkfs(&tree, &img, &args, "16M");
    (s, tree, img)
}

/// Copy `img` and replay its journal with debugfs (the reference).
fn replayed_copy(s: &Scratch, img: &Path) -> PathBuf {
    let out = s.path("replayed");
    fs::copy(img, &out).unwrap();
    debugfs(&out, "jr\n", true);
    let hdr = Command::new("dumpe2fs")
        .arg("-h")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&hdr.stdout).contains("needs_recovery"));
    out
}

/// Everything our reader sees, as a sorted list of (path, kind, mode, uid,
/// gid, size, content-or-target).
fn snapshot(fs: &Ext4) -> Vec<(Vec<u8>, String)> {
    let mut out = Vec::new();
    let mut stack = vec![b"/".to_vec()];
    while let Some(dir) = stack.pop() {
        for e in fs.read_dir(&dir).unwrap() {
            let p = join(&dir, &e.name);
            let m = fs.lstat(&p).unwrap().unwrap();
            let body = match m.kind {
                FileKind::File => read_all(fs, &p),
                FileKind::Symlink => fs.read_link(&p).unwrap(),
                FileKind::Dir => {
                    stack.push(p.clone());
                    Vec::new()
                }
                FileKind::Other => Vec::new(),
            };
            out.push((p, format!("{m:?} {:?} {body:?}", e.kind)));
        }
    }
    out.sort();
    out
}

fn page(content: &[u8], bs: usize) -> Vec<u8> {
    let mut v = content.to_vec();
    v.resize(bs, 0);
    v
}

fn read_block(img: &Path, blk: u64, bs: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(img).unwrap();
    let mut buf = vec![0u8; bs as usize];
    f.read_exact_at(&mut buf, blk * bs).unwrap();
    buf
}

fn patch(img: &Path, off: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

#[test]
fn journal_replay_data_metadata_and_superblock() {
    for csum in [false, true] {
        let (s, _tree, img) = journal_image(&["-O", "^metadata_csum"]);
        let bs = 4096u64;
        let before = snapshot(&open_img(&img));
        let a_blk = blocks_of(&img, "/a.txt")[0];
        let new_a = s.path("new_a");
        fs::write(&new_a, page(b"HELLO-JOURNALED\n", 4096)).unwrap();

        // Directory block of /d with "b.txt" renamed in place to "B.txt".
        let d_blk = blocks_of(&img, "/d")[0];
        let mut dblock = read_block(&img, d_blk, bs);
        let pos = dblock.windows(5).position(|w| w == b"b.txt").unwrap();
        dblock[pos] = b'B';

        // Inode table block holding /d/c.txt with its mode changed to 0600.
        let ioff = inode_offset(&img, "/d/c.txt", bs);
        let itable_blk = ioff / bs;
        let mut iblock = read_block(&img, itable_blk, bs);
        let at = (ioff % bs) as usize;
        iblock[at..at + 2].copy_from_slice(&(0x8000u16 | 0o600).to_le_bytes());
        // jw reads consecutive blocks of one file for a block list.
        let new_di = s.path("new_di");
        fs::write(&new_di, [dblock, iblock].concat()).unwrap();

        // Block 0 (holds the superblock) with a new label.
        let mut b0 = read_block(&img, 0, bs);
        b0[1024 + 0x78..1024 + 0x88].copy_from_slice(b"after\0\0\0\0\0\0\0\0\0\0\0");
        let new_sb = s.path("new_sb");
        fs::write(&new_sb, &b0).unwrap();

        let jo = if csum { "jo -c" } else { "jo" };
        debugfs(
            &img,
            &format!(
                "{jo}\njw -b {a_blk} {}\njw -b {d_blk},{itable_blk} {}\njw -b 0 {}\njc\n",
                new_a.display(),
                new_di.display(),
                new_sb.display()
            ),
            true,
        );
        let hdr = Command::new("dumpe2fs")
            .arg("-h")
            .arg(&img)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&hdr.stdout).contains("needs_recovery"));

        let fs = open_img(&img);
        assert!(!fs.needs_recovery());
        assert!(
            fs.replayed_transactions() >= 2,
            "{}",
            fs.replayed_transactions()
        );
        let reference = open_img(&replayed_copy(&s, &img));
        assert_eq!(reference.replayed_blocks(), 0);
        assert_eq!(snapshot(&fs), snapshot(&reference), "csum {csum}");
        assert_ne!(snapshot(&fs), before);
        assert_eq!(read_all(&fs, b"/a.txt"), b"HELLO-");
        assert_eq!(fs.label().as_deref(), Some("after"));
        assert_eq!(reference.label().as_deref(), Some("after"));
    }
}

#[test]
fn journal_replay_simple_blocks() {
    // One transaction per changed block: 32- and 64-bit tags, with and
    // without checksums (v3 tags), extent- and block-mapped journal inodes.
    let configs: [&[&str]; 3] = [&[], &["-O", "^64bit"], &["-t", "ext3"]];
    for (extra, csum) in configs.iter().flat_map(|c| [(*c, false), (*c, true)]) {
        let (s, _tree, img) = journal_image(extra);
        let bs = 4096;
        let a_blk = blocks_of(&img, "/a.txt")[0];
        let new_a = s.path("new_a");
        fs::write(&new_a, page(b"HELLO-JOURNALED\n", bs)).unwrap();
        let d_blk = blocks_of(&img, "/d")[0];
        let mut dblock = read_block(&img, d_blk, bs as u64);
        let pos = dblock.windows(5).position(|w| w == b"b.txt").unwrap();
        dblock[pos] = b'Z';
        let new_d = s.path("new_d");
        fs::write(&new_d, &dblock).unwrap();
        let jo = if csum { "jo -c" } else { "jo" };
        debugfs(
            &img,
            &format!(
                "{jo}\njw -b {a_blk} {}\njw -b {d_blk} {}\njc\n",
                new_a.display(),
                new_d.display()
            ),
            true,
        );
        let what = format!("{extra:?} csum {csum}");
        let fs = open_img(&img);
        assert_eq!(fs.replayed_transactions(), 2, "{what}");
        assert_eq!(fs.replayed_blocks(), 2, "{what}");
        assert_eq!(read_all(&fs, b"/a.txt"), b"HELLO-", "{what}");
        let names: Vec<_> = fs
            .read_dir(b"/d")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert!(names.contains(&b"Z.txt".to_vec()), "{what}: {names:?}");
        let reference = open_img(&replayed_copy(&s, &img));
        assert_eq!(snapshot(&fs), snapshot(&reference), "{what}");
    }
}

#[test]
fn journal_revoke_and_escape() {
    let (s, _tree, img) = journal_image(&[]);
    let bs = 4096;
    let a_blk = blocks_of(&img, "/a.txt")[0];
    let c_blk = blocks_of(&img, "/d/c.txt")[0];
    let new_a = s.path("new_a");
    fs::write(&new_a, page(b"REVOKED\n", bs)).unwrap();
    // A block starting with the jbd2 magic is stored escaped in the journal.
    let mut magic = 0xC03B_3998u32.to_be_bytes().to_vec();
    magic.extend_from_slice(b"xy");
    let new_c = s.path("new_c");
    fs::write(&new_c, page(&magic, bs)).unwrap();
    debugfs(
        &img,
        &format!(
            "jo\njw -b {a_blk} {}\njw -r {a_blk}\njw -b {c_blk} {}\njc\n",
            new_a.display(),
            new_c.display()
        ),
        true,
    );
    let log = debugfs(&img, "logdump\n", false);
    assert!(log.contains("revoke"), "{log}");
    let fs = open_img(&img);
    assert_eq!(fs.replayed_transactions(), 3);
    // Revoked by a later transaction: the original contents stay.
    assert_eq!(read_all(&fs, b"/a.txt"), b"hello\n");
    assert_eq!(read_all(&fs, b"/d/c.txt"), &magic[..]);
    let reference = open_img(&replayed_copy(&s, &img));
    assert_eq!(snapshot(&fs), snapshot(&reference));
}

#[test]
fn journal_uncommitted_transaction_is_ignored() {
    let (s, _tree, img) = journal_image(&[]);
    let bs = 4096u64;
    let a_blk = blocks_of(&img, "/a.txt")[0];
    let b_blk = blocks_of(&img, "/d/b.txt")[0];
    let new_a = s.path("new_a");
    fs::write(&new_a, page(b"FIRST\n", bs as usize)).unwrap();
    let new_b = s.path("new_b");
    fs::write(&new_b, page(b"SECOND\n", bs as usize)).unwrap();
    debugfs(
        &img,
        &format!(
            "jo\njw -b {a_blk} {}\njw -b {b_blk} {}\njc\n",
            new_a.display(),
            new_b.display()
        ),
        true,
    );
    // Wipe the second transaction's commit block (journal block 6: sb, then
    // desc+data+commit twice).
    let log = debugfs(&img, "logdump\n", false);
    assert!(log.contains("type 2 (commit block) at block 6"), "{log}");
    let phys: u64 = debugfs(&img, "bmap <8> 6\n", false).trim().parse().unwrap();
    patch(&img, phys * bs, &vec![0u8; bs as usize]);
    let fs = open_img(&img);
    assert_eq!(fs.replayed_transactions(), 1);
    assert_eq!(read_all(&fs, b"/a.txt"), b"FIRST\n");
    assert_eq!(read_all(&fs, b"/d/b.txt"), b"world\n");
    let reference = open_img(&replayed_copy(&s, &img));
    assert_eq!(snapshot(&fs), snapshot(&reference));
}

#[test]
fn journal_clean_and_corrupt() {
    let (_s, _tree, img) = journal_image(&[]);
    let clean = open_img(&img);
    assert_eq!(clean.replayed_blocks(), 0);
    assert!(!clean.needs_recovery());
    // needs_recovery set but the journal is clean (s_start == 0): nothing to do.
    debugfs(&img, "ssv feature_incompat 0x2c6\n", true);
    let hdr = Command::new("dumpe2fs")
        .arg("-h")
        .arg(&img)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&hdr.stdout).contains("needs_recovery"));
    let fs = open_img(&img);
    assert_eq!(fs.replayed_blocks(), 0);
    assert!(!fs.needs_recovery());
    assert_eq!(read_all(&fs, b"/a.txt"), b"hello\n");
    // A journal superblock we cannot parse: open anyway, flag it.
    let jblk: u64 = debugfs(&img, "bmap <8> 0\n", false).trim().parse().unwrap();
    patch(&img, jblk * 4096, &[0xFF; 64]);
    let fs = open_img(&img);
    assert!(fs.needs_recovery());
    assert_eq!(read_all(&fs, b"/a.txt"), b"hello\n");
}

// ---------------------------------------------------------------------------
// hostile images

#[test]
fn hostile_journal_flips() {
    // A dirty journal (3 transactions, one with a revoke), then random
    // damage to the journal superblock, descriptors, revoke and commit
    // blocks: open must succeed or fail cleanly, never panic or hang.
    let (s, _tree, img) = journal_image(&[]);
    let bs = 4096u64;
    let a_blk = blocks_of(&img, "/a.txt")[0];
    let d_blk = blocks_of(&img, "/d")[0];
    let new_a = s.path("new_a");
    // jw reads one block of the file per listed block.
    fs::write(
        &new_a,
        [page(b"NEW\n", bs as usize), read_block(&img, d_blk, bs)].concat(),
    )
    .unwrap();
    let new_d = s.path("new_d");
    fs::write(&new_d, read_block(&img, d_blk, bs)).unwrap();
    debugfs(
        &img,
        &format!(
            "jo -c\njw -b {a_blk},{d_blk} {}\njw -r {a_blk}\njw -b {d_blk} {}\njc\n",
            new_a.display(),
            new_d.display()
        ),
        true,
    );
    let pristine = fs::read(&img).unwrap();
    let jblocks: Vec<u64> = (0..10)
        .map(|j| {
            debugfs(&img, &format!("bmap <8> {j}\n"), false)
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(
        open_bytes(pristine.clone())
            .unwrap()
            .replayed_transactions(),
        3
    );
    let pristine = Arc::new(pristine);
    for seed in 0..300u64 {
        let pristine = pristine.clone();
        let jblocks = jblocks.clone();
        with_deadline(
            Duration::from_secs(20),
            format!("journal seed {seed}"),
            move || {
                let mut bytes = pristine.to_vec();
                let mut r = Rng::new(seed);
                for _ in 0..1 + r.below(6) {
                    let blk = jblocks[r.below(jblocks.len() as u64) as usize];
                    // Mostly the headers and tags at the start of each block.
                    let span = if r.below(2) == 0 { 64 } else { bs };
                    let at = (blk * bs + r.below(span)) as usize;
                    bytes[at] = match r.below(3) {
                        0 => bytes[at] ^ (1 << r.below(8)),
                        1 => r.next() as u8,
                        _ => [0x00, 0xFF, 0x01, 0x80][r.below(4) as usize],
                    };
                }
                if let Ok(fs) = open_bytes(bytes) {
                    exercise(&fs);
                }
            },
        );
    }
}

/// Walk everything with every API; errors are fine, panics and hangs not.
fn exercise(fs: &Ext4) {
    let _ = (fs.type_name(), fs.uuid(), fs.label());
    let mut stack = vec![(b"/".to_vec(), 0)];
    let mut budget = 5000;
    let mut buf = vec![0u8; 4096];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = fs.read_dir(&dir) else {
            continue;
        };
        for e in entries {
            budget -= 1;
            if budget == 0 {
                return;
            }
            let p = join(&dir, &e.name);
            let _ = fs.read_link(&p);
            if let Ok(mut r) = fs.open(&p) {
                let mut total = 0;
                while let Ok(n) = r.read(&mut buf) {
                    total += n;
                    if n == 0 || total > (64 << 10) {
                        break;
                    }
                }
            }
            if let Ok(Some(m)) = fs.lstat(&p)
                && m.kind == FileKind::Dir
                && depth < 32
            {
                stack.push((p, depth + 1));
            }
        }
    }
}

/// Image bytes of the standard tree with `args`.
fn standard_image(args: &[&str], size: &str) -> Vec<u8> {
    let s = Scratch::new();
    let tree = s.tree();
    build_tree(&tree);
    many_files(&tree.join("big"), 300);
    let img = s.path("img");
    mkfs(&tree, &img, args, size);
    fs::read(&img).unwrap()
}

#[test]
fn hostile_truncated_images() {
    let bytes = standard_image(&["-t", "ext4", "-b", "1024"], "4M");
    let len = bytes.len();
    for cut in [
        0,
        100,
        1024,
        1100,
        2047,
        2048,
        4096,
        8192,
        len / 4,
        len / 2,
        len - 1024,
        len - 1,
    ] {
        let img = bytes[..cut].to_vec();
        with_deadline(
            Duration::from_secs(20),
            format!("truncated at {cut}"),
            move || {
                if let Ok(fs) = open_bytes(img) {
                    exercise(&fs);
                }
            },
        );
    }
}

/// Regions of an image to corrupt: (name, start byte, length).
fn regions(img: &Path, bs: u64) -> Vec<(&'static str, u64, u64)> {
    let mut out = vec![("superblock", 1024, 1024)];
    let gdt = if bs == 1024 { 2 * bs } else { bs };
    out.push(("group descriptors", gdt, 256));
    let root = inode_offset(img, "/", bs);
    out.push(("inode table", root - root % bs, bs));
    let f = inode_offset(img, "/f300000", bs);
    out.push(("extent header", f + 0x28, 60));
    let big = inode_offset(img, "/big", bs);
    out.push(("directory extent root", big + 0x28, 60));
    let dir_blocks = blocks_of(img, "/big");
    out.push(("directory block", dir_blocks[0] * bs, bs));
    out.push(("directory leaf", dir_blocks[dir_blocks.len() / 2] * bs, bs));
    if let Some(b) = blocks_of(img, "/etc").first() {
        out.push(("etc directory", b * bs, bs));
    }
    out
}

#[test]
fn hostile_random_byte_flips() {
    for (args, bs) in [
        (
            &["-t", "ext4", "-b", "1024", "-O", "^metadata_csum"][..],
            1024u64,
        ),
        (&["-t", "ext2", "-b", "1024"][..], 1024),
        (&["-t", "ext4", "-b", "4096", "-O", "inline_data"][..], 4096),
    ] {
        let s = Scratch::new();
        let tree = s.tree();
        build_tree(&tree);
        many_files(&tree.join("big"), 60);
        let img = s.path("img");
        mkfs(&tree, &img, args, "4M");
        let pristine = Arc::new(fs::read(&img).unwrap());
        let regs = regions(&img, bs);
        let started = Instant::now();
        let mut cases = 0;
        for (what, start, len) in regs {
            for seed in 0..50u64 {
                let pristine = pristine.clone();
                let label = format!("{args:?} {what} seed {seed}");
                cases += 1;
                let t = Instant::now();
                with_deadline(Duration::from_secs(20), label.clone(), move || {
                    let mut bytes = pristine.to_vec();
                    let mut r = Rng::new(seed * 7919 + start);
                    for _ in 0..1 + r.below(8) {
                        let at = (start + r.below(len)) as usize;
                        match r.below(3) {
                            0 => bytes[at] ^= 1 << r.below(8),
                            1 => bytes[at] = r.next() as u8,
                            _ => bytes[at] = [0x00, 0xFF, 0x7F, 0x80][r.below(4) as usize],
                        }
                    }
                    if let Ok(fs) = open_bytes(bytes) {
                        exercise(&fs);
                    }
                });
                if t.elapsed()
                    > Duration::from_millis(
                        std::env::var("SLOW_MS")
                            .ok()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(300),
                    )
                {
                    eprintln!("slow case: {label}: {:?}", t.elapsed());
                }
            }
        }
        eprintln!(
            "{args:?}: {cases} corrupted images in {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn hostile_whole_image_noise() {
    // Random bytes anywhere in the metadata-heavy first part of the image.
    let pristine = Arc::new(standard_image(
        &["-t", "ext4", "-b", "1024", "-O", "^metadata_csum"],
        "4M",
    ));
    for seed in 0..200u64 {
        let pristine = pristine.clone();
        with_deadline(
            Duration::from_secs(20),
            format!("noise seed {seed}"),
            move || {
                let mut bytes = pristine.to_vec();
                let mut r = Rng::new(seed);
                let span = bytes.len().min(600 << 10) as u64;
                for _ in 0..1 + r.below(64) {
                    let at = r.below(span) as usize;
                    bytes[at] = r.next() as u8;
                }
                fuzz_one(&bytes);
            },
        );
    }
}

#[test]
fn hostile_huge_sizes() {
    let s = Scratch::new();
    let tree = s.tree();
    build_tree(&tree);
    let img = s.path("img");
    mkfs(&tree, &img, &["-t", "ext4", "-b", "4096"], "16M");
    // 1 EiB claimed by a file with data and by one with no blocks; a
    // directory claiming almost 4 GiB.
    debugfs(
        &img,
        "sif /f4096 size 0x1000000000000000\nsif /holes_only size 0x1000000000000000\nsif /a size 0xFFFFF000\n",
        true,
    );
    let fs = open_img(&img);
    let t = Instant::now();
    assert_eq!(fs.lstat(b"/f4096").unwrap().unwrap().size, 1 << 60);
    let mut head = Vec::new();
    fs.open(b"/f4096")
        .unwrap()
        .take(16 << 20)
        .read_to_end(&mut head)
        .unwrap();
    assert_eq!(head.len(), 16 << 20);
    assert_eq!(&head[..4096], &data(4096, 4096)[..]);
    assert!(head[4096..].iter().all(|&b| b == 0));
    let mut f = fs.open_file(b"/holes_only").unwrap();
    f.seek(SeekFrom::End(-10)).unwrap();
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, vec![0u8; 10]);
    // The directory's extra size is one big hole: listing is unchanged.
    let mut names: Vec<_> = fs
        .read_dir(b"/a")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    assert_eq!(names, vec![b"b".to_vec()]);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // Same on a block-mapped filesystem (holes through indirect blocks).
    let img2 = s.path("img2");
    mkfs(&tree, &img2, &["-t", "ext2", "-b", "1024"], "16M");
    debugfs(
        &img2,
        "sif /a size 0xFFFFFC00\nsif /f4096 size 0x1000000000000000\n",
        true,
    );
    let fs = open_img(&img2);
    let t = Instant::now();
    assert_eq!(fs.read_dir(b"/a").unwrap().len(), 1);
    let mut head = Vec::new();
    fs.open(b"/f4096")
        .unwrap()
        .take(16 << 20)
        .read_to_end(&mut head)
        .unwrap();
    assert_eq!(&head[..4096], &data(4096, 4096)[..]);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn hostile_extent_cycles_and_depth() {
    let s = Scratch::new();
    let tree = s.tree();
    build_tree(&tree);
    let img = s.path("img");
    mkfs(
        &tree,
        &img,
        &["-t", "ext4", "-b", "4096", "-O", "^metadata_csum"],
        "16M",
    );
    let bs = 4096u64;
    let pristine = fs::read(&img).unwrap();
    let dir_ino_off = inode_offset(&img, "/etc", bs);
    let dir_blk = blocks_of(&img, "/etc")[0];

    let ext_header = |entries: u16, max: u16, depth: u16| -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&0xF30Au16.to_le_bytes());
        h.extend_from_slice(&entries.to_le_bytes());
        h.extend_from_slice(&max.to_le_bytes());
        h.extend_from_slice(&depth.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h
    };
    let index = |first: u32, leaf: u64| -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&first.to_le_bytes());
        e.extend_from_slice(&(leaf as u32).to_le_bytes());
        e.extend_from_slice(&((leaf >> 32) as u16).to_le_bytes());
        e.extend_from_slice(&0u16.to_le_bytes());
        e
    };
    // (name, byte patches, expected error text)
    type Case = (&'static str, Vec<(u64, Vec<u8>)>, &'static str);
    let cases: Vec<Case> = vec![
        (
            // The directory's extent index points at a block whose index
            // points back at itself.
            "index cycle",
            vec![
                (
                    dir_ino_off + 0x28,
                    [ext_header(1, 4, 1), index(0, dir_blk)].concat(),
                ),
                (
                    dir_blk * bs,
                    [ext_header(1, 340, 1), index(0, dir_blk)].concat(),
                ),
            ],
            "depth",
        ),
        (
            // A leaf mapping the directory's data onto the leaf block itself.
            "leaf maps itself",
            vec![
                (
                    dir_ino_off + 0x28,
                    [ext_header(1, 4, 1), index(0, dir_blk)].concat(),
                ),
                (
                    dir_blk * bs,
                    [ext_header(1, 340, 0), index(0, dir_blk)].concat(),
                ),
            ],
            "",
        ),
        (
            "depth 9",
            vec![(dir_ino_off + 0x28, ext_header(1, 4, 9))],
            "extent depth 9 exceeds 5",
        ),
        (
            "bad magic",
            vec![(dir_ino_off + 0x28, vec![0x0B, 0xF3])],
            "magic",
        ),
        (
            "too many entries",
            vec![(dir_ino_off + 0x28, ext_header(5, 4, 0))],
            "entries",
        ),
        (
            "pointer past end",
            vec![(
                dir_ino_off + 0x28,
                [ext_header(1, 4, 1), index(0, 1 << 40)].concat(),
            )],
            "outside",
        ),
    ];
    for (what, patches, want) in cases {
        let mut bytes = pristine.clone();
        for (off, b) in &patches {
            bytes[*off as usize..*off as usize + b.len()].copy_from_slice(b);
        }
        let want = want.to_string();
        let what = what.to_string();
        with_deadline(Duration::from_secs(10), what.clone(), move || {
            let fs = open_bytes(bytes).unwrap();
            let err = fs.read_dir(b"/etc").unwrap_err();
            assert!(matches!(err, FsError::Corrupt(_)), "{what}: {err}");
            assert!(err.to_string().contains(&want), "{what}: {err}");
            assert!(fs.lstat(b"/etc/passwd").is_err());
            // The rest of the filesystem is unaffected.
            assert_eq!(read_all(&fs, b"/a/b/c/deep.txt"), b"deep\n");
            exercise(&fs);
        });
    }
}

#[test]
fn hostile_indirect_self_reference() {
    // ext2: a file whose double-indirect block points at itself.
    let s = Scratch::new();
    let tree = s.tree();
    build_tree(&tree);
    write(&tree.join("big2m"), &data(99, 2 << 20));
    let img = s.path("img");
    mkfs(&tree, &img, &["-t", "ext2", "-b", "1024"], "16M");
    let bs = 1024u64;
    let ioff = inode_offset(&img, "/big2m", bs);
    let mut bytes = fs::read(&img).unwrap();
    let at = (ioff + 0x28 + 13 * 4) as usize;
    let dind = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as u64;
    // Every pointer of the double-indirect block points at itself.
    for i in 0..256 {
        let p = (dind * bs) as usize + i * 4;
        bytes[p..p + 4].copy_from_slice(&(dind as u32).to_le_bytes());
    }
    with_deadline(Duration::from_secs(10), "dind self", move || {
        let fs = open_bytes(bytes).unwrap();
        let mut r = fs.open(b"/big2m").unwrap();
        let mut out = Vec::new();
        let res = r.read_to_end(&mut out);
        // Contents are garbage but bounded by i_size.
        assert!(res.is_ok() || res.is_err());
        assert!(out.len() <= 2 << 20);
        exercise(&fs);
    });
}

#[test]
fn fuzz_one_smoke() {
    let bytes = standard_image(&["-t", "ext4", "-O", "inline_data"], "4M");
    fuzz_one(&bytes);
    fuzz_one(&[]);
    fuzz_one(&[0u8; 4096]);
    let mut garbage = vec![0u8; 1 << 16];
    garbage[1024 + 0x38] = 0x53;
    garbage[1024 + 0x39] = 0xEF;
    fuzz_one(&garbage);
}

// The fuzz entry point on directories hard-linked to themselves, to their
// parent and to the root (issue 12, item 8; fuzz/seeds.sh makes the same
// seed): its guest walk lists each directory once and ends at once.
#[test]
fn fuzz_one_on_directory_hard_link_loops() {
    let s = Scratch::new();
    let tree = s.tree();
    fs::create_dir_all(tree.join("a/b")).unwrap();
    write(&tree.join("a/b/file"), b"x");
    let img = s.path("loops.img");
    mkfs(&tree, &img, &["-t", "ext4", "-b", "1024"], "2M");
    let mut cmds: String = (0..16).map(|i| format!("ln /a /a/self{i:02}\n")).collect();
    cmds.push_str("ln /a /a/b/up\nln / /a/b/root\n");
    debugfs(&img, &cmds, true);
    let ls = debugfs(&img, "ls /a\n", false);
    assert!(ls.contains("self15"), "debugfs ln failed: {ls}");
    let bytes = fs::read(&img).unwrap();
    with_deadline(
        Duration::from_secs(60),
        "fuzz_one on directory loops",
        move || fuzz_one(&bytes),
    );
}

// ---------------------------------------------------------------------------
// performance

/// Walk a whole tree: list every directory, lstat every entry, read every
/// file (up to 64 KiB) and link. Returns (dirs, files).
fn walk_all(fs: &Ext4) -> (usize, usize) {
    let (mut dirs, mut files) = (0, 0);
    let mut stack = vec![b"/".to_vec()];
    let mut buf = vec![0u8; 64 << 10];
    while let Some(dir) = stack.pop() {
        dirs += 1;
        for e in fs.read_dir(&dir).unwrap() {
            let p = join(&dir, &e.name);
            let m = fs.lstat(&p).unwrap().unwrap();
            match m.kind {
                FileKind::Dir => stack.push(p),
                FileKind::File => {
                    files += 1;
                    let mut r = fs.open(&p).unwrap().take(64 << 10);
                    while r.read(&mut buf).unwrap() > 0 {}
                }
                FileKind::Symlink => {
                    fs.read_link(&p).unwrap();
                }
                FileKind::Other => {}
            }
        }
    }
    (dirs, files)
}

#[test]
fn walk_timing_debian_like() {
    // ~300 directories, ~4000 small files, like /etc + /usr/share/doc.
    let s = Scratch::new();
    let tree = s.tree();
    for d in 0..300 {
        let dir = tree.join(format!("usr/share/doc/package-{d:03}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..13 {
            fs::write(
                dir.join(format!("file{f}")),
                data(d * 100 + f, ((d * 37 + f * 101) % 3000) as usize),
            )
            .unwrap();
        }
        symlink("../common/license", dir.join("copyright")).unwrap();
    }
    many_files(&tree.join("usr/bin"), 1500);
    let img = s.path("img");
    mkfs(&tree, &img, &["-t", "ext4", "-b", "4096"], "128M");
    let fs = open_img(&img);
    let t = Instant::now();
    let (dirs, files) = walk_all(&fs);
    let cold = t.elapsed();
    let t = Instant::now();
    walk_all(&fs);
    let warm = t.elapsed();
    eprintln!("walked {dirs} dirs / {files} files: cold {cold:?}, warm {warm:?}");
    assert!(files >= 5400);
    assert!(cold < Duration::from_secs(20));
}

/// `IBKIT_EXT4_BENCH_TREE=/some/dir cargo test --release -p ibkit-image
/// --test ext4 -- --ignored bench --nocapture`: image a host tree and time
/// a full walk.
#[test]
#[ignore]
fn bench_host_tree() {
    let Some(tree) = std::env::var_os("IBKIT_EXT4_BENCH_TREE") else {
        return;
    };
    let s = Scratch::new();
    let img = s.path("img");
    mkfs(Path::new(&tree), &img, &["-t", "ext4", "-b", "4096"], "4G");
    let fs = open_img(&img);
    let t = Instant::now();
    let (dirs, files) = walk_all(&fs);
    eprintln!("walked {dirs} dirs / {files} files in {:?}", t.elapsed());
}

/// A real image, e.g. the Debian 12 test image:
/// `IBKIT_EXT4_IMAGE=disk.qcow2:134217728 IBKIT_EXT4_RDUMP=/tmp/out cargo
/// test --release -p ibkit-image --test ext4 -- --ignored real_image
/// --nocapture` times a full walk (cold and warm) and, if
/// `IBKIT_EXT4_RDUMP` names a `debugfs -R "rdump / DIR"` of the same
/// filesystem, compares everything against it.
#[test]
#[ignore]
fn real_image() {
    let Some(spec) = std::env::var("IBKIT_EXT4_IMAGE").ok() else {
        return;
    };
    let (path, offset) = match spec.rsplit_once(':') {
        Some((p, o)) if o.chars().all(|c| c.is_ascii_digit()) => {
            (p.to_string(), o.parse().unwrap())
        }
        _ => (spec.clone(), 0u64),
    };
    let src = fs_source(&path, offset);
    let t = Instant::now();
    let fs = Ext4::open(src).unwrap();
    eprintln!("open: {:?} ({fs:?})", t.elapsed());
    // The rule engine's pattern: a few hundred directories listed and a few
    // hundred small files read, on a fresh (cold-cache) reader.
    let fresh = Ext4::open(fs_source(&path, offset)).unwrap();
    let t = Instant::now();
    let (dirs, files) = walk_some(&fresh, 300, 300);
    eprintln!(
        "fresh reader: {dirs} dirs listed + {files} files read in {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    let (dirs, files) = walk_all(&fs);
    eprintln!(
        "cold walk: {dirs} dirs / {files} files in {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    walk_all(&fs);
    eprintln!("warm walk: {:?}", t.elapsed());
    if let Some(dump) = std::env::var_os("IBKIT_EXT4_RDUMP") {
        RDUMP_QUIRKS.store(true, std::sync::atomic::Ordering::Relaxed);
        let t = Instant::now();
        let n = assert_tree_eq(&fs, Path::new(&dump));
        eprintln!("compared {n} entries with the rdump in {:?}", t.elapsed());
    }
}

/// Raw or qcow2 image `path`, from byte `offset`, through the crate's
/// container layer.
fn fs_source(path: &str, offset: u64) -> Source {
    let disk = ibkit_image::container::open_disk(Path::new(path), &Default::default()).unwrap();
    let size = disk.source.size() - offset;
    Arc::new(ibkit_image::source::Window::new(disk.source, offset, size))
}

/// Breadth-first: list up to `max_dirs` directories (lstat-ing every
/// entry) and read up to `max_files` files completely (at most 1 MiB each).
fn walk_some(fs: &Ext4, max_dirs: usize, max_files: usize) -> (usize, usize) {
    let (mut dirs, mut files) = (0, 0);
    let mut queue = std::collections::VecDeque::from([b"/".to_vec()]);
    let mut buf = vec![0u8; 64 << 10];
    while let Some(dir) = queue.pop_front() {
        if dirs >= max_dirs {
            break;
        }
        dirs += 1;
        for e in fs.read_dir(&dir).unwrap() {
            let p = join(&dir, &e.name);
            let m = fs.lstat(&p).unwrap().unwrap();
            match m.kind {
                FileKind::Dir => queue.push_back(p),
                FileKind::File if files < max_files => {
                    files += 1;
                    let mut r = fs.open(&p).unwrap().take(1 << 20);
                    while r.read(&mut buf).unwrap() > 0 {}
                }
                _ => {}
            }
        }
    }
    (dirs, files)
}

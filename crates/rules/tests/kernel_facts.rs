//! Kernel and initramfs facts on real artefacts: initramfs images made by the
//! host's `cpio -o -H newc`, `zstd`, `gzip`, `xz`, `lz4 -l` and `bzip2` (all
//! in scripts/apt-packages.txt), laid out as initramfs-tools and dracut lay
//! them out (an uncompressed early cpio, then a compressed segment); guests
//! made from directory trees and from an ext4 image.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ibkit_image::Guest;
use ibkit_image::fs::dir::DirFs;
use ibkit_rules::facts::initramfs::{self, InitramfsError, Limits, scan, scan_partial};
use ibkit_rules::facts::kernel::{self, DriverState, compare_versions, newest};

// ---------------------------------------------------------------------------
// helpers

const VER: &str = "6.1.0-test";

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

fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(path, bytes).unwrap();
}

/// Run `cmd` with `input` on stdin; its stdout. Panics (naming the tool and
/// scripts/setup.sh) if the tool is missing or fails.
fn run(cmd: &str, args: &[&str], dir: Option<&Path>, input: &[u8]) -> Vec<u8> {
    let mut c = Command::new(cmd);
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(d) = dir {
        c.current_dir(d);
    }
    let mut child = c
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd} ({e}): scripts/setup.sh installs it"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A newc cpio archive of everything under `dir` (like initramfs-tools:
/// `find . | cpio -o -H newc`), and how many members it has.
fn cpio_of(dir: &Path) -> (Vec<u8>, usize) {
    let list = run("sh", &["-c", "find . | LC_ALL=C sort"], Some(dir), b"");
    let members = list
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    let archive = run(
        "cpio",
        &["--quiet", "-o", "-H", "newc", "-R", "0:0"],
        Some(dir),
        &list,
    );
    (archive, members)
}

fn compress(format: &str, data: &[u8]) -> Vec<u8> {
    match format {
        "zstd" => run("zstd", &["-q", "-c", "-3"], None, data),
        "gzip" => run("gzip", &["-n", "-c", "-6"], None, data),
        "xz" => run("xz", &["--check=crc32", "-c"], None, data),
        "lzma" => run("xz", &["--format=lzma", "-c"], None, data),
        "lz4" => run("lz4", &["-l", "-q", "-c"], None, data),
        "bzip2" => run("bzip2", &["-c"], None, data),
        other => panic!("no compressor for {other}"),
    }
}

/// The early (microcode) archive initramfs-tools and dracut put first.
fn early_cpio() -> (Vec<u8>, usize) {
    let t = tempfile::tempdir().unwrap();
    write(
        &t.path().join("kernel/x86/microcode/GenuineIntel.bin"),
        vec![0x5a; 3000],
    );
    write(
        &t.path()
            .join("kernel/x86/microcode/.enuineIntel.align.0123456789abc"),
        b"",
    );
    cpio_of(t.path())
}

/// The main archive's tree: modules of several compressions, a
/// modules.builtin, and things that look like modules but are not.
fn main_tree(dir: &Path, modules: &[&str]) {
    let m = dir.join(format!("usr/lib/modules/{VER}"));
    for rel in modules {
        write(&m.join(rel), format!("fake module {rel}"));
    }
    write(
        &m.join("modules.builtin"),
        "kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_ring.ko\nkernel/drivers/char/hw_random/virtio-rng.ko\n",
    );
    write(
        &m.join("modules.dep"),
        "kernel/drivers/block/virtio_blk.ko.zst:\n",
    );
    write(&m.join("modules.order"), "");
    write(&dir.join("usr/share/doc/readme.ko.txt"), "not a module");
    write(&dir.join("usr/bin/busybox"), vec![0x7f; 5001]);
    write(&dir.join("init"), "#!/bin/sh\nexec /sbin/init\n");
    fs::create_dir_all(dir.join("dev")).unwrap();
    symlink("usr/bin", dir.join("bin")).unwrap();
    symlink("usr/lib", dir.join("lib")).unwrap();
}

const MAIN_MODULES: [&str; 5] = [
    "kernel/drivers/block/virtio_blk.ko.zst",
    "kernel/drivers/net/virtio_net.ko",
    "kernel/drivers/virtio/virtio_pci.ko.xz",
    "kernel/fs/fuse/fuse.ko.gz",
    "kernel/drivers/net/dummy-test.ko",
];

fn expected_modules() -> BTreeMap<String, String> {
    [
        ("virtio_blk", "kernel/drivers/block/virtio_blk.ko.zst"),
        ("virtio_net", "kernel/drivers/net/virtio_net.ko"),
        ("virtio_pci", "kernel/drivers/virtio/virtio_pci.ko.xz"),
        ("fuse", "kernel/fs/fuse/fuse.ko.gz"),
        ("dummy_test", "kernel/drivers/net/dummy-test.ko"),
    ]
    .into_iter()
    .map(|(n, p)| (n.to_owned(), format!("usr/lib/modules/{VER}/{p}")))
    .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// Early cpio + compressed main archive, as Debian 12 builds it.
fn debian_like(format: &str) -> (Vec<u8>, usize) {
    let (mut image, early_n) = early_cpio();
    let t = tempfile::tempdir().unwrap();
    main_tree(t.path(), &MAIN_MODULES);
    let (main, main_n) = cpio_of(t.path());
    image.extend(compress(format, &main));
    (image, early_n + main_n)
}

/// A scan must finish quickly whatever the input.
fn timed<T>(what: &str, limit: Duration, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let r = f();
    let took = start.elapsed();
    assert!(took < limit, "{what} took {took:?} (limit {limit:?})");
    r
}

fn patch(data: &mut [u8], at: usize, bytes: &[u8]) {
    data[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Offset of the first newc header whose name is `name`.
fn header_of(archive: &[u8], name: &str) -> usize {
    let needle = format!("{name}\0");
    let pos = archive
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .unwrap_or_else(|| panic!("{name} not in archive"));
    pos - 110
}

// ---------------------------------------------------------------------------
// initramfs: real archives

#[test]
fn scan_finds_exactly_the_modules_in_every_compression() {
    for format in ["zstd", "gzip", "xz", "lzma", "lz4"] {
        let (image, members) = debian_like(format);
        let listing = scan(&image[..]).unwrap_or_else(|e| panic!("{format}: {e}"));
        assert_eq!(listing.modules, expected_modules(), "{format}");
        assert_eq!(
            listing.builtin,
            set(&["virtio", "virtio_ring", "virtio_rng"]),
            "{format}"
        );
        assert_eq!(
            listing.compression,
            vec!["cpio".to_owned(), format.to_owned()],
            "{format}"
        );
        assert_eq!(listing.files, members, "{format}");
        assert_eq!(listing.versions, set(&[VER]), "{format}");
    }
}

#[test]
fn scan_uncompressed_and_cpio_only() {
    let t = tempfile::tempdir().unwrap();
    main_tree(t.path(), &MAIN_MODULES);
    let (main, n) = cpio_of(t.path());
    let listing = scan(&main[..]).unwrap();
    assert_eq!(listing.modules, expected_modules());
    assert_eq!(listing.compression, vec!["cpio"]);
    assert_eq!(listing.files, n);
    // cpio pads its output to 512 bytes: the padding is not archive data.
    assert_eq!(listing.bytes, (header_of(&main, "TRAILER!!!") + 124) as u64);

    // An early archive followed by an uncompressed one: one "cpio" entry.
    let (mut image, early_n) = early_cpio();
    image.extend(&main);
    let listing = scan(&image[..]).unwrap();
    assert_eq!(listing.compression, vec!["cpio"]);
    assert_eq!(listing.files, early_n + n);
    assert_eq!(listing.modules, expected_modules());

    // An empty file is an empty initramfs.
    assert_eq!(scan(&b""[..]).unwrap(), initramfs::Listing::default());
}

#[test]
fn scan_concatenated_archives_and_segments() {
    // dracut style: several cpio archives inside one compressed stream, with
    // padding between them and after.
    let a = tempfile::tempdir().unwrap();
    main_tree(a.path(), &MAIN_MODULES[..2]);
    let b = tempfile::tempdir().unwrap();
    write(
        &b.path()
            .join(format!("usr/lib/modules/{VER}/extra/virtiofs.ko.xz")),
        "x",
    );
    let (ca, na) = cpio_of(a.path());
    let (cb, nb) = cpio_of(b.path());
    let mut inner = ca.clone();
    inner.extend(vec![0u8; 1024]);
    inner.extend(&cb);
    inner.extend(vec![0u8; 333]);
    let (mut image, early_n) = early_cpio();
    image.extend(vec![0u8; 4096 - image.len() % 4096]);
    image.extend(compress("zstd", &inner));
    // A second compressed segment after padding, as the kernel accepts.
    image.extend([0u8; 12]);
    let c = tempfile::tempdir().unwrap();
    write(
        &c.path()
            .join(format!("lib/modules/{VER}/updates/virtio_scsi.ko")),
        "y",
    );
    let (cc, nc) = cpio_of(c.path());
    image.extend(compress("gzip", &cc));
    let listing = scan(&image[..]).unwrap();
    assert_eq!(listing.compression, vec!["cpio", "zstd", "gzip"]);
    assert_eq!(listing.files, early_n + na + nb + nc);
    assert_eq!(
        listing.modules.keys().cloned().collect::<BTreeSet<_>>(),
        set(&["virtio_blk", "virtio_net", "virtiofs", "virtio_scsi"])
    );
    assert_eq!(
        listing.modules["virtio_scsi"],
        format!("lib/modules/{VER}/updates/virtio_scsi.ko")
    );

    // Two lz4 legacy streams back to back are one segment to the kernel,
    // and a multi-block one (over 8 MiB) decodes across blocks.
    let d = tempfile::tempdir().unwrap();
    let mut big = vec![0u8; 9 << 20];
    let mut rng = Rng::new(7);
    for chunk in big.chunks_mut(4096).step_by(3) {
        chunk[0] = rng.next() as u8;
    }
    write(&d.path().join("usr/lib/firmware/big.bin"), &big);
    write(
        &d.path()
            .join(format!("usr/lib/modules/{VER}/kernel/virtio_input.ko")),
        "z",
    );
    let (cd, nd) = cpio_of(d.path());
    let mut image = compress("lz4", &cd);
    image.extend(compress("lz4", &ca));
    let listing = scan(&image[..]).unwrap();
    assert_eq!(listing.compression, vec!["lz4"]);
    assert_eq!(listing.files, nd + na);
    assert!(listing.modules.contains_key("virtio_input"));
    assert!(listing.modules.contains_key("virtio_net"));
}

#[test]
fn host_initramfs_if_present() {
    let mut found = Vec::new();
    for dir in ["/boot"] {
        let Ok(rd) = fs::read_dir(dir) else { continue };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if (name.starts_with("initrd.img-") || name.starts_with("initramfs-"))
                && e.path().is_file()
            {
                found.push(e.path());
            }
        }
    }
    if found.is_empty() {
        eprintln!("no /boot/initrd.img-* or /boot/initramfs-*.img on this host: skipped");
        return;
    }
    for path in found {
        let f = fs::File::open(&path).unwrap();
        let listing = timed("host initramfs", Duration::from_secs(60), || scan(f))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(listing.files > 0, "{}", path.display());
        eprintln!(
            "{}: {:?}, {} members, {} modules",
            path.display(),
            listing.compression,
            listing.files,
            listing.modules.len()
        );
    }
}

#[test]
fn unsupported_bzip2_keeps_what_was_read() {
    let (mut image, early_n) = early_cpio();
    let early_len = image.len() as u64;
    let t = tempfile::tempdir().unwrap();
    main_tree(t.path(), &MAIN_MODULES);
    image.extend(compress("bzip2", &cpio_of(t.path()).0));
    let (listing, err) = scan_partial(&image[..], &Limits::default());
    assert_eq!(listing.compression, vec!["cpio", "bzip2"]);
    assert_eq!(listing.files, early_n);
    match err {
        Some(InitramfsError::Unsupported {
            at,
            format: "bzip2",
        }) => assert_eq!(at.offset, early_len),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------
// initramfs: hostile input

#[test]
fn truncated_archives_are_errors() {
    let t = tempfile::tempdir().unwrap();
    main_tree(t.path(), &MAIN_MODULES);
    let (main, _) = cpio_of(t.path());
    // The end of the TRAILER!!! entry: everything after it is padding.
    let trailer_end = header_of(&main, "TRAILER!!!") + 124;
    for cut in 1..trailer_end {
        let r = scan(&main[..cut]);
        assert!(r.is_err(), "cut at {cut} accepted");
    }
    for cut in trailer_end..=main.len() {
        scan(&main[..cut]).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
    }
    for format in ["zstd", "gzip", "xz", "lzma", "lz4"] {
        let (image, _) = debian_like(format);
        let early_len = early_cpio().0.len();
        for cut in [
            early_len + 8,
            early_len + 20,
            (early_len + image.len()) / 2,
            image.len() - 1,
        ] {
            match scan(&image[..cut]) {
                Err(InitramfsError::Corrupt { at, what }) => {
                    assert_eq!(at.offset, early_len as u64, "{format} cut {cut}: {what}");
                    assert_eq!(at.inner.map(|i| i.0), Some(format));
                }
                other => panic!("{format} cut at {cut}: {other:?}"),
            }
        }
    }
}

#[test]
fn bad_header_fields() {
    let t = tempfile::tempdir().unwrap();
    main_tree(t.path(), &MAIN_MODULES);
    let (main, _) = cpio_of(t.path());
    let h = header_of(&main, "init");

    // Non-hex file size: the error names the field's byte offset.
    let mut bad = main.clone();
    patch(&mut bad, h + 54, b"00z0001G");
    let err = scan(&bad[..]).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("at byte {}", h + 54)) && text.contains("filesize"),
        "{text}"
    );

    // A size field claiming 4 GiB in an uncompressed archive: truncated.
    let mut bad = main.clone();
    patch(&mut bad, h + 54, b"FFFFFFFF");
    let err = timed("4 GiB claim", Duration::from_secs(5), || scan(&bad[..])).unwrap_err();
    assert!(err.to_string().contains("4294967295"), "{err}");

    // The same inside a zstd stream.
    let mut image = early_cpio().0;
    image.extend(compress("zstd", &bad));
    let err = timed("4 GiB claim in zstd", Duration::from_secs(5), || {
        scan(&image[..])
    })
    .unwrap_err();
    assert!(
        matches!(err, InitramfsError::Corrupt { at, .. } if at.inner.is_some()),
        "{err}"
    );

    // A name size beyond PATH_MAX.
    let mut bad = main.clone();
    patch(&mut bad, h + 94, b"00100000");
    let err = scan(&bad[..]).unwrap_err();
    assert!(err.to_string().contains("name size 1048576"), "{err}");

    // A name without its NUL.
    let mut bad = main.clone();
    patch(&mut bad, h + 94, b"00000004");
    let err = scan(&bad[..]).unwrap_err();
    assert!(err.to_string().contains("NUL"), "{err}");

    // Old-format cpio is not what the kernel reads.
    let list = run("sh", &["-c", "find . | LC_ALL=C sort"], Some(t.path()), b"");
    let odc = run(
        "cpio",
        &["--quiet", "-o", "-H", "odc"],
        Some(t.path()),
        &list,
    );
    let err = scan(&odc[..]).unwrap_err();
    assert!(err.to_string().contains("070707"), "{err}");
}

#[test]
fn garbage_after_a_valid_segment() {
    let (mut image, _) = debian_like("zstd");
    let valid = image.len();
    let mut rng = Rng::new(42);
    image.push(0xA5);
    image.extend((0..1000).map(|_| rng.next() as u8));
    let (listing, err) = scan_partial(&image[..], &Limits::default());
    assert_eq!(listing.modules, expected_modules());
    match err {
        Some(InitramfsError::Corrupt { at, what }) => {
            assert_eq!(at.offset, valid as u64, "{what}");
            assert!(at.inner.is_none());
            assert!(what.contains("a5"), "{what}");
        }
        other => panic!("{other:?}"),
    }
    // Garbage from the first byte.
    let junk: Vec<u8> = (0..4096).map(|_| (rng.next() as u8) | 1).collect();
    let err = scan(&junk[..]).unwrap_err();
    assert!(err.to_string().starts_with("at byte 0:"), "{err}");
    // Garbage inside a compressed segment, after its cpio.
    let t = tempfile::tempdir().unwrap();
    main_tree(t.path(), &MAIN_MODULES);
    let (mut main, _) = cpio_of(t.path());
    let inner_len = main.len() as u64;
    main.extend(b"GARBAGE!");
    let err = scan(&compress("gzip", &main)[..]).unwrap_err();
    match err {
        InitramfsError::Corrupt { at, .. } => assert_eq!(at.inner, Some(("gzip", inner_len))),
        other => panic!("{other:?}"),
    }
}

#[test]
fn decompression_bombs_stop_at_the_limit() {
    // A member claiming 4 GiB whose data is 2.2 GB of zeros, zstd-compressed
    // (under 100 KiB): stops at the default 2 GiB limit, in bounded time.
    let header = format!(
        "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}zeros\0",
        1, 0o100644, 0, 0, 1, 0, 0xFFFF_FFFFu32, 0, 0, 0, 0, 6, 0
    );
    let script = format!(
        "{{ printf '{}'; dd if=/dev/zero bs=4M count=550 status=none; }} | zstd -q -1 -c",
        header.replace('\0', "\\000")
    );
    let bomb = run("sh", &["-c", &script], None, b"");
    assert!(bomb.len() < 1 << 20, "bomb is {} bytes", bomb.len());
    let (_, err) = timed("zstd bomb", Duration::from_secs(60), || {
        scan_partial(&bomb[..], &Limits::default())
    });
    let err = err.unwrap();
    assert!(
        matches!(
            err,
            InitramfsError::TooLarge {
                limit: 0x8000_0000,
                what: "decompressed"
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert_eq!(
        text,
        "initramfs larger than 2147483648 bytes (decompressed)"
    );

    // Only zeros (padding forever) in xz, with a smaller limit.
    let zeros = run(
        "sh",
        &["-c", "head -c 100M /dev/zero | xz -1 --check=crc32 -c"],
        None,
        b"",
    );
    let limits = Limits {
        max_decompressed: 32 << 20,
        ..Limits::default()
    };
    let (_, err) = timed("xz zeros", Duration::from_secs(30), || {
        scan_partial(&zeros[..], &limits)
    });
    assert!(
        matches!(err, Some(InitramfsError::TooLarge { limit, .. }) if limit == 32 << 20),
        "{err:?}"
    );

    // The compressed input itself is bounded too.
    let limits = Limits {
        max_input: 1000,
        ..Limits::default()
    };
    let (image, _) = debian_like("gzip");
    let (_, err) = scan_partial(&image[..], &limits);
    assert!(
        matches!(
            err,
            Some(InitramfsError::TooLarge {
                what: "compressed",
                ..
            })
        ),
        "{err:?}"
    );
}

#[test]
fn entry_and_segment_limits() {
    let (image, members) = debian_like("zstd");
    let limits = Limits {
        max_entries: members - 3,
        ..Limits::default()
    };
    let (_, err) = scan_partial(&image[..], &limits);
    assert!(
        matches!(
            err,
            Some(InitramfsError::TooMany {
                what: "archive members",
                ..
            })
        ),
        "{err:?}"
    );

    let one = compress("gzip", &cpio_of(tempfile::tempdir().unwrap().path()).0);
    let many: Vec<u8> = one.iter().copied().cycle().take(one.len() * 300).collect();
    let (listing, err) = scan_partial(&many[..], &Limits::default());
    assert_eq!(listing.compression.len(), 256);
    assert!(
        matches!(
            err,
            Some(InitramfsError::TooMany {
                what: "segments",
                ..
            })
        ),
        "{err:?}"
    );
}

#[test]
fn mutated_archives_never_panic() {
    let t = tempfile::tempdir().unwrap();
    main_tree(t.path(), &MAIN_MODULES[..3]);
    let (plain, _) = cpio_of(t.path());
    let mut inputs = vec![plain.clone()];
    for f in ["zstd", "gzip", "xz", "lz4"] {
        let mut image = early_cpio().0;
        image.extend(compress(f, &plain));
        inputs.push(image);
    }
    let mut rng = Rng::new(1234);
    let limits = Limits {
        max_decompressed: 16 << 20,
        ..Limits::default()
    };
    timed("mutations", Duration::from_secs(120), || {
        for input in &inputs {
            for _ in 0..300 {
                let mut m = input.clone();
                for _ in 0..=rng.below(4) {
                    let at = rng.below(m.len() as u64) as usize;
                    m[at] = match rng.below(4) {
                        0 => rng.next() as u8,
                        1 => b'F',
                        2 => 0,
                        _ => m[at] ^ (1 << rng.below(8)),
                    };
                }
                if rng.below(4) == 0 {
                    m.truncate(rng.below(m.len() as u64) as usize);
                }
                let _ = scan_partial(&m[..], &limits);
            }
        }
    });
}

// ---------------------------------------------------------------------------
// kernels

const CONFIG: &str = "\
# Automatically generated file; DO NOT EDIT.
CONFIG_LOCALVERSION=\"-test\"
CONFIG_VIRTIO_NET=y
CONFIG_VIRTIO_BLK=m
CONFIG_VIRTIO_FS=m
# CONFIG_VIRTIO_PCI is not set
CONFIG_NR_CPUS=8192
";

/// A merged-/usr Debian-like root with one kernel whose initramfs holds
/// virtio_blk but not virtiofs.
fn debian_root(with_dep: bool) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    write(&r.join("etc/os-release"), "ID=debian\nVERSION_ID=12\n");
    symlink("usr/lib", r.join("lib")).unwrap();
    write(&r.join(format!("boot/vmlinuz-{VER}")), b"MZ kernel");
    write(&r.join(format!("boot/config-{VER}")), CONFIG);
    let m = r.join(format!("usr/lib/modules/{VER}"));
    write(
        &m.join("modules.builtin"),
        "kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_ring.ko\n",
    );
    let mods = [
        "kernel/drivers/block/virtio_blk.ko.zst",
        "kernel/fs/fuse/virtiofs.ko.xz",
        "kernel/fs/fuse/fuse.ko.xz",
        "kernel/drivers/net/net_failover.ko",
    ];
    for rel in mods {
        write(&m.join(rel), "module");
    }
    if with_dep {
        write(
            &m.join("modules.dep"),
            "kernel/drivers/block/virtio_blk.ko.zst:\n\
             kernel/fs/fuse/virtiofs.ko.xz: kernel/fs/fuse/fuse.ko.xz\n\
             kernel/fs/fuse/fuse.ko.xz:\n\
             kernel/drivers/net/net_failover.ko:\n",
        );
    }
    // The initramfs: early microcode + zstd, virtio_blk only.
    let t = tempfile::tempdir().unwrap();
    write(
        &t.path().join(format!(
            "usr/lib/modules/{VER}/kernel/drivers/block/virtio_blk.ko.zst"
        )),
        "module",
    );
    write(
        &t.path()
            .join(format!("usr/lib/modules/{VER}/modules.builtin")),
        "kernel/drivers/virtio/virtio.ko\n",
    );
    let mut image = early_cpio().0;
    image.extend(compress("zstd", &cpio_of(t.path()).0));
    write(&r.join(format!("boot/initrd.img-{VER}")), &image);
    symlink(format!("boot/initrd.img-{VER}"), r.join("initrd.img")).unwrap();
    root
}

/// The first 64 KiB of an x86 bzImage whose header names `version`.
fn bzimage(version: &str) -> Vec<u8> {
    let mut img = vec![0u8; 0x1_0000];
    patch(&mut img, 0, b"MZ");
    patch(&mut img, 0x202, b"HdrS");
    patch(&mut img, 0x206, &0x020fu16.to_le_bytes());
    patch(&mut img, 0x20e, &0x3000u16.to_le_bytes());
    let text = format!("{version} (mockbuild@example) #1 SMP PREEMPT_DYNAMIC\0");
    patch(&mut img, 0x3200, text.as_bytes());
    img
}

#[test]
fn bzimage_versions() {
    assert_eq!(
        kernel::bzimage_version(&bzimage("6.1.0-13-amd64")).as_deref(),
        Some("6.1.0-13-amd64")
    );
    assert_eq!(kernel::bzimage_version(b"MZ"), None);
    let mut img = bzimage("x");
    patch(&mut img, 0x20e, &0xffffu16.to_le_bytes());
    assert_eq!(kernel::bzimage_version(&img), None, "pointer past the end");
    let mut img = bzimage("6.1");
    patch(&mut img, 0x3200, b"\xff\xfe ");
    assert_eq!(kernel::bzimage_version(&img), None, "not text");
}

fn dir_guest(path: &Path) -> Guest {
    Guest::new(Arc::new(DirFs::new(path)), "dir".into())
}

fn check_debian_kernel(k: &kernel::Kernel, source_suffix: &str) {
    assert_eq!(k.version, VER);
    assert_eq!(k.image.as_deref(), Some(&*format!("/boot/vmlinuz-{VER}")));
    assert_eq!(
        k.config_path.as_deref(),
        Some(&*format!("/boot/config-{VER}"))
    );
    assert_eq!(k.config_value("VIRTIO_PCI"), Some("n"));
    assert_eq!(k.config_value("CONFIG_LOCALVERSION"), Some("-test"));
    assert!(
        k.modules_source
            .as_deref()
            .unwrap()
            .ends_with(source_suffix),
        "{:?}",
        k.modules_source
    );
    let mdir = k.modules_dir.clone().unwrap();
    assert_eq!(
        k.driver("virtio_net", "VIRTIO_NET"),
        DriverState::BuiltIn(format!("CONFIG_VIRTIO_NET=y in /boot/config-{VER}"))
    );
    assert_eq!(
        k.driver("virtio-blk", "CONFIG_VIRTIO_BLK"),
        DriverState::Module(format!("{mdir}/kernel/drivers/block/virtio_blk.ko.zst"))
    );
    assert_eq!(
        k.driver("virtiofs", "VIRTIO_FS"),
        DriverState::Module(format!("{mdir}/kernel/fs/fuse/virtiofs.ko.xz"))
    );
    assert_eq!(k.driver("virtio_pci", "VIRTIO_PCI"), DriverState::Missing);
    assert!(
        matches!(k.driver("virtio_ring", "VIRTIO_RING"), DriverState::BuiltIn(e) if e.contains("modules.builtin"))
    );
    assert_eq!(k.in_initramfs("virtio_blk"), Some(true));
    assert_eq!(k.in_initramfs("virtiofs"), Some(false));
    let init = k.initramfs.as_ref().unwrap();
    assert_eq!(init.path, format!("/boot/initrd.img-{VER}"));
    assert_eq!(init.error, None);
    assert_eq!(init.compression, vec!["cpio", "zstd"]);
    assert_eq!(init.builtin, set(&["virtio"]));
    assert_eq!(init.versions, set(&[VER]));
    assert!(k.problems.is_empty(), "{:?}", k.problems);
}

#[test]
fn kernel_driver_states_from_modules_dep() {
    let root = debian_root(true);
    let guest = dir_guest(root.path());
    let kernels = kernel::load(&guest);
    // /lib/modules and /usr/lib/modules are the same directory: one kernel.
    assert_eq!(kernels.len(), 1, "{kernels:#?}");
    check_debian_kernel(&kernels[0], "modules.dep");
    assert_eq!(newest(&kernels).unwrap().version, VER);
}

#[test]
fn kernel_modules_by_walking_when_modules_dep_is_empty() {
    let root = debian_root(false);
    let r = root.path();
    let m = r.join(format!("usr/lib/modules/{VER}"));
    // updates/ wins over kernel/, as with depmod.
    write(&m.join("updates/dkms/virtio_blk.ko"), "newer");
    // build/ and source/ link to headers: never walked.
    write(
        &r.join(format!(
            "usr/src/linux-headers-{VER}/drivers/virtio/virtio_pci.ko"
        )),
        "x",
    );
    symlink(format!("/usr/src/linux-headers-{VER}"), m.join("build")).unwrap();
    // An empty modules.dep is no list: walk.
    write(&m.join("modules.dep"), "");
    let guest = inspect_dir(r);
    let kernels = kernel::load(&guest);
    assert_eq!(kernels.len(), 1);
    let k = &kernels[0];
    assert_eq!(
        k.modules_source.as_deref(),
        Some(&*format!("walk of /lib/modules/{VER}"))
    );
    assert_eq!(
        k.driver("virtio_blk", "VIRTIO_BLK"),
        DriverState::Module(format!("/lib/modules/{VER}/updates/dkms/virtio_blk.ko"))
    );
    assert_eq!(k.driver("virtio_pci", "VIRTIO_PCI"), DriverState::Missing);
    assert_eq!(
        k.modules.keys().cloned().collect::<BTreeSet<_>>(),
        set(&["fuse", "net_failover", "virtio_blk", "virtiofs"])
    );
}

fn inspect_dir(path: &Path) -> Guest {
    ibkit_image::inspect::inspect(path, &Default::default())
        .unwrap()
        .guest
}

#[test]
fn kernel_rhel_layout_rescue_and_image_only() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let v = "5.14.0-427.13.1.el9_4.x86_64";
    let old = "5.14.0-70.13.1.el9_0.x86_64";
    write(&r.join("etc/os-release"), "ID=rocky\n");
    for ver in [v, old] {
        let m = r.join(format!("lib/modules/{ver}"));
        write(
            &m.join("config"),
            "CONFIG_VIRTIO_NET=m\nCONFIG_VIRTIO_BLK=m\nCONFIG_VIRTIO_FS=m\n",
        );
        write(
            &m.join("modules.builtin"),
            "kernel/drivers/virtio/virtio.ko.xz\n",
        );
        write(&m.join("kernel/drivers/net/virtio_net.ko.xz"), "m");
        write(&m.join("kernel/drivers/block/virtio_blk.ko.xz"), "m");
        write(&m.join("vmlinuz"), "MZ");
        write(&r.join(format!("boot/vmlinuz-{ver}")), "MZ");
    }
    // dracut: early cpio + gzip (RHEL 8) / xz.
    let t = tempfile::tempdir().unwrap();
    write(
        &t.path().join(format!(
            "usr/lib/modules/{v}/kernel/drivers/block/virtio_blk.ko.xz"
        )),
        "m",
    );
    write(
        &t.path().join(format!(
            "usr/lib/modules/{v}/kernel/drivers/net/virtio_net.ko.xz"
        )),
        "m",
    );
    let mut image = early_cpio().0;
    image.extend(compress("gzip", &cpio_of(t.path()).0));
    write(&r.join(format!("boot/initramfs-{v}.img")), &image);
    // The rescue kernel: a copy of the old kernel's image with an initramfs
    // of its own; its modules are the old kernel's.
    write(&r.join("boot/vmlinuz-0-rescue-0123abcd"), bzimage(old));
    write(&r.join(format!("boot/vmlinuz-{v}")), bzimage(v));
    write(&r.join("boot/initramfs-0-rescue-0123abcd.img"), &image);
    // A modules directory left behind with nothing in it: not a kernel.
    fs::create_dir_all(r.join("lib/modules/5.14.0-1.el9.x86_64/kernel")).unwrap();
    // An image whose modules are gone.
    write(&r.join("boot/vmlinuz-9.9.9-gone"), "MZ");

    let guest = dir_guest(r);
    let kernels = kernel::load(&guest);
    let versions: Vec<&str> = kernels.iter().map(|k| k.version.as_str()).collect();
    assert_eq!(versions, vec!["0-rescue-0123abcd", old, v, "9.9.9-gone"]);
    let k = &kernels[2];
    assert_eq!(
        k.config_path.as_deref(),
        Some(&*format!("/lib/modules/{v}/config"))
    );
    assert_eq!(k.image.as_deref(), Some(&*format!("/boot/vmlinuz-{v}")));
    assert_eq!(
        k.driver("virtio_net", "VIRTIO_NET"),
        DriverState::Module(format!(
            "/lib/modules/{v}/kernel/drivers/net/virtio_net.ko.xz"
        ))
    );
    assert_eq!(
        k.driver("virtiofs", "VIRTIO_FS"),
        DriverState::Missing,
        "=m without the file"
    );
    assert_eq!(k.in_initramfs("virtio_net"), Some(true));
    assert_eq!(k.in_initramfs("virtiofs"), Some(false));
    assert_eq!(
        k.initramfs.as_ref().unwrap().compression,
        vec!["cpio", "gzip"]
    );
    // The old kernel has no initramfs: can't tell.
    assert_eq!(kernels[1].in_initramfs("virtio_blk"), None);
    assert_eq!(k.image_version.as_deref(), Some(v));
    assert_eq!(kernels[1].image_version, None, "not a bzImage");
    let rescue = &kernels[0];
    assert_eq!(rescue.image_version.as_deref(), Some(old));
    assert_eq!(
        rescue.modules_dir.as_deref(),
        Some(&*format!("/lib/modules/{old}"))
    );
    assert_eq!(
        rescue.config_path.as_deref(),
        Some(&*format!("/lib/modules/{old}/config"))
    );
    assert_eq!(
        rescue.driver("virtio_net", "VIRTIO_NET"),
        DriverState::Module(format!(
            "/lib/modules/{old}/kernel/drivers/net/virtio_net.ko.xz"
        ))
    );
    assert_eq!(rescue.in_initramfs("virtio_blk"), Some(true));
    let gone = &kernels[3];
    assert_eq!(gone.image.as_deref(), Some("/boot/vmlinuz-9.9.9-gone"));
    assert_eq!(
        gone.driver("virtio_blk", "VIRTIO_BLK"),
        DriverState::Missing
    );
    assert_eq!(newest(&kernels).unwrap().version, "9.9.9-gone");
}

#[test]
fn kernel_bls_entry_on_a_separate_boot_and_suse_names() {
    // /boot is its own filesystem: BLS paths are relative to it.
    let root = tempfile::tempdir().unwrap();
    let boot = tempfile::tempdir().unwrap();
    let v = "6.5.6-300.fc39.x86_64";
    write(&root.path().join("etc/os-release"), "ID=fedora\n");
    write(
        &root
            .path()
            .join(format!("usr/lib/modules/{v}/modules.builtin")),
        "",
    );
    write(
        &root.path().join(format!(
            "usr/lib/modules/{v}/kernel/drivers/block/virtio_blk.ko.xz"
        )),
        "m",
    );
    symlink("usr/lib", root.path().join("lib")).unwrap();
    write(&boot.path().join(format!("vmlinuz-{v}")), "MZ");
    write(
        &boot.path().join(format!("loader/entries/abc-{v}.conf")),
        format!(
            "title Fedora\nversion {v}\nlinux /vmlinuz-{v}\ninitrd $tuned_initrd /custom-{v}.img\n"
        ),
    );
    let t = tempfile::tempdir().unwrap();
    write(
        &t.path().join(format!(
            "usr/lib/modules/{v}/kernel/drivers/block/virtio_blk.ko.xz"
        )),
        "m",
    );
    write(
        &boot.path().join(format!("custom-{v}.img")),
        compress("xz", &cpio_of(t.path()).0),
    );
    // SUSE names its initramfs initrd-<version>.
    let s = "6.4.0-150600.23.7-default";
    write(&boot.path().join(format!("vmlinuz-{s}")), "MZ");
    write(
        &boot.path().join(format!("initrd-{s}")),
        compress("xz", &cpio_of(t.path()).0),
    );

    let mut guest = dir_guest(root.path());
    guest.mount(b"/boot", Arc::new(DirFs::new(boot.path())), "boot".into());
    let kernels = kernel::load(&guest);
    assert_eq!(kernels.len(), 2, "{kernels:#?}");
    let fedora = kernels.iter().find(|k| k.version == v).unwrap();
    assert_eq!(
        fedora.initramfs.as_ref().unwrap().path,
        format!("/boot/custom-{v}.img")
    );
    assert_eq!(fedora.in_initramfs("virtio_blk"), Some(true));
    let suse = kernels.iter().find(|k| k.version == s).unwrap();
    assert_eq!(
        suse.initramfs.as_ref().unwrap().path,
        format!("/boot/initrd-{s}")
    );
    assert_eq!(suse.initramfs.as_ref().unwrap().compression, vec!["xz"]);
}

#[test]
fn kernel_with_unreadable_initramfs() {
    let root = debian_root(true);
    let p = root.path().join(format!("boot/initrd.img-{VER}"));
    let mut data = fs::read(&p).unwrap();
    data.truncate(data.len() - 100);
    fs::write(&p, &data).unwrap();
    let kernels = kernel::load(&dir_guest(root.path()));
    let k = &kernels[0];
    let err = k.initramfs.as_ref().unwrap().error.clone().unwrap();
    assert!(
        err.starts_with(&format!("/boot/initrd.img-{VER}: at byte ")),
        "{err}"
    );
    // The early part was read; what the rest held is unknown.
    assert_eq!(k.in_initramfs("virtiofs"), None);
}

#[test]
fn kernel_facts_on_an_ext4_image() {
    use ibkit_test_utils::{Container, FsType, Layout, Volume, build_image};
    let root = debian_root(true);
    let tree: PathBuf = root.path().to_owned();
    let layout = Layout::Bare(Volume::new(FsType::Ext4, 32).with_tree_dir(tree));
    let image = build_image(&layout, Container::Raw).unwrap();
    let insp = ibkit_image::inspect::inspect(&image, &Default::default()).unwrap();
    let kernels = kernel::load(&insp.guest);
    assert_eq!(kernels.len(), 1, "{kernels:#?}");
    check_debian_kernel(&kernels[0], "modules.dep");
}

#[test]
fn version_ordering() {
    use std::cmp::Ordering::*;
    let cases = [
        ("6.1.0-13-amd64", "6.1.0-9-amd64", Greater),
        (
            "5.14.0-427.13.1.el9_4.x86_64",
            "5.14.0-70.13.1.el9_0.x86_64",
            Greater,
        ),
        ("6.1.0", "6.1.0-1", Less),
        ("6.10.0", "6.9.12", Greater),
        ("0-rescue-abc", "4.18.0", Less),
        ("6.1.0-00013", "6.1.0-13", Equal.then(Less)),
        (
            "99999999999999999999999999.1",
            "99999999999999999999999998.2",
            Greater,
        ),
    ];
    for (a, b, want) in cases {
        assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
        assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
    }
    assert_eq!(newest(&[]).map(|k| k.version.clone()), None);
}

#[test]
fn stale_modules_dep_entries_for_virtio_are_checked() {
    let root = debian_root(true);
    let m = root.path().join(format!("usr/lib/modules/{VER}"));
    fs::remove_file(m.join("kernel/fs/fuse/virtiofs.ko.xz")).unwrap();
    let kernels = kernel::load(&dir_guest(root.path()));
    let k = &kernels[0];
    assert_eq!(k.driver("virtiofs", "VIRTIO_FS"), DriverState::Missing);
    assert_eq!(
        k.problems,
        vec![format!(
            "modules.dep lists /lib/modules/{VER}/kernel/fs/fuse/virtiofs.ko.xz, which is missing"
        )]
    );
    assert!(k.modules.contains_key("fuse"));
}

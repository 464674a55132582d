//! Our qcow2 reader on real images made by qemu-img from one fixture disk:
//! plain, zlib (v3 and v2), zstd, small clusters, extended L2 (subclusters,
//! also over a backing file). Every variant must read byte for byte what the
//! raw image holds; the decompressed-cluster cache must inflate each cluster
//! once with many threads reading, and stay within its bound.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use ibkit_image::container::{BackingPolicy, open_disk};
use ibkit_image::inspect::{InspectOptions, inspect};
use ibkit_image::qcow2::{Header, Qcow2};
use ibkit_image::source::{RawFile, ReadAt};
use ibkit_test_utils::{Container, FsType, GptPart, Layout, Tree, Volume, build_image, cache_dir};

const ROOT: &str = "6a0c3f7e-5151-4d1e-8a0e-0c0f2c0aa001";

/// Deterministic bytes (xorshift): incompressible, so qemu-img stores these
/// clusters uncompressed even with `-c`.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The guest files of the fixture, path -> contents.
fn files() -> &'static BTreeMap<String, Vec<u8>> {
    static F: OnceLock<BTreeMap<String, Vec<u8>>> = OnceLock::new();
    F.get_or_init(|| {
        let mut f = BTreeMap::new();
        f.insert(
            "/etc/os-release".into(),
            b"ID=debian\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n".to_vec(),
        );
        f.insert(
            "/etc/fstab".into(),
            format!("UUID={ROOT} / ext4 defaults 0 1\n").into_bytes(),
        );
        // Many small text files, as in /etc: scattered 4 KiB reads.
        for i in 0..300u64 {
            let line = format!("setting_{i} = value {} # comment\n", i * 7919);
            let text = line.repeat(1 + (i as usize * 37) % 400);
            f.insert(format!("/etc/conf.d/file-{i:03}.conf"), text.into_bytes());
        }
        // A large compressible file read sequentially (readahead), and an
        // incompressible one (raw clusters between compressed ones).
        let big: String = (0..120_000)
            .map(|i| format!("line {i} of the big file\n"))
            .collect();
        f.insert("/usr/share/big.txt".into(), big.into_bytes());
        f.insert(
            "/usr/share/noise.bin".into(),
            noise(3 << 20, 0x9e37_79b9_7f4a_7c15),
        );
        f
    })
}

fn fixture(c: Container) -> PathBuf {
    // The tree lives until the image is built (or found in the cache).
    let mut t = Tree::new();
    for (path, data) in files() {
        t.file(path, data);
    }
    let layout = Layout::Gpt(vec![
        GptPart::empty("ef02", "bios", 1),
        GptPart::new(
            "8300",
            "root",
            Volume::new(FsType::Ext4, 48).with_tree(&t).with_uuid(ROOT),
        ),
    ]);
    let name = format!("{c:?}");
    build_image(&layout, c).unwrap_or_else(|e| panic!("fixture {name}: {e:#}"))
}

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img runs");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A variant of the fixture made by `qemu-img convert` with `opts`, cached
/// next to the fixture's raw image under `<raw stem>.<name>.qcow2`.
fn variant(name: &str, compress: bool, opts: &str) -> PathBuf {
    let raw = fixture(Container::Raw);
    let stem = raw.file_stem().and_then(|s| s.to_str()).expect("stem");
    let out = cache_dir().join(format!("{stem}.{name}.qcow2"));
    if out.exists() {
        return out;
    }
    // Built under a `.tmp-*` name (swept by the fixture cache) and renamed.
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-qcow2-variant-")
        .tempfile_in(cache_dir())
        .expect("tmp");
    let tmp_path = tmp.path().to_str().expect("utf8").to_owned();
    let mut args = vec!["convert", "-q", "-f", "raw", "-O", "qcow2", "-o", opts];
    if compress {
        args.push("-c");
    }
    args.extend([raw.to_str().expect("utf8"), tmp_path.as_str()]);
    qemu_img(&args);
    tmp.persist(&out).expect("publish variant");
    out
}

/// Every qcow2 flavour we read, with its name.
fn variants() -> Vec<(&'static str, PathBuf)> {
    vec![
        ("plain", fixture(Container::Qcow2)),
        ("zlib", fixture(Container::Qcow2Zlib)),
        ("zstd", fixture(Container::Qcow2Zstd)),
        ("zlib-v2", variant("zlib-v2", true, "compat=0.10")),
        ("zlib-4k", variant("zlib-4k", true, "cluster_size=4096")),
        (
            "zstd-2m",
            variant("zstd-2m", true, "compression_type=zstd,cluster_size=2M"),
        ),
        (
            "zlib-extl2",
            variant("zlib-extl2", true, "extended_l2=on,cluster_size=32768"),
        ),
        (
            "plain-extl2",
            variant("plain-extl2", false, "extended_l2=on,cluster_size=65536"),
        ),
    ]
}

fn open_qcow2(path: &Path, cache_bytes: Option<u64>) -> Qcow2 {
    let file = RawFile::open(path).expect("open");
    let header = Header::read(&file).expect("header");
    match cache_bytes {
        None => Qcow2::open(file, header, None),
        Some(b) => Qcow2::open_with_cache(file, header, None, b),
    }
    .expect("qcow2")
}

/// Read all of `src` in pieces of `step` bytes starting at `start` (wrapping
/// around), returning the whole disk.
fn read_all(src: &dyn ReadAt, step: usize, start: u64) -> Vec<u8> {
    let size = src.size();
    let mut out = vec![0u8; size as usize];
    let mut pos = start % size;
    let mut done = 0u64;
    while done < size {
        let n = (step as u64).min(size - pos) as usize;
        src.read_exact_at(&mut out[pos as usize..pos as usize + n], pos)
            .unwrap_or_else(|e| panic!("read of {n} at {pos}: {e}"));
        done += n as u64;
        pos = (pos + n as u64) % size;
    }
    out
}

/// Compressed clusters in `path`, as `qemu-img map` reports them.
fn compressed_clusters(path: &Path) -> u64 {
    let header = Header::read(&RawFile::open(path).expect("open")).expect("header");
    let cluster = 1u64 << header.cluster_bits;
    let out = Command::new("qemu-img")
        .args(["map", "--output=json"])
        .arg(path)
        .output()
        .expect("qemu-img map");
    assert!(out.status.success());
    let map: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    map.as_array()
        .expect("array")
        .iter()
        .filter(|e| e["compressed"].as_bool() == Some(true))
        .map(|e| e["length"].as_u64().expect("length").div_ceil(cluster))
        .sum()
}

#[test]
fn every_variant_reads_the_same_bytes_as_the_raw_image() {
    let raw = std::fs::read(fixture(Container::Raw)).expect("raw");
    for (name, path) in variants() {
        let disk = open_disk(&path, &BackingPolicy::default()).expect(name);
        assert_eq!(disk.source.size(), raw.len() as u64, "{name}");
        // Odd sizes and offsets: reads straddle clusters and subclusters.
        for (step, start) in [(4096, 0), (1 << 20, 12_345), (200_003, 777)] {
            let got = read_all(&*disk.source, step, start);
            if let Some(at) = got.iter().zip(&raw).position(|(a, b)| a != b) {
                panic!("{name}: byte {at} differs (step {step})");
            }
        }
        // And the guest's files, as the rules read them.
        let insp = inspect(&path, &InspectOptions::default()).expect(name);
        for (p, want) in files() {
            let got = insp.guest.read(p).expect(name).expect(p);
            assert!(got == *want, "{name}: {p} differs");
        }
    }
}

#[test]
fn concurrent_readers_inflate_each_compressed_cluster_once() {
    let raw = std::fs::read(fixture(Container::Raw)).expect("raw");
    for (name, path) in variants() {
        // A bound above the image's compressed data (2 MiB clusters exceed
        // the default): then nothing is evicted, and "once" is exact.
        let q = Arc::new(open_qcow2(&path, Some(1 << 30)));
        let expected = compressed_clusters(&path);
        // Four threads read everything in different orders and sizes; many
        // reads land in clusters another thread is inflating.
        let threads: Vec<_> = [
            (4096usize, 0u64),
            (65_537, 1 << 20),
            (1 << 20, 5 << 20),
            (512, 3),
        ]
        .into_iter()
        .map(|(step, start)| {
            let q = Arc::clone(&q);
            std::thread::spawn(move || read_all(&*q, step, start))
        })
        .collect();
        for t in threads {
            let got = t.join().expect("reader thread");
            assert!(got == raw, "{name}: a concurrent read differs");
        }
        let s = q.cache_stats();
        assert_eq!(s.evicted, 0, "{name}: {s:?}");
        assert_eq!(s.decompressed, expected, "{name}: {s:?}");
        assert!(s.peak_bytes <= s.bound_bytes, "{name}: {s:?}");
        if name != "plain" && name != "plain-extl2" {
            assert!(expected > 0, "{name} has no compressed cluster");
            assert!(s.hits >= 3 * expected, "{name}: {s:?}");
        }
    }
}

#[test]
fn the_cluster_cache_stays_within_its_bound() {
    let raw = std::fs::read(fixture(Container::Raw)).expect("raw");
    let path = fixture(Container::Qcow2Zlib);
    let cluster = 1u64
        << Header::read(&RawFile::open(&path).expect("open"))
            .expect("h")
            .cluster_bits;
    let bound = 8 * cluster;
    let q = Arc::new(open_qcow2(&path, Some(bound)));
    let threads: Vec<_> = [(4096usize, 0u64), (300_007, 9 << 20)]
        .into_iter()
        .map(|(step, start)| {
            let q = Arc::clone(&q);
            std::thread::spawn(move || read_all(&*q, step, start))
        })
        .collect();
    for t in threads {
        assert!(
            t.join().expect("reader") == raw,
            "read through a small cache differs"
        );
    }
    let s = q.cache_stats();
    assert_eq!(s.bound_bytes, bound);
    assert!(s.peak_bytes <= bound && s.held_bytes <= bound, "{s:?}");
    // The image has far more compressed data than the bound: clusters were
    // dropped and inflated again, correctly.
    assert!(
        s.evicted > 0 && s.decompressed > compressed_clusters(&path),
        "{s:?}"
    );
}

#[test]
fn subclusters_of_an_extended_l2_overlay_come_from_the_overlay_or_the_backing_file() {
    let d = tempfile::tempdir().expect("tmp");
    let base = d.path().join("base.qcow2");
    std::fs::copy(fixture(Container::Qcow2Zlib), &base).expect("copy");
    let top = d.path().join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "extended_l2=on,cluster_size=65536",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        top.to_str().expect("utf8"),
    ]);
    // 2 KiB subclusters inside the root filesystem's metadata (data in the
    // base): write some (one partly: the rest is copied from the base), zero
    // one, leave the others to the base; and one write into a cluster the
    // overlay had nothing of.
    let base_bytes = std::fs::read(fixture(Container::Raw)).expect("raw");
    let b = (0..base_bytes.len() as u64 / 65_536)
        .map(|c| c * 65_536)
        .find(|&b| {
            base_bytes[b as usize..b as usize + 32_768]
                .chunks(2048)
                .all(|s| s.iter().any(|&x| x != 0))
        })
        .expect("a cluster full of data");
    let writes = [
        (b + 2048, 2048u64, 0xa5u8),
        (b + 8192, 6144, 0x5a),
        (b + 24_576, 1024, 0x11),
        (b + 5 * 65_536 + 4096, 2048, 0x77),
    ];
    let zero = (b + 16_384, 4096u64);
    let mut cmds: Vec<String> = writes
        .iter()
        .map(|(at, len, pat)| format!("write -P {pat} {at} {len}"))
        .collect();
    cmds.push(format!("write -z {} {}", zero.0, zero.1));
    let mut io = Command::new("qemu-io");
    io.args(["-f", "qcow2"]);
    for c in &cmds {
        io.args(["-c", c]);
    }
    let out = io.arg(&top).output().expect("qemu-io");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut want = base_bytes;
    for (at, len, pat) in writes {
        want[at as usize..(at + len) as usize].fill(pat);
    }
    want[zero.0 as usize..(zero.0 + zero.1) as usize].fill(0);
    let disk = open_disk(&top, &BackingPolicy::default()).expect("overlay");
    assert_eq!(disk.layers.len(), 2);
    for (step, start) in [(512, 1 << 20), (3000, 0), (1 << 20, 7)] {
        assert!(read_all(&*disk.source, step, start) == want, "step {step}");
    }
}

#[test]
fn corrupt_compressed_clusters_are_errors_every_time() {
    let src = fixture(Container::Qcow2Zlib);
    let q = open_qcow2(&src, None);
    let cluster = 1u64 << q.header().cluster_bits;
    // The first compressed cluster (qemu-img map), and where its data is
    // (its L2 entry, read by hand).
    let out = Command::new("qemu-img")
        .args(["map", "--output=json"])
        .arg(&src)
        .output()
        .expect("map");
    let map: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let guest = map
        .as_array()
        .expect("array")
        .iter()
        .find(|e| e["compressed"].as_bool() == Some(true))
        .and_then(|e| e["start"].as_u64())
        .expect("a compressed range");
    let h = q.header();
    let file = std::fs::read(&src).expect("read");
    let be64 =
        |at: u64| u64::from_be_bytes(file[at as usize..at as usize + 8].try_into().expect("8"));
    let per_table = cluster / 8;
    let index = guest / cluster;
    let l2 = be64(h.l1_offset + 8 * (index / per_table)) & 0x00ff_ffff_ffff_fe00;
    let entry = be64(l2 + 8 * (index % per_table));
    assert!(
        entry & (1 << 62) != 0,
        "L2 entry {entry:#x} is not compressed"
    );
    let host = entry & ((1u64 << (62 - (h.cluster_bits - 8))) - 1);
    let d = tempfile::tempdir().expect("tmp");
    let bad = d.path().join("bad.qcow2");
    let mut bytes = std::fs::read(&src).expect("read");
    // Garbage where the deflate stream starts.
    bytes[host as usize..host as usize + 64].copy_from_slice(&noise(64, 7));
    std::fs::write(&bad, &bytes).expect("write");
    let q = open_qcow2(&bad, None);
    let mut buf = vec![0u8; 4096];
    for _ in 0..2 {
        let e = q
            .read_exact_at(&mut buf, guest + cluster / 2)
            .expect_err("garbage inflated");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
        assert!(e.to_string().contains("compressed cluster"), "{e}");
    }
    // Other clusters still read.
    let raw = std::fs::read(fixture(Container::Raw)).expect("raw");
    let other = guest + 8 * cluster;
    q.read_exact_at(&mut buf, other).expect("other cluster");
    assert!(buf[..] == raw[other as usize..other as usize + 4096]);
}

#[test]
fn hostile_headers_and_tables_give_errors_not_panics() {
    // Bytes changed in the header and the tables that follow it (L1,
    // refcounts, L2, the first compressed clusters) of a v2 image, a zstd
    // image with small clusters... and one with subclusters: opening and
    // reading must end in data or a clear error, never a panic or a hang.
    let d = tempfile::tempdir().expect("tmp");
    let cases = [
        variant("zlib-v2", true, "compat=0.10"),
        variant("zlib-4k", true, "cluster_size=4096"),
        variant("zlib-extl2", true, "extended_l2=on,cluster_size=32768"),
        fixture(Container::Qcow2Zstd),
    ];
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for img in cases {
        let original = std::fs::read(&img).expect("read");
        let window = original.len().min(1 << 20);
        for _ in 0..60 {
            let mut bytes = original.clone();
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bytes[(seed as usize) % window] = (seed >> 40) as u8;
            }
            let p = d.path().join("mutated.qcow2");
            std::fs::write(&p, &bytes).expect("write");
            let Ok(disk) = open_disk(&p, &BackingPolicy::default()) else {
                continue;
            };
            let size = disk.source.size();
            let mut buf = vec![0u8; 70_000];
            let mut pos = 0u64;
            while pos < size.min(64 << 20) {
                let n = (buf.len() as u64).min(size - pos) as usize;
                let _ = disk.source.read_exact_at(&mut buf[..n], pos);
                pos += 1_048_573;
            }
        }
    }
}

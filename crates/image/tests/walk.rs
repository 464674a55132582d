//! The guest tree walk ([`Walker`]) on filesystems with directory hard links
//! and loops (issue 12, item 8): ext4 directories hard-linked to themselves,
//! to an ancestor and into a DAG of 16^12 paths (debugfs `ln` links
//! directories), an XFS entry pointing at its own directory (xfs_db), a vfat
//! subdirectory whose cluster is its parent's. Each directory must be listed
//! once, the walk must end quickly, and budgets must stop it and say so.
//! Needs e2fsprogs, xfsprogs, dosfstools and mtools (root, as in CI).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ibkit_image::Guest;
use ibkit_image::fs::FileKind;
use ibkit_image::fs::dir::DirFs;
use ibkit_image::fs::ext4::Ext4;
use ibkit_image::fs::vfat::Vfat;
use ibkit_image::fs::xfs::XfsFs;
use ibkit_image::guest::{Visit, WalkBudget, WalkLimits, Walker};
use ibkit_image::limits::GUEST_LOOKUP_CACHE_BYTES;
use ibkit_image::source::{RawFile, Source};
use ibkit_test_utils::{Container, FsType, Layout, Tree, Volume, build_image, with_deadline};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn source(img: &Path) -> Source {
    Arc::new(RawFile::open(img).unwrap())
}

/// What one walk saw: every entry's path and kind, in order, and the
/// walker's counters and notes.
#[derive(Debug)]
struct Seen {
    entries: Vec<(String, FileKind)>,
    dirs: usize,
    revisits: usize,
    exhausted: Option<WalkBudget>,
    notes: Vec<String>,
    cache_peak: u64,
}

fn walk(guest: &Guest, roots: &[&str], limits: WalkLimits) -> Seen {
    let mut w = Walker::new(guest, limits);
    let mut entries = Vec::new();
    for root in roots {
        w.walk(root, |e| {
            entries.push((e.path_lossy(), e.kind));
            Visit::Descend
        });
    }
    let notes = [w.exhausted_note(), w.revisit_note(), w.too_deep_note()]
        .into_iter()
        .flatten()
        .collect();
    Seen {
        entries,
        dirs: w.dirs(),
        revisits: w.revisits().0,
        exhausted: w.exhausted(),
        notes,
        cache_peak: guest.lookup_cache_counts().1,
    }
}

/// `mke2fs -d tree` then debugfs commands (`ln DIR NEWPATH` links a
/// directory, which link(2) refuses).
fn ext4_with(dir: &Path, tree: &Path, debugfs: &str) -> PathBuf {
    let img = dir.join("fs.ext4");
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-d"])
        .arg(tree)
        .arg(&img)
        .arg("4M"));
    let script = dir.join("debugfs.cmds");
    std::fs::write(&script, debugfs).unwrap();
    run(Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&script)
        .arg(&img));
    img
}

fn ext4_guest(img: &Path) -> Guest {
    let fs = Ext4::open(source(img)).unwrap();
    Guest::new(Arc::new(fs), "ext4 test image".into())
}

// /a holds 16 links to itself; /a/b links to /a (its parent) and to /.
// Path recursion walked /a 16^depth times; the walker lists /a once.
#[test]
fn ext4_directories_linked_to_themselves_and_ancestors_are_listed_once() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("a/b")).unwrap();
    std::fs::write(tree.join("a/b/file"), "x").unwrap();
    std::fs::write(tree.join("top"), "y").unwrap();
    let mut cmds: String = (0..16).map(|i| format!("ln /a /a/self{i:02}\n")).collect();
    cmds.push_str("ln /a /a/b/up\nln / /a/b/root\n");
    let img = ext4_with(dir.path(), &tree, &cmds);
    let guest = Arc::new(ext4_guest(&img));
    let t = Instant::now();
    let seen = with_deadline(Duration::from_secs(60), "walk of ext4 loops", {
        let guest = guest.clone();
        move || walk(&guest, &["/"], WalkLimits::default())
    });
    eprintln!(
        "{:?} for {} entries: {:?}",
        t.elapsed(),
        seen.entries.len(),
        seen.notes
    );
    // Every file once, under its first path.
    let files: Vec<_> = seen
        .entries
        .iter()
        .filter(|(_, k)| *k == FileKind::File)
        .map(|(p, _)| p.as_str())
        .collect();
    assert_eq!(files, ["/a/b/file", "/top"], "{seen:#?}");
    // /, /a, /a/b (lost+found too): each listed once; every link to them is
    // reported, not followed.
    assert_eq!(seen.dirs, 4, "{seen:#?}");
    assert_eq!(seen.revisits, 18, "16 self links, up, root: {seen:#?}");
    assert!(seen.exhausted.is_none());
    assert!(
        seen.notes
            .iter()
            .any(|n| n.contains("hard link or loop (first: /a/b/root)")),
        "{:?}",
        seen.notes
    );
}

// The 16^12 case without any cycle: /d0 holds 16 links to /d1, /d1 16 to
// /d2, ... /d11 16 to /d12. A DAG of 13 directories and 16^12 paths.
#[test]
fn ext4_directory_dag_of_16_pow_12_paths_is_walked_in_13_listings() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    for i in 0..=12 {
        std::fs::create_dir_all(tree.join(format!("d{i}"))).unwrap();
    }
    std::fs::write(tree.join("d12/leaf"), "z").unwrap();
    let mut cmds = String::new();
    for i in 0..12 {
        for j in 0..16 {
            cmds.push_str(&format!("ln /d{} /d{i}/x{j:02}\n", i + 1));
        }
    }
    let img = ext4_with(dir.path(), &tree, &cmds);
    let guest = Arc::new(ext4_guest(&img));
    let seen = with_deadline(Duration::from_secs(60), "walk of a directory DAG", {
        let guest = guest.clone();
        move || walk(&guest, &["/d0"], WalkLimits::default())
    });
    let leaves: Vec<_> = seen
        .entries
        .iter()
        .filter(|(p, _)| p.ends_with("/leaf"))
        .collect();
    assert_eq!(leaves.len(), 1, "{leaves:?}");
    assert_eq!(seen.dirs, 13, "{seen:#?}");
    assert_eq!(seen.revisits, 12 * 15, "{seen:#?}");
    assert!(seen.entries.len() <= 13 * 16 + 1, "{}", seen.entries.len());
}

// Path lookups through a loop are endless distinct paths; the guest's lookup
// cache used to keep every one of them. It must stay within its bound.
#[test]
fn guest_lookup_cache_stays_bounded_on_endless_paths() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("a")).unwrap();
    // 16 links with 200-byte names: long paths fill the cache quickly.
    let link = |i: u64| format!("{:x}{}", i, "s".repeat(199));
    let cmds: String = (0..16).map(|i| format!("ln /a /a/{}\n", link(i))).collect();
    let img = ext4_with(dir.path(), &tree, &cmds);
    let guest = ext4_guest(&img);
    // 1 000 distinct paths of 20 components (about 4 000 bytes): each
    // prefix past the third component is a new path, some 30 MiB of
    // lookups if all were kept.
    for i in 0..1_000u64 {
        let mut p = String::from("/a");
        for d in 0..3 {
            p.push('/');
            p.push_str(&link((i >> (4 * d)) & 15));
        }
        for _ in 0..16 {
            p.push('/');
            p.push_str(&link(0));
        }
        let meta = guest.stat(&p).unwrap().unwrap();
        assert_eq!(meta.kind, FileKind::Dir);
    }
    let (held, peak, evicted) = guest.lookup_cache_counts();
    eprintln!("lookup cache: {held} bytes held, peak {peak}, {evicted} evicted");
    assert!(peak <= GUEST_LOOKUP_CACHE_BYTES, "peak {peak}");
    assert!(evicted > 0, "the test did not fill the cache");
}

/// A host directory tree as a guest.
fn dir_guest(root: &Path) -> Guest {
    Guest::new(Arc::new(DirFs::new(root)), "host tree".into())
}

// A wide, finite tree (no loop): the directory budget stops the walk and
// the walker names it; the entry budget and the depth limit likewise.
#[test]
fn budgets_stop_a_wide_tree_and_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..300 {
        std::fs::create_dir_all(tmp.path().join(format!("w/d{:02}/e{:02}", i / 20, i % 20)))
            .unwrap();
    }
    std::fs::create_dir_all(tmp.path().join("deep/1/2/3/4/5")).unwrap();
    let guest = dir_guest(tmp.path());

    let limits = WalkLimits {
        max_dirs: 100,
        ..WalkLimits::default()
    };
    let seen = walk(&guest, &["/w"], limits);
    assert_eq!(seen.exhausted, Some(WalkBudget::Dirs(100)), "{seen:#?}");
    assert_eq!(seen.dirs, 100);
    assert!(
        seen.notes[0].starts_with("walk stopped early at its directory budget (100 directories)"),
        "{:?}",
        seen.notes
    );

    let limits = WalkLimits {
        max_entries: 50,
        ..WalkLimits::default()
    };
    let seen = walk(&guest, &["/w", "/deep"], limits);
    assert_eq!(seen.exhausted, Some(WalkBudget::Entries(50)));
    assert_eq!(seen.entries.len(), 50);
    assert!(seen.notes[0].contains("entry budget (50 entries)"));

    let limits = WalkLimits {
        max_depth: 3,
        ..WalkLimits::default()
    };
    let seen = walk(&guest, &["/deep"], limits);
    assert!(seen.exhausted.is_none());
    // /deep/1/2/3 (depth 3) is listed; /deep/1/2/3/4 is seen but not listed.
    assert!(seen.entries.iter().any(|(p, _)| p == "/deep/1/2/3/4"));
    assert!(!seen.entries.iter().any(|(p, _)| p == "/deep/1/2/3/4/5"));
    assert!(
        seen.notes
            .iter()
            .any(|n| n.contains("deeper than 3 levels not examined (first: /deep/1/2/3/4)")),
        "{:?}",
        seen.notes
    );
}

// Roots inside each other, or two paths to one root: walked once, and that
// is not reported as a loop.
#[test]
fn a_root_already_walked_is_neither_walked_again_nor_a_loop() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("etc/sub")).unwrap();
    std::fs::write(tmp.path().join("etc/sub/f"), "x").unwrap();
    std::os::unix::fs::symlink("etc", tmp.path().join("alias")).unwrap();
    let guest = dir_guest(tmp.path());
    let seen = walk(
        &guest,
        &["/etc", "/etc/sub", "/alias"],
        WalkLimits::default(),
    );
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for (p, _) in &seen.entries {
        *count.entry(p.as_str()).or_default() += 1;
    }
    assert_eq!(count.get("/etc/sub/f"), Some(&1), "{seen:#?}");
    assert_eq!(seen.revisits, 0);
    assert!(seen.notes.is_empty(), "{:?}", seen.notes);
}

// XFS: a shortform directory entry rewritten (xfs_db) to point at its own
// directory: /a/b is /a again.
#[test]
fn xfs_directory_entry_pointing_at_its_own_directory_is_listed_once() {
    let mut t = Tree::new();
    t.file("a/f", "x").dir("a/b");
    let cached = build_image(
        &Layout::Bare(Volume::new(FsType::Xfs, 300).with_tree(&t)),
        Container::Raw,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fs.xfs");
    // Never patch the shared fixture cache: work on a copy.
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(&cached)
        .arg(&img));
    let a = run(Command::new("xfs_db")
        .args(["-r", "-c", "path /a", "-c", "inode"])
        .arg(&img));
    let a_ino = a
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("xfs_db inode: {a}"));
    let listing = run(Command::new("xfs_db")
        .args(["-r", "-c", "path /a", "-c", "print u3.sfdir3.list[0].name"])
        .arg(&img));
    assert!(listing.contains("\"b\""), "{listing}");
    run(Command::new("xfs_db")
        .args(["-x", "-c", "path /a", "-c"])
        .arg(format!("write u3.sfdir3.list[0].inumber.i4 {a_ino}"))
        .arg(&img));
    let fs = XfsFs::open(source(&img)).unwrap();
    let guest = Arc::new(Guest::new(Arc::new(fs), "xfs test image".into()));
    let seen = with_deadline(Duration::from_secs(60), "walk of an XFS loop", {
        let guest = guest.clone();
        move || walk(&guest, &["/"], WalkLimits::default())
    });
    let files: Vec<_> = seen
        .entries
        .iter()
        .filter(|(p, _)| p.ends_with("/f"))
        .collect();
    assert_eq!(files.len(), 1, "{seen:#?}");
    assert_eq!(seen.dirs, 2, "/ and /a: {seen:#?}");
    assert_eq!(seen.revisits, 1, "{seen:#?}");
    assert!(seen.notes.iter().any(|n| n.contains("(first: /a/b)")));
}

// vfat (FAT12): /A/B's directory entry patched to start at /A's cluster, so /A/B
// is /A again (FAT has no inodes: a directory is its cluster chain).
#[test]
fn vfat_subdirectory_sharing_its_parents_cluster_is_listed_once() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fs.vfat");
    run(Command::new("mkfs.vfat").arg("-C").arg(&img).arg("4096"));
    let target = format!("{}", img.display());
    run(Command::new("mmd")
        .args(["-i", &target, "::/A", "::/A/B"])
        .env("MTOOLS_SKIP_CHECK", "1"));
    let f = dir.path().join("F.TXT");
    std::fs::write(&f, "x").unwrap();
    run(Command::new("mcopy")
        .args(["-i", &target])
        .arg(&f)
        .arg("::/A/F.TXT")
        .env("MTOOLS_SKIP_CHECK", "1"));
    let mut bytes = std::fs::read(&img).unwrap();
    let le16 = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let bps = le16(&bytes, 11);
    let spc = bytes[13] as usize;
    let reserved = le16(&bytes, 14);
    let nfats = bytes[16] as usize;
    let root_entries = le16(&bytes, 17);
    let fat_sectors = le16(&bytes, 22);
    let root_off = (reserved + nfats * fat_sectors) * bps;
    let data_off = root_off + (root_entries * 32).div_ceil(bps) * bps;
    let find = |b: &[u8], from: usize, len: usize, name: &[u8; 11]| -> usize {
        (from..from + len)
            .step_by(32)
            .find(|&o| &b[o..o + 11] == name)
            .unwrap_or_else(|| panic!("no entry {}", String::from_utf8_lossy(name)))
    };
    let a = find(&bytes, root_off, root_entries * 32, b"A          ");
    let a_cluster = le16(&bytes, a + 26);
    let a_data = data_off + (a_cluster - 2) * spc * bps;
    let b = find(&bytes, a_data, spc * bps, b"B          ");
    bytes[b + 26..b + 28].copy_from_slice(&(a_cluster as u16).to_le_bytes());
    std::fs::write(&img, &bytes).unwrap();

    let fs = Vfat::open(source(&img)).unwrap();
    let guest = Arc::new(Guest::new(Arc::new(fs), "vfat test image".into()));
    let seen = with_deadline(Duration::from_secs(60), "walk of a vfat loop", {
        let guest = guest.clone();
        move || walk(&guest, &["/"], WalkLimits::default())
    });
    let files: Vec<_> = seen
        .entries
        .iter()
        .filter(|(p, _)| p.to_ascii_uppercase().ends_with("/F.TXT"))
        .collect();
    assert_eq!(files.len(), 1, "{seen:#?}");
    assert_eq!(seen.dirs, 2, "/ and /A: {seen:#?}");
    assert_eq!(seen.revisits, 1, "{seen:#?}");
    assert!(seen.cache_peak <= GUEST_LOOKUP_CACHE_BYTES);
}

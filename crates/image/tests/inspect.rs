//! Image access end to end on real images built by ibkit-test-utils: every
//! container, partition layout, LVM and filesystem the platform's images
//! use, fstab-driven mounts, and the guest's symlink rules.

use std::path::{Path, PathBuf};
use std::process::Command;

use ibkit_image::ImageError;
use ibkit_image::container::{BackingPolicy, open_disk};
use ibkit_image::inspect::{InputKind, InspectOptions, inspect};
use ibkit_test_utils::{Container, FsType, GptPart, Layout, PartTable, Tree, Volume, build_image};

const ROOT: &str = "0d7a1f4e-1111-4c35-9d39-3d3c0d0a7e11";
const BOOT: &str = "0d7a1f4e-2222-4c35-9d39-3d3c0d0a7e11";

fn root_tree(fstab: &str) -> Tree {
    let mut t = Tree::new();
    t.file(
        "etc/os-release",
        "ID=debian\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
    )
    .file("etc/fstab", fstab)
    .file("etc/hostname", "fixture\n")
    .dir("boot")
    .symlink("etc/abs-link", "/etc/hostname")
    .symlink("etc/escape", "../../../../../../etc/hostname")
    .symlink("etc/loop-a", "loop-b")
    .symlink("etc/loop-b", "loop-a")
    .symlink("bin", "usr/bin")
    .file("usr/bin/tool", "#!/bin/sh\n");
    t
}

fn boot_tree() -> Tree {
    let mut t = Tree::new();
    t.file(
        "grub/grub.cfg",
        "menuentry 'x' {\n linux /vmlinuz root=UUID=x\n}\n",
    )
    .file("vmlinuz-6.1", "k");
    t
}

fn read(insp: &ibkit_image::Inspection, path: &str) -> Option<String> {
    insp.guest.read_text(path).expect("read")
}

fn standard_checks(img: &Path) -> ibkit_image::Inspection {
    let insp = inspect(img, &InspectOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", img.display()));
    assert_eq!(read(&insp, "/etc/hostname").as_deref(), Some("fixture\n"));
    // Absolute symlinks resolve inside the guest, `..` never leaves its root.
    assert_eq!(read(&insp, "/etc/abs-link").as_deref(), Some("fixture\n"));
    assert_eq!(read(&insp, "/etc/escape").as_deref(), Some("fixture\n"));
    assert_eq!(read(&insp, "/bin/tool").as_deref(), Some("#!/bin/sh\n"));
    match insp.guest.read("/etc/loop-a") {
        Err(ibkit_image::GuestError::SymlinkLoop { .. }) => {}
        other => panic!("symlink loop not detected: {other:?}"),
    }
    insp
}

fn gpt_with_boot(container: Container) -> PathBuf {
    let fstab = format!(
        "UUID={ROOT} / ext4 defaults 0 1\nUUID={BOOT} /boot ext4 defaults 0 2\nproc /proc proc defaults 0 0\n"
    );
    let root = root_tree(&fstab);
    let boot = boot_tree();
    let layout = Layout::Gpt(vec![
        GptPart::empty("ef02", "bios", 1),
        GptPart::new(
            "8300",
            "boot",
            Volume::new(FsType::Ext4, 32)
                .with_tree(&boot)
                .with_uuid(BOOT),
        ),
        GptPart::new(
            "8300",
            "root",
            Volume::new(FsType::Ext4, 48)
                .with_tree(&root)
                .with_uuid(ROOT),
        ),
    ]);
    build_image(&layout, container).expect("build")
}

#[test]
fn gpt_separate_boot_in_every_container() {
    for c in [
        Container::Raw,
        Container::Qcow2,
        Container::Qcow2Zlib,
        Container::Qcow2Backed,
        Container::Qcow2BackedRaw,
    ] {
        let img = gpt_with_boot(c.clone());
        let insp = standard_checks(&img);
        assert_eq!(insp.volumes.len(), 3, "{c:?}");
        assert_eq!(
            insp.mounts
                .iter()
                .map(|m| m.point.as_str())
                .collect::<Vec<_>>(),
            vec!["/", "/boot"]
        );
        assert!(
            read(&insp, "/boot/grub/grub.cfg").is_some_and(|t| t.contains("menuentry")),
            "{c:?}"
        );
        let InputKind::Disk { layers, .. } = &insp.input else {
            panic!("disk")
        };
        let expect_layers = if matches!(c, Container::Qcow2Backed | Container::Qcow2BackedRaw) {
            2
        } else {
            1
        };
        assert_eq!(layers.len(), expect_layers, "{c:?}");
        assert!(insp.notes.is_empty(), "{c:?}: {:?}", insp.notes);
    }
}

#[test]
fn zstd_qcow2_is_read_by_our_own_reader() {
    // compression_type=zstd (imago, used before, refused it).
    let img = gpt_with_boot(Container::Qcow2Zstd);
    let insp = standard_checks(&img);
    assert!(read(&insp, "/boot/grub/grub.cfg").is_some());
    // Byte-identical to the raw image, sampled across the disk.
    let raw = gpt_with_boot(Container::Raw);
    let a = open_disk(&img, &BackingPolicy::default()).expect("zstd");
    let b = open_disk(&raw, &BackingPolicy::default()).expect("raw");
    assert_eq!(a.source.size(), b.source.size());
    let mut pos = 0u64;
    while pos + 8192 <= a.source.size() {
        let (mut x, mut y) = (vec![0u8; 8192], vec![0u8; 8192]);
        a.source.read_exact_at(&mut x, pos).expect("zstd read");
        b.source.read_exact_at(&mut y, pos).expect("raw read");
        assert_eq!(x, y, "differs at {pos}");
        pos += 1_048_573; // a prime step lands at varied offsets in clusters
    }
}

#[test]
fn zstd_overlay_on_a_plain_qcow2_base() {
    let d = tempfile::tempdir().expect("tmp");
    let base = d.path().join("base.qcow2");
    std::fs::copy(gpt_with_boot(Container::Qcow2), &base).expect("copy");
    let top = d.path().join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compression_type=zstd",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        top.to_str().expect("utf8"),
    ]);
    let insp = standard_checks(&top);
    let InputKind::Disk { layers, .. } = &insp.input else {
        panic!("disk")
    };
    assert_eq!(layers.len(), 2);
}

#[test]
fn corrupt_zstd_images_never_panic() {
    mutate_and_inspect(
        &gpt_with_boot(Container::Qcow2Zstd),
        0x9e37_79b9_7f4a_7c15,
        150,
        6,
        usize::MAX,
    );
}

/// Inspect `rounds` copies of `img`, each with `flips` pseudo-random bytes
/// changed within its first `window` bytes: every run must end (Ok or a
/// clear error), never panic.
fn mutate_and_inspect(img: &Path, mut seed: u64, rounds: usize, flips: usize, window: usize) {
    let original = std::fs::read(img).expect("read");
    let d = tempfile::tempdir().expect("tmp");
    for _ in 0..rounds {
        let mut bytes = original.clone();
        for _ in 0..flips {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed as usize) % bytes.len().min(window);
            bytes[at] = (seed >> 32) as u8;
        }
        let p = d.path().join("mutated.qcow2");
        std::fs::write(&p, &bytes).expect("write");
        let _ = survives(&p);
    }
}

#[test]
fn mbr_extended_logical_root() {
    let fstab = format!("UUID={ROOT} / ext4 defaults 0 1\n");
    let root = root_tree(&fstab);
    let layout = Layout::MbrExtended {
        primary: vec![Volume::new(FsType::Ext2, 16)],
        logical: vec![
            Volume::new(FsType::Swap, 8),
            Volume::new(FsType::Ext4, 48)
                .with_tree(&root)
                .with_uuid(ROOT),
        ],
    };
    let img = build_image(&layout, Container::Raw).expect("build");
    let insp = standard_checks(&img);
    let root_vol = &insp.volumes[insp.root.expect("root")];
    assert_eq!(root_vol.partition.as_ref().map(|p| p.number), Some(6));
}

#[test]
fn xfs_root_on_lvm_with_separate_boot_rhel_style() {
    let fstab = format!(
        "/dev/mapper/rootvg-rootlv / xfs defaults 0 0\nUUID={BOOT} /boot xfs defaults 0 0\n"
    );
    let root = root_tree(&fstab);
    let boot = boot_tree();
    let layout = Layout::GptLvm {
        parts: vec![
            GptPart::empty("ef02", "bios", 1),
            GptPart::new(
                "8300",
                "boot",
                Volume::new(FsType::Xfs, 300)
                    .with_tree(&boot)
                    .with_uuid(BOOT),
            ),
        ],
        vg: "rootvg".into(),
        lvs: vec![
            (
                "rootlv".into(),
                Volume::new(FsType::Xfs, 300).with_tree(&root),
            ),
            ("swaplv".into(), Volume::new(FsType::Swap, 8)),
        ],
    };
    let img = build_image(&layout, Container::Qcow2).expect("build");
    let insp = standard_checks(&img);
    let root_vol = &insp.volumes[insp.root.expect("root")];
    assert_eq!(root_vol.lvm, Some(("rootvg".into(), "rootlv".into())));
    assert_eq!(insp.mounts[1].point, "/boot");
    assert_eq!(insp.mounts[1].fs_type, "xfs");
    assert!(read(&insp, "/boot/grub/grub.cfg").is_some());
}

#[test]
fn lvm_on_mbr_ext4() {
    let fstab = "/dev/vg0/root / ext4 defaults 0 1\n".to_string();
    let root = root_tree(&fstab);
    let layout = Layout::Lvm {
        boot: None,
        vg: "vg0".into(),
        lvs: vec![(
            "root".into(),
            Volume::new(FsType::Ext4, 48).with_tree(&root),
        )],
        table: PartTable::Mbr,
    };
    let img = build_image(&layout, Container::Qcow2Zlib).expect("build");
    let insp = standard_checks(&img);
    assert_eq!(insp.volumes[insp.root.expect("root")].name, "vg0/root");
}

#[test]
fn bare_filesystem_and_directory_inputs() {
    let root = root_tree("");
    let img = build_image(
        &Layout::Bare(Volume::new(FsType::Ext4, 32).with_tree(&root)),
        Container::Raw,
    )
    .expect("build");
    let insp = standard_checks(&img);
    assert!(insp.table.is_none());
    let dir = inspect(root.path(), &InspectOptions::default()).expect("directory");
    assert!(matches!(dir.input, InputKind::Directory));
    assert_eq!(
        dir.guest.read_text("/etc/escape").expect("read").as_deref(),
        Some("fixture\n")
    );
}

#[test]
fn fstab_entry_not_on_disk_is_a_note_not_an_error() {
    let fstab = format!(
        "UUID={ROOT} / ext4 defaults 0 1\nUUID=ffffffff-0000-0000-0000-000000000000 /var ext4 defaults 0 2\n"
    );
    let root = root_tree(&fstab);
    let layout = Layout::Gpt(vec![GptPart::new(
        "8300",
        "root",
        Volume::new(FsType::Ext4, 32)
            .with_tree(&root)
            .with_uuid(ROOT),
    )]);
    let insp = inspect(
        &build_image(&layout, Container::Raw).expect("build"),
        &InspectOptions::default(),
    )
    .expect("inspect");
    assert!(
        insp.notes.iter().any(|n| n.contains("/var")),
        "{:?}",
        insp.notes
    );
}

#[test]
fn no_root_filesystem_names_what_was_found() {
    let mut t = Tree::new();
    t.file("data.txt", "x");
    let img = build_image(
        &Layout::Mbr(vec![Volume::new(FsType::Ext4, 16).with_tree(&t)]),
        Container::Raw,
    )
    .expect("build");
    match inspect(&img, &InspectOptions::default()) {
        Err(ImageError::NoRoot { what, .. }) => assert!(what.contains("p1 ext4"), "{what}"),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("found a root"),
    }
}

// ---- hostile and corrupt containers -------------------------------------

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

#[test]
fn backing_chain_loop_is_refused() {
    let d = tempfile::tempdir().expect("tmp");
    let a = d.path().join("a.qcow2");
    let b = d.path().join("b.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        b.to_str().expect("utf8"),
        "16M",
    ]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "b.qcow2",
        "-F",
        "qcow2",
        a.to_str().expect("utf8"),
    ]);
    qemu_img(&[
        "rebase",
        "-q",
        "-u",
        "-b",
        "a.qcow2",
        "-F",
        "qcow2",
        b.to_str().expect("utf8"),
    ]);
    match open_disk(&a, &BackingPolicy::default()) {
        Err(ImageError::Unsafe { what, .. }) => assert!(what.contains("loops"), "{what}"),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("loop accepted"),
    }
}

#[test]
fn backing_file_outside_the_image_directory_is_refused_unless_allowed() {
    let base_dir = tempfile::tempdir().expect("tmp");
    let top_dir = tempfile::tempdir().expect("tmp");
    let base = base_dir.path().join("base.qcow2");
    let top = top_dir.path().join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        base.to_str().expect("utf8"),
        "16M",
    ]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        base.to_str().expect("utf8"),
        "-F",
        "qcow2",
        top.to_str().expect("utf8"),
    ]);
    match open_disk(&top, &BackingPolicy::default()) {
        Err(ImageError::Unsafe { what, .. }) => assert!(what.contains("outside"), "{what}"),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("outside backing file accepted"),
    }
    let ok = open_disk(
        &top,
        &BackingPolicy {
            allowed_dirs: vec![base_dir.path().to_owned()],
        },
    )
    .expect("allowed");
    assert_eq!(ok.layers.len(), 2);
}

#[test]
fn protocol_backing_and_external_data_file_are_refused() {
    let d = tempfile::tempdir().expect("tmp");
    let top = d.path().join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        top.to_str().expect("utf8"),
        "16M",
    ]);
    qemu_img(&[
        "rebase",
        "-q",
        "-u",
        "-b",
        "nbd://evil.example:10809/x",
        "-F",
        "raw",
        top.to_str().expect("utf8"),
    ]);
    assert!(matches!(
        open_disk(&top, &BackingPolicy::default()),
        Err(ImageError::Unsafe { .. })
    ));
    let data = d.path().join("data.qcow2");
    let raw = d.path().join("data.raw");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={}", raw.display()),
        data.to_str().expect("utf8"),
        "16M",
    ]);
    match open_disk(&data, &BackingPolicy::default()) {
        Err(ImageError::Unsafe { what, .. }) => {
            assert!(what.contains("external data file"), "{what}")
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("external data file accepted"),
    }
}

fn corrupt_copy(src: &Path, dir: &Path, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(src).expect("read");
    edit(&mut bytes);
    let p = dir.join("corrupt.qcow2");
    std::fs::write(&p, bytes).expect("write");
    p
}

/// Inspecting must end with Ok or a clear error, never a panic or a hang.
fn survives(p: &Path) -> String {
    match inspect(p, &InspectOptions::default()) {
        Ok(insp) => {
            let _ = insp.guest.read("/etc/hostname");
            "ok".into()
        }
        Err(e) => e.to_string(),
    }
}

#[test]
fn truncated_qcow2_gives_an_error() {
    let img = gpt_with_boot(Container::Qcow2);
    let d = tempfile::tempdir().expect("tmp");
    for keep in [16usize, 100, 4096, 70_000, 200_000] {
        let p = corrupt_copy(&img, d.path(), |b| b.truncate(keep.min(b.len())));
        let msg = survives(&p);
        assert_ne!(msg, "ok", "truncated to {keep} bytes still inspects");
    }
}

#[test]
fn l1_entry_pointing_past_eof_gives_an_error() {
    let img = gpt_with_boot(Container::Qcow2);
    let d = tempfile::tempdir().expect("tmp");
    let p = corrupt_copy(&img, d.path(), |b| {
        let l1 = u64::from_be_bytes(b[40..48].try_into().expect("8 bytes")) as usize;
        // Point the first L2 table far past the end of the file.
        b[l1..l1 + 8].copy_from_slice(&(0x8000_0000_0000_0000u64 | (1u64 << 40)).to_be_bytes());
    });
    let msg = survives(&p);
    assert_ne!(msg, "ok");
}

#[test]
fn huge_virtual_size_does_not_allocate() {
    let d = tempfile::tempdir().expect("tmp");
    let p = d.path().join("huge.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=2M",
        p.to_str().expect("utf8"),
        "1P",
    ]);
    let msg = survives(&p);
    assert!(msg.contains("no root filesystem"), "{msg}");
    // A header claiming 2^62 bytes with a tiny L1 table is corrupt.
    let q = corrupt_copy(&p, d.path(), |b| {
        b[24..32].copy_from_slice(&(1u64 << 62).to_be_bytes())
    });
    let msg = survives(&q);
    assert_ne!(msg, "ok");
}

#[test]
fn random_header_corruption_never_panics() {
    // Mostly the qcow2 header and tables at the front.
    mutate_and_inspect(
        &gpt_with_boot(Container::Qcow2),
        0x2545_f491_4f6c_dd1d,
        200,
        8,
        1 << 20,
    );
}

/// Every reproducer the fuzzers found stays fixed: a clear error, no panic.
#[test]
fn fuzz_regressions_give_errors_not_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions");
    let mut seen = 0;
    for target in std::fs::read_dir(&dir).expect("fuzz/regressions") {
        for f in std::fs::read_dir(target.expect("entry").path()).expect("target dir") {
            let p = f.expect("entry").path();
            seen += 1;
            let msg = survives(&p);
            assert!(!msg.is_empty(), "{}", p.display());
        }
    }
    assert!(seen > 0, "no reproducers in {}", dir.display());
}

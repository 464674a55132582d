//! The approved chain (`ibkit_image::chain`) and the regular-files-only rule
//! against hostile images: each test builds the attack with real tools
//! (qemu-img, mkfifo, a real MBR + ext4 disk), shows what QEMU or the old
//! reader would have done with it, and asserts the refusal.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use ibkit_image::ImageError;
use ibkit_image::chain::approve;
use ibkit_image::container::{BackingPolicy, Format, open_disk};
use ibkit_image::inspect::{InspectOptions, inspect};
use ibkit_image::source::RawFile;
use ibkit_test_utils::{
    Container, FsType, Layout, Tree, Volume, build_image, qcow2_naming_backing, qcow2_over_raw,
    qemu_img,
};
use serde_json::Value;

fn info(args: &[&str]) -> Value {
    let mut all = vec!["info", "-U", "--output=json"];
    all.extend_from_slice(args);
    serde_json::from_slice(&qemu_img(&all)).expect("qemu-img info JSON")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A real raw disk: MBR, one ext4 partition with an os-release.
fn mbr_ext4() -> PathBuf {
    let mut root = Tree::new();
    root.file("etc/os-release", "ID=debian\n")
        .file("etc/hostname", "crafted\n");
    build_image(
        &Layout::Mbr(vec![Volume::new(FsType::Ext4, 8).with_tree(&root)]),
        Container::Raw,
    )
    .expect("MBR + ext4 image")
}

/// A copy of a real MBR + ext4 disk whose boot code area (the first 440
/// bytes; the partition table stays intact) holds a VMDK text descriptor
/// with one flat extent: `secret`, a host file.
fn vmdk_disguised_disk(dir: &Path, secret: &Path) -> PathBuf {
    let disk = dir.join("disk.raw");
    std::fs::copy(mbr_ext4(), &disk).expect("copy image");
    let descriptor = format!(
        "# not the usual \"Disk DescriptorFile\" line: any comment will do\n\
         version=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\
         RW 2048 FLAT \"{}\" 0\n\0",
        secret.display()
    );
    assert!(descriptor.len() <= 440, "the descriptor fits the boot code");
    let mut bytes = std::fs::read(&disk).expect("read");
    bytes[..descriptor.len()].copy_from_slice(descriptor.as_bytes());
    std::fs::write(&disk, bytes).expect("write");
    disk
}

fn secret_file(dir: &Path) -> PathBuf {
    let secret = dir.join("host-secret");
    let mut bytes = b"-----BEGIN PRIVATE KEY----- host only\n".to_vec();
    bytes.resize(1 << 20, b'S');
    std::fs::write(&secret, bytes).expect("secret");
    secret
}

#[test]
fn vmdk_descriptor_over_a_real_mbr_disk_is_refused() {
    let d = tempfile::tempdir().expect("tmp");
    let other = tempfile::tempdir().expect("tmp");
    let secret = secret_file(other.path());
    let disk = vmdk_disguised_disk(d.path(), &secret);

    // The attack: the file is a real MBR disk to ibkit's partition reader...
    let raw = RawFile::open(&disk).expect("open");
    let table = ibkit_image::partition::read_table(&raw)
        .expect("partition table")
        .expect("an MBR");
    assert_eq!(table.partitions.len(), 1);
    // ...but QEMU left to probe takes it for a VMDK and opens the host file
    // its extent names.
    let probed = info(&[s(&disk)]);
    assert_eq!(probed["format"], "vmdk", "{probed}");
    assert!(probed.to_string().contains(s(&secret)), "{probed}");
    // With ibkit's format, QEMU reads the file itself and nothing else.
    let forced = info(&["-f", "raw", s(&disk)]);
    assert_eq!(forced["format"], "raw");
    assert!(!forced.to_string().contains(s(&secret)), "{forced}");

    // ibkit refuses it, for QEMU and for its own reader alike.
    for e in [
        approve(&disk, &BackingPolicy::default()).expect_err("approve"),
        open_disk(&disk, &BackingPolicy::default())
            .err()
            .expect("open_disk"),
        inspect(&disk, &InspectOptions::default())
            .err()
            .expect("inspect"),
    ] {
        match &e {
            ImageError::Unsafe { path, what } => {
                assert!(what.contains("VMDK text descriptor"), "{what}");
                assert_eq!(path, &disk.canonicalize().expect("canonical"));
            }
            other => panic!("wrong error: {other}"),
        }
    }
}

#[test]
fn backing_file_on_a_host_path_is_refused() {
    let d = tempfile::tempdir().expect("tmp");
    let other = tempfile::tempdir().expect("tmp");
    let secret = secret_file(other.path());
    std::os::unix::fs::symlink(&secret, d.path().join("innocent.raw")).expect("symlink");
    for backing in [s(&secret), "/dev/null", "innocent.raw", "../../etc/passwd"] {
        let top = d.path().join("top.qcow2");
        let _ = std::fs::remove_file(&top);
        // What `deploy` was given: QEMU would open the backing file as the disk.
        qcow2_naming_backing(&top, backing);
        let seen = info(&["-f", "qcow2", s(&top)]);
        assert_eq!(seen["backing-filename"], backing);
        match approve(&top, &BackingPolicy::default()) {
            Err(ImageError::Unsafe { what, .. }) => {
                assert!(what.contains("outside the image's directory"), "{what}");
                assert!(what.contains(backing), "{backing}: {what}");
            }
            other => panic!("{backing}: not refused: {other:?}"),
        }
    }
}

#[test]
fn external_data_file_is_refused() {
    let d = tempfile::tempdir().expect("tmp");
    let top = d.path().join("top.qcow2");
    let data = d.path().join("data.raw");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={}", data.display()),
        s(&top),
        "16M",
    ]);
    // QEMU opens the data file the header names.
    let seen = info(&["-f", "qcow2", s(&top)]);
    assert_eq!(seen["format-specific"]["data"]["data-file"], s(&data));
    match approve(&top, &BackingPolicy::default()) {
        Err(ImageError::Unsafe { what, .. }) => {
            assert!(what.contains("external data file"), "{what}");
            assert!(what.contains(s(&data)), "{what}");
        }
        other => panic!("data file accepted: {other:?}"),
    }
}

/// Run `f` on a thread and wait at most 10 s: an open that blocks (a FIFO
/// without a writer) fails the test instead of hanging it.
fn within_10s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("did not return within 10 s: an open blocked")
}

fn mkfifo(p: &Path) {
    let st = Command::new("mkfifo").arg(p).status().expect("mkfifo");
    assert!(st.success());
}

fn assert_fifo_refused(r: Result<(), ImageError>, what: &str) {
    let e = r.expect_err(what);
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    assert!(text.contains("FIFO"), "{what}: {text}");
    assert!(text.contains("regular file"), "{what}: {text}");
}

#[test]
fn fifo_as_backing_file_or_image_is_refused_without_hanging() {
    let d = tempfile::tempdir().expect("tmp");
    let fifo = d.path().join("base.raw");
    mkfifo(&fifo);
    let top = d.path().join("top.qcow2");
    qcow2_naming_backing(&top, "base.raw");

    for (image, label) in [
        (top.clone(), "FIFO backing file"),
        (fifo.clone(), "FIFO image"),
    ] {
        let i = image.clone();
        assert_fifo_refused(
            within_10s(move || inspect(&i, &InspectOptions::default()).map(|_| ())),
            &format!("inspect: {label}"),
        );
        let i = image.clone();
        assert_fifo_refused(
            within_10s(move || approve(&i, &BackingPolicy::default()).map(|_| ())),
            &format!("approve: {label}"),
        );
    }
    // The backing file's error names the image that names it.
    let e = within_10s({
        let top = top.clone();
        move || open_disk(&top, &BackingPolicy::default()).err()
    })
    .expect("refused");
    assert!(
        matches!(&e, ImageError::Backing { backing, .. } if backing == "base.raw"),
        "{e}"
    );
}

#[test]
fn other_special_files_are_refused() {
    let d = tempfile::tempdir().expect("tmp");
    let top = d.path().join("top.qcow2");
    // A character device inside the image's directory (a symlink to one is
    // caught as outside the directory).
    let dev = d.path().join("zero");
    let st = Command::new("mknod")
        .args([s(&dev), "c", "1", "5"])
        .status()
        .expect("mknod");
    if !st.success() {
        eprintln!("mknod needs root; skipping the device case");
        return;
    }
    qcow2_naming_backing(&top, "zero");
    let e = within_10s(move || approve(&top, &BackingPolicy::default()).err()).expect("refused");
    let text = format!(
        "{e}: {}",
        std::error::Error::source(&e)
            .map(|c| c.to_string())
            .unwrap_or_default()
    );
    assert!(text.contains("character device"), "{text}");
    // A directory named as the image.
    let e = approve(d.path(), &BackingPolicy::default()).expect_err("a directory");
    let text = format!(
        "{e}: {}",
        std::error::Error::source(&e)
            .map(|c| c.to_string())
            .unwrap_or_default()
    );
    assert!(text.contains("directory"), "{text}");
}

#[test]
fn undeclared_backing_format_is_refused_for_qemu() {
    let d = tempfile::tempdir().expect("tmp");
    let (top, _) = qcow2_over_raw(d.path());
    // Drop the backing format extension (its type becomes an unknown one):
    // QEMU would then probe the backing file's format.
    let mut bytes = std::fs::read(&top).expect("read");
    let at = bytes
        .windows(4)
        .position(|w| w == [0xe2, 0x79, 0x2a, 0xca])
        .expect("backing format extension");
    bytes[at..at + 4].copy_from_slice(&[0x12, 0x34, 0x56, 0x78]);
    std::fs::write(&top, bytes).expect("write");
    assert!(
        info(&["-f", "qcow2", s(&top)])
            .get("backing-filename-format")
            .is_none()
    );
    // ibkit's reader sniffs it (raw), but QEMU must not guess.
    assert_eq!(
        open_disk(&top, &BackingPolicy::default())
            .expect("open")
            .layers
            .len(),
        2
    );
    match approve(&top, &BackingPolicy::default()) {
        Err(ImageError::Unsafe { what, .. }) => {
            assert!(what.contains("does not declare the format"), "{what}");
            assert!(what.contains("qemu-img rebase -u -F raw"), "{what}");
        }
        other => panic!("undeclared format accepted: {other:?}"),
    }
}

#[test]
fn qemu_img_info_must_agree_with_the_approval() {
    let d = tempfile::tempdir().expect("tmp");
    let (top, base) = qcow2_over_raw(d.path());
    let chain = approve(&top, &BackingPolicy::default()).expect("approved");
    let layers = chain.layers();
    assert_eq!(layers.len(), 2);
    assert_eq!(layers[0].format, Format::Qcow2);
    assert_eq!(layers[1].format, Format::Raw);
    assert_eq!(layers[1].path, base.canonicalize().expect("canonical"));
    assert_eq!(chain.virtual_size(), 4 << 20);

    let top_c = top.canonicalize().expect("canonical");
    let good = info(&["--backing-chain", "-f", "qcow2", s(&top_c)]);
    chain.check_qemu_info(&good).expect("QEMU agrees");

    // Each disagreement QEMU could report is refused, naming the layer.
    let refused = |edit: &dyn Fn(&mut Value), expect: &str| {
        let mut v = good.clone();
        edit(&mut v);
        match chain.check_qemu_info(&v) {
            Err(ImageError::Unsafe { what, .. }) => {
                assert!(what.contains("qemu-img info disagrees"), "{what}");
                assert!(what.contains(expect), "{expect}: {what}");
            }
            other => panic!("{expect}: accepted: {other:?}"),
        }
    };
    refused(&|v| v[1]["format"] = "vmdk".into(), "reads it as \"vmdk\"");
    refused(
        &|v| v[0]["full-backing-filename"] = "/etc/shadow".into(),
        "backing file is \"/etc/shadow\"",
    );
    refused(&|v| v[1]["virtual-size"] = 1.into(), "virtual size");
    refused(
        &|v| {
            v[1]["format-specific"] = serde_json::json!({"type": "raw", "data": {"extents": [{"filename": "/etc/shadow"}]}})
        },
        "extents",
    );
    refused(
        &|v| {
            v[0]["format-specific"]["data"]["data-file"] = "/dev/sda".into();
        },
        "data-file",
    );
    refused(
        &|v| {
            v[0]["children"].as_array_mut().expect("children").push(
                serde_json::json!({"name": "extents.0", "info": {"filename": "/etc/shadow"}}),
            );
        },
        "/etc/shadow",
    );
    refused(
        &|v| {
            v.as_array_mut().expect("array").pop();
        },
        "QEMU sees 1 layer(s)",
    );
    refused(
        &|v| v[0]["filename"] = "json:{}".into(),
        "QEMU opened \"json:{}\"",
    );
}

//! The image gate of every VM (`ibkit_vm::approve_image`) against hostile
//! images: each test builds the attack with real tools, shows what QEMU
//! would have done with it, and asserts that the gate refuses it before any
//! QEMU or `qemu-img create` runs, or that QEMU gets every layer with an
//! explicit format. Only the last test starts QEMU (no guest OS boots:
//! the disk is blank), to prove the `-blockdev` nodes are what QEMU opens.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ibkit_test_utils::{
    Container, FsType, Layout, Tree, Volume, build_image, qcow2_naming_backing, qcow2_over_raw,
    qemu_img,
};
use ibkit_vm::qemu::{disk_args, overlay_create_args, qemu_img_info_args};
use ibkit_vm::{Vm, VmConfig, VmError, approve_image};
use serde_json::Value;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn secret_file(dir: &Path) -> PathBuf {
    let secret = dir.join("host-secret");
    let mut bytes = b"-----BEGIN PRIVATE KEY----- host only\n".to_vec();
    bytes.resize(1 << 20, b'S');
    std::fs::write(&secret, bytes).expect("secret");
    secret
}

/// A real MBR + ext4 disk whose boot code area holds a VMDK text
/// descriptor with a flat extent on `secret` (the partition table intact).
fn vmdk_disguised_disk(dir: &Path, secret: &Path) -> PathBuf {
    let mut root = Tree::new();
    root.file("etc/os-release", "ID=debian\n");
    let image = build_image(
        &Layout::Mbr(vec![Volume::new(FsType::Ext4, 8).with_tree(&root)]),
        Container::Raw,
    )
    .expect("MBR + ext4 image");
    let disk = dir.join("disk.raw");
    std::fs::copy(image, &disk).expect("copy image");
    let descriptor = format!(
        "# boot notes\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
         createType=\"monolithicFlat\"\nRW 2048 FLAT \"{}\" 0\n\0",
        secret.display()
    );
    let mut bytes = std::fs::read(&disk).expect("read");
    assert!(descriptor.len() <= 440 && bytes[510..512] == [0x55, 0xaa]);
    bytes[..descriptor.len()].copy_from_slice(descriptor.as_bytes());
    std::fs::write(&disk, bytes).expect("write");
    disk
}

#[tokio::test]
async fn vmdk_disguised_raw_disk_never_reaches_qemu() {
    let d = tempfile::tempdir().expect("tmp");
    let other = tempfile::tempdir().expect("tmp");
    let secret = secret_file(other.path());
    let disk = vmdk_disguised_disk(d.path(), &secret);
    // The attack: probed by QEMU (the old `qemu-img info` without `-f`), the
    // disk is a VMDK on the host's secret file.
    let probed: Value =
        serde_json::from_slice(&qemu_img(&["info", "--output=json", s(&disk)])).expect("json");
    assert_eq!(probed["format"], "vmdk");
    assert!(probed.to_string().contains(s(&secret)), "{probed}");

    let err = approve_image("gate", &disk).await.expect_err("refused");
    assert!(matches!(err, VmError::Image { .. }), "{err}");
    assert!(err.to_string().contains("VMDK text descriptor"), "{err}");

    // Starting a VM on it stops at the gate: no overlay, QEMU never ran.
    let work = d.path().join("w");
    let mut c = VmConfig::new("gate", &disk, &work);
    c.memory_mib = 128;
    let err = Vm::start(c).await.expect_err("refused");
    assert!(err.to_string().contains("VMDK text descriptor"), "{err}");
    assert!(!work.join("overlay.qcow2").exists());
    assert!(!work.join("qemu.log").exists());
}

#[tokio::test]
async fn backing_file_on_a_host_path_is_refused_before_qemu_img_create() {
    let d = tempfile::tempdir().expect("tmp");
    let other = tempfile::tempdir().expect("tmp");
    let secret = secret_file(other.path());
    for backing in [s(&secret), "/dev/null"] {
        let top = d.path().join("top.qcow2");
        let _ = std::fs::remove_file(&top);
        qcow2_naming_backing(&top, backing);
        let err = approve_image("gate", &top).await.expect_err("refused");
        let text = err.to_string();
        assert!(matches!(err, VmError::Image { .. }), "{text}");
        assert!(text.contains(backing), "{backing}: {text}");
        assert!(text.contains("outside the image's directory"), "{text}");
    }
}

/// The `-blockdev` JSON nodes of an argv.
fn blockdevs(args: &[String]) -> Vec<Value> {
    args.windows(2)
        .filter(|w| w[0] == "-blockdev")
        .map(|w| serde_json::from_str(&w[1]).expect("JSON node"))
        .collect()
}

#[tokio::test]
async fn every_layer_gets_an_explicit_format() {
    let d = tempfile::tempdir().expect("tmp");
    let (top, base) = qcow2_over_raw(d.path());
    let (top, base) = (
        top.canonicalize().expect("top"),
        base.canonicalize().expect("base"),
    );
    let chain = approve_image("gate", &top).await.expect("approved");
    assert_eq!(
        qemu_img_info_args(&chain),
        [
            "info",
            "-U",
            "--output=json",
            "--backing-chain",
            "-f",
            "qcow2",
            s(&top)
        ]
    );
    let overlay = d.path().join("overlay.qcow2");
    let create = overlay_create_args(&chain, &overlay, Some(64 << 20));
    assert_eq!(
        create,
        [
            "create",
            "-q",
            "-u",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            s(&top),
            s(&overlay),
            "67108864"
        ]
    );

    let seed = d.path().join("seed.img");
    std::fs::write(&seed, vec![0u8; 1 << 20]).expect("seed");
    let args = disk_args(&chain, &overlay, "unsafe", std::slice::from_ref(&seed)).expect("args");
    assert!(!args.iter().any(|a| a == "-drive"), "{args:?}");
    let nodes = blockdevs(&args);
    let mut files = BTreeSet::new();
    for n in &nodes {
        match n["driver"].as_str() {
            Some("file") => {
                files.insert(n["filename"].as_str().expect("filename").to_string());
            }
            // Every qcow2 node is told its backing node (or none), so QEMU
            // never follows a name from a header.
            Some("qcow2") => assert!(n.get("backing").is_some(), "{n}"),
            Some("raw") => {}
            other => panic!("unexpected driver {other:?} in {n}"),
        }
    }
    let want: BTreeSet<String> = [&top, &base, &overlay, &seed]
        .iter()
        .map(|p| s(p).to_string())
        .collect();
    assert_eq!(files, want);
    let node = |name: &str| {
        nodes
            .iter()
            .find(|n| n["node-name"] == name)
            .unwrap_or_else(|| panic!("node {name}"))
    };
    assert_eq!(node("disk1")["driver"], "raw");
    assert_eq!(node("disk0")["driver"], "qcow2");
    assert_eq!(node("disk0")["backing"], "disk1");
    assert_eq!(node("root")["backing"], "disk0");
    assert_eq!(node("seed0")["driver"], "raw");

    // A raw image: qemu-img is told raw, QEMU's node is raw.
    let chain = approve_image("gate", &base).await.expect("raw approved");
    assert!(
        qemu_img_info_args(&chain)
            .windows(2)
            .any(|w| w == ["-f", "raw"])
    );
    let args = disk_args(&chain, &overlay, "writeback", &[]).expect("args");
    let nodes = blockdevs(&args);
    assert!(
        nodes
            .iter()
            .any(|n| n["node-name"] == "disk0" && n["driver"] == "raw")
    );
    assert!(disk_args(&chain, &overlay, "bogus", &[]).is_err());
}

/// Starts QEMU (SeaBIOS finds nothing to boot on the blank disk): after
/// the gate approved the image, its header is rewritten to name a host
/// file as backing file. QEMU opens only the approved files: it never
/// reads a backing file name from the image.
#[tokio::test]
async fn qemu_opens_only_the_approved_files() {
    let d = tempfile::tempdir().expect("tmp");
    let (top, base) = qcow2_over_raw(d.path());
    // Same length as "base.raw", so the header keeps its layout.
    let swapped = d.path().join("swap.raw");
    std::fs::write(&swapped, vec![7u8; 4 << 20]).expect("swap");
    let work = d.path().join("w");
    let mut c = VmConfig::new("gate-qemu", &top, &work);
    c.memory_mib = 128;
    let disk = Vm::prepare_disk(&c).await.expect("prepared");
    let mut bytes = std::fs::read(&top).expect("read");
    let at = bytes
        .windows(8)
        .position(|w| w == b"base.raw")
        .expect("backing name");
    bytes[at..at + 8].copy_from_slice(b"swap.raw");
    std::fs::write(&top, bytes).expect("rewrite header");
    let header: Value = serde_json::from_slice(&qemu_img(&[
        "info",
        "--output=json",
        "-f",
        "qcow2",
        s(&top),
    ]))
    .expect("json");
    assert_eq!(header["backing-filename"], "swap.raw");

    let vm = Vm::start_prepared(c, Default::default(), disk)
        .await
        .expect("start");
    let nodes = vm
        .qmp(
            "query-named-block-nodes",
            Some(serde_json::json!({"flat": true})),
        )
        .await
        .expect("query-named-block-nodes");
    let opened: BTreeSet<String> = nodes
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["drv"] == "file")
        .map(|n| n["file"].as_str().expect("file").to_string())
        .collect();
    let want: BTreeSet<String> = [
        top.canonicalize().expect("top"),
        base.canonicalize().expect("base"),
        vm.work_dir().join("overlay.qcow2"),
    ]
    .iter()
    .map(|p| s(p).to_string())
    .collect();
    assert_eq!(opened, want);
    let argv = vm.command_line().join(" ");
    assert!(
        !argv.contains("swap.raw") && !argv.contains("-drive"),
        "{argv}"
    );
    vm.quit(Duration::from_secs(5)).await.expect("quit");
}

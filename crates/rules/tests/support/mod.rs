//! Fixture images for rule tests: a clean Debian-like root tree that passes
//! every rule, mutations that plant one violation each, and helpers that
//! build the tree into a real disk image (GPT, ext4, qcow2) and run rules.
#![allow(dead_code)]

pub mod rhel;

use std::io::Write;
use std::path::{Path, PathBuf};

use ibkit_image::{InspectOptions, inspect};
use ibkit_rules::manifest::Manifest;
use ibkit_rules::{CheckOptions, Report, RuleResult, Status, check};
use ibkit_test_utils::{Container, FsType, GptPart, Layout, Tree, Volume, build_image};

pub const KVER: &str = "6.1.0-99-cloud-amd64";
pub const ROOT_UUID: &str = "2b9a0a3c-6c77-4c35-9d39-3d3c0d0a7e11";

/// A minimal x86-64 ELF header (enough for the architecture check).
pub fn elf(machine: u16) -> Vec<u8> {
    let mut h = vec![0u8; 64];
    h[0..4].copy_from_slice(b"\x7fELF");
    h[4] = 2; // 64-bit
    h[5] = 1; // little endian
    h[6] = 1;
    h[16] = 2; // ET_EXEC
    h[18..20].copy_from_slice(&machine.to_le_bytes());
    h
}

/// A newc cpio archive of `(path, data)` entries, gzip-compressed, with an
/// uncompressed early cpio in front (as Debian's initramfs-tools makes them).
pub fn initramfs(entries: &[(&str, &[u8])]) -> Vec<u8> {
    fn cpio(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut ino = 1u32;
        let mut push = |out: &mut Vec<u8>, name: &str, data: &[u8], mode: u32| {
            let namesize = name.len() + 1;
            let hdr = format!(
                "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
                ino,
                mode,
                0,
                0,
                1,
                0,
                data.len(),
                0,
                0,
                0,
                0,
                namesize,
                0
            );
            ino += 1;
            out.extend_from_slice(hdr.as_bytes());
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            while !out.len().is_multiple_of(4) {
                out.push(0);
            }
            out.extend_from_slice(data);
            while !out.len().is_multiple_of(4) {
                out.push(0);
            }
        };
        for (name, data) in entries {
            push(&mut out, name, data, 0o100644);
        }
        push(&mut out, "TRAILER!!!", b"", 0);
        while out.len() % 512 != 0 {
            out.push(0);
        }
        out
    }
    let mut all = cpio(&[("kernel/x86/microcode/GenuineIntel.bin", b"ucode")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&cpio(entries)).expect("gzip to memory");
    all.extend(gz.finish().expect("gzip to memory"));
    all
}

pub const DPKG_CLEAN: &[(&str, &str)] = &[
    ("base-files", "12.4+deb12u5"),
    ("bash", "5.2.15-2+b2"),
    ("cloud-init", "22.4.2-1"),
    ("cloud-guest-utils", "0.33-1"),
    ("curl", "7.88.1-10+deb12u5"),
    ("isc-dhcp-client", "4.4.3-P1-2"),
    ("openssh-server", "1:9.2p1-2+deb12u2"),
    ("systemd", "252.22-1~deb12u1"),
    ("systemd-sysv", "252.22-1~deb12u1"),
];

pub fn dpkg_status(pkgs: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (name, ver) in pkgs {
        s.push_str(&format!(
            "Package: {name}\nStatus: install ok installed\nPriority: optional\nArchitecture: amd64\nVersion: {ver}\nDescription: {name}\n multi-line description\n .\n more\n\n"
        ));
    }
    s
}

/// The clean tree: a Debian 12 cloud image in miniature that passes every
/// rule (with [`manifest`]).
pub fn clean_tree() -> Tree {
    let mut t = Tree::new();
    t.file("etc/os-release", "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n")
        .file("etc/hostname", "localhost\n")
        .file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\npostgres:x:109:115:PostgreSQL administrator:/var/lib/postgresql:/bin/bash\ndebian:x:1000:1000:Debian:/home/debian:/bin/bash\n",
        )
        .file_mode("etc/shadow", "root:*:19700:0:99999:7:::\ndaemon:*:19700:0:99999:7:::\npostgres:*:19700:0:99999:7:::\ndebian:!:19700:0:99999:7:::\n", 0o640)
        .file("etc/group", "root:x:0:\ndebian:x:1000:\n")
        .file("etc/fstab", format!("UUID={ROOT_UUID} / ext4 rw,discard,errors=remount-ro 0 1\n"))
        .file("etc/machine-id", "")
        .dir("root")
        .dir("home/debian")
        .dir("var/lib/postgresql")
        .file("var/lib/dpkg/status", dpkg_status(DPKG_CLEAN))
        // Binaries (merged /usr, as on Debian 12).
        .symlink("bin", "usr/bin")
        .symlink("sbin", "usr/sbin")
        .symlink("lib", "usr/lib")
        .file("usr/bin/bash", elf(62))
        .file("usr/bin/curl", elf(62))
        .file("usr/bin/cloud-init", "#!/usr/bin/python3\n")
        .file("usr/bin/growpart", "#!/bin/sh\n")
        .file("usr/sbin/sshd", elf(62))
        .file("usr/sbin/dhclient", elf(62))
        .file("usr/lib/systemd/systemd", elf(62))
        .symlink("usr/sbin/init", "../lib/systemd/systemd")
        // systemd units.
        .file("usr/lib/systemd/system/multi-user.target", "[Unit]\nDescription=Multi-User System\nRequires=basic.target\n")
        .file("usr/lib/systemd/system/basic.target", "[Unit]\nRequires=sysinit.target\nWants=sockets.target timers.target\n")
        .file("usr/lib/systemd/system/sysinit.target", "[Unit]\nDescription=System Initialization\n")
        .file("usr/lib/systemd/system/sockets.target", "[Unit]\nDescription=Sockets\n")
        .file("usr/lib/systemd/system/timers.target", "[Unit]\nDescription=Timers\n")
        .symlink("usr/lib/systemd/system/default.target", "multi-user.target")
        .file("usr/lib/systemd/system/ssh.service", "[Unit]\nDescription=OpenBSD Secure Shell server\n[Service]\nExecStart=/usr/sbin/sshd -D\n[Install]\nWantedBy=multi-user.target\nAlias=sshd.service\n")
        .file("usr/lib/systemd/system/ssh.socket", "[Unit]\nDescription=OpenBSD Secure Shell server socket\n[Socket]\nListenStream=22\nAccept=yes\n[Install]\nWantedBy=sockets.target\n")
        .symlink("etc/systemd/system/multi-user.target.wants/ssh.service", "/lib/systemd/system/ssh.service")
        .symlink("etc/systemd/system/sshd.service", "/lib/systemd/system/ssh.service")
        .file("usr/lib/systemd/system/cloud-init.target", "[Unit]\nDescription=Cloud-init target\n[Install]\nWantedBy=multi-user.target\n")
        .file("usr/lib/systemd/system-generators/cloud-init-generator", "#!/bin/sh\n")
        .file("usr/lib/systemd/system/ibkit-example.service", "[Unit]\nDescription=ibkit example app\n[Service]\nExecStart=/usr/bin/python3 -m http.server 8080\n[Install]\nWantedBy=multi-user.target\n")
        .symlink("etc/systemd/system/multi-user.target.wants/ibkit-example.service", "/lib/systemd/system/ibkit-example.service");
    for stage in [
        "cloud-init-local",
        "cloud-init",
        "cloud-config",
        "cloud-final",
    ] {
        t.file(
            &format!("usr/lib/systemd/system/{stage}.service"),
            format!("[Unit]\nDescription={stage}\n[Install]\nWantedBy=cloud-init.target\n"),
        )
        .symlink(
            &format!("etc/systemd/system/cloud-init.target.wants/{stage}.service"),
            &format!("/lib/systemd/system/{stage}.service"),
        );
    }
    t.file(
        "etc/cloud/cloud.cfg",
        "users:\n  - default\ndisable_root: true\ndatasource_list: [ NoCloud, ConfigDrive, OpenStack ]\ncloud_init_modules:\n  - seed_random\n  - growpart\n  - resizefs\n  - [ssh, always]\nsystem_info:\n  default_user:\n    name: debian\n    lock_passwd: True\n",
    )
    .file("etc/ssh/sshd_config", "Include /etc/ssh/sshd_config.d/*.conf\nKbdInteractiveAuthentication no\nUsePAM yes\n")
    .file("etc/ssh/ssh_host_ed25519_key.pub", "ssh-ed25519 AAAA... root@build\n")
    .file("etc/network/interfaces", "source /etc/network/interfaces.d/*\nauto lo\niface lo inet loopback\n")
    .file("etc/default/grub", "GRUB_DEFAULT=0\nGRUB_TIMEOUT=1\nGRUB_CMDLINE_LINUX_DEFAULT=\"\"\nGRUB_CMDLINE_LINUX=\"console=tty0 console=ttyS0,115200\"\n")
    .file(
        "boot/grub/grub.cfg",
        format!("set default=\"0\"\nmenuentry 'Debian GNU/Linux' --class debian {{\n\tinsmod ext2\n\tlinux\t/boot/vmlinuz-{KVER} root=UUID={ROOT_UUID} ro console=tty0 console=ttyS0,115200\n\tinitrd\t/boot/initrd.img-{KVER}\n}}\n"),
    )
    .file(&format!("boot/vmlinuz-{KVER}"), b"kernel image")
    .file(&format!("boot/config-{KVER}"), "CONFIG_KVM_GUEST=y\nCONFIG_VIRTIO_PCI=y\nCONFIG_VIRTIO_BLK=m\nCONFIG_VIRTIO_NET=m\nCONFIG_VIRTIO_FS=m\n");
    let moddir = format!("usr/lib/modules/{KVER}");
    t.file(&format!("{moddir}/kernel/drivers/block/virtio_blk.ko.xz"), b"ko")
        .file(&format!("{moddir}/kernel/drivers/net/virtio_net.ko.xz"), b"ko")
        .file(&format!("{moddir}/kernel/fs/fuse/virtiofs.ko.xz"), b"ko")
        .file(&format!("{moddir}/modules.builtin"), "kernel/drivers/virtio/virtio_pci.ko\n")
        .file(
            &format!("{moddir}/modules.dep"),
            "kernel/drivers/block/virtio_blk.ko.xz:\nkernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz\nkernel/fs/fuse/virtiofs.ko.xz:\n",
        )
        .file(
            &format!("boot/initrd.img-{KVER}"),
            initramfs(&[
                (&format!("usr/lib/modules/{KVER}/kernel/drivers/block/virtio_blk.ko.xz"), b"ko"),
                (&format!("usr/lib/modules/{KVER}/kernel/drivers/net/virtio_net.ko.xz"), b"ko"),
                ("init", b"#!/bin/sh\n"),
            ]),
        );
    t
}

/// The manifest matching the clean tree (docs written to a temp dir).
pub fn manifest(dir: &Path) -> Manifest {
    std::fs::create_dir_all(dir.join("docs")).expect("docs dir");
    std::fs::write(
        dir.join("docs/deploy.md"),
        "# ibkit-example 1.0.0\n\nLaunch, open 8080, curl /healthz.\n",
    )
    .expect("write doc");
    let path = dir.join("ibkit.toml");
    std::fs::write(
        &path,
        "[app]\nname = \"ibkit-example\"\nversion = \"1.0.0\"\nunits = [\"ibkit-example.service\"]\nports = [\"8080/tcp\"]\n\n[docs]\ndeployment_guide = \"docs/deploy.md\"\n",
    )
    .expect("write manifest");
    Manifest::load(&path).expect("manifest parses")
}

/// Build `tree` into a GPT disk (BIOS boot, then root ext4 last) as qcow2.
pub fn image(tree: &Tree) -> PathBuf {
    let layout = Layout::Gpt(vec![
        GptPart::empty("ef02", "bios", 1),
        GptPart::new(
            "8300",
            "root",
            Volume::new(FsType::Ext4, 64)
                .with_tree(tree)
                .with_uuid(ROOT_UUID),
        ),
    ]);
    build_image(&layout, Container::Qcow2).expect("fixture image builds")
}

/// Run the rules (all, or `only`) on an image.
pub fn run(path: &Path, manifest: Option<&Manifest>, only: &[&str]) -> Report {
    let insp = inspect(path, &InspectOptions::default()).expect("fixture image inspects");
    check(
        &insp,
        &CheckOptions {
            manifest,
            only: only
                .iter()
                .map(|s| s.parse().expect("a known rule ID"))
                .collect(),
            ..Default::default()
        },
    )
}

/// The one result of a single-rule run.
pub fn one(report: &Report, id: &str) -> RuleResult {
    report
        .result(id)
        .unwrap_or_else(|| panic!("no result for {id}: {report:#?}"))
        .clone()
}

/// Assert a rule failed (or warned) with a finding of `kind` at `path`.
pub fn assert_finding(r: &RuleResult, status: Status, kind: &str, path: Option<&str>) {
    assert_eq!(r.status, status, "{} status; result: {r:#?}", r.id);
    let hit = r
        .findings
        .iter()
        .any(|f| f.kind == kind && (path.is_none() || f.evidence.path.as_deref() == path));
    assert!(
        hit,
        "{}: no finding {kind} at {path:?}; findings: {:#?}",
        r.id, r.findings
    );
}

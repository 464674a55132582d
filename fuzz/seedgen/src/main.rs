//! `ibkit-fuzz-seedgen OUT_DIR`: build small disk images with
//! ibkit-test-utils (real mkfs.ext4/mkfs.xfs/mkfs.vfat, sfdisk, LVM2
//! metadata as pvcreate writes it) and copy each raw image to
//! `OUT_DIR/NAME.raw`. fuzz/seeds.sh shrinks them into seed corpora.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ibkit_test_utils::{Container, FsType, GptPart, Layout, PartTable, Tree, Volume, build_image};

const ROOT_UUID: &str = "0b9e2f4e-7a3e-4c57-9a43-5d1c1e0f7a11";
const BOOT_UUID: &str = "5c1d7f0a-2b8e-4f3c-9d6a-1e2f3a4b5c6d";
const VAR_UUID: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
const ESP_SERIAL: &str = "1234-ABCD";

fn root_tree(fstab: &str) -> Tree {
    let mut t = Tree::new();
    t.file(
        "/etc/os-release",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n\
         VERSION_ID=\"12\"\nID=debian\n",
    )
    .file("/etc/fstab", fstab)
    .file("/etc/hostname", "fuzz\n")
    .file(
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n",
    )
    .file_mode(
        "/etc/shadow",
        "root:*:19000:0:99999:7:::\nalice:!:19000::::::\n",
        0o640,
    )
    .file(
        "/etc/default/grub",
        "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\nGRUB_CMDLINE_LINUX=\"console=tty0 console=ttyS0\"\n",
    )
    .file(
        "/var/lib/dpkg/status",
        "Package: openssh-server\nStatus: install ok installed\nArchitecture: amd64\n\
         Version: 1:9.2p1-2\n\nPackage: cloud-init\nStatus: install ok installed\n\
         Architecture: all\nVersion: 22.4.2-1\n",
    )
    .file(
        "/lib/systemd/system/ssh.service",
        "[Unit]\nDescription=OpenBSD Secure Shell server\n[Service]\nExecStart=/usr/sbin/sshd -D\n\
         [Install]\nWantedBy=multi-user.target\n",
    )
    .symlink(
        "/etc/systemd/system/multi-user.target.wants/ssh.service",
        "/lib/systemd/system/ssh.service",
    )
    .symlink("/etc/localtime", "/usr/share/zoneinfo/UTC")
    .file("/usr/share/zoneinfo/UTC", b"TZif2\0\0\0\0")
    .symlink("/bin", "usr/bin")
    .file("/usr/bin/true", b"\x7fELF\x02\x01\x01")
    .symlink("/etc/loop1", "loop2")
    .symlink("/etc/loop2", "loop1")
    .symlink("/etc/escape", "../../../../../etc/passwd")
    .file("/home/alice/.bash_history", "ls\n")
    .file("/home/alice/big", vec![b'x'; 20_000]);
    for i in 0..60 {
        t.file(&format!("/usr/share/doc/pkg{i:02}/copyright"), "GPL\n");
    }
    t
}

fn boot_tree() -> Tree {
    let mut t = Tree::new();
    t.file(
        "/grub/grub.cfg",
        "menuentry 'Debian' {\n  linux /vmlinuz-6.1.0-13-amd64 root=UUID=0b9e2f4e-7a3e-4c57-9a43-5d1c1e0f7a11 ro console=ttyS0\n}\n",
    )
    .file("/vmlinuz-6.1.0-13-amd64", b"MZ\0\0kernel")
    .file("/config-6.1.0-13-amd64", "CONFIG_VIRTIO_NET=m\nCONFIG_VIRTIO_BLK=y\n");
    t
}

fn main() -> Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .context("usage: ibkit-fuzz-seedgen OUT_DIR")?,
    );
    std::fs::create_dir_all(&out)?;

    let gpt_root = root_tree(&format!(
        "UUID={ROOT_UUID} / ext4 errors=remount-ro 0 1\nUUID={BOOT_UUID} /boot ext4 defaults 0 2\n\
         UUID={ESP_SERIAL} /boot/efi vfat umask=0077 0 1\nproc /proc proc defaults 0 0\n"
    ));
    let lvm_root = root_tree(&format!(
        "/dev/mapper/vg0-root / ext4 defaults 0 1\nUUID={BOOT_UUID} /boot ext4 defaults 0 2\n\
         UUID={VAR_UUID} /var xfs defaults 0 2\n"
    ));
    let xfs_root = root_tree("LABEL=root / xfs defaults 0 1\n");
    let mbr_root = root_tree(&format!(
        "UUID={ROOT_UUID} / ext4 defaults 0 1\n/dev/vda5 /home ext2 defaults 0 2\n"
    ));
    let bare_root = root_tree(&format!("UUID={ROOT_UUID} / ext4 defaults 0 1\n"));
    let boot = boot_tree();
    let mut esp = Tree::new();
    esp.file("/EFI/BOOT/BOOTX64.EFI", b"MZ\0\0efi");
    let mut var = Tree::new();
    var.file("/log/syslog", "boot\n")
        .file("/lib/dhcp/dhclient.leases", "lease {}\n");
    let mut home = Tree::new();
    home.file(
        "/bob/.ssh/id_rsa",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
    );

    let ext4 = |mib, tree: &Tree| Volume::new(FsType::Ext4, mib).with_tree(tree);
    let images: Vec<(&str, Layout)> = vec![
        (
            "gpt-ext4",
            Layout::Gpt(vec![
                GptPart::empty("ef02", "bios", 1),
                GptPart::new(
                    "ef00",
                    "esp",
                    Volume::new(FsType::Vfat, 2)
                        .with_tree(&esp)
                        .with_uuid(ESP_SERIAL),
                ),
                GptPart::new("8300", "boot", ext4(8, &boot).with_uuid(BOOT_UUID)),
                GptPart::new(
                    "8304",
                    "root",
                    ext4(16, &gpt_root)
                        .with_uuid(ROOT_UUID)
                        .with_label("cloudimg-rootfs"),
                ),
            ]),
        ),
        (
            "mbr-lvm",
            Layout::Lvm {
                boot: Some(ext4(8, &boot).with_uuid(BOOT_UUID)),
                vg: "vg0".into(),
                lvs: vec![
                    ("root".into(), ext4(16, &lvm_root)),
                    (
                        "var".into(),
                        Volume::new(FsType::Xfs, 16)
                            .with_tree(&var)
                            .with_uuid(VAR_UUID),
                    ),
                ],
                table: PartTable::Mbr,
            },
        ),
        (
            "gpt-xfs",
            Layout::Gpt(vec![
                GptPart::empty("ef02", "bios", 1),
                GptPart::new(
                    "8300",
                    "root",
                    Volume::new(FsType::Xfs, 16)
                        .with_tree(&xfs_root)
                        .with_label("root"),
                ),
            ]),
        ),
        (
            "mbr-extended",
            Layout::MbrExtended {
                primary: vec![ext4(8, &mbr_root).with_uuid(ROOT_UUID)],
                logical: vec![
                    Volume::new(FsType::Ext2, 4).with_tree(&home),
                    Volume::new(FsType::Swap, 1),
                ],
            },
        ),
        (
            "bare-ext4",
            Layout::Bare(ext4(8, &bare_root).with_uuid(ROOT_UUID)),
        ),
        (
            "gpt-pv",
            Layout::Lvm {
                boot: None,
                vg: "vg1".into(),
                lvs: vec![
                    ("lv0".into(), ext4(4, &home)),
                    ("lv1".into(), ext4(4, &boot)),
                ],
                table: PartTable::Gpt,
            },
        ),
        (
            "bare-xfs",
            Layout::Bare(Volume::new(FsType::Xfs, 16).with_tree(&xfs_root)),
        ),
    ];
    for (name, layout) in images {
        let raw =
            build_image(&layout, Container::Raw).with_context(|| format!("building {name}"))?;
        let dest = out.join(format!("{name}.raw"));
        let _ = std::fs::remove_file(&dest);
        // Same filesystem (the cache dir is under fuzz/target): a hard link
        // keeps it sparse; fall back to a copy.
        if std::fs::hard_link(&raw, &dest).is_err() {
            std::fs::copy(&raw, &dest).with_context(|| format!("copying {}", raw.display()))?;
        }
        println!("{}", dest.display());
    }
    Ok(())
}

//! A RHEL 9-family fixture (AlmaLinux 9 in miniature): rpmdb.sqlite written
//! by the real `rpm`, XFS root on LVM, XFS /boot, FAT ESP, BLS boot entries,
//! dracut-style initramfs, sshd.service, NetworkManager.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use ibkit_test_utils::{Container, FsType, GptPart, Layout, Tree, Volume, build_image};

use super::{elf, initramfs};

pub const RKVER: &str = "5.14.0-362.8.1.el9_3.x86_64";
pub const BOOT_UUID: &str = "5a0c9f3e-7d2b-4e61-9b1a-0c5d7e8f9a01";
pub const ESP_UUID: &str = "7A3B-1C2D";

pub const RPMS: &[(&str, &str, &str)] = &[
    ("cloud-init", "23.4", "7.el9_3.alma.1"),
    ("cloud-utils-growpart", "0.33", "1.el9"),
    ("curl", "7.76.1", "26.el9_3.2"),
    ("openssh-server", "8.7p1", "34.el9"),
    ("systemd", "252", "18.el9"),
    ("NetworkManager", "1.44.0", "3.el9"),
    ("kernel-core", "5.14.0", "362.8.1.el9_3"),
];

fn run(c: &mut Command) {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("{c:?}: {e} (run scripts/setup.sh)"));
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// rpmdb.sqlite holding [`RPMS`] plus `extra`, written by `rpm --justdb`.
/// Packages are built once per name list with `rpmbuild`.
pub fn rpmdb(extra: &[(&str, &str, &str)]) -> Vec<u8> {
    let all: Vec<(&str, &str, &str)> = RPMS.iter().copied().chain(extra.iter().copied()).collect();
    let key = all
        .iter()
        .map(|(n, v, r)| format!("{n}-{v}-{r}"))
        .collect::<Vec<_>>()
        .join(",");
    static CACHE: OnceLock<std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>> =
        OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(db) = cache.lock().expect("lock").get(&key) {
        return db.clone();
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let top = tmp.path().join("top");
    let spec = tmp.path().join("one.spec");
    std::fs::write(&spec, "Name: %{n}\nVersion: %{v}\nRelease: %{r}\nSummary: test\nLicense: MIT\n%description\ntest\n%files\n").expect("spec");
    for (n, v, r) in &all {
        run(Command::new("rpmbuild")
            .args(["-bb", "--quiet", "--define"])
            .arg(format!("_topdir {}", top.display()))
            .args([
                "--define",
                "_build_id_links none",
                "--define",
                "__os_install_post %{nil}",
                "--target",
                "x86_64",
            ])
            .args([
                "--define",
                &format!("n {n}"),
                "--define",
                &format!("v {v}"),
                "--define",
                &format!("r {r}"),
            ])
            .arg(&spec));
    }
    let db = tmp.path().join("db");
    std::fs::create_dir_all(&db).expect("db dir");
    let rpms: Vec<PathBuf> = std::fs::read_dir(top.join("RPMS/x86_64"))
        .expect("rpms")
        .map(|e| e.expect("entry").path())
        .collect();
    run(Command::new("rpm")
        .arg("--dbpath")
        .arg(&db)
        .args([
            "--define",
            "_db_backend sqlite",
            "-i",
            "--justdb",
            "--nodeps",
            "--noscripts",
            "--notriggers",
            "--ignorearch",
            "--ignoreos",
        ])
        .args(&rpms));
    let bytes = std::fs::read(db.join("rpmdb.sqlite")).expect("rpmdb.sqlite");
    cache.lock().expect("lock").insert(key, bytes.clone());
    bytes
}

/// The root filesystem (LV `almalinux/root`).
pub fn root_tree(extra_rpms: &[(&str, &str, &str)]) -> Tree {
    let mut t = Tree::new();
    t.file("etc/os-release", "NAME=\"AlmaLinux\"\nVERSION=\"9.3 (Shamrock Pearl)\"\nID=\"almalinux\"\nID_LIKE=\"rhel centos fedora\"\nVERSION_ID=\"9.3\"\nPRETTY_NAME=\"AlmaLinux 9.3 (Shamrock Pearl)\"\n")
        .file("etc/passwd", "root:x:0:0:root:/root:/bin/bash\nsshd:x:74:74:Privilege-separated SSH:/usr/share/empty.sshd:/sbin/nologin\nalmalinux:x:1000:1000:Cloud User:/home/almalinux:/bin/bash\n")
        .file_mode("etc/shadow", "root:!!:19700:0:99999:7:::\nsshd:!!:19700::::::\nalmalinux:!!:19700:0:99999:7:::\n", 0o000)
        .file(
            "etc/fstab",
            format!("/dev/mapper/almalinux-root / xfs defaults 0 0\nUUID={BOOT_UUID} /boot xfs defaults 0 0\nUUID={ESP_UUID} /boot/efi vfat umask=0077,shortname=winnt 0 2\n"),
        )
        .file("etc/machine-id", "")
        .dir("boot")
        .dir("root")
        .dir("home/almalinux")
        .file("var/lib/rpm/rpmdb.sqlite", rpmdb(extra_rpms))
        .symlink("bin", "usr/bin")
        .symlink("sbin", "usr/sbin")
        .symlink("lib", "usr/lib")
        .file("usr/bin/curl", elf(62))
        .file("usr/bin/cloud-init", "#!/usr/bin/python3\n")
        .file("usr/bin/growpart", "#!/bin/sh\n")
        .file("usr/sbin/sshd", elf(62))
        .file("usr/sbin/NetworkManager", elf(62))
        .file("usr/lib/systemd/systemd", elf(62))
        .symlink("usr/sbin/init", "../lib/systemd/systemd")
        .file("usr/lib/systemd/system/multi-user.target", "[Unit]\nRequires=basic.target\n")
        .file("usr/lib/systemd/system/basic.target", "[Unit]\nRequires=sysinit.target\nWants=sockets.target\n")
        .file("usr/lib/systemd/system/sysinit.target", "[Unit]\n")
        .file("usr/lib/systemd/system/sockets.target", "[Unit]\n")
        .file("usr/lib/systemd/system/graphical.target", "[Unit]\nRequires=multi-user.target\n")
        .symlink("etc/systemd/system/default.target", "/usr/lib/systemd/system/multi-user.target")
        .file("usr/lib/systemd/system/sshd.service", "[Unit]\nDescription=OpenSSH server daemon\n[Service]\nExecStart=/usr/sbin/sshd -D\n[Install]\nWantedBy=multi-user.target\n")
        .symlink("etc/systemd/system/multi-user.target.wants/sshd.service", "/usr/lib/systemd/system/sshd.service")
        .file("usr/lib/systemd/system/NetworkManager.service", "[Unit]\n[Install]\nWantedBy=multi-user.target\n")
        .symlink("etc/systemd/system/multi-user.target.wants/NetworkManager.service", "/usr/lib/systemd/system/NetworkManager.service")
        .file("usr/lib/systemd/system/cloud-init.target", "[Unit]\n[Install]\nWantedBy=multi-user.target\n")
        .symlink("etc/systemd/system/multi-user.target.wants/cloud-init.target", "/usr/lib/systemd/system/cloud-init.target")
        .file("usr/lib/systemd/system/firewalld.service", "[Unit]\n[Install]\nWantedBy=multi-user.target\n")
        .file("etc/cloud/cloud.cfg", "users:\n - default\ndisable_root: 1\nssh_pwauth: false\ncloud_init_modules:\n - disk_setup\n - growpart\n - resizefs\n - ssh\nsystem_info:\n  default_user:\n    name: almalinux\n")
        .file("etc/ssh/sshd_config", "Include /etc/ssh/sshd_config.d/*.conf\nSubsystem sftp /usr/libexec/openssh/sftp-server\n")
        .file("etc/default/grub", "GRUB_TIMEOUT=1\nGRUB_CMDLINE_LINUX=\"console=tty0 console=ttyS0,115200n8 no_timer_check net.ifnames=0\"\nGRUB_ENABLE_BLSCFG=true\n")
        .file(&format!("usr/lib/modules/{RKVER}/config"), "CONFIG_KVM_GUEST=y\nCONFIG_VIRTIO_PCI=y\nCONFIG_VIRTIO_BLK=m\nCONFIG_VIRTIO_NET=m\nCONFIG_VIRTIO_FS=m\n")
        .file(&format!("usr/lib/modules/{RKVER}/vmlinuz"), b"kernel")
        .file(&format!("usr/lib/modules/{RKVER}/kernel/drivers/block/virtio_blk.ko.xz"), b"ko")
        .file(&format!("usr/lib/modules/{RKVER}/kernel/drivers/net/virtio_net.ko.xz"), b"ko")
        .file(&format!("usr/lib/modules/{RKVER}/kernel/fs/fuse/virtiofs.ko.xz"), b"ko")
        .file(&format!("usr/lib/modules/{RKVER}/modules.builtin"), "kernel/drivers/virtio/virtio_pci.ko\n");
    for stage in [
        "cloud-init-local",
        "cloud-init",
        "cloud-config",
        "cloud-final",
    ] {
        t.file(
            &format!("usr/lib/systemd/system/{stage}.service"),
            "[Unit]\n[Install]\nWantedBy=cloud-init.target\n",
        )
        .symlink(
            &format!("etc/systemd/system/cloud-init.target.wants/{stage}.service"),
            &format!("/usr/lib/systemd/system/{stage}.service"),
        );
    }
    t
}

/// The separate /boot filesystem.
pub fn boot_tree() -> Tree {
    let mut t = Tree::new();
    t.file(&format!("vmlinuz-{RKVER}"), b"kernel")
        .file(
            &format!("initramfs-{RKVER}.img"),
            initramfs(&[
                (&format!("usr/lib/modules/{RKVER}/kernel/drivers/block/virtio_blk.ko.xz"), b"ko"),
                (&format!("usr/lib/modules/{RKVER}/kernel/drivers/net/virtio_net.ko.xz"), b"ko"),
            ]),
        )
        .file("grub2/grub.cfg", "set default=\"${saved_entry}\"\ninsmod blscfg\nblscfg\n")
        .file("grub2/grubenv", "# GRUB Environment Block\nsaved_entry=abc-5.14.0\n")
        .file(
            &format!("loader/entries/0123456789abcdef-{RKVER}.conf"),
            format!("title AlmaLinux (5.14.0) 9.3\nversion {RKVER}\nlinux /vmlinuz-{RKVER}\ninitrd /initramfs-{RKVER}.img $tuned_initrd\noptions root=/dev/mapper/almalinux-root ro console=tty0 console=ttyS0,115200n8 no_timer_check\ngrub_users $grub_users\n"),
        );
    t
}

/// GPT: BIOS boot, ESP, /boot (XFS), LVM PV with `almalinux/root` (XFS) last.
pub fn image(root: &Tree, boot: &Tree) -> PathBuf {
    let mut esp = Tree::new();
    esp.file(
        "EFI/almalinux/grub.cfg",
        "search --no-floppy --fs-uuid --set=dev x\nconfigfile ($dev)/grub2/grub.cfg\n",
    );
    let layout = Layout::GptLvm {
        parts: vec![
            GptPart::empty("ef02", "bios", 1),
            GptPart::new(
                "ef00",
                "esp",
                Volume::new(FsType::Vfat, 34)
                    .with_tree(&esp)
                    .with_uuid(ESP_UUID),
            ),
            GptPart::new(
                "8300",
                "boot",
                Volume::new(FsType::Xfs, 300)
                    .with_tree(boot)
                    .with_uuid(BOOT_UUID),
            ),
        ],
        vg: "almalinux".into(),
        lvs: vec![("root".into(), Volume::new(FsType::Xfs, 300).with_tree(root))],
    };
    build_image(&layout, Container::Qcow2).expect("build RHEL-like image")
}

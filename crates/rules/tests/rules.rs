//! Every rule on real fixture images: the clean image passes all of them,
//! and each planted violation fails exactly its rule with the expected
//! finding kind and evidence path. Images are GPT + ext4 + qcow2, built by
//! ibkit-test-utils with mkfs.ext4 -d (cached by content).

mod support;

use ibkit_rules::Status;
use support::*;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[test]
fn clean_image_passes_every_rule() {
    let dir = tmp();
    let m = manifest(dir.path());
    let img = image(&clean_tree());
    let report = run(&img, Some(&m), &[]);
    assert_eq!(report.results.len(), 19, "one result per SPEC rule");
    for r in &report.results {
        let expected = if r.id == "APP-BILLING" {
            Status::Unknown
        } else {
            Status::Pass
        };
        assert_eq!(r.status, expected, "{}: {r:#?}", r.id);
    }
    assert!(!report.failed());
    assert!(report.complete, "notes: {:?}", report.notes);
}

#[test]
fn without_manifest_app_rules_say_what_they_could_not_verify() {
    let img = image(&clean_tree());
    let report = run(&img, None, &[]);
    for id in ["APP-AUTOSTART-SOFT", "APP-AUTOSTART-HARD", "APP-DOCS"] {
        let r = one(&report, id);
        assert_eq!(r.status, Status::Unknown, "{id}");
        assert!(
            r.unverified.iter().any(|u| u.contains("manifest")),
            "{id}: {:?}",
            r.unverified
        );
    }
    // APP-PORTS still derives listeners: only SSH here, so nothing to flag,
    // but it says the app's ports are unknown.
    let ports = one(&report, "APP-PORTS");
    assert!(ports.unverified.iter().any(|u| u.contains("manifest")));
    assert!(!report.failed());
}

fn check_one(tree: &ibkit_test_utils::Tree, id: &str) -> ibkit_rules::RuleResult {
    let dir = tmp();
    let m = manifest(dir.path());
    let report = run(&image(tree), Some(&m), &[id]);
    assert_eq!(report.results.len(), 1);
    one(&report, id)
}

#[test]
fn img_no_history_finds_history_in_a_service_home() {
    let mut t = clean_tree();
    t.file(
        "var/lib/postgresql/.psql_history",
        "ALTER USER app PASSWORD 'hunter2';\n",
    );
    t.file("root/.bash_history", ""); // empty: fine
    let r = check_one(&t, "IMG-NO-HISTORY");
    assert_finding(
        &r,
        Status::Fail,
        "history-file",
        Some("/var/lib/postgresql/.psql_history"),
    );
    assert_eq!(r.findings.len(), 1, "{:#?}", r.findings);
    // The secret is never in the report.
    assert!(!serde_json::to_string(&r).expect("json").contains("hunter2"));
}

#[test]
fn img_no_debuggers_finds_packages_and_stray_binaries() {
    let mut t = clean_tree();
    let mut pkgs = DPKG_CLEAN.to_vec();
    pkgs.push(("gdb", "13.1-3"));
    t.file("var/lib/dpkg/status", dpkg_status(&pkgs));
    t.file("usr/local/bin/strace", elf(62));
    let r = check_one(&t, "IMG-NO-DEBUGGERS");
    assert_finding(&r, Status::Fail, "debugger-package", None);
    assert!(
        r.findings
            .iter()
            .any(|f| f.evidence.package.as_deref() == Some("gdb 13.1-3"))
    );
    assert_finding(
        &r,
        Status::Fail,
        "debugger-binary",
        Some("/usr/local/bin/strace"),
    );
}

#[test]
fn img_agent_deps_needs_curl_and_systemd() {
    let mut t = clean_tree();
    let pkgs: Vec<_> = DPKG_CLEAN
        .iter()
        .copied()
        .filter(|(n, _)| *n != "curl")
        .collect();
    t.file("var/lib/dpkg/status", dpkg_status(&pkgs))
        .remove("usr/bin/curl");
    t.remove("usr/sbin/init")
        .symlink("usr/sbin/init", "../bin/busybox")
        .file("usr/bin/busybox", elf(62));
    let r = check_one(&t, "IMG-AGENT-DEPS");
    assert_finding(&r, Status::Fail, "curl-missing", None);
    assert_finding(&r, Status::Fail, "init-not-systemd", Some("/sbin/init"));
}

#[test]
fn img_no_secrets_path_and_content_rules() {
    let mut t = clean_tree();
    t.file("home/debian/.ssh/authorized_keys", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIvendorkey vendor@laptop\n")
        .file("etc/machine-id", "4f0b1c2d3e4f56789abcdef012345678\n")
        .file("var/lib/cloud/instances/i-0123/user-data.txt", "#cloud-config\n")
        .file(
            "opt/app/conf/tls.key",
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----\n",
        )
        .file("etc/default/app", "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\n");
    let r = check_one(&t, "IMG-NO-SECRETS");
    assert_finding(
        &r,
        Status::Fail,
        "credential-file",
        Some("/home/debian/.ssh/authorized_keys"),
    );
    assert_finding(&r, Status::Fail, "machine-id", Some("/etc/machine-id"));
    assert_finding(
        &r,
        Status::Fail,
        "cloudinit-instance-data",
        Some("/var/lib/cloud/instances"),
    );
    assert_finding(
        &r,
        Status::Fail,
        "secret-content",
        Some("/opt/app/conf/tls.key"),
    );
    assert_finding(&r, Status::Fail, "secret-content", Some("/etc/default/app"));
    let json = serde_json::to_string(&r).expect("json");
    assert!(
        !json.contains("AKIAIOSFODNN7EXAMPLE")
            && !json.contains("MIIEvQIBADAN")
            && !json.contains("vendorkey"),
        "secret leaked: {json}"
    );
}

#[test]
fn host_keys_warn_with_cloud_init_and_fail_without() {
    let mut t = clean_tree();
    t.file_mode("etc/ssh/ssh_host_ed25519_key", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n", 0o600);
    let r = check_one(&t, "IMG-NO-SECRETS");
    assert_finding(
        &r,
        Status::Warn,
        "host-key",
        Some("/etc/ssh/ssh_host_ed25519_key"),
    );
    // cloud-init told not to delete keys: every instance shares them.
    t.file(
        "etc/cloud/cloud.cfg.d/99-keep-keys.cfg",
        "ssh_deletekeys: false\n",
    );
    let r = check_one(&t, "IMG-NO-SECRETS");
    assert_finding(
        &r,
        Status::Fail,
        "host-key",
        Some("/etc/ssh/ssh_host_ed25519_key"),
    );
}

#[test]
fn img_cloudinit_disabled_or_without_openstack_datasource() {
    let mut t = clean_tree();
    t.file("etc/cloud/cloud-init.disabled", "");
    t.file(
        "etc/cloud/cloud.cfg.d/90_dpkg.cfg",
        "datasource_list: [ Ec2, None ]\n",
    );
    let r = check_one(&t, "IMG-CLOUDINIT");
    assert_finding(
        &r,
        Status::Fail,
        "cloudinit-disabled-file",
        Some("/etc/cloud/cloud-init.disabled"),
    );
    assert_finding(
        &r,
        Status::Fail,
        "datasource-missing",
        Some("/etc/cloud/cloud.cfg.d/90_dpkg.cfg"),
    );
}

#[test]
fn img_cloudinit_stage_not_enabled() {
    let mut t = clean_tree();
    t.remove("etc/systemd/system/cloud-init.target.wants/cloud-final.service");
    let r = check_one(&t, "IMG-CLOUDINIT");
    assert_finding(&r, Status::Fail, "cloudinit-stage-disabled", None);
    assert!(
        r.findings
            .iter()
            .any(|f| f.message.contains("cloud-final.service"))
    );
}

#[test]
fn os_sshd_not_enabled_fails_and_socket_activation_passes() {
    let mut t = clean_tree();
    t.remove("etc/systemd/system/multi-user.target.wants/ssh.service");
    let r = check_one(&t, "OS-SSHD");
    assert_finding(&r, Status::Fail, "sshd-not-enabled", None);
    t.symlink(
        "etc/systemd/system/sockets.target.wants/ssh.socket",
        "/lib/systemd/system/ssh.socket",
    );
    let r = check_one(&t, "OS-SSHD");
    assert_eq!(r.status, Status::Pass, "{r:#?}");
    assert!(r.evidence.iter().any(|e| e.detail.contains("ssh.socket")));
}

#[test]
fn os_firewall_off_ufw_enabled() {
    let mut t = clean_tree();
    t.file(
        "etc/ufw/ufw.conf",
        "# /etc/ufw/ufw.conf\nENABLED=yes\nLOGLEVEL=low\n",
    )
    .file(
        "usr/lib/systemd/system/ufw.service",
        "[Unit]\nDescription=Uncomplicated firewall\n[Install]\nWantedBy=multi-user.target\n",
    )
    .symlink(
        "etc/systemd/system/multi-user.target.wants/ufw.service",
        "/lib/systemd/system/ufw.service",
    );
    let r = check_one(&t, "OS-FIREWALL-OFF");
    assert_finding(&r, Status::Fail, "ufw-enabled", Some("/etc/ufw/ufw.conf"));
    assert_eq!(r.findings[0].evidence.line, Some(2));
}

#[test]
fn os_console_log_missing_and_not_last() {
    let mut t = clean_tree();
    let cfg = String::from_utf8(t.read("boot/grub/grub.cfg")).expect("utf8");
    t.file(
        "boot/grub/grub.cfg",
        cfg.replace(" console=tty0 console=ttyS0,115200", " quiet"),
    );
    let r = check_one(&t, "OS-CONSOLE-LOG");
    assert_finding(
        &r,
        Status::Fail,
        "console-missing",
        Some("/boot/grub/grub.cfg"),
    );
    assert_eq!(r.findings[0].evidence.line, Some(4));
    t.file(
        "boot/grub/grub.cfg",
        cfg.replace(
            "console=tty0 console=ttyS0,115200",
            "console=ttyS0,115200 console=tty0",
        ),
    );
    let r = check_one(&t, "OS-CONSOLE-LOG");
    assert_finding(
        &r,
        Status::Warn,
        "console-not-last",
        Some("/boot/grub/grub.cfg"),
    );
}

#[test]
fn os_no_fixed_mac_pinned_and_cloudinit_rendered() {
    let mut t = clean_tree();
    t.file(
        "etc/udev/rules.d/70-persistent-net.rules",
        "# generated\nSUBSYSTEM==\"net\", ACTION==\"add\", ATTR{address}==\"52:54:00:12:34:56\", NAME=\"eth0\"\n",
    );
    let r = check_one(&t, "OS-NO-FIXED-MAC");
    assert_finding(
        &r,
        Status::Fail,
        "mac-pinned",
        Some("/etc/udev/rules.d/70-persistent-net.rules"),
    );
    let mut t = clean_tree();
    t.file(
        "etc/netplan/50-cloud-init.yaml",
        "network:\n  version: 2\n  ethernets:\n    ens3:\n      dhcp4: true\n      match:\n        macaddress: fa:16:3e:00:00:01\n",
    );
    let r = check_one(&t, "OS-NO-FIXED-MAC");
    assert_finding(
        &r,
        Status::Warn,
        "mac-in-cloudinit-config",
        Some("/etc/netplan/50-cloud-init.yaml"),
    );
}

#[test]
fn kernel_virtio_module_missing_from_initramfs() {
    let mut t = clean_tree();
    t.file(
        &format!("boot/initrd.img-{KVER}"),
        initramfs(&[(
            &format!("usr/lib/modules/{KVER}/kernel/drivers/net/virtio_net.ko.xz"),
            b"ko",
        )]),
    );
    let r = check_one(&t, "KERNEL-VIRTIO");
    assert_finding(
        &r,
        Status::Fail,
        "module-not-in-initramfs",
        Some(&format!("/boot/initrd.img-{KVER}")),
    );
    let mut t = clean_tree();
    t.remove(&format!(
        "usr/lib/modules/{KVER}/kernel/fs/fuse/virtiofs.ko.xz"
    ));
    let dep =
        String::from_utf8(t.read(&format!("usr/lib/modules/{KVER}/modules.dep"))).expect("utf8");
    t.file(
        &format!("usr/lib/modules/{KVER}/modules.dep"),
        dep.replace("kernel/fs/fuse/virtiofs.ko.xz:\n", ""),
    );
    let r = check_one(&t, "KERNEL-VIRTIO");
    assert_finding(&r, Status::Fail, "driver-missing", None);
    assert!(r.findings.iter().any(|f| f.message.contains("virtiofs")));
}

#[test]
fn app_nopass_empty_and_well_known_passwords() {
    let mut t = clean_tree();
    // sha512crypt of "password" with salt "saltsalt".
    t.file_mode(
        "etc/shadow",
        "root:$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/:19700:0:99999:7:::\ndaemon:*:19700:0:99999:7:::\npostgres::19700:0:99999:7:::\ndebian:!:19700:0:99999:7:::\n",
        0o640,
    );
    let r = check_one(&t, "APP-NOPASS");
    assert_finding(&r, Status::Fail, "well-known-password", Some("/etc/shadow"));
    assert_finding(&r, Status::Fail, "empty-password", Some("/etc/shadow"));
    let json = serde_json::to_string(&r).expect("json");
    assert!(!json.contains("qFmFH"), "hash leaked");
    assert!(json.contains("p******d"));
}

#[test]
fn app_ports_undeclared_socket_listener() {
    let mut t = clean_tree();
    t.file("usr/lib/systemd/system/rpcbind.socket", "[Unit]\nDescription=RPCbind Server Activation Socket\n[Socket]\nListenStream=/run/rpcbind.sock\nListenStream=0.0.0.0:111\nListenDatagram=0.0.0.0:111\n[Install]\nWantedBy=sockets.target\n")
        .symlink("etc/systemd/system/sockets.target.wants/rpcbind.socket", "/lib/systemd/system/rpcbind.socket");
    let r = check_one(&t, "APP-PORTS");
    assert_finding(
        &r,
        Status::Fail,
        "undeclared-port",
        Some("/usr/lib/systemd/system/rpcbind.socket"),
    );
    assert!(r.findings.iter().any(|f| f.message.starts_with("111/udp")));
}

#[test]
fn app_autostart_unit_not_enabled_fails_soft_and_hard() {
    let mut t = clean_tree();
    t.remove("etc/systemd/system/multi-user.target.wants/ibkit-example.service");
    for id in ["APP-AUTOSTART-SOFT", "APP-AUTOSTART-HARD"] {
        let r = check_one(&t, id);
        assert_finding(&r, Status::Fail, "unit-not-enabled", None);
    }
}

#[test]
fn app_autostart_hard_warns_on_persistent_pidfile() {
    let mut t = clean_tree();
    t.file("usr/lib/systemd/system/ibkit-example.service", "[Unit]\nDescription=x\n[Service]\nPIDFile=/var/lib/app/app.pid\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n");
    let r = check_one(&t, "APP-AUTOSTART-HARD");
    assert_finding(
        &r,
        Status::Warn,
        "persistent-pidfile",
        Some("/usr/lib/systemd/system/ibkit-example.service"),
    );
    assert_eq!(check_one(&t, "APP-AUTOSTART-SOFT").status, Status::Pass);
}

#[test]
fn app_flavor_without_growpart_and_fstab_by_device() {
    let mut t = clean_tree();
    let pkgs: Vec<_> = DPKG_CLEAN
        .iter()
        .copied()
        .filter(|(n, _)| *n != "cloud-guest-utils")
        .collect();
    t.file("var/lib/dpkg/status", dpkg_status(&pkgs))
        .remove("usr/bin/growpart");
    t.file("etc/fstab", "/dev/vda2 / ext4 defaults 0 1\n");
    let r = check_one(&t, "APP-FLAVOR");
    assert_finding(&r, Status::Fail, "growpart-missing", None);
    assert_finding(&r, Status::Fail, "fstab-device-name", Some("/etc/fstab"));
}

#[test]
fn app_docs_version_mismatch() {
    let dir = tmp();
    let m = manifest(dir.path());
    std::fs::write(
        dir.path().join("docs/deploy.md"),
        "# ibkit-example 0.9.0\n\nTODO: write this\n",
    )
    .expect("write");
    let report = run(&image(&clean_tree()), Some(&m), &["APP-DOCS"]);
    let r = one(&report, "APP-DOCS");
    let doc = dir.path().join("docs/deploy.md").display().to_string();
    assert_finding(&r, Status::Fail, "doc-version-mismatch", Some(&doc));
    assert!(r.findings.iter().any(|f| f.kind == "doc-placeholder"));
}

#[test]
fn app_net_static_address() {
    let mut t = clean_tree();
    t.file(
        "etc/network/interfaces.d/eth0",
        "auto eth0\niface eth0 inet static\n  address 10.0.0.5/24\n  mtu 1500\n",
    );
    let r = check_one(&t, "APP-NET");
    assert_finding(
        &r,
        Status::Fail,
        "static-address",
        Some("/etc/network/interfaces.d/eth0"),
    );
    assert!(r.findings.iter().any(|f| f.kind == "fixed-mtu"));
}

#[test]
fn app_kvm_wrong_architecture() {
    let mut t = clean_tree();
    t.file("usr/lib/systemd/systemd", elf(183));
    let r = check_one(&t, "APP-KVM");
    assert_finding(
        &r,
        Status::Fail,
        "wrong-architecture",
        Some("/usr/lib/systemd/systemd"),
    );
}

#[test]
fn app_flavor_root_partition_not_last() {
    use ibkit_test_utils::{Container, FsType, GptPart, Layout, Volume, build_image};
    let dir = tmp();
    let m = manifest(dir.path());
    let tree = clean_tree();
    let layout = Layout::Gpt(vec![
        GptPart::empty("ef02", "bios", 1),
        GptPart::new(
            "8300",
            "root",
            Volume::new(FsType::Ext4, 64)
                .with_tree(&tree)
                .with_uuid(ROOT_UUID),
        ),
        GptPart::new("8200", "swap", Volume::new(FsType::Swap, 8)),
    ]);
    let img = build_image(&layout, Container::Qcow2).expect("build");
    let report = run(&img, Some(&m), &["APP-FLAVOR"]);
    let r = one(&report, "APP-FLAVOR");
    assert_finding(&r, Status::Fail, "root-not-last", None);
    assert!(
        r.findings.iter().any(|f| f.message.contains("partition 3")),
        "{:#?}",
        r.findings
    );
}

#[test]
fn rhel_family_image_on_xfs_and_lvm_passes_and_debuggers_are_found_in_rpmdb() {
    let root = rhel::root_tree(&[]);
    let boot = rhel::boot_tree();
    let img = rhel::image(&root, &boot);
    let report = run(&img, None, &[]);
    assert_eq!(
        report.image.os.as_deref(),
        Some("AlmaLinux 9.3 (Shamrock Pearl)")
    );
    let mounts: Vec<&str> = report
        .image
        .mounts
        .iter()
        .map(|m| m.point.as_str())
        .collect();
    assert_eq!(mounts, ["/", "/boot", "/boot/efi"]);
    for r in &report.results {
        let expected = match r.id.as_str() {
            "APP-BILLING" | "APP-PORTS" | "APP-AUTOSTART-SOFT" | "APP-AUTOSTART-HARD"
            | "APP-DOCS" => Status::Unknown,
            // Root on LVM: growpart grows the PV, not the LV.
            "APP-FLAVOR" => Status::Warn,
            _ => Status::Pass,
        };
        assert_eq!(r.status, expected, "{}: {r:#?}", r.id);
    }
    assert!(report.complete, "{:?}", report.notes);
    let console = one(&report, "OS-CONSOLE-LOG");
    assert!(
        console.evidence[0]
            .path
            .as_deref()
            .is_some_and(|p| p.starts_with("/boot/loader/entries/")),
        "{console:#?}"
    );
    let pk = one(&report, "IMG-CLOUDINIT");
    assert!(
        pk.evidence
            .iter()
            .any(|e| e.package.as_deref() == Some("cloud-init 23.4-7.el9_3.alma.1")),
        "{pk:#?}"
    );

    let root = rhel::root_tree(&[("gdb", "10.2", "11.el9"), ("strace", "5.18", "2.el9")]);
    let report = run(&rhel::image(&root, &boot), None, &["IMG-NO-DEBUGGERS"]);
    let r = one(&report, "IMG-NO-DEBUGGERS");
    assert_eq!(r.status, Status::Fail);
    let pkgs: Vec<&str> = r
        .findings
        .iter()
        .filter_map(|f| f.evidence.package.as_deref())
        .collect();
    assert_eq!(pkgs, ["gdb 10.2-11.el9", "strace 5.18-2.el9"]);
}

#[test]
fn img_no_secrets_and_history_search_homes_without_an_account() {
    let mut t = clean_tree();
    // A user removed with `userdel` (no -r): the home stays, owned by a
    // uid that is in no passwd entry.
    t.file("home/ghost/.bash_history", "mysql -u root -phunter2\n")
        .file(
            "home/ghost/.aws/credentials",
            "[default]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
        )
        .file(
            "home/ghost/keys/deploy",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----\n",
        )
        .owner("home/ghost", 1001, 1001)
        // The same home again through a symlink: reported once.
        .symlink("home/ghost-link", "/home/ghost")
        // A service home no passwd entry names, owned by debian's uid.
        .file("srv/build/.ssh/known_hosts", "")
        .file(
            "srv/build/.git-credentials",
            "https://ci:glpat-abcdefghij0123456789@git.example.com\n",
        )
        .owner("srv/build", 1000, 1000)
        // A home root configured for adduser.
        .file("etc/adduser.conf", "DSHELL=/bin/bash\nDHOME=/data/homes\n")
        .file(
            "data/homes/carol/.netrc",
            "machine api.example.com login carol password s3cr3t\n",
        )
        .owner("data/homes/carol", 1002, 1002)
        .file("opt/app/.env", "DEBUG=false\nDB_PASSWORD=s3cr3t-db\n");
    let r = check_one(&t, "IMG-NO-SECRETS");
    let no_account = "uid 1001 (no account in /etc/passwd)";
    let finding = |path: &str| {
        r.findings
            .iter()
            .find(|f| f.evidence.path.as_deref() == Some(path))
            .unwrap_or_else(|| panic!("no finding at {path}: {:#?}", r.findings))
    };
    assert_finding(
        &r,
        Status::Fail,
        "credential-file",
        Some("/home/ghost/.aws/credentials"),
    );
    assert!(
        finding("/home/ghost/.aws/credentials")
            .message
            .contains(no_account)
    );
    let key = finding("/home/ghost/keys/deploy");
    assert_eq!(key.kind, "secret-content");
    assert!(key.message.contains(no_account), "{key:#?}");
    let build = finding("/srv/build/.git-credentials");
    assert!(
        build.message.contains("uid 1000 (user debian"),
        "{build:#?}"
    );
    assert!(build.evidence.detail.contains("under /srv"), "{build:#?}");
    let carol = finding("/data/homes/carol/.netrc");
    assert!(carol.message.contains("uid 1002 (no account"), "{carol:#?}");
    assert!(
        carol.evidence.detail.contains("/etc/adduser.conf:2"),
        "{carol:#?}"
    );
    assert_finding(&r, Status::Fail, "secret-content", Some("/opt/app/.env"));
    assert!(
        !r.findings.iter().any(|f| f
            .evidence
            .path
            .as_deref()
            .is_some_and(|p| p.starts_with("/home/ghost-link"))),
        "the symlinked home is reported twice: {:#?}",
        r.findings
    );
    let json = serde_json::to_string(&r).expect("json");
    for secret in [
        "wJalrXUtnFEMI",
        "b3BlbnNzaC1rZXkt",
        "glpat-abcdefghij",
        "s3cr3t",
    ] {
        assert!(!json.contains(secret), "{secret} leaked: {json}");
    }

    let r = check_one(&t, "IMG-NO-HISTORY");
    assert_finding(
        &r,
        Status::Fail,
        "history-file",
        Some("/home/ghost/.bash_history"),
    );
    assert_eq!(r.findings.len(), 1, "{:#?}", r.findings);
    assert!(r.findings[0].message.contains(no_account), "{r:#?}");
    assert!(!serde_json::to_string(&r).expect("json").contains("hunter2"));
}

#[test]
fn kernel_virtio_disabled_by_modprobe_config_in_image_and_initramfs() {
    let mut t = clean_tree();
    t.file(
        "etc/modprobe.d/blacklist-virtio.conf",
        "# keep the build NIC\nblacklist virtio-net\n",
    )
    .file(
        "usr/lib/modprobe.d/no-virtiofs.conf",
        "install virtiofs /bin/false\n",
    )
    .file(
        &format!("boot/initrd.img-{KVER}"),
        initramfs(&[
            (
                &format!("usr/lib/modules/{KVER}/kernel/drivers/block/virtio_blk.ko.xz"),
                b"ko",
            ),
            (
                &format!("usr/lib/modules/{KVER}/kernel/drivers/net/virtio_net.ko.xz"),
                b"ko",
            ),
            ("etc/modprobe.d/disk.conf", b"blacklist virtio_blk\n"),
            ("init", b"#!/bin/sh\n"),
        ]),
    );
    let r = check_one(&t, "KERNEL-VIRTIO");
    assert_finding(
        &r,
        Status::Fail,
        "driver-disabled",
        Some("/etc/modprobe.d/blacklist-virtio.conf"),
    );
    let net = r
        .findings
        .iter()
        .find(|f| f.evidence.path.as_deref() == Some("/etc/modprobe.d/blacklist-virtio.conf"))
        .expect("finding");
    assert_eq!(net.evidence.line, Some(2));
    assert!(net.message.contains("virtio_net"), "{net:#?}");
    assert_finding(
        &r,
        Status::Fail,
        "driver-disabled",
        Some("/usr/lib/modprobe.d/no-virtiofs.conf"),
    );
    assert_finding(
        &r,
        Status::Fail,
        "driver-disabled-initramfs",
        Some(&format!("/boot/initrd.img-{KVER}")),
    );
    let init = r
        .findings
        .iter()
        .find(|f| f.kind == "driver-disabled-initramfs")
        .expect("finding");
    assert!(
        init.evidence
            .detail
            .contains("/etc/modprobe.d/disk.conf:1 inside: blacklist virtio_blk"),
        "{init:#?}"
    );
}

#[test]
fn kernel_virtio_disabled_on_the_kernel_command_line() {
    let mut t = clean_tree();
    let cfg = String::from_utf8(t.read("boot/grub/grub.cfg")).expect("utf8");
    t.file(
        "boot/grub/grub.cfg",
        cfg.replace(
            " console=tty0",
            " modprobe.blacklist=floppy,virtio_net module_blacklist=virtio_pci initcall_blacklist=virtio_pci_driver_init console=tty0",
        ),
    );
    let r = check_one(&t, "KERNEL-VIRTIO");
    let cmdline: Vec<&str> = r
        .findings
        .iter()
        .filter(|f| f.kind == "driver-disabled-cmdline")
        .map(|f| f.evidence.detail.as_str())
        .collect();
    assert_eq!(r.status, Status::Fail, "{r:#?}");
    assert!(
        cmdline.contains(&"modprobe.blacklist= names virtio_net"),
        "{cmdline:?}"
    );
    // virtio_pci is built in: module_blacklist= cannot stop it (information),
    // initcall_blacklist= can.
    assert!(
        cmdline.contains(&"initcall_blacklist= names virtio_pci_driver_init"),
        "{cmdline:?}"
    );
    assert!(
        r.findings.iter().any(|f| f.kind == "blacklist-builtin"
            && f.evidence.detail == "module_blacklist= names virtio_pci"),
        "{:#?}",
        r.findings
    );
    assert!(
        r.findings
            .iter()
            .all(|f| f.evidence.path.as_deref() == Some("/boot/grub/grub.cfg"))
    );
}

#[test]
fn os_no_fixed_mac_in_cloudinit_system_config_fails_unless_disabled() {
    // v2 in a drop-in, as the vendor left it: cloud-init applies it on every
    // instance ahead of the datasource's network config.
    let mut t = clean_tree();
    t.file(
        "etc/cloud/cloud.cfg.d/95-vendor-network.cfg",
        "network:\n  version: 2\n  ethernets:\n    uplink:\n      match:\n        macaddress: \"fa:16:3e:27:9c:40\"\n      set-name: uplink\n      dhcp4: true\n",
    );
    let r = check_one(&t, "OS-NO-FIXED-MAC");
    assert_finding(
        &r,
        Status::Fail,
        "mac-in-cloudinit-system-config",
        Some("/etc/cloud/cloud.cfg.d/95-vendor-network.cfg"),
    );
    assert_eq!(r.findings[0].evidence.line, Some(6), "{r:#?}");
    // A later drop-in switching cloud-init's networking off disarms it.
    t.file(
        "etc/cloud/cloud.cfg.d/99-disable-network-config.cfg",
        "network: {config: disabled}\n",
    );
    let r = check_one(&t, "OS-NO-FIXED-MAC");
    assert_eq!(r.status, Status::Pass, "{r:#?}");

    // v1 in cloud.cfg itself: a physical interface with mac_address.
    let mut t = clean_tree();
    let cfg = String::from_utf8(t.read("etc/cloud/cloud.cfg")).expect("utf8");
    t.file(
        "etc/cloud/cloud.cfg",
        format!(
            "{cfg}network:\n  version: 1\n  config:\n    - type: physical\n      name: eth0\n      mac_address: 52:54:00:ab:cd:ef\n      subnets:\n        - type: dhcp\n"
        ),
    );
    let r = check_one(&t, "OS-NO-FIXED-MAC");
    assert_finding(
        &r,
        Status::Fail,
        "mac-in-cloudinit-system-config",
        Some("/etc/cloud/cloud.cfg"),
    );
    let line = cfg.lines().count() + 6;
    assert_eq!(r.findings[0].evidence.line, Some(line), "{r:#?}");
    // Matching by name instead passes.
    t.file(
        "etc/cloud/cloud.cfg",
        format!("{cfg}network:\n  version: 2\n  ethernets:\n    eth0:\n      match:\n        name: en*\n      dhcp4: true\n"),
    );
    let r = check_one(&t, "OS-NO-FIXED-MAC");
    assert_eq!(r.status, Status::Pass, "{r:#?}");
}

#[test]
fn os_console_log_follows_the_extlinux_default_label() {
    let extlinux = |default: &str| {
        format!(
            "{default}\nTIMEOUT 10\nPROMPT 0\n\nLABEL rescue\n\tLINUX /vmlinuz-{KVER}\n\tINITRD /initrd.img-{KVER}\n\tAPPEND root=/dev/vda1 ro single console=tty0 console=ttyS0,115200\n\nLABEL debian\n\tLINUX /vmlinuz-{KVER}\n\tINITRD /initrd.img-{KVER}\n\tAPPEND root=/dev/vda1 ro console=tty0\n"
        )
    };
    let mut t = clean_tree();
    t.remove("boot/grub/grub.cfg").remove("etc/default/grub");
    // DEFAULT names the second label: its APPEND (line 13) is what boots,
    // although the first APPEND in the file has ttyS0.
    t.file("boot/extlinux/extlinux.conf", extlinux("DEFAULT debian"));
    let r = check_one(&t, "OS-CONSOLE-LOG");
    assert_finding(
        &r,
        Status::Fail,
        "console-missing",
        Some("/boot/extlinux/extlinux.conf"),
    );
    assert_eq!(r.findings[0].evidence.line, Some(13), "{r:#?}");
    assert!(r.findings[0].message.contains("\"debian\""), "{r:#?}");
    // DEFAULT rescue (or ONTIMEOUT rescue) boots the entry with ttyS0.
    t.file("boot/extlinux/extlinux.conf", extlinux("DEFAULT rescue"));
    let r = check_one(&t, "OS-CONSOLE-LOG");
    assert_eq!(r.status, Status::Pass, "{r:#?}");
    t.file(
        "boot/extlinux/extlinux.conf",
        extlinux("DEFAULT debian\nONTIMEOUT rescue"),
    );
    let r = check_one(&t, "OS-CONSOLE-LOG");
    assert_eq!(r.status, Status::Pass, "{r:#?}");
    // Old syntax: DEFAULT is a kernel line; the global APPEND applies.
    t.file(
        "boot/extlinux/extlinux.conf",
        format!("APPEND root=/dev/vda1 ro console=tty0\nDEFAULT /vmlinuz-{KVER} quiet\n"),
    );
    let r = check_one(&t, "OS-CONSOLE-LOG");
    assert_finding(
        &r,
        Status::Fail,
        "console-missing",
        Some("/boot/extlinux/extlinux.conf"),
    );
    assert_eq!(r.findings[0].evidence.line, Some(2), "{r:#?}");
}

#[test]
fn os_sshd_fails_when_sshd_not_to_be_run_exists() {
    let mut t = clean_tree();
    let unit = "[Unit]\nDescription=OpenBSD Secure Shell server\nAfter=network.target auditd.service\nConditionPathExists=!/etc/ssh/sshd_not_to_be_run\n[Service]\nExecStart=/usr/sbin/sshd -D\n[Install]\nWantedBy=multi-user.target\nAlias=sshd.service\n";
    t.file("usr/lib/systemd/system/ssh.service", unit);
    // Debian's unit, without the marker: passes.
    let r = check_one(&t, "OS-SSHD");
    assert_eq!(r.status, Status::Pass, "{r:#?}");
    t.file("etc/ssh/sshd_not_to_be_run", "");
    let r = check_one(&t, "OS-SSHD");
    assert_finding(
        &r,
        Status::Fail,
        "sshd-condition-unmet",
        Some("/etc/ssh/sshd_not_to_be_run"),
    );
    assert!(
        r.findings[0]
            .evidence
            .detail
            .contains("/usr/lib/systemd/system/ssh.service:4"),
        "{r:#?}"
    );
    // A required path that is missing stops it as well; a run-time path is
    // not judged.
    t.remove("etc/ssh/sshd_not_to_be_run").file(
        "etc/systemd/system/ssh.service.d/10-vendor.conf",
        "[Unit]\nConditionPathExists=/run/sshd-ready\nConditionPathExists=/etc/vendor/ssh-enabled\n",
    );
    let r = check_one(&t, "OS-SSHD");
    assert_finding(
        &r,
        Status::Fail,
        "sshd-condition-unmet",
        Some("/etc/vendor/ssh-enabled"),
    );
    t.file("etc/vendor/ssh-enabled", "");
    let r = check_one(&t, "OS-SSHD");
    assert_eq!(r.status, Status::Pass, "{r:#?}");
}

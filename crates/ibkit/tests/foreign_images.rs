//! `ibkit check` on foreign images: Debian 12 cloud images built by other
//! people's tools (`scripts/build-foreign-images.sh`), not by the project's
//! own builder, in layouts that builder never makes, each with its exact
//! expected verdict; and one-change variants of them, each of which must move
//! exactly its one rule and leave every other rule at the base verdict.
//!
//! The images:
//! * `guestfs-mbr`: mmdebstrap rootfs + libguestfs (guestfish): MBR,
//!   `/boot` ext4 on p1, root XFS on LVM (`vg0/root` on p2), extlinux.
//! * `genimage-gpt`: the same mmdebstrap rootfs + genimage: GPT, ESP (FAT32,
//!   GRUB EFI) on p1, root ext4 on p2, hand-written `grub.cfg`.
//!
//! The corpus directory comes from `IBKIT_FOREIGN_IMAGES` (set by
//! `scripts/test.sh`); a missing image there is a failure. Without the
//! variable the script is run, like the other image tests do: it returns the
//! cached corpus at once, or builds it (root, network, about 7 minutes).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn corpus() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| match std::env::var("IBKIT_FOREIGN_IMAGES") {
        Ok(d) if !d.trim().is_empty() => PathBuf::from(d.trim()),
        _ => {
            let script = workspace().join("scripts/build-foreign-images.sh");
            let out = Command::new(&script)
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
            assert!(
                out.status.success(),
                "{} failed:\n{}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
    })
}

fn image(name: &str) -> PathBuf {
    let p = corpus().join(format!("{name}.qcow2"));
    assert!(
        p.is_file(),
        "foreign image {name} missing: no {} (corpus {}; rebuild with scripts/build-foreign-images.sh)",
        p.display(),
        corpus().display()
    );
    p
}

/// The base verdict of `guestfs-mbr` without a manifest. Everything a
/// vendor's clean-up should achieve passes; the APP-* rules that need the
/// vendor's manifest (ports, units, docs) and billing are unknown.
/// APP-FLAVOR warns, legitimately: root is an LVM logical volume, which
/// growpart alone cannot grow (the PV grows, the LV needs lvextend).
const GUESTFS_MBR: &[(&str, &str)] = &[
    ("APP-KVM", "pass"),
    ("APP-NET", "pass"),
    ("APP-NOPASS", "pass"),
    ("APP-PORTS", "unknown"),
    ("APP-FLAVOR", "warn"),
    ("APP-AUTOSTART-SOFT", "unknown"),
    ("APP-AUTOSTART-HARD", "unknown"),
    ("APP-BILLING", "unknown"),
    ("APP-DOCS", "unknown"),
    ("IMG-CLOUDINIT", "pass"),
    ("IMG-AGENT-DEPS", "pass"),
    // mmdebstrap empties /etc/machine-id and drops /var/lib/dbus/machine-id
    // itself; the vendor hook removes host keys and cloud-init's state.
    ("IMG-NO-SECRETS", "pass"),
    ("IMG-NO-HISTORY", "pass"),
    ("IMG-NO-DEBUGGERS", "pass"),
    ("OS-SSHD", "pass"),
    // ufw and nftables are installed but off (ENABLED=no, nftables.service
    // not enabled): that passes.
    ("OS-FIREWALL-OFF", "pass"),
    ("OS-CONSOLE-LOG", "pass"),
    ("OS-NO-FIXED-MAC", "pass"),
    ("KERNEL-VIRTIO", "pass"),
];

/// The base verdict of `genimage-gpt`: as `guestfs-mbr`, but root is a
/// plain partition, the last one, so APP-FLAVOR passes too.
const GENIMAGE_GPT: &[(&str, &str)] = &[
    ("APP-KVM", "pass"),
    ("APP-NET", "pass"),
    ("APP-NOPASS", "pass"),
    ("APP-PORTS", "unknown"),
    ("APP-FLAVOR", "pass"),
    ("APP-AUTOSTART-SOFT", "unknown"),
    ("APP-AUTOSTART-HARD", "unknown"),
    ("APP-BILLING", "unknown"),
    ("APP-DOCS", "unknown"),
    ("IMG-CLOUDINIT", "pass"),
    ("IMG-AGENT-DEPS", "pass"),
    ("IMG-NO-SECRETS", "pass"),
    ("IMG-NO-HISTORY", "pass"),
    ("IMG-NO-DEBUGGERS", "pass"),
    ("OS-SSHD", "pass"),
    ("OS-FIREWALL-OFF", "pass"),
    ("OS-CONSOLE-LOG", "pass"),
    ("OS-NO-FIXED-MAC", "pass"),
    ("KERNEL-VIRTIO", "pass"),
];

fn base_table(base: &str) -> &'static [(&'static str, &'static str)] {
    match base {
        "guestfs-mbr" => GUESTFS_MBR,
        "genimage-gpt" => GENIMAGE_GPT,
        other => panic!("no base image {other:?}"),
    }
}

/// Where the finding that moves the rule must point.
enum Evidence {
    /// `evidence.path` of a finding at the variant's level.
    Path(&'static str),
    /// `evidence.package` (name, then version) of such a finding.
    Package(&'static str),
}

/// One variant: `scripts/foreign-images/variants/<name>/` says what it
/// changes; here is what `ibkit check` must say about it.
struct Variant {
    name: &'static str,
    base: &'static str,
    rule: &'static str,
    status: &'static str,
    evidence: Evidence,
}

use Evidence::{Package, Path as At};

const VARIANTS: &[Variant] = &[
    // --- credentials
    // A home that no /etc/passwd entry names (`userdel` without -r) is still
    // a home: its credentials ship to every buyer.
    Variant {
        name: "mbr-orphan-home-aws",
        base: "guestfs-mbr",
        rule: "IMG-NO-SECRETS",
        status: "fail",
        evidence: At("/home/builder/.aws/credentials"),
    },
    Variant {
        name: "gpt-orphan-home-sshkey",
        base: "genimage-gpt",
        rule: "IMG-NO-SECRETS",
        status: "fail",
        evidence: At("/home/packer/.ssh/id_ed25519"),
    },
    // --- shell and client histories in service homes outside /etc/passwd
    Variant {
        name: "mbr-service-history",
        base: "guestfs-mbr",
        rule: "IMG-NO-HISTORY",
        status: "fail",
        evidence: At("/var/lib/jenkins/.bash_history"),
    },
    Variant {
        name: "gpt-opt-history",
        base: "genimage-gpt",
        rule: "IMG-NO-HISTORY",
        status: "fail",
        evidence: At("/opt/vendorapp/.psql_history"),
    },
    // --- MAC pinning, by every network stack's means
    Variant {
        name: "mbr-mac-link",
        base: "guestfs-mbr",
        rule: "OS-NO-FIXED-MAC",
        status: "fail",
        evidence: At("/etc/systemd/network/10-vendor-uplink.link"),
    },
    Variant {
        name: "mbr-mac-udev-rule",
        base: "guestfs-mbr",
        rule: "OS-NO-FIXED-MAC",
        status: "fail",
        evidence: At("/etc/udev/rules.d/75-vendor-nic.rules"),
    },
    Variant {
        name: "gpt-mac-networkd",
        base: "genimage-gpt",
        rule: "OS-NO-FIXED-MAC",
        status: "fail",
        evidence: At("/etc/systemd/network/20-vendor-wan.network"),
    },
    // Network config in cloud-init's system config wins over the cloud's
    // (cloud-init: cmdline > initramfs > system config > datasource), so
    // every instance applies it, and it matches the build VM's MAC only.
    Variant {
        name: "gpt-mac-cloudinit-netcfg",
        base: "genimage-gpt",
        rule: "OS-NO-FIXED-MAC",
        status: "fail",
        evidence: At("/etc/cloud/cloud.cfg.d/95-vendor-network.cfg"),
    },
    // --- console
    Variant {
        name: "mbr-console-tty0",
        base: "guestfs-mbr",
        rule: "OS-CONSOLE-LOG",
        status: "fail",
        evidence: At("/boot/extlinux/extlinux.conf"),
    },
    // extlinux boots its DEFAULT label, not the first one: the rescue entry
    // before it has ttyS0, the entry that boots has not.
    Variant {
        name: "mbr-console-default-label",
        base: "guestfs-mbr",
        rule: "OS-CONSOLE-LOG",
        status: "fail",
        evidence: At("/boot/extlinux/extlinux.conf"),
    },
    // ttyS0 present but not last: a warning (the rule's documented trap:
    // the kernel log reaches ttyS0, /dev/console does not).
    Variant {
        name: "gpt-console-tty0-last",
        base: "genimage-gpt",
        rule: "OS-CONSOLE-LOG",
        status: "warn",
        evidence: At("/boot/grub/grub.cfg"),
    },
    // --- firewalls
    Variant {
        name: "mbr-nftables",
        base: "guestfs-mbr",
        rule: "OS-FIREWALL-OFF",
        status: "fail",
        evidence: At("/etc/nftables.conf"),
    },
    Variant {
        name: "gpt-ufw",
        base: "genimage-gpt",
        rule: "OS-FIREWALL-OFF",
        status: "fail",
        evidence: At("/etc/ufw/ufw.conf"),
    },
    // --- disabled services
    Variant {
        name: "mbr-ssh-masked",
        base: "guestfs-mbr",
        rule: "OS-SSHD",
        status: "fail",
        evidence: At("/etc/systemd/system/ssh.service"),
    },
    // Debian's ssh.service: ConditionPathExists=!/etc/ssh/sshd_not_to_be_run.
    Variant {
        name: "mbr-sshd-not-to-be-run",
        base: "guestfs-mbr",
        rule: "OS-SSHD",
        status: "fail",
        evidence: At("/etc/ssh/sshd_not_to_be_run"),
    },
    Variant {
        name: "gpt-cloudinit-disabled",
        base: "genimage-gpt",
        rule: "IMG-CLOUDINIT",
        status: "fail",
        evidence: At("/etc/cloud/cloud-init.disabled"),
    },
    // --- virtio_net present but switched off
    Variant {
        name: "mbr-virtio-blacklist",
        base: "guestfs-mbr",
        rule: "KERNEL-VIRTIO",
        status: "fail",
        evidence: At("/etc/modprobe.d/vendor-nic.conf"),
    },
    Variant {
        name: "mbr-virtio-cmdline",
        base: "guestfs-mbr",
        rule: "KERNEL-VIRTIO",
        status: "fail",
        evidence: At("/boot/extlinux/extlinux.conf"),
    },
    Variant {
        name: "gpt-virtio-install-false",
        base: "genimage-gpt",
        rule: "KERNEL-VIRTIO",
        status: "fail",
        evidence: At("/etc/modprobe.d/disable-virtio-net.conf"),
    },
    Variant {
        name: "gpt-virtio-usr-lib-modprobe",
        base: "genimage-gpt",
        rule: "KERNEL-VIRTIO",
        status: "fail",
        evidence: At("/usr/lib/modprobe.d/vendor-appliance.conf"),
    },
    // --- passwords
    Variant {
        name: "gpt-root-password",
        base: "genimage-gpt",
        rule: "APP-NOPASS",
        status: "fail",
        evidence: At("/etc/shadow"),
    },
    // --- debuggers: by package, and by path when no package owns them
    Variant {
        name: "mbr-gdbserver",
        base: "guestfs-mbr",
        rule: "IMG-NO-DEBUGGERS",
        status: "fail",
        evidence: Package("gdbserver"),
    },
    Variant {
        name: "gpt-gdb-binary",
        base: "genimage-gpt",
        rule: "IMG-NO-DEBUGGERS",
        status: "fail",
        evidence: At("/usr/local/bin/gdb"),
    },
];

struct Checked {
    code: i32,
    report: Value,
    stderr: String,
}

fn check(name: &str) -> Checked {
    let img = image(name);
    let out = Command::new(env!("CARGO_BIN_EXE_ibkit"))
        .arg("check")
        .arg(&img)
        .args(["--format", "json"])
        .output()
        .expect("ibkit runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{name}: not JSON ({e}):\n{stdout}\nstderr: {stderr}"));
    Checked {
        code: out.status.code().unwrap_or(-1),
        report,
        stderr,
    }
}

fn results(v: &Value) -> &[Value] {
    v["results"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn statuses(v: &Value) -> Vec<(String, String)> {
    results(v)
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap_or("?").to_owned(),
                r["status"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect()
}

fn owned(table: &[(&str, &str)]) -> Vec<(String, String)> {
    table
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn result<'a>(v: &'a Value, id: &str) -> &'a Value {
    results(v)
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no result {id}"))
}

/// Non-info findings of a rule, one line each, for failure messages.
fn findings_text(r: &Value) -> String {
    r["findings"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|f| {
            format!(
                "  {} {}: {} (at {})",
                f["level"].as_str().unwrap_or("?"),
                f["kind"].as_str().unwrap_or("?"),
                f["message"].as_str().unwrap_or("?"),
                f["evidence"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The exit code `ibkit check` owes a report with these statuses.
fn expected_code(table: &[(String, String)]) -> i32 {
    i32::from(table.iter().any(|(_, s)| s == "fail"))
}

/// Whole report sanity shared by bases and variants.
fn assert_sound(name: &str, c: &Checked, expected: &[(String, String)]) {
    assert_eq!(
        c.report["complete"],
        Value::Bool(true),
        "{name}: incomplete inspection: {}",
        c.report["notes"]
    );
    assert_eq!(
        c.report["image"]["os"], "Debian GNU/Linux 12 (bookworm)",
        "{name}"
    );
    assert_eq!(
        c.code,
        expected_code(expected),
        "{name}: exit code; stderr {}",
        c.stderr
    );
}

fn mounts(v: &Value) -> Vec<(String, String, String)> {
    v["image"]["mounts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|m| {
            let s = |k: &str| m[k].as_str().unwrap_or("?").to_owned();
            (s("point"), s("volume"), s("fs_type"))
        })
        .collect()
}

fn evidence_paths(r: &Value) -> Vec<String> {
    r["evidence"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .filter_map(|e| e["path"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn guestfs_mbr_base_verdict() {
    let c = check("guestfs-mbr");
    let expected = owned(GUESTFS_MBR);
    assert_eq!(statuses(&c.report), expected, "guestfs-mbr");
    assert_sound("guestfs-mbr", &c, &expected);
    // The layout was read as built: root XFS on the LV, /boot on p1.
    assert_eq!(c.report["image"]["partition_table"], "dos");
    assert_eq!(
        mounts(&c.report),
        [
            ("/".into(), "vg0/root".into(), "xfs".into()),
            ("/boot".into(), "p1".into(), "ext4".into())
        ]
    );
    // The boot loader that decides is extlinux on the /boot partition, and
    // the initramfs is read from there.
    let console = result(&c.report, "OS-CONSOLE-LOG");
    assert_eq!(
        evidence_paths(console),
        ["/boot/extlinux/extlinux.conf"],
        "{console}"
    );
    let virtio = result(&c.report, "KERNEL-VIRTIO");
    assert!(
        evidence_paths(virtio)
            .iter()
            .any(|p| p.starts_with("/boot/initrd.img-")),
        "{virtio}"
    );
    let flavor = result(&c.report, "APP-FLAVOR");
    assert!(
        flavor["findings"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["kind"] == "root-on-lvm")),
        "{flavor}"
    );
}

#[test]
fn genimage_gpt_base_verdict() {
    let c = check("genimage-gpt");
    let expected = owned(GENIMAGE_GPT);
    assert_eq!(statuses(&c.report), expected, "genimage-gpt");
    assert_sound("genimage-gpt", &c, &expected);
    assert_eq!(c.report["image"]["partition_table"], "gpt");
    assert_eq!(
        mounts(&c.report),
        [
            ("/".into(), "p2".into(), "ext4".into()),
            ("/boot/efi".into(), "p1".into(), "vfat".into())
        ]
    );
    // The hand-written grub.cfg decides; /etc/default/grub agrees with it.
    let console = result(&c.report, "OS-CONSOLE-LOG");
    assert_eq!(
        evidence_paths(console),
        ["/boot/grub/grub.cfg", "/etc/default/grub"],
        "{console}"
    );
}

/// The variant's one rule has the expected status with a finding at the
/// expected place; every other rule keeps its base verdict.
fn check_variant(name: &str) {
    let v = VARIANTS
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no expectation for variant {name}"));
    let c = check(name);
    let expected: Vec<(String, String)> = base_table(v.base)
        .iter()
        .map(|&(id, s)| {
            let s = if id == v.rule { v.status } else { s };
            (id.to_owned(), s.to_owned())
        })
        .collect();
    let got = statuses(&c.report);
    let r = result(&c.report, v.rule);
    assert_eq!(
        got,
        expected,
        "{name} (base {}): only {} may move, to {}; its findings:\n{}",
        v.base,
        v.rule,
        v.status,
        findings_text(r)
    );
    assert_sound(name, &c, &expected);
    let findings = r["findings"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let hit = findings.iter().any(|f| {
        f["level"] == v.status
            && match v.evidence {
                Evidence::Path(p) => f["evidence"]["path"] == p,
                Evidence::Package(p) => f["evidence"]["package"]
                    .as_str()
                    .is_some_and(|s| s.split_whitespace().next() == Some(p)),
            }
    });
    let want = match v.evidence {
        Evidence::Path(p) => format!("path {p}"),
        Evidence::Package(p) => format!("package {p}"),
    };
    assert!(
        hit,
        "{name}: no {} finding of {} at {want}:\n{}",
        v.status,
        v.rule,
        findings_text(r)
    );
}

macro_rules! variant_tests {
    ($($test:ident => $name:literal),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                check_variant($name);
            }
        )*
        /// Variants that have a test of their own.
        const TESTED: &[&str] = &[$($name),*];
    };
}

variant_tests! {
    variant_mbr_orphan_home_aws => "mbr-orphan-home-aws",
    variant_gpt_orphan_home_sshkey => "gpt-orphan-home-sshkey",
    variant_mbr_service_history => "mbr-service-history",
    variant_gpt_opt_history => "gpt-opt-history",
    variant_mbr_mac_link => "mbr-mac-link",
    variant_mbr_mac_udev_rule => "mbr-mac-udev-rule",
    variant_gpt_mac_networkd => "gpt-mac-networkd",
    variant_gpt_mac_cloudinit_netcfg => "gpt-mac-cloudinit-netcfg",
    variant_mbr_console_tty0 => "mbr-console-tty0",
    variant_mbr_console_default_label => "mbr-console-default-label",
    variant_gpt_console_tty0_last => "gpt-console-tty0-last",
    variant_mbr_nftables => "mbr-nftables",
    variant_gpt_ufw => "gpt-ufw",
    variant_mbr_ssh_masked => "mbr-ssh-masked",
    variant_mbr_sshd_not_to_be_run => "mbr-sshd-not-to-be-run",
    variant_gpt_cloudinit_disabled => "gpt-cloudinit-disabled",
    variant_mbr_virtio_blacklist => "mbr-virtio-blacklist",
    variant_mbr_virtio_cmdline => "mbr-virtio-cmdline",
    variant_gpt_virtio_install_false => "gpt-virtio-install-false",
    variant_gpt_virtio_usr_lib_modprobe => "gpt-virtio-usr-lib-modprobe",
    variant_gpt_root_password => "gpt-root-password",
    variant_mbr_gdbserver => "mbr-gdbserver",
    variant_gpt_gdb_binary => "gpt-gdb-binary",
}

/// The script's variants, this file's expectations and its tests are the
/// same set, and agree on base and rule: a new variant cannot go untested.
#[test]
fn every_variant_has_an_expectation_and_a_test() {
    let dir = workspace().join("scripts/foreign-images/variants");
    let mut on_disk = BTreeSet::new();
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let e = e.expect("dir entry");
        if !e.path().is_dir() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        let gfs = std::fs::read_to_string(e.path().join("edit.gfs"))
            .unwrap_or_else(|err| panic!("{name}/edit.gfs: {err}"));
        let field = |k: &str| {
            gfs.lines()
                .find_map(|l| l.strip_prefix(&format!("# {k}:")))
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        let v = VARIANTS
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("variant {name} has no expectation in VARIANTS"));
        assert_eq!(field("base"), v.base, "{name}: base");
        assert_eq!(field("rule"), v.rule, "{name}: rule");
        on_disk.insert(name);
    }
    let expected: BTreeSet<String> = VARIANTS.iter().map(|v| v.name.to_owned()).collect();
    let tested: BTreeSet<String> = TESTED.iter().map(|s| s.to_string()).collect();
    assert_eq!(on_disk, expected, "variant directories vs VARIANTS");
    assert_eq!(tested, expected, "variant_tests! vs VARIANTS");
    // And the corpus in use was built from them.
    let tsv = std::fs::read_to_string(corpus().join("images.tsv"))
        .unwrap_or_else(|e| panic!("{}/images.tsv: {e}", corpus().display()));
    // NAME, BASE, RULE ("-" for a base image), FILE
    let built: BTreeSet<String> = tsv
        .lines()
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .filter(|f| f.len() == 4 && f[2] != "-")
        .map(|f| f[0].to_owned())
        .collect();
    assert_eq!(built, expected, "images.tsv of {}", corpus().display());
}

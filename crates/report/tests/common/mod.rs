//! A realistic report built by hand (independent of the rule catalogue).

#![allow(dead_code)]

use ibkit_rules::engine::{ImageInfo, MountSummary, Summary, ToolInfo, VolumeSummary};
use ibkit_rules::{Evidence, Finding, Level, Report, RuleResult, Severity, Status};

pub fn finding(level: Level, kind: &str, message: &str, evidence: Evidence) -> Finding {
    Finding {
        level,
        kind: kind.into(),
        message: message.into(),
        evidence,
        waived: None,
    }
}

pub fn rule(id: &str, title: &str, status: Status, summary: &str) -> RuleResult {
    RuleResult {
        id: id.into(),
        title: title.into(),
        requirement: format!("The requirement of {id}."),
        severity: Severity::Error,
        status,
        summary: summary.into(),
        evidence: Vec::new(),
        findings: Vec::new(),
        unverified: Vec::new(),
        remediation: format!("How to fix {id}."),
        elapsed_us: 1500,
    }
}

pub fn summary_of(results: &[RuleResult]) -> Summary {
    let mut s = Summary::default();
    for r in results {
        match r.status {
            Status::Pass => s.pass += 1,
            Status::Fail => s.fail += 1,
            Status::Warn => s.warn += 1,
            Status::Waived => s.waived += 1,
            Status::Unknown => s.unknown += 1,
        }
    }
    s
}

/// Two failures (one with `path:line` evidence), a warning with package
/// evidence, an unknown, a waived rule and five passes; one note.
pub fn sample() -> Report {
    let mut results = Vec::new();

    // pass, listed first in catalogue order to check that text groups by status
    let mut r = rule(
        "IMG-CLOUDINIT",
        "cloud-init installed and enabled",
        Status::Pass,
        "cloud-init 24.1.3 enabled",
    );
    r.evidence.push(Evidence::package(
        "cloud-init 24.1.3-0ubuntu3",
        "installed (/var/lib/dpkg/status)",
    ));
    r.evidence.push(Evidence::at(
        "/etc/systemd/system/cloud-init.target.wants/cloud-init.service",
        "cloud-init.service starts at boot: wanted by cloud-init.target",
    ));
    r.findings.push(finding(
        Level::Info,
        "datasource-list",
        "datasource_list is not restricted",
        Evidence::at_line(
            "/etc/cloud/cloud.cfg",
            4,
            "no datasource_list: every datasource is probed",
        ),
    ));
    results.push(r);

    let mut r = rule(
        "APP-NOPASS",
        "No default passwords",
        Status::Fail,
        "account ubuntu has an empty password (and 1 more)",
    );
    r.findings.push(finding(
        Level::Fail,
        "empty-password",
        "account ubuntu has an empty password",
        Evidence::at_line("/etc/shadow", 23, "ubuntu: empty password field"),
    ));
    r.findings.push(finding(
        Level::Fail,
        "known-password",
        "account root has a well-known password",
        Evidence::at_line(
            "/etc/shadow",
            1,
            "root: sha512crypt hash of a well-known password",
        ),
    ));
    results.push(r);

    let mut r = rule(
        "IMG-NO-HISTORY",
        "No command history in the image",
        Status::Fail,
        "history file of user root: /root/.bash_history (and 1 more)",
    );
    r.findings.push(finding(
        Level::Fail,
        "history-file",
        "history file of user postgres: /var/lib/postgresql/.psql_history",
        Evidence::at(
            "/var/lib/postgresql/.psql_history",
            "3 lines, 96 bytes, sha256:0c4e11aa…",
        ),
    ));
    r.findings.push(finding(
        Level::Fail,
        "history-file",
        "history file of user root: /root/.bash_history",
        Evidence::at(
            "/root/.bash_history",
            "41 lines, 1187 bytes, sha256:3fa01c9e…",
        ),
    ));
    results.push(r);

    let mut r = rule(
        "IMG-NO-DEBUGGERS",
        "No debuggers",
        Status::Warn,
        "debugger package installed: gdb (and 1 more)",
    );
    r.severity = Severity::Warning;
    r.findings.push(finding(
        Level::Fail,
        "debugger-package",
        "debugger package installed: gdb",
        Evidence::package("gdb 15.0.50.20240403-0ubuntu1", "installed"),
    ));
    r.findings.push(finding(
        Level::Fail,
        "debugger-binary",
        "debugger executable: /usr/bin/strace",
        Evidence::at("/usr/bin/strace", "executable in a standard path"),
    ));
    results.push(r);

    let mut r = rule(
        "APP-BILLING",
        "Billed per the marketplace's rules",
        Status::Unknown,
        "billing is configured in the marketplace, not in the image",
    );
    r.unverified
        .push("billing is configured in the marketplace, not in the image".into());
    results.push(r);

    let mut r = rule(
        "IMG-NO-SECRETS",
        "No sensitive data",
        Status::Waived,
        "all problems waived",
    );
    let mut f = finding(
        Level::Fail,
        "host-key",
        "SSH host private key in the image: /etc/ssh/ssh_host_ed25519_key",
        Evidence::at(
            "/etc/ssh/ssh_host_ed25519_key",
            "OpenSSH private key, 399 bytes, sha256:9d1e0b2c…",
        ),
    );
    f.waived = Some("regenerated by cloud-init at first boot (ssh_deletekeys: true)".into());
    r.findings.push(f);
    r.evidence.push(Evidence::note(
        "no other key, credential or token in 18230 files",
    ));
    results.push(r);

    let mut r = rule(
        "OS-SSHD",
        "SSH server installed and started at boot",
        Status::Pass,
        "openssh-server 1:9.6p1-3ubuntu13.5 installed",
    );
    r.evidence.push(Evidence::package(
        "openssh-server 1:9.6p1-3ubuntu13.5",
        "installed",
    ));
    r.evidence.push(Evidence::at(
        "/etc/systemd/system/sockets.target.wants/ssh.socket",
        "ssh.socket starts at boot: wanted by sockets.target",
    ));
    results.push(r);

    let mut r = rule(
        "OS-CONSOLE-LOG",
        "Kernel boot log on the serial console",
        Status::Pass,
        "console=ttyS0,115200 is the last console= on every boot entry",
    );
    r.evidence.push(Evidence::at_line(
        "/boot/grub/grub.cfg",
        123,
        "linux /boot/vmlinuz-6.8.0-45-generic ro console=tty1 console=ttyS0,115200",
    ));
    results.push(r);

    let mut r = rule(
        "KERNEL-VIRTIO",
        "virtio drivers reachable at boot",
        Status::Pass,
        "virtio_net, virtio_blk and virtiofs available",
    );
    r.evidence.push(Evidence::at(
        "/boot/config-6.8.0-45-generic",
        "CONFIG_VIRTIO_BLK=y, CONFIG_VIRTIO_NET=y",
    ));
    results.push(r);

    let mut r = rule(
        "IMG-AGENT-DEPS",
        "curl and systemd present",
        Status::Pass,
        "curl and systemd present",
    );
    r.evidence
        .push(Evidence::package("curl 8.5.0-2ubuntu10.4", "installed"));
    results.push(r);

    let summary = summary_of(&results);
    Report {
        schema_version: 1,
        tool: ToolInfo {
            name: "ibkit".into(),
            version: "0.0.0-test".into(),
        },
        image: ImageInfo {
            path: "images/app.qcow2".into(),
            format: "qcow2".into(),
            layers: vec![
                "images/app.qcow2".into(),
                "images/ubuntu-24.04-base.qcow2".into(),
            ],
            virtual_size: Some(10 * 1024 * 1024 * 1024),
            partition_table: Some("gpt".into()),
            volumes: vec![
                VolumeSummary {
                    name: "p1".into(),
                    kind: "ext4".into(),
                    size: 10_618_894_336,
                    uuid: Some("0b7ddc2f-5e44-4b0b-9c70-5b0f7f3c8a11".into()),
                    label: Some("cloudimg-rootfs".into()),
                },
                VolumeSummary {
                    name: "p3".into(),
                    kind: "btrfs".into(),
                    size: 1024 * 1024 * 1024,
                    uuid: None,
                    label: None,
                },
                VolumeSummary {
                    name: "p15".into(),
                    kind: "vfat".into(),
                    size: 111_149_056,
                    uuid: None,
                    label: Some("UEFI".into()),
                },
            ],
            mounts: vec![
                MountSummary {
                    point: "/".into(),
                    volume: "p1".into(),
                    fs_type: "ext4".into(),
                },
                MountSummary {
                    point: "/boot/efi".into(),
                    volume: "p15".into(),
                    fs_type: "vfat".into(),
                },
            ],
            os: Some("Ubuntu 24.04.1 LTS".into()),
        },
        profile: "internal".into(),
        manifest: Some("app.toml".into()),
        results,
        summary,
        complete: false,
        notes: vec!["p3: btrfs is not supported; its files were not checked".into()],
        elapsed_ms: 1420,
    }
}

/// Every rule passes.
pub fn clean() -> Report {
    let mut r = sample();
    for res in &mut r.results {
        res.status = Status::Pass;
        res.findings.clear();
        res.unverified.clear();
        if res.evidence.is_empty() {
            res.evidence.push(Evidence::note("looked fine"));
        }
    }
    r.summary = summary_of(&r.results);
    r.notes.clear();
    r.complete = true;
    r
}

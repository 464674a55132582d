//! Each live check on recorded observations: a clean run passes every rule,
//! and each breakage fails exactly the rule it should.

use ibkit_rules::Status;

use super::ALL;
use crate::guest::{Listener, SerialSummary, ShadowIssue, ShadowSummary};
use crate::health::HealthSpec;
use crate::observe::*;
use ibkit_api::operator::{
    AccessKeyView, InstanceId, InstanceUsage, ParamUsage, PushRecord, PushScheme,
};

fn listener(proto: &str, addr: &str, port: u16, p: &str) -> Listener {
    Listener {
        proto: proto.into(),
        address: addr.into(),
        interface: None,
        port,
        processes: vec![p.into()],
    }
}

fn healthy() -> HealthObs {
    HealthObs {
        passed: true,
        after_s: 1.0,
        attempts: 1,
        last_error: None,
    }
}

fn unhealthy() -> HealthObs {
    HealthObs {
        passed: false,
        after_s: 120.0,
        attempts: 60,
        last_error: Some("connection refused".into()),
    }
}

fn boot(label: &str, vcpus: u32, mem: u64, disk: u64, mac: &str, seed: &str, root: u64) -> BootObs {
    BootObs {
        label: label.into(),
        vcpus,
        memory_mib: mem,
        disk_bytes: disk,
        mac: mac.into(),
        seed: seed.into(),
        serial: SerialSummary {
            bytes: 40_000,
            kernel_lines: 300,
            linux_version: Some("Linux version 6.1.0-40-cloud-amd64".into()),
            tail: vec!["debian login:".into()],
        },
        serial_log: format!("/work/{label}/serial.log"),
        network: NetObs {
            frames_from_guest: 40,
            dhcp_requests: 2,
            dhcp_ack: Some("10.0.2.15".into()),
            dhcp_ack_after_s: Some(20.0),
            error: None,
        },
        banner: Some("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u7".into()),
        ssh_ready_after_s: Some(50.0),
        ssh_error: None,
        guest: Some(GuestObs {
            cmdline: Some("BOOT_IMAGE=/boot/vmlinuz ro console=tty0 console=ttyS0,115200".into()),
            cloud_init: Some(CloudInitObs {
                status_text: "status: done\n".into(),
                exit_status: Some(0),
                status: Some("done".into()),
                errors: vec![],
                recoverable: vec![],
                datasource: Some(if seed == "ConfigDrive" {
                    "DataSourceConfigDrive [net,ver=2][source=/dev/vdb]".into()
                } else {
                    "DataSourceNoCloud [seed=/dev/vdb][dsmode=net]".into()
                }),
                result_found: true,
            }),
            sshd_units: vec![UnitState {
                unit: "ssh.service".into(),
                active: "active".into(),
                enabled: "enabled".into(),
            }],
            auth_methods: Some(vec!["publickey".into(), "password".into()]),
            password_attempts: vec![PasswordAttempt {
                user: "root".into(),
                password: "t**r".into(),
                outcome: "rejected".into(),
            }],
            shadow: Some(ShadowSummary::default()),
            shadow_error: None,
            listeners: Some(vec![
                listener("udp", "0.0.0.0", 68, "dhclient"),
                listener("tcp", "0.0.0.0", 22, "sshd"),
                listener("tcp", "::", 22, "sshd"),
                listener("tcp", "0.0.0.0", 8080, "python3"),
                listener("tcp", "127.0.0.1", 25, "exim4"),
            ]),
            listeners_unparsed: vec![],
            listeners_error: None,
            block_driver: Some("virtio_blk".into()),
            net_drivers: vec!["virtio_net".into()],
            share: ShareObs {
                unavailable: None,
                mounted: true,
                error: None,
            },
            nproc: Some(vcpus),
            mem_total_kib: Some(mem * 1024 * 95 / 100),
            root_size: Some(root),
            macs: vec![mac.into()],
            addresses: vec!["ens3 10.0.2.15/24".into()],
            app_units: vec![],
            errors: vec![],
        }),
        health: Some(healthy()),
    }
}

fn restart(how: &str) -> RestartObs {
    RestartObs {
        how: how.into(),
        boot_id_before: Some("a".into()),
        boot_id_after: Some("b".into()),
        back_after_s: Some(40.0),
        error: None,
        health: Some(healthy()),
        app_units: vec![],
    }
}

const GIB: u64 = 1 << 30;

fn clean() -> Observations {
    Observations {
        accel: Some(ibkit_vm::AccelChoice {
            accel: ibkit_vm::Accel::Tcg,
            reason: "test".into(),
        }),
        health_spec: Some(HealthSpec {
            checks: vec![ibkit_api::HealthKind::PortHealth {
                host: "127.0.0.1".into(),
                port: 8080,
            }],
            timeout: std::time::Duration::from_secs(120),
        }),
        manifest_given: true,
        declared_ports: vec!["8080/tcp".into()],
        app_units: vec!["app.service".into()],
        first: Some(boot(
            "first boot",
            1,
            1024,
            2 * GIB,
            "fa:16:3e:00:00:01",
            "NoCloud",
            1_900_000_000,
        )),
        soft_reboot: Some(restart("systemctl reboot")),
        hard_reset: Some(restart("QMP system_reset")),
        flavor: Some(boot(
            "flavor boot",
            2,
            4096,
            4 * GIB,
            "fa:16:3e:00:00:02",
            "ConfigDrive",
            3_900_000_000,
        )),
        offline_fixed_mac: vec![],
        billing_spec: Some(billing_spec()),
        billing: Some(billing_watch(vec![
            push(PushScheme::Secure, 10_000, 200, Some(KEY1), None),
            push(PushScheme::Simple, 20_000, 200, None, None),
            push(PushScheme::Secure, 50_000, 200, Some(KEY3), None),
        ])),
    }
}

const KEY1: i64 = 1_000;
const KEY2: i64 = 16_000;
const KEY3: i64 = 31_000;

fn billing_spec() -> ibkit_rules::billing::BillingManifest {
    ibkit_rules::billing::BillingManifest::from_toml(
        &toml::from_str::<toml::Value>("params = [\"requests\"]").expect("toml"),
    )
    .expect("billing")
}

fn push(
    scheme: PushScheme,
    at: i64,
    status: u16,
    key_created_at: Option<i64>,
    error: Option<&str>,
) -> PushRecord {
    PushRecord {
        at,
        scheme,
        status,
        metrics: 1,
        counted: u32::from(status == 200),
        key_created_at,
        error: error.map(str::to_string),
    }
}

/// A 75 s watch with keys issued every 15 s, living 30 s.
fn billing_watch(pushes: Vec<PushRecord>) -> BillingObs {
    BillingObs {
        url: "https://10.0.2.100".into(),
        setup: Some(SetupRun {
            exit_code: Some(0),
            output_tail: String::new(),
        }),
        watched_s: 75.0,
        ended_at: 76_000,
        token_writes: 3,
        usage: Some(InstanceUsage {
            id: InstanceId::parse("0c943e02-dff0-4932-897c-a38dafe66930").expect("id"),
            params: vec![ParamUsage {
                param: "requests".into(),
                total: 3.0,
                count: 3,
                days: vec![],
                last_push_at: Some(50_000),
            }],
            pushes,
            keys: [KEY1, KEY2, KEY3]
                .into_iter()
                .map(|c| AccessKeyView {
                    created_at: c,
                    expires_at: c + 30_000,
                })
                .collect(),
        }),
        error: None,
    }
}

fn billing_verdict(o: &Observations) -> (Status, Vec<String>) {
    let c = ALL
        .iter()
        .find(|c| c.id == ibkit_rules::RuleId::APP_BILLING)
        .expect("APP-BILLING is live");
    let out = (c.check)(o);
    (
        out.status(),
        out.findings.iter().map(|f| f.message.clone()).collect(),
    )
}

#[test]
fn billing_without_postpaid_options_is_unknown() {
    let mut o = clean();
    o.billing_spec = None;
    o.billing = None;
    assert_eq!(
        not_passing(&o),
        vec![("APP-BILLING", Status::Unknown)],
        "only billing is unverified"
    );
    o.billing_spec = Some(ibkit_rules::billing::BillingManifest {
        params: vec![],
        ..billing_spec()
    });
    assert_eq!(billing_verdict(&o).0, Status::Unknown);
}

#[test]
fn a_refused_push_fails_billing_and_is_quoted() {
    let mut o = clean();
    let msg = "usages[0]: unknown param \"cpu\"; this instance bills [\"requests\"]";
    if let Some(u) = o.billing.as_mut().and_then(|b| b.usage.as_mut()) {
        u.pushes
            .push(push(PushScheme::Simple, 60_000, 400, None, Some(msg)));
    }
    let (status, findings) = billing_verdict(&o);
    assert_eq!(status, Status::Fail);
    assert_eq!(
        findings,
        [format!("a simple push was refused with HTTP 400: {msg}")]
    );
    assert_eq!(not_passing(&o), vec![("APP-BILLING", Status::Fail)]);
}

#[test]
fn pushes_that_never_follow_the_rotation_fail() {
    let mut o = clean();
    o.billing = Some(billing_watch(vec![
        push(PushScheme::Secure, 10_000, 200, Some(KEY1), None),
        push(PushScheme::Secure, 25_000, 200, Some(KEY1), None),
    ]));
    let (status, findings) = billing_verdict(&o);
    assert_eq!(status, Status::Fail);
    assert!(
        findings[0].contains("every accepted push used the first key"),
        "{findings:?}"
    );
    // Pushes with the expired key are refused: each kind quoted once, with
    // how often it happened.
    let expired = "the access key expired at …";
    let wrong = "the body does not decrypt";
    o.billing = Some(billing_watch(vec![
        push(PushScheme::Secure, 10_000, 200, Some(KEY1), None),
        push(PushScheme::Secure, 20_000, 403, None, Some(wrong)),
        push(PushScheme::Secure, 40_000, 401, Some(KEY1), Some(expired)),
        push(PushScheme::Secure, 50_000, 403, None, Some(wrong)),
        push(PushScheme::Secure, 60_000, 401, Some(KEY1), Some(expired)),
    ]));
    let (status, findings) = billing_verdict(&o);
    assert_eq!(status, Status::Fail);
    assert_eq!(
        findings[..2],
        [
            format!("a secure push was refused with HTTP 403 (2 times): {wrong}"),
            format!("a secure push was refused with HTTP 401 (2 times): {expired}"),
        ],
        "{findings:?}"
    );
}

#[test]
fn refusals_beyond_the_quoted_kinds_are_counted() {
    let mut o = clean();
    let mut pushes = vec![push(PushScheme::Simple, 1_000, 200, None, None)];
    for i in 0..8 {
        let reason = format!("usages[0]: unknown param \"p{i}\"");
        pushes.push(push(
            PushScheme::Simple,
            2_000 + i,
            400,
            None,
            Some(&reason),
        ));
        pushes.push(push(
            PushScheme::Simple,
            3_000 + i,
            400,
            None,
            Some(&reason),
        ));
    }
    o.billing = Some(billing_watch(pushes));
    let (status, findings) = billing_verdict(&o);
    assert_eq!(status, Status::Fail);
    assert_eq!(findings.len(), 6, "{findings:?}");
    assert_eq!(
        findings[5], "6 more pushes were refused, for other reasons",
        "three unquoted kinds, twice each"
    );
}

#[test]
fn no_push_or_a_failed_setup_fails() {
    let mut o = clean();
    o.billing = Some(billing_watch(vec![push(
        PushScheme::Decrypt,
        10_000,
        200,
        Some(KEY1),
        None,
    )]));
    let (status, findings) = billing_verdict(&o);
    assert_eq!(status, Status::Fail);
    assert!(
        findings[0].starts_with("no usage push was accepted in 75 s"),
        "{findings:?}"
    );
    if let Some(b) = o.billing.as_mut() {
        b.setup = Some(SetupRun {
            exit_code: Some(3),
            output_tail: "no such file".into(),
        });
    }
    let (status, findings) = billing_verdict(&o);
    assert_eq!(status, Status::Fail);
    assert_eq!(
        findings,
        ["the manifest's billing setup failed (exit 3): no such file"]
    );
    // The emulator itself failing is not the app's fault: unknown.
    o.billing = Some(BillingObs {
        error: Some("the billing emulator did not start: port".into()),
        ..BillingObs::default()
    });
    assert_eq!(billing_verdict(&o).0, Status::Unknown);
}

fn verdicts(o: &Observations) -> Vec<(&'static str, Status)> {
    ALL.iter()
        .map(|c| (c.id.as_str(), (c.check)(o).status()))
        .collect()
}

/// Statuses that differ from pass.
fn not_passing(o: &Observations) -> Vec<(&'static str, Status)> {
    verdicts(o)
        .into_iter()
        .filter(|(_, s)| *s != Status::Pass)
        .collect()
}

#[test]
fn clean_run_passes_every_rule() {
    assert_eq!(not_passing(&clean()), vec![]);
    assert!(ALL.iter().all(|c| ibkit_rules::rule_def(c.id).is_some()));
}

#[test]
fn app_not_enabled_fails_only_autostart() {
    let mut o = clean();
    for r in [o.soft_reboot.as_mut(), o.hard_reset.as_mut()]
        .into_iter()
        .flatten()
    {
        r.health = Some(unhealthy());
        r.app_units = vec![UnitState {
            unit: "app.service".into(),
            active: "inactive".into(),
            enabled: "disabled".into(),
        }];
    }
    assert_eq!(
        not_passing(&o),
        vec![
            ("APP-AUTOSTART-SOFT", Status::Fail),
            ("APP-AUTOSTART-HARD", Status::Fail)
        ]
    );
    let soft = (super::app_autostart_soft::check)(&o);
    assert!(
        soft.findings
            .iter()
            .any(|f| f.message.contains("app.service: inactive and disabled"))
    );
}

#[test]
fn console_not_on_serial() {
    let mut o = clean();
    for b in [o.first.as_mut(), o.flavor.as_mut()].into_iter().flatten() {
        b.serial.kernel_lines = 0;
        b.serial.linux_version = None;
        if let Some(g) = b.guest.as_mut() {
            g.cmdline = Some("ro console=tty0".into());
        }
    }
    assert_eq!(not_passing(&o), vec![("OS-CONSOLE-LOG", Status::Fail)]);
}

#[test]
fn last_console_wins() {
    let mut o = clean();
    if let Some(g) = o.first.as_mut().and_then(|b| b.guest.as_mut()) {
        g.cmdline = Some("console=ttyS0,115200 console=tty0".into());
    }
    let out = (super::os_console_log::check)(&o);
    assert_eq!(out.status(), Status::Fail);
    assert!(out.findings[0].message.contains("tty0"));
}

#[test]
fn extra_port_fails_app_ports_only() {
    let mut o = clean();
    if let Some(g) = o.first.as_mut().and_then(|b| b.guest.as_mut())
        && let Some(l) = g.listeners.as_mut()
    {
        l.push(listener("tcp", "0.0.0.0", 9090, "python3"));
    }
    assert_eq!(not_passing(&o), vec![("APP-PORTS", Status::Fail)]);
    // Without a manifest, an undeclared port is only a warning.
    o.manifest_given = false;
    o.declared_ports.clear();
    assert_eq!((super::app_ports::check)(&o).status(), Status::Warn);
}

#[test]
fn fixed_mac_fails_network_rules_and_leaves_the_rest_unknown() {
    let mut o = clean();
    o.offline_fixed_mac = vec!["MAC pinned (/etc/udev/rules.d/70-persistent-net.rules:1)".into()];
    for b in [o.first.as_mut(), o.flavor.as_mut()].into_iter().flatten() {
        b.network = NetObs::default();
        b.banner = None;
        b.guest = None;
        b.health = None;
        b.ssh_error = Some("the guest sent nothing on its NIC".into());
    }
    o.soft_reboot = None;
    o.hard_reset = None;
    let v = verdicts(&o);
    let get = |id: &str| v.iter().find(|(i, _)| *i == id).map(|(_, s)| *s);
    assert_eq!(get("OS-NO-FIXED-MAC"), Some(Status::Fail));
    assert_eq!(get("APP-NET"), Some(Status::Fail));
    assert_eq!(get("OS-CONSOLE-LOG"), Some(Status::Pass));
    for id in [
        "APP-KVM",
        "APP-NOPASS",
        "APP-PORTS",
        "APP-FLAVOR",
        "APP-AUTOSTART-SOFT",
        "APP-AUTOSTART-HARD",
        "IMG-CLOUDINIT",
        "OS-SSHD",
        "KERNEL-VIRTIO",
    ] {
        assert_eq!(get(id), Some(Status::Unknown), "{id}");
    }
    let mac = (super::os_no_fixed_mac::check)(&o);
    assert!(
        mac.findings
            .iter()
            .any(|f| f.message.contains("70-persistent-net"))
    );
}

#[test]
fn root_password_fails_nopass_only() {
    let mut o = clean();
    if let Some(g) = o.first.as_mut().and_then(|b| b.guest.as_mut()) {
        g.shadow = Some(ShadowSummary {
            with_password: vec!["root".into()],
            replaced: vec![],
            issues: vec![ShadowIssue {
                user: "root".into(),
                kind: "well-known".into(),
                detail: "usable SHA-512 crypt ($6$) hash of a well-known password (t**r)".into(),
                redacted: Some("t**r".into()),
            }],
        });
    }
    assert_eq!(not_passing(&o), vec![("APP-NOPASS", Status::Fail)]);
}

/// The image's own (not well-known) root password survives first boot:
/// a default password although no guess logs in (the case `check` failed
/// and `boot-test` used to pass).
#[test]
fn preset_password_kept_after_first_boot_fails_nopass_even_when_ssh_refuses() {
    let mut o = clean();
    if let Some(g) = o.first.as_mut().and_then(|b| b.guest.as_mut()) {
        g.shadow = Some(crate::guest::judge_shadow(
            "root:xyttPwF8l4IQg:19000:0:99999:7:::\n",
            &crate::guest::shadow_hashes("root:xyttPwF8l4IQg:1::::::\n"),
        ));
    }
    assert_eq!(not_passing(&o), vec![("APP-NOPASS", Status::Fail)]);
    let r = (super::app_nopass::check)(&o);
    assert!(
        r.findings.iter().any(|f| f.kind == "default-password"),
        "{:#?}",
        r.findings
    );
    // Replaced at first boot (a different hash): passes.
    let mut o = clean();
    if let Some(g) = o.first.as_mut().and_then(|b| b.guest.as_mut()) {
        g.shadow = Some(crate::guest::judge_shadow(
            "root:xyttPwF8l4IQg:19000:0:99999:7:::\n",
            &crate::guest::shadow_hashes("root:!:1::::::\n"),
        ));
    }
    assert!(not_passing(&o).is_empty(), "{:?}", not_passing(&o));
}

#[test]
fn root_not_grown_and_missing_memory_fail_flavor() {
    let mut o = clean();
    if let Some(g) = o.flavor.as_mut().and_then(|b| b.guest.as_mut()) {
        g.root_size = Some(1_900_000_000);
        g.mem_total_kib = Some(1024 * 1024);
    }
    let out = (super::app_flavor::check)(&o);
    assert_eq!(out.status(), Status::Fail);
    assert_eq!(out.findings.len(), 2);
}

#[test]
fn cloud_init_errors_and_config_drive_ignored() {
    let mut o = clean();
    if let Some(ci) = o
        .flavor
        .as_mut()
        .and_then(|b| b.guest.as_mut())
        .and_then(|g| g.cloud_init.as_mut())
    {
        ci.errors = vec!["('ssh', KeyError('x'))".into()];
        ci.datasource = Some("DataSourceNone".into());
    }
    assert_eq!(
        not_passing(&o),
        vec![("APP-NET", Status::Fail), ("IMG-CLOUDINIT", Status::Fail)]
    );
}

#[test]
fn no_health_spec_leaves_app_rules_unknown() {
    let mut o = clean();
    o.health_spec = None;
    let v = not_passing(&o);
    assert!(v.contains(&("APP-KVM", Status::Unknown)), "{v:?}");
    assert!(
        v.contains(&("APP-AUTOSTART-SOFT", Status::Unknown)),
        "{v:?}"
    );
}

#[test]
fn reboot_that_did_not_happen_is_caught() {
    let mut o = clean();
    if let Some(r) = o.soft_reboot.as_mut() {
        r.boot_id_after = r.boot_id_before.clone();
    }
    let out = (super::app_autostart_soft::check)(&o);
    assert_eq!(out.status(), Status::Fail);
    assert!(out.findings[0].message.contains("boot_id"));
}

#[test]
fn virtiofs_unavailable_is_a_warning_and_mount_failure_a_failure() {
    let mut o = clean();
    if let Some(g) = o.first.as_mut().and_then(|b| b.guest.as_mut()) {
        g.share = ShareObs {
            unavailable: Some("virtiofsd not found".into()),
            ..Default::default()
        };
    }
    assert_eq!((super::kernel_virtio::check)(&o).status(), Status::Warn);
    if let Some(g) = o.first.as_mut().and_then(|b| b.guest.as_mut()) {
        g.share = ShareObs {
            error: Some("mount: unknown filesystem type 'virtiofs'".into()),
            ..Default::default()
        };
    }
    assert_eq!((super::kernel_virtio::check)(&o).status(), Status::Fail);
}

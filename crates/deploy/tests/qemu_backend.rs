//! The QEMU backend with real VMs (TCG): two VMs of one instance on the
//! private bridge reach each other and a service on the host, survive the
//! backend value (re-adoption from the state directory), and one dead VM is
//! recreated with a new MAC and the same IP while the other keeps running.
//!
//! Needs root (bridge, taps, dnsmasq) and the Debian 12 test image
//! (`IBKIT_DEBIAN_QCOW2`, else the first line of
//! `scripts/build-debian-image.sh`). Not root: the test fails and says so.
//! The user data is the real deploy user data ([`render_user_data`]): its
//! agent bootstrap downloads `install.sh` from the fake service on the
//! bridge address, and a vendor cloud-config adds the test's SSH user.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ibkit_deploy::backend::{ComputeBackend, InstanceRef, VmRequest, VmState};
use ibkit_deploy::manifest::{Flavor, HostDef, UserDataSpec};
use ibkit_deploy::qemu_backend::{NetworkConfig, QemuBackend, force_cleanup};
use ibkit_deploy::{AgentBootstrap, Secret, render_user_data};
use ibkit_test_utils::{CountingService, Phase, is_root, link_exists};
use ibkit_vm::ssh::{self, SshKey, SshSession};

const BRIDGE: &str = "ibkbrtest";

fn debian_image() -> PathBuf {
    let [qcow2, _, _] = ibkit_test_utils::debian_images().expect("the Debian 12 test image");
    qcow2
}

fn boot_timeout() -> Duration {
    Duration::from_secs(
        std::env::var("IBKIT_BOOT_TIMEOUT_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(600),
    )
}

/// Cleans up whatever the test left, also when it fails: every process
/// naming the state directory (QEMU, dnsmasq), the taps of its VMs, the
/// bridge. The state directory is kept after a failure (for a look).
struct Guard {
    state: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        force_cleanup(&self.state, BRIDGE);
        if std::thread::panicking() {
            eprintln!("[qemu backend test] state kept in {}", self.state.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.state);
        }
    }
}

/// A tiny HTTP server on the bridge address: `/v1/agent/install.sh` is a
/// script recording its arguments in the guest, anything else says ok.
fn serve(listener: TcpListener) {
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = stream;
                let mut line = String::new();
                let mut r = BufReader::new(s.try_clone().expect("clone"));
                if r.read_line(&mut line).is_err() {
                    return;
                }
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                }
                let body = if line.contains("/v1/agent/install.sh") {
                    "#!/bin/sh\necho \"$@\" > /run/ibkit-test-installed\n".to_string()
                } else {
                    "ibkit-backend-test-ok\n".to_string()
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
}

async fn exec(s: &SshSession, cmd: &str) -> String {
    let out = s
        .exec(cmd, Duration::from_secs(300))
        .await
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.success(),
        "{cmd}: exit {:?}\nstdout: {}\nstderr: {}",
        out.exit_status,
        out.stdout_text(),
        out.stderr_text()
    );
    out.stdout_text()
}

fn ipv4(a: &[IpAddr]) -> Ipv4Addr {
    match a.first() {
        Some(IpAddr::V4(v)) => *v,
        other => panic!("no IPv4 address: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_vms_on_a_bridge_readopted_and_one_recreated() {
    assert!(
        is_root(),
        "this test needs root (Linux bridge, tap devices, dnsmasq); run it as root"
    );
    let mut t = Phase::new("qemu backend test");
    let image = debian_image();
    assert!(image.is_file(), "image {} missing", image.display());
    // Short: QMP socket paths must stay under 108 bytes.
    let state = PathBuf::from(format!("/tmp/ibkd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let guard = Guard {
        state: state.clone(),
    };
    assert!(
        !link_exists(BRIDGE),
        "bridge {BRIDGE} exists already (left over?)"
    );
    let net = NetworkConfig {
        bridge: BRIDGE.into(),
        ..NetworkConfig::default()
    };
    let host_ip = net.host_addr;
    let backend = QemuBackend::new(&state, net.clone()).expect("backend");
    backend.ensure_network().await.expect("network");
    let dnsmasq = backend.dnsmasq_pid().expect("dnsmasq runs");
    let listener = TcpListener::bind((host_ip, 0)).expect("listen on the bridge address");
    let port = listener.local_addr().expect("addr").port();
    serve(listener);
    t.done(&format!(
        "bridge {BRIDGE}, dnsmasq {dnsmasq}, service on {host_ip}:{port}"
    ));

    let instance = InstanceRef {
        id: uuid::Uuid::new_v4(),
        name: "bt".into(),
    };
    let key = SshKey::generate().expect("key");
    let vendor = format!(
        "#cloud-config\nusers:\n  - name: ibkit\n    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n    lock_passwd: true\n    shell: /bin/bash\n    ssh_authorized_keys:\n      - \"{}\"\n",
        key.public_openssh()
    );
    let request = |host: &str, attempt: u32| {
        let def = HostDef {
            name: host.into(),
            image: image.display().to_string(),
            flavor: Flavor::default(),
            os_flavor: None,
            ports: Vec::new(),
            user_data: UserDataSpec {
                cloud_config: Some(vendor.clone()),
                ..UserDataSpec::default()
            },
        };
        let boot = AgentBootstrap {
            service_url: format!("http://{host_ip}:{port}"),
            cert_sha256_hex: String::new(),
            curl_pin: String::new(),
            instance_id: instance.id,
            host: host.into(),
            pairing_key: Secret::new(format!("ibkp_test-{host}-{attempt}")),
        };
        VmRequest {
            instance: instance.clone(),
            host: host.into(),
            image: image.display().to_string(),
            flavor: def.flavor,
            os_flavor: None,
            ports: Vec::new(),
            user_data: render_user_data(&def, &boot).expect("user data"),
            service_url: boot.service_url.clone(),
            config_hash: def.config_hash(),
            attempt,
        }
    };

    let (a, b) = tokio::join!(
        backend.create_vm(request("a", 1)),
        backend.create_vm(request("b", 1))
    );
    let (a, b) = (a.expect("create a"), b.expect("create b"));
    let (a_ip, b_ip) = (ipv4(&a.addresses), ipv4(&b.addresses));
    assert_ne!(a_ip, b_ip);
    assert_eq!(a.id, "bt.a-a1");
    let a_dir = backend.vm_dir(&a.id).expect("dir");
    let b_dir = backend.vm_dir(&b.id).expect("dir");
    for f in [
        "overlay.qcow2",
        "seed.img",
        "serial.log",
        "qmp.sock",
        "qemu.pid",
        "vm.json",
    ] {
        assert!(a_dir.join(f).exists(), "{f} in {}", a_dir.display());
    }
    let a_pid = ibkit_vm::detached_qemu_pid(&a_dir).expect("a runs");
    let b_pid = ibkit_vm::detached_qemu_pid(&b_dir).expect("b runs");
    let b1 = backend.record(&b.id).expect("b record");
    let vm_json = std::fs::read_to_string(a_dir.join("vm.json")).expect("vm.json");
    assert!(!vm_json.contains("ibkp_test"), "no user data in vm.json");
    t.done(&format!(
        "created a ({a_ip}, pid {a_pid}) and b ({b_ip}, pid {b_pid})"
    ));

    let (sa, sb) = tokio::join!(
        ssh::wait_for_ssh(
            SocketAddr::new(a_ip.into(), 22),
            "ibkit",
            &key,
            boot_timeout()
        ),
        ssh::wait_for_ssh(
            SocketAddr::new(b_ip.into(), 22),
            "ibkit",
            &key,
            boot_timeout()
        )
    );
    let (sa, sb) = (sa.expect("ssh a"), sb.expect("ssh b"));
    t.done("SSH to both fixed addresses over the bridge");

    let leases = std::fs::read_to_string(state.join("dnsmasq.leases")).unwrap_or_default();
    assert!(
        leases.contains(&format!("{} {b_ip}", b1.mac)),
        "lease of b: {leases}"
    );
    assert!(exec(&sb, "hostname").await.trim() == "b");
    let status = exec(
        &sa,
        "cloud-init status --wait >/dev/null; cloud-init status",
    )
    .await;
    assert!(status.contains("done"), "{status}");
    let installed = exec(&sa, "sudo cat /run/ibkit-test-installed").await;
    assert!(
        installed.contains("--host a") && installed.contains(&instance.id.to_string()),
        "the deploy bootstrap ran install.sh from the service: {installed}"
    );
    let got = exec(&sa, &format!("curl -fsS http://{host_ip}:{port}/")).await;
    assert_eq!(got.trim(), "ibkit-backend-test-ok");
    let banner = exec(
        &sa,
        &format!("timeout 20 bash -c 'exec 3<>/dev/tcp/{b_ip}/22; head -c 7 <&3'"),
    )
    .await;
    assert_eq!(banner, "SSH-2.0", "a reaches b's port 22");
    let addr = exec(&sa, "ip -4 -o addr show scope global").await;
    assert!(addr.contains(&format!("{a_ip}/24")), "{addr}");
    // The firewall: the service's port answers (above); another service on
    // the bridge address is out of the VMs' reach.
    let hidden = CountingService::start(host_ip.into());
    let hidden_port = hidden.port;
    let tried = exec(
        &sa,
        &format!(
            "timeout 10 bash -c 'exec 3<>/dev/tcp/{host_ip}/{hidden_port}' && echo reached || echo blocked"
        ),
    )
    .await;
    assert_eq!(tried.trim(), "blocked", "a reached {host_ip}:{hidden_port}");
    assert_eq!(
        hidden.accepted(),
        0,
        "a connection reached the hidden host service"
    );
    let table = std::process::Command::new("nft")
        .args(["list", "table", "inet", &format!("ibkit_{BRIDGE}")])
        .output()
        .expect("nft list");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains(&format!("elements = {{ {port} }}")),
        "{table}"
    );
    sa.close().await;
    sb.close().await;
    t.done("a reached the service (deploy bootstrap + curl) and b");

    drop(backend);
    let backend = QemuBackend::new(&state, net.clone()).expect("backend again");
    let listed = backend.list(&instance).await.expect("list");
    let states: Vec<(String, VmState, u32)> = listed
        .iter()
        .map(|v| (v.handle.id.clone(), v.state, v.attempt))
        .collect();
    assert_eq!(
        states,
        vec![
            ("bt.a-a1".to_string(), VmState::Running, 1),
            ("bt.b-a1".to_string(), VmState::Running, 1)
        ]
    );
    assert_eq!(listed[1].handle.addresses, vec![IpAddr::V4(b_ip)]);
    let other = InstanceRef {
        id: uuid::Uuid::new_v4(),
        name: "bt".into(),
    };
    assert!(backend.list(&other).await.expect("list").is_empty());
    t.done("a new backend value re-adopted both VMs");

    ibkit_vm::procs::sigkill(b_pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ibkit_vm::procs::is_alive(b_pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(backend.vm_state(&b.id).await.ok(), Some(VmState::Stopped));
    let evidence = backend.delete_vm(&b.id, true).await.expect("delete b");
    assert_eq!(backend.vm_state(&b.id).await.ok(), Some(VmState::Missing));
    let names: Vec<String> = evidence
        .paths
        .iter()
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(names.contains(&"serial.log".to_string()), "{names:?}");
    assert!(names.contains(&"overlay.qcow2".to_string()), "{names:?}");
    for p in &evidence.paths {
        assert!(p.exists(), "{}", p.display());
        assert!(p.starts_with(state.join("evidence/bt")), "{}", p.display());
    }
    let serial = evidence
        .paths
        .iter()
        .find(|p| p.ends_with("serial.log"))
        .expect("serial");
    let text = String::from_utf8_lossy(&std::fs::read(serial).expect("serial")).into_owned();
    assert!(
        text.contains("Linux version"),
        "kernel messages in the serial log"
    );
    assert!(
        !serial.parent().expect("dir").join("seed.img").exists(),
        "the seed (pairing key) is not kept"
    );
    assert!(!link_exists(&b1.tap), "b's tap removed");
    t.done("b killed: Stopped, deleted with evidence");

    let b2 = backend
        .create_vm(request("b", 2))
        .await
        .expect("recreate b");
    assert_eq!(b2.id, "bt.b-a2");
    assert_eq!(ipv4(&b2.addresses), b_ip, "same IP");
    let b2rec = backend.record(&b2.id).expect("record");
    assert_ne!(b2rec.mac, b1.mac, "new MAC");
    let hosts = std::fs::read_to_string(state.join("dnsmasq.hosts")).expect("hosts");
    assert!(hosts.contains(&format!("{},{b_ip}", b2rec.mac)), "{hosts}");
    assert!(!hosts.contains(&b1.mac.to_string()), "{hosts}");
    let sb2 = ssh::wait_for_ssh(
        SocketAddr::new(b_ip.into(), 22),
        "ibkit",
        &key,
        boot_timeout(),
    )
    .await
    .expect("ssh b2");
    let iid = exec(&sb2, "cat /var/lib/cloud/data/instance-id").await;
    assert_eq!(iid.trim(), "bt.b-a2");
    sb2.close().await;
    let sa = ssh::wait_for_ssh(
        SocketAddr::new(a_ip.into(), 22),
        "ibkit",
        &key,
        boot_timeout(),
    )
    .await
    .expect("ssh a again");
    let banner = exec(
        &sa,
        &format!("timeout 20 bash -c 'exec 3<>/dev/tcp/{b_ip}/22; head -c 7 <&3'"),
    )
    .await;
    assert_eq!(banner, "SSH-2.0", "a reaches the new b");
    sa.close().await;
    assert_eq!(
        ibkit_vm::detached_qemu_pid(&a_dir),
        Some(a_pid),
        "a untouched"
    );
    t.done("b recreated: new MAC, same IP, reachable from a");

    let err = backend.teardown_network().await.expect_err("VMs left");
    assert!(err.to_string().contains("VM(s) left"), "{err}");
    for v in backend.list(&instance).await.expect("list") {
        let ev = backend
            .delete_vm(&v.handle.id, false)
            .await
            .expect("delete");
        assert!(ev.paths.is_empty());
    }
    assert!(!ibkit_vm::procs::is_alive(a_pid));
    // dnsmasq was restarted when b's old lease had to go.
    let dnsmasq = backend.dnsmasq_pid().expect("dnsmasq still runs");
    backend.teardown_network().await.expect("teardown");
    assert_eq!(backend.dnsmasq_pid(), None);
    assert!(!link_exists(BRIDGE), "bridge removed");
    let tables = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft list tables");
    assert!(
        !String::from_utf8_lossy(&tables.stdout).contains(&format!("ibkit_{BRIDGE}")),
        "firewall table removed"
    );
    assert!(!ibkit_vm::procs::is_alive(dnsmasq), "dnsmasq stopped");
    let left = ibkit_vm::procs::pids_naming(&state.display().to_string());
    assert!(left.is_empty(), "processes left: {left:?}");
    for r in [&b1, &b2rec] {
        assert!(!link_exists(&r.tap), "tap {} removed", r.tap);
    }
    t.done("deleted everything, network torn down");
    drop(guard);
}

// ---- the image gate and the state's modes (no root, no VM booted) --------

use ibkit_test_utils::qemu_img;

fn plain_request(image: &std::path::Path, host: &str) -> VmRequest {
    VmRequest {
        instance: InstanceRef {
            id: uuid::Uuid::new_v4(),
            name: "gate".into(),
        },
        host: host.into(),
        image: image.display().to_string(),
        flavor: Flavor::default(),
        os_flavor: None,
        ports: Vec::new(),
        user_data: b"#cloud-config\n# pairing key: ibkp_secret\n".to_vec(),
        service_url: "https://10.77.0.1:8443".into(),
        config_hash: "h".into(),
        attempt: 1,
    }
}

/// Reproduces "deploy never applies ibkit's backing-file policy": a qcow2
/// whose header names a host file (a secret elsewhere, `/dev/null`) or an
/// external data file was given to QEMU as the VM's disk. `create_vm` must
/// refuse it, naming the file, before the network or the state directory
/// is touched.
#[tokio::test]
async fn create_vm_refuses_an_image_naming_a_host_file() {
    const GATE_BRIDGE: &str = "ibkbrgate";
    let images = tempfile::tempdir().expect("tmp");
    let elsewhere = tempfile::tempdir().expect("tmp");
    let secret = elsewhere.path().join("key.pem");
    std::fs::write(&secret, "-----BEGIN PRIVATE KEY-----\n").expect("secret");
    let state = tempfile::tempdir().expect("tmp");
    // Should the gate let one through, nothing is left behind (not `Guard`:
    // it removes the other test's bridge).
    struct GateGuard(PathBuf);
    impl Drop for GateGuard {
        fn drop(&mut self) {
            force_cleanup(&self.0, GATE_BRIDGE);
        }
    }
    let _guard = GateGuard(state.path().join("s"));
    let net = NetworkConfig {
        bridge: GATE_BRIDGE.into(),
        ..NetworkConfig::default()
    };
    let backend = QemuBackend::new(state.path().join("s"), net).expect("backend");
    let data = images.path().join("data.raw");
    let cases: Vec<(String, Vec<String>, String)> = vec![
        (
            "abs.qcow2".into(),
            ["-F", "raw", "-b", secret.to_str().expect("utf-8")]
                .map(String::from)
                .to_vec(),
            secret.display().to_string(),
        ),
        (
            "null.qcow2".into(),
            ["-F", "raw", "-b", "/dev/null"].map(String::from).to_vec(),
            "/dev/null".into(),
        ),
        (
            "data.qcow2".into(),
            vec!["-o".into(), format!("data_file={}", data.display())],
            data.display().to_string(),
        ),
    ];
    for (name, opts, named) in cases {
        let top = images.path().join(&name);
        let mut args = vec!["create", "-q", "-u", "-f", "qcow2"];
        args.extend(opts.iter().map(String::as_str));
        args.extend([top.to_str().expect("utf-8"), "16M"]);
        qemu_img(&args);
        let err = backend
            .create_vm(plain_request(&top, "web"))
            .await
            .expect_err("refused");
        let text = err.to_string();
        assert!(
            matches!(err, ibkit_deploy::backend::BackendError::Image { .. }),
            "{name}: {text}"
        );
        assert!(text.contains(&named), "{name}: {text}");
        assert!(!link_exists(GATE_BRIDGE), "{name}: network set up");
        assert_eq!(backend.dnsmasq_pid(), None);
        assert!(!state.path().join("s/vms").exists(), "{name}: VM directory");
    }
}

/// Reproduces "seed.img and overlay.qcow2 are 0644": with a umask of 0 the
/// state directory and everything deploy writes for a VM (the seed holds
/// the pairing key, the overlay the guest's disk) must still have no group
/// or other bits.
#[tokio::test]
async fn vm_files_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let images = tempfile::tempdir().expect("tmp");
    let image = images.path().join("disk.raw");
    std::fs::write(&image, vec![0u8; 8 << 20]).expect("image");
    let state = tempfile::tempdir().expect("tmp");
    let root = state.path().join("s");
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let result = async {
        let backend = QemuBackend::new(&root, NetworkConfig::default())?;
        backend.write_disks(&plain_request(&image, "web")).await
    }
    .await;
    nix::sys::stat::umask(old);
    let dir = result.expect("disks written");
    for f in ["seed.img", "overlay.qcow2"] {
        assert!(dir.join(f).is_file(), "{f} written");
    }
    let mut seen = 0;
    let mut stack = vec![root.clone()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).expect("stat");
        let mode = meta.permissions().mode() & 0o7777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", p.display());
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}", p.display());
            stack.extend(
                std::fs::read_dir(&p)
                    .expect("read_dir")
                    .map(|e| e.expect("entry").path()),
            );
        }
        seen += 1;
    }
    // s, vms, gate, web-a1, seed.img, overlay.qcow2 at least.
    assert!(seen >= 6, "walked {seen} entries");
}

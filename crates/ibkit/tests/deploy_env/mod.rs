#![allow(dead_code)] // each test binary uses part of the harness
//! The harness of the tests that deploy on QEMU (`deploy.rs`,
//! `package_deploy.rs`): a service, a deploy state directory and a bridge
//! of their own, cleaned up on drop (kept for a look after a failure).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use ibkit_deploy::qemu_backend::force_cleanup;
use serde_json::Value;

use crate::serve::{Service, ibkit_in, run_until, wait_every};

pub fn debian_image() -> PathBuf {
    let [qcow2, _, _] = ibkit_test_utils::debian_images().expect("the Debian 12 test image");
    qcow2
}

/// A service, a deploy state directory and a bridge of their own; whatever
/// is left (QEMU, dnsmasq, taps, bridge) is removed on drop, also
/// after a failure (the state directory is then kept for a look).
/// The host's address on the test network (`10.78.0.1/24` → `10.78.0.1`).
pub fn bridge_ip(network: &str) -> String {
    network.split('/').next().unwrap_or(network).to_string()
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub service: Service,
    pub bridge: &'static str,
    pub network: &'static str,
}

impl Env {
    pub fn new(bridge: &'static str, network: &'static str) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("ibkit-deploy-test")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        // The service listens on every address (VMs reach it on the
        // bridge); its public URL is the loopback one.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let service = Service::spawn(
            &dir.path().join("serve"),
            &format!("0.0.0.0:{port}"),
            vec![
                "--public-url".into(),
                format!("https://127.0.0.1:{port}"),
                "--monitor-interval".into(),
                "2s".into(),
                // The example image's billing client checks the name the
                // VMs use; keys rotate within a test (every 10 s).
                "--tls-san".into(),
                bridge_ip(network),
                "--billing-key-ttl".into(),
                "20s".into(),
                // Recovery inside the service (as `ibkit deploy watch`).
                "--recover-deployments".into(),
                dir.path().join("deploy").display().to_string(),
                "--bridge".into(),
                bridge.into(),
                "--network".into(),
                network.into(),
            ],
        );
        Env {
            dir,
            service,
            bridge,
            network,
        }
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("deploy")
    }

    /// The service as the VMs reach it: the bridge's address.
    pub fn guest_service_url(&self) -> String {
        format!(
            "https://{}:{}",
            bridge_ip(self.network),
            self.service.addr.port()
        )
    }

    pub fn command(&self, args: &[&str]) -> Command {
        self.command_of("deploy", args)
    }

    /// `ibkit SUBCOMMAND ARGS` with this environment's state, service and
    /// network (`deploy`, or `package` whose deploy commands share them).
    pub fn command_of(&self, subcommand: &str, args: &[&str]) -> Command {
        let mut cmd = ibkit_in(self.dir.path(), subcommand, args);
        cmd.args(["--bridge", self.bridge, "--network", self.network]);
        cmd
    }

    /// Runs `ibkit deploy ARGS`, stderr (progress) passed through; killed
    /// after `timeout`.
    pub fn run(&self, args: &[&str], timeout: Duration) -> Output {
        run_until(
            self.command(args),
            &format!("ibkit deploy {args:?}"),
            timeout,
            Duration::from_millis(200),
            || {},
        )
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args, Duration::from_secs(120));
        assert!(
            out.status.success(),
            "ibkit deploy {args:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).expect("JSON on stdout")
    }

    pub fn status(&self, name: &str) -> Value {
        self.json(&["status", name, "--format", "json"])
    }

    /// A manifest directory: the manifest and `debian12.qcow2` linked to
    /// the test image.
    pub fn manifest(&self, file: &str, text: &str) -> PathBuf {
        let dir = self.dir.path().join("manifests");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let link = dir.join("debian12.qcow2");
        if !link.exists() {
            std::os::unix::fs::symlink(debian_image(), &link).expect("symlink");
        }
        let path = dir.join(file);
        std::fs::write(&path, text).expect("manifest");
        path
    }

    pub fn qemu_pid(&self, instance: &str, vm: &str) -> Option<u32> {
        let pidfile = self
            .state()
            .join("qemu/vms")
            .join(instance)
            .join(vm)
            .join("qemu.pid");
        let pid: u32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
        ibkit_vm::procs::is_alive(pid).then_some(pid)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // The service and the recovery rounds name the directory too.
        for pid in ibkit_vm::procs::pids_naming(&self.dir.path().display().to_string()) {
            ibkit_vm::procs::sigkill(pid);
        }
        force_cleanup(&self.state().join("qemu"), self.bridge);
        if std::thread::panicking() {
            eprintln!("[deploy test] state kept in {}", self.dir.path().display());
            self.dir.disable_cleanup(true);
        }
    }
}

pub fn outputs(env: &Env, name: &str) -> Value {
    env.json(&["outputs", name, "--format", "json", "--show-sensitive"])
}

/// Waits until the deployment is `running` again after its `n`-th
/// recovery; returns its status.
pub fn wait_recovered(env: &Env, name: &str, n: usize, what: &str) -> Value {
    wait_every(
        what,
        Duration::from_secs(1200),
        Duration::from_secs(3),
        || {
            let s = env.status(name);
            let done = s["status"] == "running"
                && s["recoveries"]
                    .as_array()
                    .is_some_and(|r| r.len() == n && r[n - 1]["recovered_ms"].is_u64());
            done.then_some(s)
        },
    )
}

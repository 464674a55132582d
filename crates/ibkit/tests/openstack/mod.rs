//! Harness for `ibkit deploy --backend openstack` tests against the
//! all-in-one OpenStack of `scripts/openstack-aio.sh`: the cloud as its
//! admin sees it, a real `ibkit serve`, and, with Nova's fake driver (which
//! boots nothing), the guests played on this machine: for each ACTIVE
//! server the user data is read back as the cloud's admin (what the
//! guest's config drive holds), its agent bootstrap part runs as cloud-init
//! would (downloading and pairing the real agent from the service) and that
//! agent is started.
//!
//! Needs `IBKIT_OPENSTACK_CLOUDS`: the clouds.yaml that
//! `scripts/openstack-aio.sh start` prints (scripts/test.sh sets it).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use base64::Engine as _;
use ibkit_deploy::openstack::api::Service as Api;
use ibkit_deploy::openstack::{CloudApi, ConfigSources, load_cloud};
use reqwest::Method;
use serde_json::Value;

use crate::serve::{Service, ibkit_in, run_until};

pub const USER_CLOUD: &str = "ibkit-aio";
pub const ADMIN_CLOUD: &str = "ibkit-aio-admin";

pub fn clouds_file() -> PathBuf {
    let path = std::env::var_os("IBKIT_OPENSTACK_CLOUDS")
        .map(PathBuf::from)
        .expect(
            "IBKIT_OPENSTACK_CLOUDS: the clouds.yaml of a running all-in-one OpenStack \
         (`scripts/openstack-aio.sh start` prints it)",
        );
    assert!(path.is_file(), "{} is not a file", path.display());
    path
}

/// The cloud as its admin sees it (every project's servers, user data).
pub struct Cloud {
    rt: tokio::runtime::Runtime,
    admin: CloudApi,
    user: CloudApi,
}

impl Cloud {
    pub fn new() -> Cloud {
        let sources = ConfigSources {
            env: BTreeMap::from([(
                "OS_CLIENT_CONFIG_FILE".to_string(),
                clouds_file().display().to_string(),
            )]),
            cwd: std::env::temp_dir(),
            home: None,
        };
        let api = |name| {
            CloudApi::new(load_cloud(Some(name), &sources).expect("cloud config")).expect("api")
        };
        Cloud {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            admin: api(ADMIN_CLOUD),
            user: api(USER_CLOUD),
        }
    }

    pub fn call(
        &self,
        as_admin: bool,
        service: Api,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        let api = if as_admin { &self.admin } else { &self.user };
        self.rt
            .block_on(api.call(service, method, path, body.as_ref()))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or(Value::Null)
    }

    /// A read as the admin; retried twice (a read racing a server that
    /// `kill -9` left half-built once got an error answer), then the
    /// cloud's error is the panic.
    pub fn get(&self, service: Api, path: &str) -> Value {
        let mut last = String::new();
        for _ in 0..3 {
            match self
                .rt
                .block_on(self.admin.call(service, Method::GET, path, None))
            {
                Ok(v) => return v.unwrap_or(Value::Null),
                Err(e) => {
                    eprintln!("[openstack test] GET {path}: {e}; retrying");
                    last = e.to_string();
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        panic!("GET {path}: {last}")
    }

    /// Every server of a deployment (any project).
    pub fn servers(&self, deployment: &str) -> Vec<Value> {
        let all = self.get(Api::Compute, "/servers/detail?all_tenants=1");
        all["servers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s["metadata"]["ibkit-deployment"] == deployment)
            .collect()
    }

    /// Neutron resources and Glance images tagged with the instance: (kind,
    /// name, id).
    pub fn tagged(&self, instance: &str) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for (path, kind) in [
            ("floatingips", "floatingips"),
            ("ports", "ports"),
            ("security-groups", "security_groups"),
            ("routers", "routers"),
            ("subnets", "subnets"),
            ("networks", "networks"),
        ] {
            let v = self.get(
                Api::Network,
                &format!("/{path}?tags=ibkit-instance%3A{instance}"),
            );
            for r in v[kind].as_array().cloned().unwrap_or_default() {
                out.push((
                    kind.to_string(),
                    r["name"].as_str().unwrap_or("").to_string(),
                    r["id"].as_str().unwrap_or("").to_string(),
                ));
            }
        }
        let images = self.get(
            Api::Image,
            &format!("/images?tag=ibkit-instance%3A{instance}"),
        );
        for r in images["images"].as_array().cloned().unwrap_or_default() {
            out.push((
                "images".to_string(),
                r["name"].as_str().unwrap_or("").to_string(),
                r["id"].as_str().unwrap_or("").to_string(),
            ));
        }
        out
    }

    /// The server's user data; `None` once the server is gone (a `down`
    /// or `gc` deleted it after it was listed: the guest player races them).
    pub fn user_data(&self, server_id: &str) -> Option<Vec<u8>> {
        let path = format!("/servers/{server_id}");
        let s = match self
            .rt
            .block_on(self.admin.call(Api::Compute, Method::GET, &path, None))
        {
            Ok(v) => v.unwrap_or(Value::Null),
            Err(e) if e.to_string().contains("HTTP 404") => return None,
            Err(_) => self.get(Api::Compute, &path),
        };
        let b64 = s["server"]["OS-EXT-SRV-ATTR:user_data"]
            .as_str()
            .expect("the admin reads the user data back (microversion >= 2.3)");
        Some(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("base64 user data"),
        )
    }
}

/// The agent bootstrap part of a MIME multipart user data.
pub fn bootstrap_part(user_data: &[u8]) -> String {
    let text = String::from_utf8(user_data.to_vec()).expect("utf-8 user data");
    let boundary = text
        .split_once("boundary=\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(b, _)| b.to_string())
        .expect("a multipart boundary");
    text.split(&format!("--{boundary}"))
        .find(|part| part.contains("filename=\"ibkit-agent-bootstrap.sh\""))
        .and_then(|part| part.split_once("\n\n"))
        .map(|(_, body)| body.to_string())
        .expect("the agent bootstrap part")
}

/// The guests Nova's fake driver does not run: one agent per server.
struct Guests {
    dir: PathBuf,
    agents: BTreeMap<String, Child>,
}

impl Guests {
    /// Boots (as cloud-init would) every ACTIVE server of the deployment
    /// that has no agent yet; stops the agents of servers that are gone.
    fn sync(&mut self, cloud: &Cloud, deployment: &str) {
        let servers = cloud.servers(deployment);
        let live: BTreeSet<String> = servers
            .iter()
            .filter_map(|s| s["id"].as_str().map(str::to_string))
            .collect();
        self.agents.retain(|id, child| {
            if live.contains(id) {
                true
            } else {
                let _ = child.kill();
                let _ = child.wait();
                false
            }
        });
        for s in servers {
            let id = s["id"].as_str().unwrap_or_default().to_string();
            if s["status"] != "ACTIVE" || self.agents.contains_key(&id) {
                continue;
            }
            let Some(user_data) = cloud.user_data(&id) else {
                continue;
            };
            let root = self.dir.join(&id);
            let script = bootstrap_part(&user_data);
            let out = Command::new("bash")
                .arg("-c")
                .arg(&script)
                .env("IBKIT_ROOT", &root)
                .env("IBKIT_NO_SYSTEMD", "1")
                .env("IBKIT_RETRY_PAUSE", "1")
                .output()
                .expect("bash runs");
            assert!(
                out.status.success(),
                "the bootstrap of server {id} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let log =
                std::fs::File::create(self.dir.join(format!("{id}.agent.log"))).expect("agent log");
            let child = Command::new(root.join("usr/local/bin/ibkit-agent"))
                .args(["run", "--config"])
                .arg(root.join("etc/ibkit/agent.toml"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("the installed agent starts");
            self.agents.insert(id, child);
        }
    }
}

impl Drop for Guests {
    fn drop(&mut self) {
        for child in self.agents.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Which compute driver the cloud runs: Nova's fake driver (no guests;
/// the test plays them) or libvirt (real QEMU guests under TCG).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Virt {
    Fake,
    Libvirt,
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub service: Service,
    pub cloud: Cloud,
    guests: Option<Guests>,
    /// Arguments every `ibkit deploy` of this test gets.
    pub extra: Vec<String>,
}

impl Env {
    /// Fails unless the cloud's compute driver is `virt` (switch with
    /// `scripts/openstack-aio.sh --virt fake|libvirt start`).
    pub fn new(virt: Virt) -> Env {
        let cloud = Cloud::new();
        let hypervisors = cloud.get(Api::Compute, "/os-hypervisors/detail");
        let kinds: Vec<String> = hypervisors["hypervisors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|h| h["state"] == "up")
            .filter_map(|h| h["hypervisor_type"].as_str().map(str::to_string))
            .collect();
        let want = match virt {
            Virt::Fake => "fake",
            Virt::Libvirt => "QEMU",
        };
        assert!(
            kinds.iter().any(|k| k == want),
            "this test needs the cloud's {want} compute driver; it has {kinds:?} \
             (scripts/openstack-aio.sh --virt {} start)",
            if virt == Virt::Fake {
                "fake"
            } else {
                "libvirt"
            }
        );
        let dir = tempfile::Builder::new()
            .prefix("ibkit-openstack-test")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let (service, guests, extra) = match virt {
            Virt::Fake => {
                // The service recovers dead servers itself, with the
                // cloud's credentials from its environment.
                let clouds = clouds_file();
                let service = Service::spawn_with_env(
                    &dir.path().join("serve"),
                    &format!("127.0.0.1:{port}"),
                    vec![
                        "--monitor-interval".into(),
                        "2s".into(),
                        "--recover-deployments".into(),
                        dir.path().join("deploy").display().to_string(),
                    ],
                    &[("OS_CLIENT_CONFIG_FILE", clouds.as_os_str())],
                );
                let guests = Guests {
                    dir: dir.path().join("guests"),
                    agents: BTreeMap::new(),
                };
                std::fs::create_dir_all(&guests.dir).expect("mkdir");
                // The "guests" are processes on this machine.
                let extra = vec!["--guest-service-url".to_string(), service.url.clone()];
                (service, Some(guests), extra)
            }
            Virt::Libvirt => {
                // Guests sit on the shared provider network; the host is its
                // gateway, and the service listens there.
                let subnets = cloud.get(Api::Network, "/subnets?name=ibkit-public-subnet");
                let gateway = subnets["subnets"][0]["gateway_ip"]
                    .as_str()
                    .expect("the ibkit-public subnet's gateway")
                    .to_string();
                let url = format!("https://{gateway}:{port}");
                let service = Service::spawn(
                    &dir.path().join("serve"),
                    &format!("0.0.0.0:{port}"),
                    vec![
                        "--public-url".into(),
                        url.clone(),
                        "--monitor-interval".into(),
                        "2s".into(),
                    ],
                );
                let extra = vec![
                    "--guest-service-url".to_string(),
                    url,
                    "--os-network".to_string(),
                    "ibkit-public".to_string(),
                ];
                (service, None, extra)
            }
        };
        Env {
            dir,
            service,
            cloud,
            guests,
            extra,
        }
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("deploy")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        self.command_of("deploy", args)
    }

    /// `ibkit SUBCOMMAND ARGS` on this cloud and service (`deploy`, or
    /// `package` whose deploy commands take the same flags).
    pub fn command_of(&self, subcommand: &str, args: &[&str]) -> Command {
        let mut cmd = ibkit_in(self.dir.path(), subcommand, args);
        cmd.args(["--backend", "openstack", "--os-cloud", USER_CLOUD])
            .args(&self.extra)
            .env("OS_CLIENT_CONFIG_FILE", clouds_file());
        cmd
    }

    /// With the fake driver: boots the deployment's new servers (as
    /// cloud-init would) and stops the agents of deleted ones.
    pub fn play_guests(&mut self, deployment: &str) {
        if let Some(g) = self.guests.as_mut() {
            g.sync(&self.cloud, deployment);
        }
    }

    /// Runs `ibkit deploy ARGS` (playing the guests meanwhile); killed
    /// after `timeout`.
    pub fn run(&mut self, args: &[&str], deployment: &str, timeout: Duration) -> Output {
        self.run_of("deploy", args, deployment, timeout)
    }

    /// Runs `ibkit SUBCOMMAND ARGS` (playing the guests meanwhile).
    pub fn run_of(
        &mut self,
        subcommand: &str,
        args: &[&str],
        deployment: &str,
        timeout: Duration,
    ) -> Output {
        let cmd = self.command_of(subcommand, args);
        run_until(
            cmd,
            &format!("ibkit {subcommand} {args:?}"),
            timeout,
            Duration::from_millis(500),
            || self.play_guests(deployment),
        )
    }

    pub fn json(&mut self, args: &[&str], deployment: &str) -> Value {
        let out = self.run(args, deployment, Duration::from_secs(300));
        assert!(
            out.status.success(),
            "ibkit deploy {args:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).expect("JSON on stdout")
    }

    /// `status --format json`, or None while it cannot be read.
    pub fn try_status(&self, name: &str) -> Option<Value> {
        let out = self
            .command(&["status", name, "--format", "json"])
            .output()
            .expect("status");
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn manifest(&self, file: &str, text: &str) -> PathBuf {
        let dir = self.dir.path().join("manifests");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join(file);
        std::fs::write(&path, text).expect("manifest");
        path
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for pid in ibkit_vm::procs::pids_naming(&self.dir.path().display().to_string()) {
            ibkit_vm::procs::sigkill(pid);
        }
        if std::thread::panicking() {
            eprintln!(
                "[openstack test] state kept in {}",
                self.dir.path().display()
            );
            self.dir.disable_cleanup(true);
        }
    }
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

//! The boot test's course: two VMs from the image, the first restarted
//! twice, everything observed over SSH, the serial console, QMP and a
//! capture of each VM's network. What is read from a booted guest is
//! [`crate::gather`]'s job, probing the app's health [`crate::health`]'s,
//! judging [`crate::checks`]'.
//!
//! ```text
//! first VM  (small flavor, NoCloud seed, virtiofs share)
//!   boot -> SSH -> facts, ports, passwords, virtiofs -> health
//!   QMP system_reset -> SSH (new boot_id) -> health
//! flavor VM (large flavor, bigger disk, new MAC, OpenStack config drive)
//!   boot -> SSH -> nproc, memory, root size, cloud-init -> health
//!   systemctl reboot -> SSH (new boot_id) -> health
//! ```
//! The two VMs run at the same time when `parallel` is on (the default), so
//! the wall time is about one boot plus one restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ibkit_vm::qemu::{Forward, GuestForward, MacAddr, Proto, Vm, VmConfig};
use ibkit_vm::ssh::{self, SshKey, SshSession};
use ibkit_vm::{Accel, AccelChoice};

use crate::error::BootTestError;
use crate::gather::{self, GuestQuery, read_listeners};
use crate::guest::summarize_serial;
use crate::health::{HealthSpec, guest_port, probe_health};
use crate::observe::*;
use crate::options::{AccelRequest, Flavor, Options};

/// The test user the seeds create (key only, sudo without password).
pub const TEST_USER: &str = "ibkit-boottest";

/// A progress line sink (`ibkit boot-test` prints them on stderr).
pub type Progress = Arc<dyn Fn(&str) + Send + Sync>;

/// Time spent in one step, and how much of it was waiting for the guest.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct StepTiming {
    /// Step name.
    pub name: String,
    /// Seconds since the run started.
    pub started_s: f64,
    /// Wall time of the step.
    pub elapsed_s: f64,
    /// Part of it spent waiting for the guest (boot, SSH, health polling).
    pub guest_wait_s: f64,
}

/// Shared clock and step log of a run.
#[derive(Clone)]
pub(crate) struct Clock {
    start: Instant,
    steps: Arc<Mutex<Vec<StepTiming>>>,
    progress: Progress,
}

impl Clock {
    pub(crate) fn new(progress: Progress) -> Clock {
        Clock {
            start: Instant::now(),
            steps: Arc::new(Mutex::new(Vec::new())),
            progress,
        }
    }
    fn now_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
    pub(crate) fn say(&self, msg: &str) {
        (self.progress)(&format!("[{:6.1}s] {msg}", self.now_s()));
    }
    pub(crate) fn record(&self, name: &str, started: f64, guest_wait: f64) {
        let t = StepTiming {
            name: name.into(),
            started_s: started,
            elapsed_s: self.now_s() - started,
            guest_wait_s: guest_wait,
        };
        if let Ok(mut s) = self.steps.lock() {
            s.push(t);
        }
    }
    pub(crate) fn steps(&self) -> Vec<StepTiming> {
        self.steps.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// What [`run_course`] hands back besides observations.
pub(crate) struct CourseResult {
    pub observations: Observations,
    pub vms: Vec<VmInfo>,
    pub notes: Vec<String>,
}

/// A VM as the report describes it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct VmInfo {
    /// `first boot` / `flavor boot`.
    pub label: String,
    /// Flavor, disk, MAC, seed.
    pub description: String,
    /// The QEMU command line.
    pub command_line: Vec<String>,
    /// Serial console log.
    pub serial_log: String,
    /// Network capture.
    pub pcap: String,
}

struct Plan {
    work: PathBuf,
    key: Arc<SshKey>,
    health: Option<HealthSpec>,
    app_units: Vec<String>,
    forwards: Vec<Forward>,
    accel: Accel,
    clock: Clock,
    opts: Options,
    image_size: u64,
    /// The image's `/etc/shadow`, name → hash.
    image_shadow: std::collections::BTreeMap<String, String>,
    /// The manifest's `[billing]`.
    billing: Option<ibkit_rules::billing::BillingManifest>,
    /// The first VM's ways out of its restricted network (the billing
    /// emulator's).
    guest_forwards: Vec<GuestForward>,
}

impl Plan {
    fn guest_query(&self) -> GuestQuery<'_> {
        GuestQuery {
            clock: &self.clock,
            app_units: &self.app_units,
            image_shadow: &self.image_shadow,
        }
    }
}

/// Choose the accelerator: a real probe boot of the image's own kernel.
pub(crate) async fn choose_accel(
    opts: &Options,
    kernel: Option<(PathBuf, Option<PathBuf>)>,
    clock: &Clock,
) -> AccelChoice {
    match opts.accel {
        AccelRequest::Tcg => AccelChoice {
            accel: Accel::Tcg,
            reason: "requested (--accel tcg)".into(),
        },
        AccelRequest::Kvm => AccelChoice {
            accel: Accel::Kvm,
            reason: "requested (--accel kvm)".into(),
        },
        AccelRequest::Auto => {
            let Some((kernel, initrd)) = kernel else {
                return AccelChoice {
                    accel: Accel::Tcg,
                    reason: "no kernel found in the image's /boot to probe KVM with".into(),
                };
            };
            clock.say(
                "choosing the accelerator: KVM probe boot of the image's kernel (cached 24 h)",
            );
            ibkit_vm::accel::probe_kvm_cached(
                &kernel,
                initrd.as_deref(),
                Duration::from_secs(10),
                &opts.cache_dir,
            )
            .await
        }
    }
}

/// Copy the newest `/boot/vmlinuz-*` and its initrd out of the image.
pub(crate) fn extract_kernel(
    g: &ibkit_image::Guest,
    work: &Path,
) -> Option<(PathBuf, Option<PathBuf>)> {
    let entries = g.read_dir("/boot").ok().flatten()?;
    let mut versions: Vec<String> = entries
        .iter()
        .filter_map(|e| {
            let name = String::from_utf8_lossy(&e.name).to_string();
            name.strip_prefix("vmlinuz-").map(str::to_string)
        })
        .collect();
    versions.sort();
    let v = versions.pop()?;
    let kernel = g.read(format!("/boot/vmlinuz-{v}")).ok().flatten()?;
    let dir = work.join("kvm-probe");
    std::fs::create_dir_all(&dir).ok()?;
    let kpath = dir.join("vmlinuz");
    std::fs::write(&kpath, kernel).ok()?;
    let initrd = g
        .read(format!("/boot/initrd.img-{v}"))
        .ok()
        .flatten()
        .and_then(|b| {
            let p = dir.join("initrd.img");
            std::fs::write(&p, b).ok().map(|_| p)
        });
    Some((kpath, initrd))
}

/// Run both VMs and gather observations.
pub(crate) async fn run_course(
    opts: &Options,
    accel: &AccelChoice,
    work: &Path,
    image_size: u64,
    image_shadow: std::collections::BTreeMap<String, String>,
    clock: &Clock,
) -> Result<CourseResult, BootTestError> {
    let key =
        Arc::new(SshKey::generate().map_err(|e| BootTestError::Setup(format!("SSH key: {e}")))?);
    // `[health]` was validated when the manifest was loaded.
    let health = opts
        .manifest
        .as_ref()
        .and_then(|m| m.health.clone())
        .map(|mut h: HealthSpec| {
            if let Some(t) = opts.health_timeout {
                h.timeout = t;
            }
            h
        });
    let mut forwards = vec![Forward {
        proto: Proto::Tcp,
        guest_port: 22,
    }];
    let mut add = |proto: Proto, port: u16| {
        if !forwards
            .iter()
            .any(|f| f.proto == proto && f.guest_port == port)
        {
            forwards.push(Forward {
                proto,
                guest_port: port,
            });
        }
    };
    if let Some(m) = &opts.manifest {
        for p in &m.ports {
            let proto = match p.protocol {
                ibkit_rules::manifest::Protocol::Tcp => Proto::Tcp,
                ibkit_rules::manifest::Protocol::Udp => Proto::Udp,
            };
            add(proto, p.number);
        }
    }
    if let Some(h) = &health {
        for port in h.checks.iter().filter_map(guest_port) {
            add(Proto::Tcp, port);
        }
    }
    let billing = opts.manifest.as_ref().and_then(|m| m.billing.clone());
    let emulator = match billing.as_ref().filter(|b| b.bills()) {
        Some(_) => Some(crate::billing::Emulator::start(&work.join("billing-emulator")).await),
        None => None,
    };
    let guest_forwards: Vec<GuestForward> = emulator
        .iter()
        .filter_map(crate::billing::Emulator::guest_forward)
        .collect();
    clock.say(&match (opts.open_network, guest_forwards.first()) {
        (true, _) => {
            "guests' network: open (the host's loopback and every address it reaches)".to_string()
        }
        (false, None) => "guests' network: restricted (nothing outside the VM)".to_string(),
        (false, Some(f)) => format!(
            "guests' network: restricted (only the billing emulator, https://{})",
            f.guest_addr
        ),
    });
    let plan = Arc::new(Plan {
        work: work.to_path_buf(),
        key,
        health: health.clone(),
        app_units: opts
            .manifest
            .as_ref()
            .map(|m| m.units.clone())
            .unwrap_or_default(),
        forwards,
        accel: accel.accel,
        clock: clock.clone(),
        opts: opts.clone(),
        image_size,
        image_shadow,
        billing,
        guest_forwards,
    });

    let mut obs = Observations {
        accel: Some(accel.clone()),
        health_spec: health,
        manifest_given: opts.manifest.is_some(),
        declared_ports: opts
            .manifest
            .as_ref()
            .map(|m| m.ports.iter().map(|p| p.to_string()).collect())
            .unwrap_or_default(),
        app_units: plan.app_units.clone(),
        billing_spec: plan.billing.clone(),
        ..Default::default()
    };
    let mut notes = Vec::new();
    let mut vms = Vec::new();

    let flavor_plan = plan.clone();
    let flavor_task = async move { flavor_vm(&flavor_plan).await };
    let first_plan = plan.clone();
    let first_task = async { first_vm(&first_plan, emulator.as_ref()).await };
    let (first, flavor) = if opts.parallel {
        tokio::join!(first_task, flavor_task)
    } else {
        let a = first_task.await;
        let b = flavor_task.await;
        (a, b)
    };
    for (res, slot) in [(first, 0), (flavor, 1)] {
        match res {
            Ok(r) => {
                vms.push(r.info);
                notes.extend(r.notes);
                if slot == 0 {
                    obs.first = Some(r.boot);
                    obs.hard_reset = r.hard;
                    obs.billing = r.billing;
                } else {
                    obs.flavor = Some(r.boot);
                    obs.soft_reboot = r.soft;
                }
            }
            Err(e) => notes.push(format!(
                "{}: {e}",
                if slot == 0 { "first VM" } else { "flavor VM" }
            )),
        }
    }
    if let Some(e) = emulator {
        e.shutdown().await;
    }
    Ok(CourseResult {
        observations: obs,
        vms,
        notes,
    })
}

struct VmRun {
    boot: BootObs,
    soft: Option<RestartObs>,
    hard: Option<RestartObs>,
    billing: Option<crate::billing::BillingObs>,
    info: VmInfo,
    notes: Vec<String>,
}

async fn first_vm(
    plan: &Plan,
    emulator: Option<&crate::billing::Emulator>,
) -> Result<VmRun, BootTestError> {
    let clock = &plan.clock;
    let label = "first boot";
    let dir = plan.work.join("vm1-first");
    let share = dir.join("share");
    std::fs::create_dir_all(&share).map_err(|e| BootTestError::io(&share, e))?;
    let marker = format!("ibkit-{:016x}", rand::random::<u64>());
    std::fs::write(share.join("marker"), &marker)
        .map_err(|e| BootTestError::io(&share.join("marker"), e))?;
    let mac = MacAddr::random();
    let instance = format!("iid-ibkit-{:08x}", rand::random::<u32>());
    let seed = dir.join("seed-cidata.img");
    let files =
        ibkit_vm::seed::nocloud_files(&instance, "ibkit-boottest-1", &user_data(&plan.key), None);
    ibkit_vm::seed::write_vfat("cidata", &files, &seed)
        .map_err(|e| BootTestError::Setup(format!("NoCloud seed: {e}")))?;
    let mut cfg = vm_config(
        plan,
        "first",
        &dir,
        plan.opts.small,
        None,
        mac,
        seed,
        Some(share),
    );
    cfg.guest_forwards = plan.guest_forwards.clone();
    let started = clock.now_s();
    clock.say(&format!(
        "{label}: starting QEMU ({}, {} vCPU, {} MiB, MAC {mac})",
        accel_name(plan.accel),
        plan.opts.small.vcpus,
        plan.opts.small.memory_mib
    ));
    let vm = Vm::start(cfg)
        .await
        .map_err(|e| BootTestError::Vm(format!("{label}: {e}")))?;
    let qemu_start = SystemTime::now();
    let mut boot = new_boot_obs(label, &vm, plan.opts.small, plan.image_size, mac, "NoCloud");
    let mut notes = Vec::new();
    let info = vm_info(label, &boot, &vm);

    let session = wait_ssh(plan, &vm, label, plan.opts.boot_timeout, &mut boot).await;
    clock.record(
        &format!("{label}: boot to SSH"),
        started,
        clock.now_s() - started,
    );
    let mut hard = None;
    let mut billing = None;
    if let Some(session) = session {
        let t = clock.now_s();
        let (g, wait) =
            gather::gather(&plan.guest_query(), &session, &vm, label, true, &mut notes).await;
        boot.guest = Some(g);
        clock.record(&format!("{label}: guest facts"), t, wait);
        let t = clock.now_s();
        if let Some(spec) = &plan.health {
            clock.say(&format!("{label}: app health check"));
            boot.health = Some(probe_health(&plan.clock, &vm, &session, spec).await);
            clock.record(&format!("{label}: health"), t, clock.now_s() - t);
        }
        // Ports are read again once the app is healthy: a listener that opens late still counts.
        if let Some(g) = boot.guest.as_mut() {
            read_listeners(&session, g).await;
        }
        // The emulator exists only when the manifest bills.
        if let (Some(spec), Some(emulator)) = (plan.billing.as_ref(), emulator) {
            let t = clock.now_s();
            billing = Some(crate::billing::watch(emulator, &session, spec, clock).await);
            clock.record(&format!("{label}: billing watch"), t, clock.now_s() - t);
        }
        // The forced reset happens here while the flavor VM reboots cleanly:
        // this VM is ready later (it has more to read) and a reset is quicker
        // than a clean reboot, so the two finish close together.
        hard = restart_if_healthy(plan, &vm, session, &boot, Restart::Hard).await;
    }
    finish_boot(&vm, &mut boot, qemu_start);
    drop(vm);
    Ok(VmRun {
        boot,
        soft: None,
        hard,
        billing,
        info,
        notes,
    })
}

async fn flavor_vm(plan: &Plan) -> Result<VmRun, BootTestError> {
    let clock = &plan.clock;
    let label = "flavor boot";
    let dir = plan.work.join("vm2-flavor");
    std::fs::create_dir_all(&dir).map_err(|e| BootTestError::io(&dir, e))?;
    let mac = MacAddr::random();
    let uuid = uuid_like();
    let seed = dir.join("seed-config-2.img");
    let files = ibkit_vm::seed::config_drive_files(
        &uuid,
        "ibkit-boottest-2",
        &plan.key.public_openssh(),
        &user_data(&plan.key),
        &mac,
    );
    ibkit_vm::seed::write_vfat("config-2", &files, &seed)
        .map_err(|e| BootTestError::Setup(format!("config drive: {e}")))?;
    let disk = plan.image_size + plan.opts.extra_disk;
    let cfg = vm_config(
        plan,
        "flavor",
        &dir,
        plan.opts.large,
        Some(disk),
        mac,
        seed,
        None,
    );
    let started = clock.now_s();
    clock.say(&format!(
        "{label}: starting QEMU ({} vCPU, {} MiB, {:.1} GiB disk, MAC {mac}, config drive)",
        plan.opts.large.vcpus,
        plan.opts.large.memory_mib,
        disk as f64 / (1u64 << 30) as f64
    ));
    let vm = Vm::start(cfg)
        .await
        .map_err(|e| BootTestError::Vm(format!("{label}: {e}")))?;
    let qemu_start = SystemTime::now();
    let mut boot = new_boot_obs(label, &vm, plan.opts.large, disk, mac, "ConfigDrive");
    let info = vm_info(label, &boot, &vm);
    let mut notes = Vec::new();
    let mut soft = None;
    let session = wait_ssh(plan, &vm, label, plan.opts.boot_timeout, &mut boot).await;
    clock.record(
        &format!("{label}: boot to SSH"),
        started,
        clock.now_s() - started,
    );
    if let Some(session) = session {
        let t = clock.now_s();
        let (g, wait) =
            gather::gather(&plan.guest_query(), &session, &vm, label, false, &mut notes).await;
        boot.guest = Some(g);
        clock.record(&format!("{label}: guest facts"), t, wait);
        if let Some(spec) = &plan.health {
            let t = clock.now_s();
            clock.say(&format!("{label}: app health check"));
            boot.health = Some(probe_health(&plan.clock, &vm, &session, spec).await);
            clock.record(&format!("{label}: health"), t, clock.now_s() - t);
        }
        // The clean reboot happens here while the first VM is reset: the two
        // restarts run in parallel.
        soft = restart_if_healthy(plan, &vm, session, &boot, Restart::Soft).await;
    }
    finish_boot(&vm, &mut boot, qemu_start);
    drop(vm);
    Ok(VmRun {
        boot,
        soft,
        hard: None,
        billing: None,
        info,
        notes,
    })
}

fn accel_name(a: Accel) -> &'static str {
    match a {
        Accel::Kvm => "KVM",
        Accel::Tcg => "TCG",
    }
}

#[allow(clippy::too_many_arguments)]
fn vm_config(
    plan: &Plan,
    name: &str,
    dir: &Path,
    flavor: Flavor,
    disk_size: Option<u64>,
    mac: MacAddr,
    seed: PathBuf,
    share: Option<PathBuf>,
) -> VmConfig {
    VmConfig {
        name: format!("ibkit-boottest-{name}"),
        image: plan.opts.image.clone(),
        work_dir: dir.to_path_buf(),
        accel: plan.accel,
        vcpus: flavor.vcpus,
        memory_mib: flavor.memory_mib,
        disk_size,
        mac,
        mtu: None,
        drives: vec![seed],
        share_dir: share,
        forwards: plan.forwards.clone(),
        restrict_network: !plan.opts.open_network,
        guest_forwards: Vec::new(),
        machine: None,
    }
}

fn new_boot_obs(label: &str, vm: &Vm, f: Flavor, disk: u64, mac: MacAddr, seed: &str) -> BootObs {
    BootObs {
        label: label.into(),
        vcpus: f.vcpus,
        memory_mib: f.memory_mib,
        disk_bytes: disk,
        mac: mac.to_string(),
        seed: seed.into(),
        serial_log: vm.serial_log_path().display().to_string(),
        ..Default::default()
    }
}

fn vm_info(label: &str, boot: &BootObs, vm: &Vm) -> VmInfo {
    VmInfo {
        label: label.into(),
        description: boot.describe(),
        command_line: vm.command_line(),
        serial_log: vm.serial_log_path().display().to_string(),
        pcap: vm.pcap_path().display().to_string(),
    }
}

/// Serial summary and network capture, read at the end of the VM's life.
fn finish_boot(vm: &Vm, boot: &mut BootObs, qemu_start: SystemTime) {
    boot.serial = summarize_serial(&vm.serial_log(), 40);
    boot.network = gather::network_obs(&vm.pcap_path(), &vm.config().mac, qemu_start);
}

/// cloud-config for the seeds: only the test user with the run's key.
/// Nothing else: the image's own configuration must be what is tested.
fn user_data(key: &SshKey) -> String {
    format!(
        "#cloud-config\nusers:\n  - name: {TEST_USER}\n    lock_passwd: true\n    shell: /bin/bash\n    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n    ssh_authorized_keys:\n      - {}\n",
        key.public_openssh()
    )
}

fn uuid_like() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// Wait for an SSH login; records banner, time and errors in `boot`.
async fn wait_ssh(
    plan: &Plan,
    vm: &Vm,
    label: &str,
    timeout: Duration,
    boot: &mut BootObs,
) -> Option<SshSession> {
    let clock = &plan.clock;
    let Some(addr) = vm.ssh_addr() else {
        boot.ssh_error = Some("no forward of port 22".into());
        return None;
    };
    clock.say(&format!(
        "{label}: waiting for SSH (up to {} s)",
        timeout.as_secs()
    ));
    let t0 = Instant::now();
    let mut last_error = String::from("no answer yet");
    let mut last_say = Instant::now();
    loop {
        if t0.elapsed() > timeout {
            boot.ssh_error = Some(format!(
                "no SSH login within {} s (last error: {last_error})",
                timeout.as_secs()
            ));
            clock.say(&format!("{label}: gave up waiting for SSH"));
            return None;
        }
        if !vm_alive(vm) {
            boot.ssh_error = Some("QEMU exited before SSH answered".into());
            return None;
        }
        if t0.elapsed() > plan.opts.silent_network_timeout
            && let Ok(bytes) = std::fs::read(vm.pcap_path())
            && ibkit_vm::pcap::frames_from(&bytes, &vm.config().mac).unwrap_or(0) == 0
        {
            boot.ssh_error = Some(format!(
                "the guest sent nothing on its NIC (MAC {}) in {} s: its network never came up",
                vm.config().mac,
                plan.opts.silent_network_timeout.as_secs()
            ));
            clock.say(&format!(
                "{label}: no network traffic from the guest; giving up"
            ));
            return None;
        }
        if boot.banner.is_none()
            && let Ok(b) = ssh::banner(addr, Duration::from_secs(5)).await
            && b.starts_with("SSH-")
        {
            boot.banner = Some(b.trim().to_string());
        }
        if boot.banner.is_some() {
            match ssh::connect(addr, TEST_USER, &plan.key, Duration::from_secs(20)).await {
                Ok(s) => {
                    // The seed's user may exist before cloud-init is done with sudo; check it.
                    match s.exec("sudo -n true", Duration::from_secs(20)).await {
                        Ok(o) if o.success() => {
                            let secs = t0.elapsed().as_secs_f64();
                            boot.ssh_ready_after_s = Some(secs);
                            clock.say(&format!("{label}: SSH login after {secs:.0} s"));
                            return Some(s);
                        }
                        Ok(o) => {
                            last_error = format!(
                                "sudo not ready: {}",
                                String::from_utf8_lossy(&o.stderr).trim()
                            )
                        }
                        Err(e) => last_error = e.to_string(),
                    }
                    s.close().await;
                }
                Err(e) => last_error = e.to_string(),
            }
        }
        if last_say.elapsed() > Duration::from_secs(30) {
            clock.say(&format!(
                "{label}: still waiting for SSH ({:.0} s{})",
                t0.elapsed().as_secs_f64(),
                if boot.banner.is_some() {
                    ", sshd answers"
                } else {
                    ""
                }
            ));
            last_say = Instant::now();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

pub(crate) fn vm_alive(vm: &Vm) -> bool {
    // `is_running` needs &mut for try_wait; the PID check is enough here.
    Path::new(&format!("/proc/{}", vm.qemu_pid())).exists()
}
#[derive(Clone, Copy)]
enum Restart {
    Soft,
    Hard,
}

/// Restart the VM unless its app was unhealthy already (a restart would
/// prove nothing then); the session is closed either way.
async fn restart_if_healthy(
    plan: &Plan,
    vm: &Vm,
    session: SshSession,
    boot: &BootObs,
    how: Restart,
) -> Option<RestartObs> {
    if boot.health.as_ref().is_some_and(|h| !h.passed) {
        session.close().await;
        return None;
    }
    let (r, s) = restart(plan, vm, session, how).await;
    if let Some(s) = s {
        s.close().await;
    }
    Some(r)
}

/// Restart the VM, wait for SSH with a new boot_id, probe health.
async fn restart(
    plan: &Plan,
    vm: &Vm,
    session: SshSession,
    how: Restart,
) -> (RestartObs, Option<SshSession>) {
    let clock = &plan.clock;
    let (name, step) = match how {
        Restart::Soft => ("systemctl reboot", "soft reboot"),
        Restart::Hard => ("QMP system_reset", "hard reset"),
    };
    let mut r = RestartObs {
        how: name.into(),
        ..Default::default()
    };
    let started = clock.now_s();
    r.boot_id_before = boot_id(&session).await;
    clock.say(&format!("{step}: {name}"));
    let t0 = Instant::now();
    match how {
        Restart::Soft => {
            // The connection drops while the command runs: its result does not matter.
            let _ = session
                .exec("sudo -n systemctl reboot", Duration::from_secs(15))
                .await;
            session.close().await;
        }
        Restart::Hard => {
            session.close().await;
            if let Err(e) = vm.system_reset().await {
                r.error = Some(format!("QMP system_reset failed: {e}"));
                clock.record(step, started, 0.0);
                return (r, None);
            }
        }
    }
    let Some(addr) = vm.ssh_addr() else {
        r.error = Some("no SSH forward".into());
        return (r, None);
    };
    let deadline = plan.opts.restart_timeout;
    let mut last = String::from("no answer");
    let session = loop {
        if t0.elapsed() > deadline {
            r.error = Some(format!(
                "SSH did not come back with a new boot within {} s (last: {last})",
                deadline.as_secs()
            ));
            break None;
        }
        if !vm_alive(vm) {
            r.error = Some("QEMU exited".into());
            break None;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        match ssh::connect(addr, TEST_USER, &plan.key, Duration::from_secs(10)).await {
            Ok(s) => {
                let id = boot_id(&s).await;
                if id.is_some() && id != r.boot_id_before {
                    r.boot_id_after = id;
                    r.back_after_s = Some(t0.elapsed().as_secs_f64());
                    break Some(s);
                }
                s.close().await;
                last = "still the old boot".into();
            }
            Err(e) => last = e.to_string(),
        }
    };
    let Some(session) = session else {
        clock.say(&format!("{step}: the VM did not come back"));
        clock.record(step, started, clock.now_s() - started);
        return (r, None);
    };
    clock.say(&format!(
        "{step}: SSH back after {:.0} s",
        r.back_after_s.unwrap_or(0.0)
    ));
    if let Some(spec) = &plan.health {
        r.health = Some(probe_health(&plan.clock, vm, &session, spec).await);
        if r.health.as_ref().is_some_and(|h| !h.passed)
            && let Ok(units) = gather::read_units(&session, &plan.app_units).await
        {
            r.app_units = units;
        }
    }
    clock.record(step, started, clock.now_s() - started);
    (r, Some(session))
}

async fn boot_id(s: &SshSession) -> Option<String> {
    s.exec(
        "cat /proc/sys/kernel/random/boot_id",
        Duration::from_secs(15),
    )
    .await
    .ok()
    .filter(|o| o.success())
    .map(|o| o.stdout_text().trim().to_string())
    .filter(|s| !s.is_empty())
}

//! The Debian packages on a throwaway Debian 12 root with a real systemd as
//! its PID 1 (in its own PID and mount namespaces, sharing the host's
//! network): `dpkg -i` both, the system user, modes, man pages and
//! completions, `ibkit-serve.service` running as `ibkit` and answering
//! `/healthz` on the port its conffile sets, `systemd-analyze verify` of
//! both units, the agent not started before it is paired; `dpkg --remove`
//! keeps state, configuration and user; `dpkg --purge` leaves the root as
//! it was before the install.
//!
//! Inputs come from scripts/test.sh: `IBKIT_DEBS` (the output of
//! `scripts/build-debs.sh --profile dev`) and `IBKIT_DEB_ROOT` (the output
//! of `scripts/build-deb-root.sh`); without them the test runs those
//! scripts itself. Needs root (CI runs as root).

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The lines a project script prints on stdout, or `var`'s value when set.
fn script_output(var: &str, script: &str, args: &[&str]) -> Vec<PathBuf> {
    let text = match std::env::var(var) {
        Ok(s) if !s.trim().is_empty() => s,
        _ => {
            let out = Command::new(workspace().join(script))
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("{script} runs: {e}"));
            assert!(
                out.status.success(),
                "{script} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).to_string()
        }
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(PathBuf::from)
        .collect()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A Debian root with systemd booted as PID 1 of its own namespaces;
/// killed (the whole PID namespace with it) on drop.
struct Booted {
    root: PathBuf,
    unshare: Child,
    /// systemd's PID as the host sees it (nsenter's target).
    init: u32,
}

impl Booted {
    fn boot(root: &Path) -> Booted {
        // The mounts systemd needs, private to the new mount namespace, so
        // they vanish with it.
        let script = r#"set -e
R=$1
mount --bind "$R" "$R"
mount -t proc proc "$R/proc"
mount -t sysfs -o ro sysfs "$R/sys"
mount --rbind /sys/fs/cgroup "$R/sys/fs/cgroup"
mount -t tmpfs tmpfs "$R/run"
mount -t tmpfs tmpfs "$R/tmp"
mount --rbind /dev "$R/dev"
exec chroot "$R" /lib/systemd/systemd --log-target=kmsg"#;
        let unshare = Command::new("unshare")
            .args(["--pid", "--fork", "--mount", "--propagation", "private"])
            .arg("--kill-child")
            .args(["bash", "-c", script, "boot"])
            .arg(root)
            .spawn()
            .expect("unshare runs");
        let deadline = Instant::now() + Duration::from_secs(30);
        let children = format!("/proc/{0}/task/{0}/children", unshare.id());
        let init = loop {
            let found = std::fs::read_to_string(&children)
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok());
            if let Some(pid) = found {
                break pid;
            }
            assert!(Instant::now() < deadline, "no init process under unshare");
            std::thread::sleep(Duration::from_millis(100));
        };
        let booted = Booted {
            root: root.to_path_buf(),
            unshare,
            init,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let state = booted.run(&["systemctl", "is-system-running"]);
            let state = String::from_utf8_lossy(&state.stdout).trim().to_string();
            if state == "running" || state == "degraded" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "systemd did not finish booting: {state}\n{}",
                text(&booted.run(&["systemctl", "list-jobs"]))
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        booted
    }

    /// Runs `args` inside the booted root (its namespaces and root).
    fn run(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.init.to_string(), "-m", "-p", "-r", "-w"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .args(args)
            .output()
            .expect("nsenter runs")
    }

    /// Runs `args` inside, asserting success; its output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?} failed:\n{}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    /// Polls `systemctl is-active UNIT` until it says `want`.
    fn wait_active(&self, unit: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.run(&["systemctl", "is-active", unit]);
            if String::from_utf8_lossy(&out.stdout).trim() == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{unit} is not {want}:\n{}\n{}",
                text(&self.run(&["systemctl", "status", "--no-pager", unit])),
                text(&self.run(&["journalctl", "--no-pager", "-n", "40", "-u", unit]))
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        // --kill-child: unshare's death kills systemd, and with PID 1 the
        // whole namespace; its mounts go with the mount namespace.
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

/// Every path under `root` with its type, mode and owner, except the
/// pseudo and scratch file systems and what dpkg and systemd keep for
/// themselves (their logs, caches and dpkg's database).
fn listing(root: &Path) -> BTreeSet<String> {
    const SKIP: &[&str] = &[
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "var/log",
        "var/cache",
        "var/lib/dpkg",
        "var/tmp",
        // useradd/userdel's backups of the account files they edit.
        "etc/passwd-",
        "etc/group-",
        "etc/shadow-",
        "etc/gshadow-",
    ];
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .to_string();
            if SKIP.contains(&rel.as_str()) {
                continue;
            }
            let Ok(m) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            out.insert(format!(
                "{rel} {:o} {}:{}",
                m.permissions().mode(),
                m.uid(),
                m.gid()
            ));
            if m.is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

/// Where the test puts the agent package for `ibkit serve --agent-deb`
/// (readable under the unit's ProtectSystem=strict).
const SERVED_DEB: &str = "/usr/share/ibkit-test/ibkit-agent.deb";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
fn packages_install_run_as_their_user_and_purge_without_a_trace() {
    let uid = Command::new("id").arg("-u").output().expect("id runs");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "this test installs packages into a booted root: run it as root"
    );
    let debs = script_output("IBKIT_DEBS", "scripts/build-debs.sh", &["--profile", "dev"]);
    let find = |prefix: &str| {
        debs.iter()
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .unwrap_or_else(|| panic!("no {prefix}*.deb in {debs:?}"))
            .clone()
    };
    let (ibkit_deb, agent_deb) = (find("ibkit_"), find("ibkit-agent_"));
    let tarball = script_output("IBKIT_DEB_ROOT", "scripts/build-deb-root.sh", &[])
        .pop()
        .expect("build-deb-root.sh printed the root's tarball");

    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).expect("mkdir root");
    let untar = Command::new("tar")
        .args(["--zstd", "-xf"])
        .arg(&tarball)
        .arg("-C")
        .arg(&root)
        .output()
        .expect("tar runs");
    assert!(untar.status.success(), "untar: {}", text(&untar));

    let sys = Booted::boot(&root);
    let before = listing(&root);
    std::fs::copy(&ibkit_deb, sys.path("/root/ibkit.deb")).expect("copy deb");
    std::fs::copy(&agent_deb, sys.path("/root/ibkit-agent.deb")).expect("copy deb");
    sys.ok(&["dpkg", "-i", "/root/ibkit.deb", "/root/ibkit-agent.deb"]);
    std::fs::remove_file(sys.path("/root/ibkit.deb")).expect("rm");
    std::fs::remove_file(sys.path("/root/ibkit-agent.deb")).expect("rm");

    // The system user and its private state directory.
    let passwd = sys.ok(&["getent", "passwd", "ibkit"]);
    let fields: Vec<&str> = passwd.split(':').collect();
    let ibkit_uid: u32 = fields[2].parse().expect("uid");
    assert!(ibkit_uid < 1000, "a system user: {passwd}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{passwd}");
    let state = std::fs::metadata(sys.path("/var/lib/ibkit")).expect("state dir");
    assert_eq!(state.permissions().mode() & 0o7777, 0o700);
    assert_eq!(state.uid(), ibkit_uid);
    let agent_state = std::fs::metadata(sys.path("/var/lib/ibkit-agent")).expect("agent state");
    assert_eq!(agent_state.permissions().mode() & 0o7777, 0o700);
    assert_eq!(agent_state.uid(), 0);

    // Man pages (valid roff) and completions (bash loads them).
    for page in [
        "ibkit.1.gz",
        "ibkit-serve.1.gz",
        "ibkit-check.1.gz",
        "ibkit-agent.1.gz",
        "ibkit-agent-pair.1.gz",
    ] {
        let path = sys.path(&format!("/usr/share/man/man1/{page}"));
        let out = Command::new("sh")
            .arg("-c")
            .arg("zcat \"$1\" | groff -k -man -Tutf8 -ww -z")
            .args(["sh"])
            .arg(&path)
            .output()
            .expect("groff runs");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{page}: {}",
            text(&out)
        );
    }
    for (name, bash, zsh, fish) in [
        ("ibkit", "ibkit", "_ibkit", "ibkit.fish"),
        (
            "ibkit-agent",
            "ibkit-agent",
            "_ibkit-agent",
            "ibkit-agent.fish",
        ),
    ] {
        let bash = sys.path(&format!("/usr/share/bash-completion/completions/{bash}"));
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("source \"$1\" && complete -p {name}"))
            .arg("bash")
            .arg(&bash)
            .output()
            .expect("bash runs");
        assert!(out.status.success(), "{name}: {}", text(&out));
        assert!(
            sys.path(&format!("/usr/share/zsh/vendor-completions/{zsh}"))
                .is_file()
        );
        assert!(
            sys.path(&format!("/usr/share/fish/vendor_completions.d/{fish}"))
                .is_file()
        );
    }

    // Both units pass systemd's own checks (the root has no man(1) to
    // look up Documentation=man:… with).
    let verify = sys.run(&[
        "systemd-analyze",
        "verify",
        "--man=no",
        "/usr/lib/systemd/system/ibkit-serve.service",
        "/usr/lib/systemd/system/ibkit-agent.service",
    ]);
    assert!(
        verify.status.success(),
        "systemd-analyze verify:\n{}",
        text(&verify)
    );

    // The agent's unit is the installer's with the platform's cap, and it
    // is neither enabled nor running: it is not paired.
    let unit = std::fs::read_to_string(sys.path("/usr/lib/systemd/system/ibkit-agent.service"))
        .expect("agent unit");
    assert!(unit.contains("MemoryMax=512M"), "{unit}");
    assert!(
        unit.contains("ExecStart=/usr/bin/ibkit-agent run --config /etc/ibkit/agent.toml"),
        "{unit}"
    );
    let enabled = sys.run(&["systemctl", "is-enabled", "ibkit-agent"]);
    assert_eq!(String::from_utf8_lossy(&enabled.stdout).trim(), "disabled");
    sys.wait_active("ibkit-agent", "inactive");

    // The service was started on install; now on a port of our choosing,
    // serving the agent package, both set in its conffile.
    sys.wait_active("ibkit-serve", "active");
    let port = free_port();
    let served_deb = sys.path(SERVED_DEB);
    std::fs::create_dir_all(served_deb.parent().expect("parent")).expect("mkdir");
    std::fs::copy(&agent_deb, &served_deb).expect("copy the served deb");
    let env = sys.path("/etc/ibkit/serve.env");
    let conf = std::fs::read_to_string(&env).expect("serve.env");
    assert!(
        conf.contains("IBKIT_SERVE_OPTIONS=\"--listen 0.0.0.0:8443\""),
        "{conf}"
    );
    std::fs::write(
        &env,
        conf.replace(
            "--listen 0.0.0.0:8443",
            &format!("--listen 127.0.0.1:{port} --agent-deb {SERVED_DEB}"),
        ),
    )
    .expect("edit serve.env");
    sys.ok(&["systemctl", "restart", "ibkit-serve"]);
    sys.wait_active("ibkit-serve", "active");
    let cert_path = sys.path("/var/lib/ibkit/tls/cert.pem");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (client, health) = loop {
        let attempt = std::fs::read(&cert_path).ok().and_then(|pem| {
            let client = reqwest::blocking::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(&pem).ok()?)
                .timeout(Duration::from_secs(30))
                .build()
                .ok()?;
            let r = client
                .get(format!("https://127.0.0.1:{port}/healthz"))
                .send()
                .ok()?;
            let answer = (r.status().as_u16(), r.text().ok()?);
            Some((client, answer))
        });
        if let Some(answer) = attempt {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "no /healthz on port {port}:\n{}",
            text(&sys.run(&["journalctl", "--no-pager", "-n", "40", "-u", "ibkit-serve"]))
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(health.0, 200, "{}", health.1);
    assert!(health.1.contains("\"ok\""), "{}", health.1);
    // A VM gets the agent package from the service and installs it with
    // dpkg (here over the installed one: the same version, reinstalled).
    let r = client
        .get(format!("https://127.0.0.1:{port}/v1/agent/ibkit-agent.deb"))
        .send()
        .expect("download the agent package");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()[reqwest::header::CONTENT_TYPE],
        "application/vnd.debian.binary-package"
    );
    let downloaded = r.bytes().expect("body");
    assert!(
        downloaded == std::fs::read(&agent_deb).expect("read deb"),
        "the served package is the built one"
    );
    std::fs::write(sys.path("/root/downloaded.deb"), &downloaded).expect("write");
    sys.ok(&["dpkg", "-i", "/root/downloaded.deb"]);
    std::fs::remove_file(sys.path("/root/downloaded.deb")).expect("rm");
    // Checked once it answers: right after a (re)start, the main PID is
    // systemd's own child still setting up, as root, until it execs.
    let pid = sys.ok(&[
        "systemctl",
        "show",
        "-p",
        "MainPID",
        "--value",
        "ibkit-serve",
    ]);
    let status = sys.ok(&["cat", &format!("/proc/{pid}/status")]);
    let uids = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid line");
    assert!(
        uids.split_whitespace().all(|u| u == ibkit_uid.to_string()),
        "ibkit serve (PID {pid}) runs as ibkit ({ibkit_uid}):\n{status}\n{}",
        text(&sys.run(&["systemctl", "status", "--no-pager", "ibkit-serve"]))
    );
    // Everything the service wrote is its user's, and the secrets private.
    let mut stack = vec![sys.path("/var/lib/ibkit")];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read state").flatten() {
            let m = std::fs::symlink_metadata(e.path()).expect("stat");
            assert_eq!(m.uid(), ibkit_uid, "{} is not ibkit's", e.path().display());
            assert_eq!(
                m.permissions().mode() & 0o077,
                0,
                "{} is not private",
                e.path().display()
            );
            seen += 1;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    assert!(sys.path("/var/lib/ibkit/operator-token").is_file());
    assert!(seen >= 3, "the service wrote its state ({seen} files)");

    // remove keeps state, configuration and user; purge deletes them.
    sys.ok(&["dpkg", "--remove", "ibkit", "ibkit-agent"]);
    sys.wait_active("ibkit-serve", "inactive");
    assert!(!sys.path("/usr/bin/ibkit").exists());
    assert!(sys.path("/var/lib/ibkit/operator-token").is_file());
    assert!(sys.path("/etc/ibkit/serve.env").is_file());
    sys.ok(&["getent", "passwd", "ibkit"]);
    sys.ok(&["dpkg", "--purge", "ibkit", "ibkit-agent"]);
    assert!(!sys.run(&["getent", "passwd", "ibkit"]).status.success());
    assert!(!sys.run(&["getent", "group", "ibkit"]).status.success());
    for gone in ["/var/lib/ibkit", "/var/lib/ibkit-agent", "/etc/ibkit"] {
        assert!(!sys.path(gone).exists(), "{gone} is left after purge");
    }
    // Ours, not the package's.
    std::fs::remove_dir_all(served_deb.parent().expect("parent")).expect("rm served deb");
    let after = listing(&root);
    let added: Vec<_> = after.difference(&before).collect();
    let removed: Vec<_> = before.difference(&after).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "purge left the root changed:\nadded {added:#?}\nremoved {removed:#?}"
    );
}

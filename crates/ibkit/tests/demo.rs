//! The README's demo, its service part (`scripts/demo-cluster.sh`): the
//! real script with the real `ibkit serve`, `ibkit instance` and two
//! `ibkit-agent` processes. The example instance must end `running`; a
//! broken one must make the script fail, so a broken demo fails the suite.

mod serve;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A directory with `ibkit` and `ibkit-agent`, as the script expects.
fn bin_dir(tmp: &Path) -> PathBuf {
    let dir = tmp.join("bin");
    std::fs::create_dir_all(&dir).expect("bin dir");
    std::os::unix::fs::symlink(serve::ibkit_bin(), dir.join("ibkit")).expect("link ibkit");
    std::os::unix::fs::symlink(serve::agent_bin(), dir.join("ibkit-agent")).expect("link agent");
    dir
}

fn demo(bin: &Path, spec: &Path) -> Output {
    let out = Command::new("bash")
        .arg(workspace().join("scripts/demo-cluster.sh"))
        .arg(bin)
        .arg(spec)
        .env_remove("IBKIT_SERVE_STATE")
        .output()
        .expect("bash runs");
    eprintln!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn the_demo_cluster_runs_and_a_broken_one_fails() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = bin_dir(tmp.path());

    let spec = workspace().join("examples/cluster/instance.json");
    let out = demo(&bin, &spec);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the example instance must run");
    assert!(stdout.contains(": running (generation 1)"), "{stdout}");
    assert!(
        stdout.contains("init/1: ok (attempts 1, exit 0)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("joining primary:7000 with a token of 32 characters"),
        "the replica got the primary's token through the service: {stdout}"
    );
    // Structured results are named, never printed (the join token).
    assert!(
        stdout.contains("structured: {join_token, port}"),
        "{stdout}"
    );

    // The same example with the primary's step broken.
    let text = std::fs::read_to_string(&spec).expect("example spec");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["groups"][0]["steps"][0]["content"] = "echo 'cannot initialise' >&2; exit 3".into();
    v["groups"][0]["steps"][0]["options"]["attempts"] = 1.into();
    let broken = tmp.path().join("broken.json");
    std::fs::write(&broken, v.to_string()).expect("write broken spec");
    let out = demo(&bin, &broken);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "a broken demo fails");
    assert!(stdout.contains(": failed"), "{stdout}");
    assert!(
        stdout.contains("init/1: failed (attempts 1, exit 3)"),
        "{stdout}"
    );
}

//! `ibkit generate`: the man pages are valid roff (groff with every warning
//! on says nothing), one per visible subcommand, and the bash completion
//! script loads and completes subcommands. Without root or packages, unlike
//! tests/debs.rs which checks the installed copies.

use std::process::Command;

fn ibkit(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ibkit"))
        .args(args)
        .output()
        .expect("ibkit runs")
}

#[test]
fn man_pages_are_valid_roff_one_per_visible_subcommand() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = ibkit(&["generate", "man", dir.path().to_str().expect("utf-8 path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    for page in [
        "ibkit.1",
        "ibkit-check.1",
        "ibkit-serve.1",
        "ibkit-deploy-up.1",
    ] {
        assert!(names.iter().any(|n| n == page), "no {page} in {names:?}");
    }
    // Hidden subcommands and clap's `help` get no page.
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("ibkit-generate") || n.starts_with("ibkit-help")),
        "{names:?}"
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        printed.lines().count(),
        names.len(),
        "one line per page written"
    );
    for name in &names {
        let path = dir.path().join(name);
        let groff = Command::new("groff")
            .args(["-k", "-man", "-Tutf8", "-ww", "-z"])
            .arg(&path)
            .output()
            .expect("groff runs (scripts/apt-test-packages.txt: groff-base)");
        assert!(
            groff.status.success() && groff.stderr.is_empty(),
            "{name}: {}",
            String::from_utf8_lossy(&groff.stderr)
        );
    }
    let serve = std::fs::read_to_string(dir.path().join("ibkit-serve.1")).expect("page");
    assert!(
        serve.contains("agent\\-deb"),
        "options are documented: {serve}"
    );
}

#[test]
fn bash_completion_loads_and_completes_subcommands() {
    let out = ibkit(&["generate", "completions", "bash"]);
    assert!(out.status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("ibkit");
    std::fs::write(&script, &out.stdout).expect("write");
    // What bash offers after `ibkit se<TAB>`.
    let bash = Command::new("bash")
        .arg("-c")
        .arg(
            r#"source "$1" && complete -p ibkit && COMP_WORDS=(ibkit se) COMP_CWORD=1 COMP_LINE="ibkit se" COMP_POINT=8 && _ibkit ibkit se ibkit && printf '%s\n' "${COMPREPLY[@]}""#,
        )
        .arg("bash")
        .arg(&script)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&bash.stdout);
    assert!(
        bash.status.success(),
        "{}",
        String::from_utf8_lossy(&bash.stderr)
    );
    assert!(
        stdout.contains("complete -o bashdefault -o default -o nosort -F _ibkit ibkit"),
        "{stdout}"
    );
    assert!(stdout.lines().any(|l| l == "serve"), "{stdout}");
    for shell in ["zsh", "fish"] {
        let out = ibkit(&["generate", "completions", shell]);
        assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("serve"));
    }
}

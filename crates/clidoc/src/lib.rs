//! Man pages and shell completions generated from a clap command line, so
//! they can never disagree with `--help`. Both binaries (`ibkit`,
//! `ibkit-agent`) mount [`Generate`] as a hidden `generate` subcommand,
//! the shape of ripgrep's `rg --generate`: the Debian packages run it at
//! build time (`scripts/build-debs.sh`) and install what it writes.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// `generate man DIR` / `generate completions SHELL`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Generate {
    /// Write a man page for the command and one for each subcommand
    /// (NAME.1, NAME-SUB.1, NAME-SUB-SUBSUB.1 …) into DIR.
    Man {
        /// Created if missing.
        dir: PathBuf,
    },
    /// Print the completion script for SHELL on stdout.
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Runs `what` for the command line `cmd` (from `clap::CommandFactory`).
pub fn generate(what: &Generate, cmd: clap::Command) -> Result<(), Error> {
    match what {
        Generate::Man { dir } => {
            for page in man_pages(cmd, dir)? {
                println!("{}", page.display());
            }
            Ok(())
        }
        Generate::Completions { shell } => {
            let mut out = Vec::new();
            completions(cmd, *shell, &mut out);
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(&out)
                .and_then(|()| stdout.flush())
                .map_err(|source| Error::Write {
                    path: "stdout".into(),
                    source,
                })
        }
    }
}

/// Writes the man pages of `cmd` and of every visible subcommand, at any
/// depth, into `dir`; returns their paths. Hidden subcommands (internal
/// ones, `generate` itself) and clap's `help` get none.
pub fn man_pages(cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    let mut cmd = cmd.disable_help_subcommand(true);
    // Propagates names, versions and global arguments into subcommands,
    // and gives each its full `ibkit-deploy-up` style name.
    cmd.build();
    // Every page's footer names the program and its version, not the subcommand.
    let source = format!(
        "{} {}",
        cmd.get_name(),
        cmd.get_version().unwrap_or_default()
    );
    let mut written = Vec::new();
    write_page(&cmd, &source, dir, &mut written)?;
    Ok(written)
}

fn write_page(
    cmd: &clap::Command,
    source: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), Error> {
    // Titled and named after the full name (NAME-SUB), as man(1) looks it up.
    let man = clap_mangen::Man::new(cmd.clone()).source(source);
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page)
        .and_then(|()| std::fs::write(&path, &page))
        .map_err(|source| Error::Write {
            path: path.clone(),
            source,
        })?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(sub, source, dir, written)?;
    }
    Ok(())
}

/// The completion script of `cmd` for `shell`.
pub fn completions(cmd: clap::Command, shell: Shell, out: &mut Vec<u8>) {
    let mut cmd = cmd;
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    #[command(name = "demo", version = "1.2.3", about = "A demo")]
    struct Demo {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(clap::Subcommand)]
    enum Cmd {
        /// Visible one.
        Up {
            #[command(subcommand)]
            what: Inner,
        },
        #[command(hide = true)]
        Secret,
    }

    #[derive(clap::Subcommand)]
    enum Inner {
        /// Deepest.
        Now,
    }

    #[test]
    fn a_page_for_each_visible_subcommand_at_any_depth() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pages = man_pages(<Demo as clap::CommandFactory>::command(), dir.path())
            .expect("pages written");
        let mut names: Vec<_> = pages
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect();
        names.sort();
        assert_eq!(names, ["demo-up-now.1", "demo-up.1", "demo.1"]);
        let up = std::fs::read_to_string(dir.path().join("demo-up.1")).expect("page");
        assert!(up.contains(".TH demo-up 1"), "{up}");
        assert!(up.contains("Visible one"), "{up}");
        assert!(up.contains("\"demo 1.2.3\""), "the program's version: {up}");
    }

    #[test]
    fn completions_name_the_subcommands() {
        let mut out = Vec::new();
        completions(
            <Demo as clap::CommandFactory>::command(),
            Shell::Bash,
            &mut out,
        );
        let script = String::from_utf8(out).expect("utf-8");
        assert!(script.contains("complete -F _demo"), "{script}");
        assert!(script.contains("up"), "{script}");
    }
}

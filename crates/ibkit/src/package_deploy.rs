//! `ibkit package deploy DIR --plan P`: the package's Terraform evaluated
//! and mapped onto a deployment manifest (`ibkit_package::deploy`), kept
//! under `STATE/packages/NAME/` with the values generated for it, then
//! deployed by `ibkit deploy up` itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use ibkit_package::PackageFiles;
use ibkit_package::deploy::{Backend, DeployRequest, Generated, translate};

use crate::deploy_cmd::{self, BackendKind, Common, Format, Forward};

/// `KEY=VALUE` of `--var` and `--map`.
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("{s:?}: expected KEY=VALUE")),
    }
}

pub struct DeployOptions {
    pub path: PathBuf,
    pub plan: String,
    pub vars: Vec<(String, String)>,
    pub maps: Vec<(String, String)>,
    pub name: Option<String>,
    pub dry_run: bool,
    pub watch: bool,
    pub format: Format,
}

/// Where a package deployment's mapped manifest and generated values live.
pub fn package_dir(state: &Path, name: &str) -> PathBuf {
    state.join("packages").join(name)
}

pub fn deploy(o: DeployOptions, common: Common) -> Result<ExitCode> {
    // The kept values are secrets: their directory is this user's only,
    // as everything `ibkit deploy` creates (it sets the same umask).
    ibkit_server::set_private_umask();
    let pkg = PackageFiles::open(&o.path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let lint_errors = ibkit_package::lint::lint(&pkg)
        .iter()
        .filter(|d| d.severity == ibkit_package::Severity::Error)
        .count();
    if lint_errors > 0 {
        eprintln!(
            "ibkit package: warning: the package has {lint_errors} lint error(s) the marketplace would refuse (`ibkit package lint {}`); deploying anyway",
            o.path.display()
        );
    }
    let mut vars = BTreeMap::new();
    for (k, v) in o.vars {
        if vars.insert(k.clone(), v).is_some() {
            bail!("--var {k} given twice");
        }
    }
    let maps: BTreeMap<String, String> = o.maps.into_iter().collect();
    let backend = match common.backend {
        Some(BackendKind::Openstack) => Backend::OpenStack,
        _ => Backend::Qemu,
    };
    let name = match o.name {
        Some(n) => n,
        None => ibkit_package::deploy::default_name(&pkg, &o.plan),
    };
    if !ibkit_api::is_valid_name(&name) {
        bail!("--name {name:?}: [A-Za-z0-9_-], at most 63 characters");
    }
    let dir = package_dir(&common.state, &name);
    let generated_path = dir.join("generated.json");
    let generated: Option<Generated> = match std::fs::read(&generated_path) {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{}: unreadable (delete it to generate new values)",
                generated_path.display()
            )
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read {}", generated_path.display()));
        }
    };
    let req = DeployRequest {
        plan: o.plan,
        vars,
        maps,
        name: Some(name.clone()),
        backend,
    };
    let cwd = std::env::current_dir().context("no current directory")?;
    let t = translate(&pkg, &req, &cwd, generated).map_err(|e| anyhow::anyhow!("{e}"))?;
    for w in &t.warnings {
        eprintln!("ibkit package: warning: {w}");
    }
    if o.dry_run {
        crate::write_stdout(&t.toml)?;
        return Ok(ExitCode::SUCCESS);
    }
    // Secrets live in both files: this user's only.
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let generated_json = serde_json::to_vec_pretty(&t.generated)?;
    ibkit_support::fs::write_atomic(&generated_path, &generated_json, 0o600)
        .with_context(|| format!("cannot write {}", generated_path.display()))?;
    let manifest = dir.join("deploy.toml");
    let text = format!(
        "# Mapped by `ibkit package deploy` from {} (plan {}); regenerated on every deploy.\n{}",
        o.path.display(),
        req.plan,
        t.toml
    );
    ibkit_support::fs::write_atomic(&manifest, text.as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", manifest.display()))?;
    deploy_cmd::forward(
        common,
        Forward::Up {
            manifest,
            watch: o.watch,
            format: o.format,
        },
    )
}

/// `ibkit package down NAME`: the deployment, then what the package
/// deploy kept for it.
pub fn down(name: String, no_evidence: bool, common: Common) -> Result<ExitCode> {
    let dir = package_dir(&common.state, &name);
    let code = deploy_cmd::forward(common, Forward::Down { name, no_evidence })?;
    if code == ExitCode::SUCCESS && dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    Ok(code)
}

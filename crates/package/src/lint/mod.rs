//! Every package rule: [`structure`] (files, names, sizes), [`schema`]
//! (each YAML file against its documented schema), [`cross`] (rules that
//! need several files), [`terraform`] (the plans' `.tf` manifests). All findings at once, sorted by file
//! and line.

pub mod cross;
pub mod schema;
pub mod structure;
pub mod terraform;

use crate::{Diagnostic, PackageFiles};

pub fn lint(pkg: &PackageFiles) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    structure::check(pkg, &mut out);
    schema::check(pkg, &mut out);
    cross::check(pkg, &mut out);
    terraform::check(pkg, &mut out);
    out.sort_by(|a, b| (&a.file, a.line, a.rule).cmp(&(&b.file, b.line, b.rule)));
    out
}

//! Which step a host runs next, result references, and instance status.
//! Everything here runs inside a writer transaction.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ibkit_api::reference::{self, ReferenceTarget};
use ibkit_api::wire::InstanceStatus;
use ibkit_api::wire::{ResolvedReference, StepStatus, Work};
use ibkit_api::{HealthCheck, InstanceSpec, StructuredJson};
use ibkit_support::clock::now_ms;
use rusqlite::Connection;

use crate::AppState;
use crate::store::{self, StepKey, StoreError, StoreResult};

/// The instance's spec, parsed once and cached until it changes.
pub fn spec_of(state: &AppState, c: &Connection, inst: &str) -> StoreResult<Arc<InstanceSpec>> {
    if let Some(s) = state.cached_spec(inst) {
        return Ok(s);
    }
    let json = store::instances::spec_json(c, inst)?;
    let spec: Arc<InstanceSpec> = Arc::new(serde_json::from_str(&json)?);
    state.cache_spec(inst, spec.clone());
    Ok(spec)
}

/// What a work request gets.
pub struct NextWork {
    pub work: Option<Work>,
    /// All the host's steps are done: its health checks are active.
    pub checks_active: bool,
    /// A step failed on a bad reference: wake the instance.
    pub changed: bool,
}

/// The next step for `host`, dispatching it (new exec id) when runnable.
pub fn next_work(
    state: &AppState,
    tx: &Connection,
    inst: &str,
    host: &str,
) -> StoreResult<NextWork> {
    let none = |changed| NextWork {
        work: None,
        checks_active: false,
        changed,
    };
    if store::instances::status(tx, inst)? == Some(InstanceStatus::Deleted) {
        return Ok(none(false));
    }
    if let Some(json) = store::steps::inflight_work(tx, inst, host)? {
        return Ok(NextWork {
            work: Some(serde_json::from_str(&json)?),
            checks_active: false,
            changed: false,
        });
    }
    let spec = spec_of(state, tx, inst)?;
    let st = store::steps::statuses(tx, inst)?;
    let status_of = |h: &str, g: &str, i: u32| st.get(&(h.to_string(), g.to_string(), i)).copied();
    for g in spec.group_order() {
        if !g.hosts.iter().any(|h| h == host) {
            continue;
        }
        for d in &g.depends_on {
            let Some(dg) = spec.group(d) else { continue };
            for h in &dg.hosts {
                for s in &dg.steps {
                    if !status_of(h, d, s.index).is_some_and(StepStatus::is_done) {
                        return Ok(none(false));
                    }
                }
            }
        }
        let mut steps: Vec<_> = g.steps.iter().collect();
        steps.sort_by_key(|s| s.index);
        for s in steps {
            match status_of(host, &g.name, s.index) {
                Some(StepStatus::Ok | StepStatus::Skipped) => continue,
                Some(StepStatus::Pending) => {}
                _ => return Ok(none(false)),
            }
            // Resolve references in the content and the environment.
            let mut not_yet = false;
            let mut db_err: Option<StoreError> = None;
            let mut parsed: HashMap<(String, String, u32), serde_json::Value> = HashMap::new();
            let mut lookup = |r: &reference::Reference| -> Result<String, String> {
                let th = if r.host == "self" {
                    host
                } else {
                    r.host.as_str()
                };
                match status_of(th, &r.group, r.index) {
                    Some(StepStatus::Ok | StepStatus::Skipped) => {}
                    Some(StepStatus::Pending | StepStatus::Running) => {
                        not_yet = true;
                        return Err("not finished yet".into());
                    }
                    Some(StepStatus::Failed) => {
                        return Err(format!("step {th}/{}/{} failed", r.group, r.index));
                    }
                    None => return Err(format!("no step {th}/{}/{}", r.group, r.index)),
                }
                let key: StepKey = (th.to_string(), r.group.clone(), r.index);
                let (raw, structured) = match store::steps::result(tx, inst, &key) {
                    Ok(Some((_, raw, structured))) => (raw, structured),
                    Ok(None) => return Err(format!("no step {th}/{}/{}", r.group, r.index)),
                    Err(e) => {
                        db_err = Some(e);
                        return Err("database error".into());
                    }
                };
                match &r.target {
                    ReferenceTarget::Raw => raw
                        .ok_or_else(|| format!("step {th}/{}/{} has no result", r.group, r.index)),
                    ReferenceTarget::Structured(path) => {
                        let Some(text) = structured else {
                            return Err(format!(
                                "step {th}/{}/{} has no structured result",
                                r.group, r.index
                            ));
                        };
                        // Parsed once per dispatch, with the size and depth
                        // caps (rows stored by an older service may be big).
                        let key = (th.to_string(), r.group.clone(), r.index);
                        if !parsed.contains_key(&key) {
                            let v = StructuredJson::from_stored(text)
                                .parse_bounded(state.cfg.max_structured_bytes)
                                .map_err(|e| {
                                    format!(
                                        "step {th}/{}/{}'s structured result cannot be used: {e}",
                                        r.group, r.index
                                    )
                                })?;
                            parsed.insert(key.clone(), v);
                        }
                        match parsed.get(&key) {
                            Some(v) => reference::render_structured(v, path),
                            None => Err("structured result lost".into()),
                        }
                    }
                }
            };
            // Every reference used, also handed to the script as a variable
            // and a file (pasting a value into script text can inject).
            let mut used: Vec<ResolvedReference> = Vec::new();
            let mut record = |r: &reference::Reference| -> Result<String, String> {
                let value = lookup(r)?;
                let text = r.to_string();
                if !used.iter().any(|u| u.reference == text) {
                    used.push(ResolvedReference {
                        reference: text,
                        name: r.env_name(),
                        value: value.clone(),
                    });
                }
                Ok(value)
            };
            let mut resolved = reference::resolve(&s.content, &mut record);
            let mut env = Vec::with_capacity(s.options.environment_variables.len());
            if resolved.is_ok() {
                for e in &s.options.environment_variables {
                    match reference::resolve(e, &mut record) {
                        Ok(v) => env.push(v),
                        Err(m) => {
                            resolved = Err(m);
                            break;
                        }
                    }
                }
            }
            if let Some(e) = db_err {
                return Err(e);
            }
            if not_yet {
                return Ok(none(false));
            }
            let content = match resolved {
                Ok(c) => c,
                Err(message) => {
                    let key = (host.to_string(), g.name.clone(), s.index);
                    store::steps::fail_unrun(tx, inst, &key, &message, now_ms())?;
                    recompute_status(state, tx, inst)?;
                    return Ok(none(true));
                }
            };
            let mut options = s.options.clone();
            options.environment_variables = env;
            let work = Work {
                exec_id: uuid::Uuid::new_v4().to_string(),
                instance: inst.to_string(),
                group: g.name.clone(),
                index: s.index,
                hash: s.hash(),
                kind: s.kind,
                content,
                options,
                references: used,
            };
            let key = (host.to_string(), g.name.clone(), s.index);
            let work_json = serde_json::to_string(&work)?;
            store::steps::dispatch(tx, inst, &key, &work.exec_id, &work_json, now_ms())?;
            return Ok(NextWork {
                work: Some(work),
                checks_active: false,
                changed: false,
            });
        }
    }
    // Every step of this host is done: its health checks are active.
    store::hosts::activate_checks(tx, inst, host, now_ms())?;
    Ok(NextWork {
        work: None,
        checks_active: true,
        changed: false,
    })
}

/// The checks of `spec` that run on `host`.
pub fn checks_for(spec: &InstanceSpec, host: &str) -> Vec<HealthCheck> {
    spec.health_checks
        .iter()
        .filter(|c| c.applies_to(host))
        .cloned()
        .collect()
}

/// Short hash of the agent's configuration (checks and heartbeat interval).
pub fn config_rev(checks: &[HealthCheck], heartbeat_ms: u64) -> String {
    let json = serde_json::to_string(checks).unwrap_or_default();
    let full = ibkit_api::step::sha256_hex(format!("{json}\n{heartbeat_ms}").as_bytes());
    full[..16].to_string()
}

/// Does finishing a step of `group` possibly unblock other hosts?
pub fn group_is_consumed(spec: &InstanceSpec, group: &str) -> bool {
    spec.groups.iter().any(|g| {
        g.depends_on.iter().any(|d| d == group)
            || g.steps.iter().any(|s| {
                std::iter::once(s.content.as_str())
                    .chain(s.options.environment_variables.iter().map(String::as_str))
                    .any(|t| {
                        reference::find_references(t)
                            .map(|rs| rs.iter().any(|r| r.group == group))
                            .unwrap_or(false)
                    })
            })
    })
}

/// Recomputes the instance status from its steps and health results.
pub fn recompute_status(state: &AppState, tx: &Connection, inst: &str) -> StoreResult<()> {
    let Some(current) = store::instances::status(tx, inst)? else {
        return Ok(());
    };
    if current == InstanceStatus::Deleted {
        return Ok(());
    }
    let failed = store::steps::failed(tx, inst, Some(1))?;
    let (status, reason) = if let Some(f) = failed.into_iter().next() {
        let why = match (f.error, f.log) {
            (Some(e), _) if !e.is_empty() => e,
            (_, Some(l)) if !l.trim().is_empty() => {
                format!("log ends:\n{}", ibkit_support::text::tail_lines(&l, 10))
            }
            _ => "no error message".into(),
        };
        (
            InstanceStatus::Failed,
            Some(format!(
                "host {}, group {}, step {} failed: {why}",
                f.host, f.group, f.index
            )),
        )
    } else {
        let not_done = store::steps::count_not_done(tx, inst)?;
        if not_done > 0 {
            (
                InstanceStatus::Applying,
                Some(format!("{not_done} step(s) not done yet")),
            )
        } else {
            let spec = spec_of(state, tx, inst)?;
            let ok: HashSet<(String, String)> = store::health::passing(tx, inst)?;
            let mut waiting = None;
            'outer: for h in spec.host_names() {
                for c in spec.health_checks.iter().filter(|c| c.applies_to(h)) {
                    if !ok.contains(&(h.to_string(), c.name.clone())) {
                        waiting = Some(format!(
                            "waiting for a passing health check {:?} on host {h}",
                            c.name
                        ));
                        break 'outer;
                    }
                }
            }
            match waiting {
                Some(w) => (InstanceStatus::Applying, Some(w)),
                None => (InstanceStatus::Running, None),
            }
        }
    };
    store::instances::set_status(tx, inst, status, reason.as_deref(), now_ms())
}

//! Which step a host runs next, result references, and instance status.
//! Everything here runs inside a writer transaction.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ibkit_api::reference::{self, ReferenceTarget};
use ibkit_api::wire::{ResolvedReference, StepStatus, Work};
use ibkit_api::{HealthCheck, InstanceSpec, StructuredJson};
use rusqlite::{Connection, OptionalExtension as _, params};

use crate::AppState;
use crate::db::now_ms;
use crate::error::ApiError;

/// The instance's spec, parsed once and cached until it changes.
pub fn spec_of(
    state: &AppState,
    c: &Connection,
    inst: &str,
) -> Result<Arc<InstanceSpec>, ApiError> {
    if let Some(s) = state.cached_spec(inst) {
        return Ok(s);
    }
    let json: String = c
        .query_row(
            "SELECT spec_json FROM instances WHERE id = ?1",
            params![inst],
            |r| r.get(0),
        )
        .optional()?
        .ok_or_else(|| ApiError::not_found(format!("no instance {inst}")))?;
    let spec: Arc<InstanceSpec> = Arc::new(serde_json::from_str(&json)?);
    state.cache_spec(inst, spec.clone());
    Ok(spec)
}

pub fn instance_status(c: &Connection, inst: &str) -> Result<Option<String>, ApiError> {
    Ok(c.query_row(
        "SELECT status FROM instances WHERE id = ?1",
        params![inst],
        |r| r.get(0),
    )
    .optional()?)
}

type StepKey = (String, String, u32);

fn step_statuses(c: &Connection, inst: &str) -> Result<HashMap<StepKey, StepStatus>, ApiError> {
    let mut stmt =
        c.prepare_cached("SELECT host, grp, idx, status FROM steps WHERE instance = ?1")?;
    let rows = stmt.query_map(params![inst], |r| {
        Ok((
            (
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u32>(2)?,
            ),
            r.get::<_, String>(3)?,
        ))
    })?;
    let mut out = HashMap::new();
    for row in rows {
        let (k, s) = row?;
        out.insert(k, StepStatus::parse(&s).unwrap_or(StepStatus::Failed));
    }
    Ok(out)
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
) -> Result<NextWork, ApiError> {
    let none = |changed| NextWork {
        work: None,
        checks_active: false,
        changed,
    };
    if instance_status(tx, inst)?.as_deref() == Some("deleted") {
        return Ok(none(false));
    }
    let inflight: Option<String> = tx
        .query_row(
            "SELECT work_json FROM steps WHERE instance = ?1 AND host = ?2
             AND exec_id IS NOT NULL AND status IN ('pending','running') LIMIT 1",
            params![inst, host],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(json) = inflight {
        return Ok(NextWork {
            work: Some(serde_json::from_str(&json)?),
            checks_active: false,
            changed: false,
        });
    }
    let spec = spec_of(state, tx, inst)?;
    let st = step_statuses(tx, inst)?;
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
            let mut db_err: Option<ApiError> = None;
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
                let row: Result<(Option<String>, Option<String>), _> = tx.query_row(
                    "SELECT result, structured_result FROM steps
                     WHERE instance = ?1 AND host = ?2 AND grp = ?3 AND idx = ?4",
                    params![inst, th, r.group, r.index],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                );
                let (raw, structured) = match row {
                    Ok(v) => v,
                    Err(e) => {
                        db_err = Some(e.into());
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
                    tx.execute(
                        "UPDATE steps SET status = 'failed', error = ?5, finished_at_ms = ?6
                         WHERE instance = ?1 AND host = ?2 AND grp = ?3 AND idx = ?4",
                        params![inst, host, g.name, s.index, message, now_ms()],
                    )?;
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
            tx.execute(
                "UPDATE steps SET exec_id = ?5, dispatched_at = ?6, work_json = ?7
                 WHERE instance = ?1 AND host = ?2 AND grp = ?3 AND idx = ?4",
                params![
                    inst,
                    host,
                    g.name,
                    s.index,
                    work.exec_id,
                    now_ms(),
                    serde_json::to_string(&work)?
                ],
            )?;
            return Ok(NextWork {
                work: Some(work),
                checks_active: false,
                changed: false,
            });
        }
    }
    // Every step of this host is done: its health checks are active.
    tx.execute(
        "UPDATE hosts SET checks_active_since = ?3
         WHERE instance = ?1 AND name = ?2 AND checks_active_since IS NULL",
        params![inst, host, now_ms()],
    )?;
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

/// Last `n` lines of a log.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Recomputes the instance status from its steps and health results.
pub fn recompute_status(state: &AppState, tx: &Connection, inst: &str) -> Result<(), ApiError> {
    let Some(current) = instance_status(tx, inst)? else {
        return Ok(());
    };
    if current == "deleted" {
        return Ok(());
    }
    type FailedRow = (String, String, u32, Option<String>, Option<String>);
    let failed: Option<FailedRow> = tx
        .query_row(
            "SELECT host, grp, idx, error, log FROM steps WHERE instance = ?1 AND status = 'failed'
             ORDER BY host, grp, idx LIMIT 1",
            params![inst],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let (status, reason): (&str, Option<String>) = if let Some((h, g, i, error, log)) = failed {
        let why = match (error, log) {
            (Some(e), _) if !e.is_empty() => e,
            (_, Some(l)) if !l.trim().is_empty() => format!("log ends:\n{}", tail(&l, 10)),
            _ => "no error message".into(),
        };
        (
            "failed",
            Some(format!("host {h}, group {g}, step {i} failed: {why}")),
        )
    } else {
        let not_done: i64 = tx.query_row(
            "SELECT COUNT(*) FROM steps WHERE instance = ?1 AND status NOT IN ('ok','skipped')",
            params![inst],
            |r| r.get(0),
        )?;
        if not_done > 0 {
            ("applying", Some(format!("{not_done} step(s) not done yet")))
        } else {
            let spec = spec_of(state, tx, inst)?;
            let mut ok: HashSet<(String, String)> = HashSet::new();
            let mut stmt = tx.prepare_cached(
                "SELECT host, check_name FROM health_results WHERE instance = ?1 AND ok = 1",
            )?;
            for row in stmt.query_map(params![inst], |r| Ok((r.get(0)?, r.get(1)?)))? {
                ok.insert(row?);
            }
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
                Some(w) => ("applying", Some(w)),
                None => ("running", None),
            }
        }
    };
    tx.execute(
        "UPDATE instances SET status = ?2, status_reason = ?3, updated_at = ?4
         WHERE id = ?1 AND (status != ?2 OR status_reason IS NOT ?3)",
        params![inst, status, reason, now_ms()],
    )?;
    Ok(())
}

/// Sets the matching steps back to `pending` (a `once` step that was ever
/// ok becomes `skipped`), superseding any in-flight execution.
pub fn reset_steps(
    tx: &Connection,
    filter: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<(), ApiError> {
    tx.execute(
        &format!(
            "UPDATE steps SET status = 'skipped', exec_id = NULL, dispatched_at = NULL, work_json = NULL
             WHERE once = 1 AND ever_ok = 1 AND ({filter})"
        ),
        args,
    )?;
    tx.execute(
        &format!(
            "UPDATE steps SET status = 'pending', exec_id = NULL, dispatched_at = NULL, work_json = NULL,
               attempts = 0, exit_code = NULL, signal = NULL, timed_out = 0, halted = 0,
               started_at_ms = NULL, finished_at_ms = NULL, log = NULL, log_truncated_bytes = 0,
               result = NULL, result_truncated_bytes = 0, structured_result = NULL, error = NULL
             WHERE NOT (once = 1 AND ever_ok = 1) AND ({filter})"
        ),
        args,
    )?;
    Ok(())
}

//! Operator endpoints: instances, hosts, steps, results, recovery requests.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use ibkit_api::wire::ServiceInfo;
use ibkit_api::{InstanceSpec, StructuredJson};
use rusqlite::{Connection, OptionalExtension as _, params};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{Operator, hash_secret, new_secret};
use crate::db::now_ms;
use crate::dispatch;
use crate::error::{ApiError, ApiResult};
use crate::{ApiJson, ApiPath, ApiQuery, AppState, NoQuery};

fn check_uuid(id: &str) -> ApiResult<()> {
    uuid::Uuid::parse_str(id)
        .map(|_| ())
        .map_err(|_| ApiError::bad_request(format!("{id:?} is not an instance id (a UUID)")))
}

/// The command that installs and pairs a host's agent (see
/// `ibkit_api::dist::install_command`): the key travels in the installer's
/// environment, not on a command line (`ps` shows command lines to every
/// local user), and a failed download fails the command.
fn install_command(s: &AppState, id: &str, host: &str, key: &str) -> String {
    ibkit_api::dist::install_command(
        &s.public_url,
        s.curl_pin.as_deref().unwrap_or(""),
        id,
        host,
        key,
    )
}

/// `?pairing_key_ttl=` of instance creation and key re-issue.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PairingKeyQuery {
    /// How long the pairing keys issued stay valid (`30m`, `2h`; at most
    /// 30 days). On creation it is also the instance's lifetime for keys
    /// re-issued later; default `--pairing-key-ttl` (1h).
    pairing_key_ttl: Option<String>,
}

impl PairingKeyQuery {
    fn ttl(&self) -> ApiResult<Option<i64>> {
        let Some(text) = &self.pairing_key_ttl else {
            return Ok(None);
        };
        let d: ibkit_api::Duration = text
            .parse()
            .map_err(|e| ApiError::bad_request(format!("pairing_key_ttl {text:?}: {e}")))?;
        let d = d.to_std();
        if d.is_zero() || d > crate::config::MAX_PAIRING_KEY_TTL {
            return Err(ApiError::bad_request(format!(
                "pairing_key_ttl {text:?} must be more than 0s and at most {}",
                super::agent::duration(crate::config::MAX_PAIRING_KEY_TTL)
            )));
        }
        Ok(Some(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
    }
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn exists(c: &Connection, id: &str) -> ApiResult<String> {
    dispatch::instance_status(c, id)?
        .ok_or_else(|| ApiError::not_found(format!("no instance {id}")))
}

fn insert_steps(tx: &Connection, id: &str, spec: &InstanceSpec) -> ApiResult<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO steps (instance, host, grp, idx, hash, once, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending')",
    )?;
    for g in &spec.groups {
        for h in &g.hosts {
            for st in &g.steps {
                stmt.execute(params![id, h, g.name, st.index, st.hash(), st.options.once])?;
            }
        }
    }
    Ok(())
}

pub async fn create(
    _: Operator,
    State(s): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<PairingKeyQuery>,
    ApiJson(spec): ApiJson<InstanceSpec>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    spec.validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let ttl = q.ttl()?;
    let expires_at = now_ms().saturating_add(ttl.unwrap_or(ms(s.cfg.pairing_key_ttl)));
    let id = uuid::Uuid::new_v4().to_string();
    let keys: Vec<(String, String)> = spec
        .host_names()
        .map(|h| (h.to_string(), new_secret("pk_")))
        .collect();
    let st = s.clone();
    let (id2, keys2, spec2) = (id.clone(), keys.clone(), spec.clone());
    s.db
        .write(move |c| {
            let tx = c.transaction()?;
            let now = now_ms();
            tx.execute(
                "INSERT INTO instances (id, name, spec_json, status, generation, created_at, updated_at,
                 pairing_key_ttl_ms)
                 VALUES (?1, ?2, ?3, 'applying', 1, ?4, ?4, ?5)",
                params![id2, spec2.name, serde_json::to_string(&spec2)?, now, ttl],
            )?;
            for (h, k) in &keys2 {
                tx.execute(
                    "INSERT INTO hosts (instance, name, pairing_key_hash, pairing_key_expires_at)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![id2, h, hash_secret(k), expires_at],
                )?;
            }
            insert_steps(&tx, &id2, &spec2)?;
            st.cache_spec(&id2, Arc::new(spec2));
            dispatch::recompute_status(&st, &tx, &id2)?;
            tx.commit()?;
            Ok(())
        })
        .await?;
    tracing::info!("created instance {id} ({})", spec.name);
    let hosts: Vec<Value> = keys
        .iter()
        .map(|(h, k)| {
            json!({"name": h, "pairing_key": k, "pairing_key_expires_at": expires_at,
            "install_command": install_command(&s, &id, h, k)})
        })
        .collect();
    let status =
        s.db.read({
            let id = id.clone();
            move |c| exists(c, &id)
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "name": spec.name, "status": status, "hosts": hosts})),
    ))
}

/// How the service is set up. Behind the operator token because clients
/// (`ibkit deploy`) trust the pins from here only over an authenticated,
/// pinned connection.
pub async fn service_info(
    _: Operator,
    State(s): State<Arc<AppState>>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
) -> Json<ServiceInfo> {
    Json(ServiceInfo {
        public_url: s.public_url.clone(),
        // What agents pin: none for an operator-provided certificate.
        cert_sha256: s.agent_cert_sha256.clone(),
        curl_pin: s.curl_pin.clone(),
        heartbeat_interval: super::agent::duration(s.cfg.heartbeat_interval),
        agent_timeout: super::agent::duration(s.cfg.agent_timeout),
        health_timeout: super::agent::duration(s.cfg.health_timeout),
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

pub async fn list(
    _: Operator,
    State(s): State<Arc<AppState>>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
) -> ApiResult<Json<Value>> {
    s.db
        .read(|c| {
            let mut stmt = c.prepare(
                "SELECT id, name, status, status_reason, generation, created_at, updated_at
                 FROM instances ORDER BY created_at",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(json!({"id": r.get::<_, String>(0)?, "name": r.get::<_, String>(1)?,
                    "status": r.get::<_, String>(2)?, "status_reason": r.get::<_, Option<String>>(3)?,
                    "generation": r.get::<_, i64>(4)?, "created_at": r.get::<_, i64>(5)?,
                    "updated_at": r.get::<_, i64>(6)?}))
            })?;
            Ok(Json(Value::Array(rows.collect::<Result<_, _>>()?)))
        })
        .await
}

pub async fn show(
    _: Operator,
    State(s): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
) -> ApiResult<Json<Value>> {
    check_uuid(&id)?;
    let st = s.clone();
    s.db
        .read(move |c| {
            let inst = c
                .query_row(
                    "SELECT name, status, status_reason, generation, created_at, updated_at, spec_json
                     FROM instances WHERE id = ?1",
                    params![id],
                    |r| {
                        Ok(json!({"id": id, "name": r.get::<_, String>(0)?,
                            "status": r.get::<_, String>(1)?, "status_reason": r.get::<_, Option<String>>(2)?,
                            "generation": r.get::<_, i64>(3)?, "created_at": r.get::<_, i64>(4)?,
                            "updated_at": r.get::<_, i64>(5)?,
                            "spec": serde_json::from_str::<Value>(&r.get::<_, String>(6)?).unwrap_or(Value::Null)}))
                    },
                )
                .optional()?
                .ok_or_else(|| ApiError::not_found(format!("no instance {id}")))?;
            let mut counts: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
            let mut total: BTreeMap<String, i64> = ["pending", "running", "ok", "failed", "skipped"]
                .iter()
                .map(|k| (k.to_string(), 0))
                .collect();
            {
                let mut stmt = c.prepare(
                    "SELECT host, status, COUNT(*) FROM steps WHERE instance = ?1 GROUP BY host, status",
                )?;
                for row in stmt.query_map(params![id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
                })? {
                    let (h, status, n) = row?;
                    *counts.entry(h).or_default().entry(status.clone()).or_default() += n;
                    *total.entry(status).or_default() += n;
                }
            }
            let mut stmt = c.prepare(
                "SELECT name, paired_at, last_heartbeat_at, agent_version, health, unhealthy_reason,
                        unhealthy_since, checks_active_since, credential_hash IS NOT NULL,
                        pairing_key_expires_at, pairing_key_used_at, last_pairing_refusal,
                        last_pairing_refusal_at
                 FROM hosts WHERE instance = ?1 ORDER BY rowid",
            )?;
            let hosts = stmt
                .query_map(params![id], |r| {
                    let name: String = r.get(0)?;
                    let stored: Option<i64> = r.get(2)?;
                    let mem = st.seen(&id, &name);
                    let last = match (stored, mem.as_ref().map(|m| m.at_ms)) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    };
                    let version: Option<String> = r.get(3)?;
                    Ok(json!({
                        "name": name,
                        "paired": r.get::<_, bool>(8)?,
                        "paired_at": r.get::<_, Option<i64>>(1)?,
                        "last_heartbeat_at": last,
                        "agent_version": mem.map(|m| m.agent_version).filter(|v| !v.is_empty()).or(version),
                        "health": r.get::<_, String>(4)?,
                        "unhealthy_reason": r.get::<_, Option<String>>(5)?,
                        "unhealthy_since": r.get::<_, Option<i64>>(6)?,
                        "checks_active_since": r.get::<_, Option<i64>>(7)?,
                        "pairing_key_expires_at": r.get::<_, Option<i64>>(9)?,
                        "pairing_key_used_at": r.get::<_, Option<i64>>(10)?,
                        "last_pairing_refusal": r.get::<_, Option<String>>(11)?,
                        "last_pairing_refusal_at": r.get::<_, Option<i64>>(12)?,
                        "steps": counts.get(&name).cloned().unwrap_or_default(),
                    }))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut inst = inst;
            inst["hosts"] = Value::Array(hosts);
            inst["steps"] = json!(total);
            Ok(Json(inst))
        })
        .await
}

pub async fn update(
    _: Operator,
    State(s): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
    ApiJson(spec): ApiJson<InstanceSpec>,
) -> ApiResult<Json<Value>> {
    check_uuid(&id)?;
    spec.validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let st = s.clone();
    let id2 = id.clone();
    let status = s
        .db
        .write(move |c| {
            let tx = c.transaction()?;
            let status = exists(&tx, &id2)?;
            if status == "deleted" {
                return Err(ApiError::conflict("the instance is deleted"));
            }
            let old = dispatch::spec_of(&st, &tx, &id2)?;
            let old_hosts: BTreeSet<&str> = old.host_names().collect();
            let new_hosts: BTreeSet<&str> = spec.host_names().collect();
            if old_hosts != new_hosts {
                return Err(ApiError::bad_request(format!(
                    "an update must keep the same hosts ({:?}); create a new instance to change them",
                    old_hosts
                )));
            }
            let mut existing: BTreeMap<(String, String, u32), String> = BTreeMap::new();
            {
                let mut stmt = tx.prepare("SELECT host, grp, idx, hash FROM steps WHERE instance = ?1")?;
                for row in stmt.query_map(params![id2], |r| {
                    Ok(((r.get(0)?, r.get(1)?, r.get(2)?), r.get(3)?))
                })? {
                    let (k, h) = row?;
                    existing.insert(k, h);
                }
            }
            let mut wanted = BTreeSet::new();
            let mut touched_hosts = BTreeSet::new();
            // Steps reset because their hash changed (or that are new).
            let mut rerun: BTreeSet<(String, String, u32)> = BTreeSet::new();
            for g in &spec.groups {
                for h in &g.hosts {
                    for stp in &g.steps {
                        let key = (h.clone(), g.name.clone(), stp.index);
                        let hash = stp.hash();
                        match existing.get(&key) {
                            Some(old_hash) if *old_hash == hash => {}
                            Some(_) => {
                                tx.execute(
                                    "UPDATE steps SET hash = ?5, once = ?6 WHERE instance = ?1 AND host = ?2 AND grp = ?3 AND idx = ?4",
                                    params![id2, h, g.name, stp.index, hash, stp.options.once],
                                )?;
                                dispatch::reset_steps(
                                    &tx,
                                    "instance = ?1 AND host = ?2 AND grp = ?3 AND idx = ?4",
                                    &[&id2, h, &g.name, &stp.index],
                                )?;
                                touched_hosts.insert(h.clone());
                                rerun.insert(key.clone());
                            }
                            None => {
                                tx.execute(
                                    "INSERT INTO steps (instance, host, grp, idx, hash, once, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending')",
                                    params![id2, h, g.name, stp.index, hash, stp.options.once],
                                )?;
                                touched_hosts.insert(h.clone());
                                rerun.insert(key.clone());
                            }
                        }
                        wanted.insert(key);
                    }
                }
            }
            // Steps that use the result of a step that runs again run again
            // too (transitively): their input may change. A `once` step that
            // is skipped keeps its result, so it does not propagate.
            let runs_again = |(h, g, i): &(String, String, u32)| {
                tx.query_row(
                    "SELECT status FROM steps WHERE instance = ?1 AND host = ?2 AND grp = ?3 AND idx = ?4",
                    params![id2, h, g, i],
                    |r| r.get::<_, String>(0),
                )
                .is_ok_and(|st| st == "pending")
            };
            let mut visited = rerun.clone();
            rerun.retain(|k| runs_again(k));
            loop {
                let mut more = Vec::new();
                for g in &spec.groups {
                    for h in &g.hosts {
                        for stp in &g.steps {
                            let key = (h.clone(), g.name.clone(), stp.index);
                            if visited.contains(&key) {
                                continue;
                            }
                            let uses_rerun = std::iter::once(&stp.content)
                                .chain(&stp.options.environment_variables)
                                .flat_map(|t| ibkit_api::reference::find_references(t).unwrap_or_default())
                                .any(|r| {
                                    let host = if r.host == "self" { h.clone() } else { r.host.clone() };
                                    rerun.contains(&(host, r.group.clone(), r.index))
                                });
                            if uses_rerun {
                                more.push(key);
                            }
                        }
                    }
                }
                if more.is_empty() {
                    break;
                }
                for key in more {
                    dispatch::reset_steps(
                        &tx,
                        "instance = ?1 AND host = ?2 AND grp = ?3 AND idx = ?4",
                        &[&id2, &key.0, &key.1, &key.2],
                    )?;
                    touched_hosts.insert(key.0.clone());
                    if runs_again(&key) {
                        rerun.insert(key.clone());
                    }
                    visited.insert(key);
                }
            }
            for key in existing.keys().filter(|k| !wanted.contains(*k)) {
                tx.execute(
                    "DELETE FROM steps WHERE instance = ?1 AND host = ?2 AND grp = ?3 AND idx = ?4",
                    params![id2, key.0, key.1, key.2],
                )?;
            }
            for h in &touched_hosts {
                tx.execute(
                    "UPDATE hosts SET checks_active_since = NULL WHERE instance = ?1 AND name = ?2",
                    params![id2, h],
                )?;
            }
            tx.execute(
                "UPDATE instances SET spec_json = ?2, name = ?3, generation = generation + 1,
                 status = 'applying', updated_at = ?4 WHERE id = ?1",
                params![id2, serde_json::to_string(&spec)?, spec.name, now_ms()],
            )?;
            st.cache_spec(&id2, Arc::new(spec));
            dispatch::recompute_status(&st, &tx, &id2)?;
            let status = exists(&tx, &id2)?;
            tx.commit()?;
            Ok(status)
        })
        .await?;
    s.notify_instance(&id);
    Ok(Json(json!({"id": id, "status": status})))
}

pub async fn redeploy(
    _: Operator,
    State(s): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
) -> ApiResult<Json<Value>> {
    check_uuid(&id)?;
    let st = s.clone();
    let id2 = id.clone();
    let (status, generation) = s
        .db
        .write(move |c| {
            let tx = c.transaction()?;
            if exists(&tx, &id2)? == "deleted" {
                return Err(ApiError::conflict("the instance is deleted"));
            }
            dispatch::reset_steps(&tx, "instance = ?1", &[&id2])?;
            tx.execute(
                "UPDATE hosts SET checks_active_since = NULL WHERE instance = ?1",
                params![id2],
            )?;
            tx.execute(
                "UPDATE instances SET generation = generation + 1, status = 'applying', updated_at = ?2 WHERE id = ?1",
                params![id2, now_ms()],
            )?;
            dispatch::recompute_status(&st, &tx, &id2)?;
            let r = tx.query_row(
                "SELECT status, generation FROM instances WHERE id = ?1",
                params![id2],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )?;
            tx.commit()?;
            Ok(r)
        })
        .await?;
    s.notify_instance(&id);
    Ok(Json(
        json!({"id": id, "status": status, "generation": generation}),
    ))
}

pub async fn delete(
    _: Operator,
    State(s): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
) -> ApiResult<Json<Value>> {
    check_uuid(&id)?;
    let id2 = id.clone();
    s.db
        .write(move |c| {
            let tx = c.transaction()?;
            exists(&tx, &id2)?;
            tx.execute(
                "UPDATE instances SET status = 'deleted', status_reason = 'deleted by the operator', updated_at = ?2 WHERE id = ?1",
                params![id2, now_ms()],
            )?;
            tx.execute(
                "UPDATE hosts SET credential_hash = NULL, pairing_key_hash = NULL WHERE instance = ?1",
                params![id2],
            )?;
            tx.execute(
                "UPDATE recovery_requests SET status = 'resolved', resolved_at = ?2 WHERE instance = ?1 AND status = 'open'",
                params![id2, now_ms()],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await?;
    s.notify_instance(&id);
    Ok(Json(json!({"id": id, "status": "deleted"})))
}

pub async fn rekey(
    _: Operator,
    State(s): State<Arc<AppState>>,
    ApiPath((id, host)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<PairingKeyQuery>,
) -> ApiResult<Json<Value>> {
    check_uuid(&id)?;
    let ttl = q.ttl()?;
    let key = new_secret("pk_");
    let st = s.clone();
    let (id2, host2, kh) = (id.clone(), host.clone(), hash_secret(&key));
    let default_ttl = ms(s.cfg.pairing_key_ttl);
    let expires_at = s
        .db
        .write(move |c| {
            let tx = c.transaction()?;
            if exists(&tx, &id2)? == "deleted" {
                return Err(ApiError::conflict("the instance is deleted"));
            }
            // This request's lifetime, else the instance's, else the service's.
            let instance_ttl: Option<i64> = tx.query_row(
                "SELECT pairing_key_ttl_ms FROM instances WHERE id = ?1",
                params![id2],
                |r| r.get(0),
            )?;
            let expires_at = now_ms().saturating_add(ttl.or(instance_ttl).unwrap_or(default_ttl));
            // A fresh key: unused, with its own expiry.
            let n = tx.execute(
                "UPDATE hosts SET pairing_key_hash = ?3, pairing_key_expires_at = ?4,
                 pairing_key_used_at = NULL, credential_hash = NULL, paired_at = NULL,
                 checks_active_since = NULL, health = 'unknown', unhealthy_reason = NULL, unhealthy_since = NULL
                 WHERE instance = ?1 AND name = ?2",
                params![id2, host2, kh, expires_at],
            )?;
            if n == 0 {
                return Err(ApiError::not_found(format!("no host {host2} in instance {id2}")));
            }
            // The recreated VM runs its groups again (once steps are skipped).
            dispatch::reset_steps(&tx, "instance = ?1 AND host = ?2", &[&id2, &host2])?;
            tx.execute(
                "DELETE FROM health_results WHERE instance = ?1 AND host = ?2",
                params![id2, host2],
            )?;
            dispatch::recompute_status(&st, &tx, &id2)?;
            tx.commit()?;
            Ok(expires_at)
        })
        .await?;
    s.notify_instance(&id);
    let cmd = install_command(&s, &id, &host, &key);
    Ok(Json(
        json!({"name": host, "pairing_key": key, "pairing_key_expires_at": expires_at, "install_command": cmd}),
    ))
}

/// Structured result text a step listing parses, all steps together: a
/// parsed tree costs many times its text, so big ones are left to the
/// result route (`structured_result` null, `structured_result_bytes` set).
const LISTING_STRUCTURED_BUDGET: usize = 256 << 10;

fn step_json(r: &rusqlite::Row<'_>, budget: &mut usize) -> rusqlite::Result<Value> {
    let text: Option<String> = r.get(19)?;
    let bytes = text.as_ref().map(String::len);
    let structured = text.and_then(|t| {
        let len = t.len();
        if len > *budget {
            return None;
        }
        *budget -= len;
        StructuredJson::from_stored(t).parse_bounded(len).ok()
    });
    Ok(json!({
        "host": r.get::<_, String>(0)?,
        "group": r.get::<_, String>(1)?,
        "index": r.get::<_, u32>(2)?,
        "hash": r.get::<_, String>(3)?,
        "once": r.get::<_, bool>(4)?,
        "status": r.get::<_, String>(5)?,
        "exec_id": r.get::<_, Option<String>>(6)?,
        "dispatched_at": r.get::<_, Option<i64>>(7)?,
        "attempts": r.get::<_, i64>(8)?,
        "exit_code": r.get::<_, Option<i64>>(9)?,
        "signal": r.get::<_, Option<i64>>(10)?,
        "timed_out": r.get::<_, bool>(11)?,
        "halted": r.get::<_, bool>(12)?,
        "started_at_ms": r.get::<_, Option<i64>>(13)?,
        "finished_at_ms": r.get::<_, Option<i64>>(14)?,
        "log": r.get::<_, Option<String>>(15)?,
        "log_truncated_bytes": r.get::<_, i64>(16)?,
        "result": r.get::<_, Option<String>>(17)?,
        "result_truncated_bytes": r.get::<_, i64>(18)?,
        "structured_result": structured,
        "structured_result_bytes": bytes,
        "error": r.get::<_, Option<String>>(20)?,
        "ever_ok": r.get::<_, bool>(21)?,
    }))
}

const STEP_COLUMNS: &str =
    "host, grp, idx, hash, once, status, exec_id, dispatched_at, attempts, exit_code,
    signal, timed_out, halted, started_at_ms, finished_at_ms, log, log_truncated_bytes, result,
    result_truncated_bytes, structured_result, error, ever_ok";

fn host_exists(c: &Connection, id: &str, host: &str) -> ApiResult<()> {
    let found: Option<i64> = c
        .query_row(
            "SELECT 1 FROM hosts WHERE instance = ?1 AND name = ?2",
            params![id, host],
            |r| r.get(0),
        )
        .optional()?;
    found
        .map(|_| ())
        .ok_or_else(|| ApiError::not_found(format!("no host {host} in instance {id}")))
}

pub async fn steps(
    _: Operator,
    State(s): State<Arc<AppState>>,
    ApiPath((id, host)): ApiPath<(String, String)>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
) -> ApiResult<Json<Value>> {
    check_uuid(&id)?;
    s.db.read(move |c| {
        host_exists(c, &id, &host)?;
        let spec_json: String = c.query_row(
            "SELECT spec_json FROM instances WHERE id = ?1",
            params![id],
            |r| r.get(0),
        )?;
        let spec: InstanceSpec = serde_json::from_str(&spec_json)?;
        let order: Vec<String> = spec.group_order().iter().map(|g| g.name.clone()).collect();
        let mut stmt = c.prepare(&format!(
            "SELECT {STEP_COLUMNS} FROM steps WHERE instance = ?1 AND host = ?2 ORDER BY grp, idx"
        ))?;
        let mut budget = LISTING_STRUCTURED_BUDGET;
        let mut rows: Vec<Value> = stmt
            .query_map(params![id, host], |r| step_json(r, &mut budget))?
            .collect::<Result<_, _>>()?;
        rows.sort_by_key(|v| {
            let g = v["group"].as_str().unwrap_or("");
            (
                order.iter().position(|o| o == g).unwrap_or(usize::MAX),
                v["index"].as_u64().unwrap_or(0),
            )
        });
        Ok(Json(Value::Array(rows)))
    })
    .await
}

pub async fn result(
    _: Operator,
    State(s): State<Arc<AppState>>,
    ApiPath((id, host, group, index)): ApiPath<(String, String, String, u32)>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
) -> ApiResult<Json<Value>> {
    check_uuid(&id)?;
    let limit = s.cfg.max_structured_bytes;
    s.db.read(move |c| {
        let row: Option<(String, Option<String>, Option<String>)> = c
            .query_row(
                "SELECT status, result, structured_result FROM steps
                     WHERE instance = ?1 AND host = ?2 AND grp = ?3 AND idx = ?4",
                params![id, host, group, index],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let (status, raw, structured) = row.ok_or_else(|| {
            ApiError::not_found(format!("no step {host}/{group}/{index} in instance {id}"))
        })?;
        // Parsed with the size and depth caps: rows an older service
        // stored may be far bigger than today's limit.
        let structured = structured
            .map(|t| {
                StructuredJson::from_stored(t).parse_bounded(limit).map_err(|e| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!("the stored structured result of {host}/{group}/{index} cannot be shown: {e}"),
                    )
                })
            })
            .transpose()?;
        Ok(Json(json!({
            "status": status,
            "raw": raw,
            "structured": structured,
        })))
    })
    .await
}

pub async fn host_health(
    _: Operator,
    State(s): State<Arc<AppState>>,
    ApiPath((id, host)): ApiPath<(String, String)>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
) -> ApiResult<Json<Value>> {
    check_uuid(&id)?;
    s.db
        .read(move |c| {
            host_exists(c, &id, &host)?;
            let mut stmt = c.prepare(
                "SELECT check_name, ok, detail, at_ms, received_at, last_ok_at FROM health_results
                 WHERE instance = ?1 AND host = ?2 ORDER BY check_name",
            )?;
            let rows = stmt
                .query_map(params![id, host], |r| {
                    Ok(json!({"check": r.get::<_, String>(0)?, "ok": r.get::<_, bool>(1)?,
                        "detail": r.get::<_, String>(2)?, "at_ms": r.get::<_, i64>(3)?,
                        "received_at": r.get::<_, i64>(4)?, "last_ok_at": r.get::<_, Option<i64>>(5)?}))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Json(Value::Array(rows)))
        })
        .await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RecoveryQuery {
    /// `open` or `resolved`.
    status: Option<String>,
    /// Only requests of this instance id.
    instance: Option<String>,
}

pub async fn recovery_list(
    _: Operator,
    State(s): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<RecoveryQuery>,
) -> ApiResult<Json<Value>> {
    if let Some(st) = &q.status
        && !matches!(st.as_str(), "open" | "resolved")
    {
        return Err(ApiError::bad_request("status must be open or resolved"));
    }
    s.db
        .read(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, instance, host, kind, reason, created_at, status, resolved_at
                 FROM recovery_requests WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR instance = ?2)
                 ORDER BY created_at",
            )?;
            let rows = stmt
                .query_map(params![q.status, q.instance], |r| {
                    Ok(json!({"id": r.get::<_, String>(0)?, "instance": r.get::<_, String>(1)?,
                        "host": r.get::<_, String>(2)?, "kind": r.get::<_, String>(3)?,
                        "reason": r.get::<_, String>(4)?, "created_at": r.get::<_, i64>(5)?,
                        "status": r.get::<_, String>(6)?, "resolved_at": r.get::<_, Option<i64>>(7)?}))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Json(Value::Array(rows)))
        })
        .await
}

pub async fn recovery_resolve(
    _: Operator,
    State(s): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
) -> ApiResult<Json<Value>> {
    let id2 = id.clone();
    s.db
        .write(move |c| {
            let n = c.execute(
                "UPDATE recovery_requests SET status = 'resolved', resolved_at = COALESCE(resolved_at, ?2) WHERE id = ?1",
                params![id2, now_ms()],
            )?;
            if n == 0 {
                return Err(ApiError::not_found(format!("no recovery request {id2}")));
            }
            Ok(())
        })
        .await?;
    Ok(Json(json!({"id": id, "status": "resolved"})))
}

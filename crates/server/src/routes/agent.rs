//! Agent endpoints: pairing, long-polled work, reports, heartbeats, health.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequest as _, Request, State};
use axum::http::StatusCode;
use ibkit_api::StructuredJson;
use ibkit_api::wire::{
    FinalStatus, HealthReport, Heartbeat, PairRequest, PairResponse, Report, ReportEvent,
    WorkResponse,
};
use rusqlite::{OptionalExtension as _, params};
use serde::Deserialize;

use crate::auth::{AgentAuth, digest_eq, hash_secret, new_secret};
use crate::db::now_ms;
use crate::dispatch;
use crate::error::{ApiError, ApiResult};
use crate::monitor::when;
use crate::{ApiJson, ApiQuery, AppState};

/// A duration on the wire (`15s`), saturating.
pub(crate) fn duration(d: Duration) -> ibkit_api::Duration {
    ibkit_api::Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Why a pairing was refused, for the agent and (except an unknown host)
/// for the operator in the host's `last_pairing_refusal`.
struct Refusal {
    status: StatusCode,
    message: String,
    /// What the operator sees (the agent may get a vaguer message).
    note: Option<String>,
}

/// Same answer for an unknown instance, host or key: no oracle.
const PAIRING_REFUSED: &str = "pairing refused: unknown instance or host, or wrong pairing key";

pub async fn pair(
    State(s): State<Arc<AppState>>,
    ApiJson(req): ApiJson<PairRequest>,
) -> ApiResult<Json<PairResponse>> {
    if req.protocol > ibkit_api::PROTOCOL_VERSION {
        return Err(ApiError::bad_request(format!(
            "protocol {} is newer than this service's {}",
            req.protocol,
            ibkit_api::PROTOCOL_VERSION
        )));
    }
    let credential = new_secret("ibk_");
    let (cred_hash, key_hash) = (hash_secret(&credential), hash_secret(&req.pairing_key));
    let (inst, host, version, protocol) = (
        req.instance.clone(),
        req.host.clone(),
        req.agent_version.clone(),
        req.protocol,
    );
    let st = s.clone();
    let outcome =
        s.db.write(move |c| {
            let tx = c.transaction()?;
            let row: Option<(Option<String>, Option<i64>, Option<i64>)> = tx
                .query_row(
                    "SELECT h.pairing_key_hash, h.pairing_key_expires_at, h.pairing_key_used_at
                     FROM hosts h JOIN instances i ON i.id = h.instance
                     WHERE h.instance = ?1 AND h.name = ?2 AND i.status != 'deleted'",
                    params![inst, host],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((stored, expires_at, used_at)) = row else {
                return Ok(Err(Refusal {
                    status: StatusCode::UNAUTHORIZED,
                    message: PAIRING_REFUSED.into(),
                    note: None,
                }));
            };
            let now = now_ms();
            let new_key =
                format!("issue a new one (POST /v1/instances/{inst}/hosts/{host}/pairing-key)");
            let refusal = if !stored.is_some_and(|h| digest_eq(&h, &key_hash)) {
                Some(Refusal {
                    status: StatusCode::UNAUTHORIZED,
                    message: PAIRING_REFUSED.into(),
                    note: Some("pairing refused: wrong pairing key".into()),
                })
            } else if let Some(used) = used_at {
                // A second pairing would revoke the real agent's credential.
                Some(Refusal {
                    status: StatusCode::FORBIDDEN,
                    message: format!(
                        "pairing refused for host {host}: pairing key already used at {} \
                         (keys are single-use), {new_key}",
                        when(used)
                    ),
                    note: None,
                })
            } else if let Some(exp) = expires_at.filter(|e| now > *e) {
                Some(Refusal {
                    status: StatusCode::FORBIDDEN,
                    message: format!(
                        "pairing refused for host {host}: pairing key expired at {}, {new_key}",
                        when(exp)
                    ),
                    note: None,
                })
            } else if protocol < ibkit_api::MIN_PROTOCOL_VERSION {
                // The key stays valid for the reinstalled agent.
                Some(Refusal {
                    status: StatusCode::BAD_REQUEST,
                    message: format!(
                        "agent protocol {protocol} is older than this service's minimum {}: \
                         reinstall the agent",
                        ibkit_api::MIN_PROTOCOL_VERSION
                    ),
                    note: None,
                })
            } else {
                None
            };
            if let Some(r) = refusal {
                let note = r.note.clone().unwrap_or_else(|| r.message.clone());
                tx.execute(
                    "UPDATE hosts SET last_pairing_refusal = ?3, last_pairing_refusal_at = ?4
                     WHERE instance = ?1 AND name = ?2",
                    params![inst, host, note, now],
                )?;
                tx.commit()?;
                return Ok(Err(r));
            }
            tx.execute(
                "UPDATE hosts SET credential_hash = ?3, paired_at = ?4, agent_version = ?5,
                 pairing_key_used_at = ?4
                 WHERE instance = ?1 AND name = ?2 AND pairing_key_used_at IS NULL",
                params![inst, host, cred_hash, now, version],
            )?;
            let spec = dispatch::spec_of(&st, &tx, &inst)?;
            tx.commit()?;
            Ok(Ok(spec))
        })
        .await?;
    let spec = match outcome {
        Ok(spec) => spec,
        Err(r) => {
            tracing::warn!(
                "refused pairing of host {} of instance {}: {}",
                req.host,
                req.instance,
                r.note.as_deref().unwrap_or(&r.message)
            );
            return Err(ApiError::new(r.status, r.message));
        }
    };
    tracing::info!("paired host {} of instance {}", req.host, req.instance);
    s.record_heartbeat(&req.instance, &req.host, &req.agent_version);
    s.notify_host(&req.instance, &req.host);
    Ok(Json(PairResponse {
        credential,
        instance: req.instance,
        host: req.host,
        heartbeat_interval: duration(s.cfg.heartbeat_interval_for(&spec)),
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WorkQuery {
    /// How long to wait for work or a config change (at most 60000).
    #[serde(default)]
    wait_ms: u64,
    /// The `config_rev` of the agent's last answer: a different one ends
    /// the wait at once.
    config_rev: Option<String>,
}

async fn compute_work(s: &Arc<AppState>, auth: &AgentAuth) -> ApiResult<WorkResponse> {
    let st = s.clone();
    let a = auth.clone();
    let (next, checks, spec) =
        s.db.write(move |c| {
            let tx = c.transaction()?;
            // The credential may have been revoked while we waited.
            if crate::db::host_by_credential(&tx, &a.credential_hash)?.is_none() {
                return Err(ApiError::unauthorized(
                    "unknown or revoked agent credential",
                ));
            }
            let next = dispatch::next_work(&st, &tx, &a.instance, &a.host)?;
            // Also needed without checks: it sets the heartbeat interval.
            let spec = dispatch::spec_of(&st, &tx, &a.instance)?;
            let checks = if next.checks_active {
                dispatch::checks_for(&spec, &a.host)
            } else {
                Vec::new()
            };
            tx.commit()?;
            Ok((next, checks, spec))
        })
        .await?;
    if next.changed {
        s.notify_instance(&auth.instance);
    }
    let heartbeat = s.cfg.heartbeat_interval_for(&spec);
    Ok(WorkResponse {
        work: next.work,
        config_rev: dispatch::config_rev(
            &checks,
            u64::try_from(heartbeat.as_millis()).unwrap_or(u64::MAX),
        ),
        health_checks: checks,
        heartbeat_interval: duration(heartbeat),
    })
}

pub async fn work(
    State(s): State<Arc<AppState>>,
    auth: AgentAuth,
    ApiQuery(q): ApiQuery<WorkQuery>,
) -> ApiResult<Json<WorkResponse>> {
    let wait = Duration::from_millis(q.wait_ms.min(60_000));
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribe before reading, so a change in between is not lost.
    let mut rx = s.subscribe(&auth.instance, &auth.host);
    rx.borrow_and_update();
    loop {
        let resp = compute_work(&s, &auth).await?;
        if resp.work.is_some()
            || q.config_rev.as_deref() != Some(resp.config_rev.as_str())
            || tokio::time::Instant::now() >= deadline
        {
            return Ok(Json(resp));
        }
        tokio::select! {
            r = rx.changed() => {
                if r.is_err() {
                    return Ok(Json(resp));
                }
            }
            _ = tokio::time::sleep_until(deadline) => return Ok(Json(resp)),
        }
    }
}

/// Checks a reported structured result against the service's rules (at
/// most `limit` bytes, depth, valid JSON, an object) without building a
/// tree of it.
pub(crate) fn check_structured(s: &StructuredJson, limit: usize) -> Result<(), String> {
    s.validate(limit).map_err(|e| match e {
        ibkit_api::structured::StructuredError::TooLarge { .. } => {
            format!("{e} (ibkit serve --max-structured-bytes)")
        }
        e => e.to_string(),
    })
}

pub async fn report(
    State(s): State<Arc<AppState>>,
    auth: AgentAuth,
    req: Request,
) -> ApiResult<Json<serde_json::Value>> {
    // Report bodies in memory at once are bounded (per host and overall)
    // before a byte of this one is read.
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let _permit = s
        .report_permit(&auth.instance, &auth.host, declared)
        .await?;
    let ApiJson(report) = ApiJson::<Report>::from_request(req, &()).await?;
    if report.report_id.is_empty() || report.report_id.len() > 200 {
        return Err(ApiError::bad_request("report_id must be 1-200 characters"));
    }
    // A structured result the service will not keep fails the step, with
    // the reason: refusing the report (4xx) would make the agent drop it
    // or send it again forever, and the step would never end.
    let structured_refused = match &report.event {
        ReportEvent::Finished(o) => o
            .structured_result
            .as_ref()
            .and_then(|j| check_structured(j, s.cfg.max_structured_bytes).err()),
        ReportEvent::Running { .. } => None,
    };
    let st = s.clone();
    let a = auth.clone();
    let applied = s
        .db
        .write(move |c| {
            let tx = c.transaction()?;
            let step: Option<(String, String, String, u32, String)> = tx
                .query_row(
                    "SELECT instance, host, grp, idx, status FROM steps WHERE exec_id = ?1",
                    params![report.exec_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()?;
            let Some((inst, host, grp, idx, status)) = step else {
                return Err(ApiError::conflict(format!(
                    "execution {} is unknown or was superseded; drop it",
                    report.exec_id
                )));
            };
            if inst != a.instance || host != a.host {
                return Err(ApiError::forbidden(
                    "this execution belongs to another host",
                ));
            }
            // De-duplicated per host, after the ownership check: a host
            // cannot make another host's report look like a duplicate.
            // ('', '') holds the ids an older service recorded globally.
            let seen: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM processed_reports WHERE report_id = ?3
                     AND ((instance = ?1 AND host = ?2) OR (instance = '' AND host = ''))",
                    params![a.instance, a.host, report.report_id],
                    |r| r.get(0),
                )
                .optional()?;
            if seen.is_some() {
                return Ok(None);
            }
            let key = params![inst, host, grp, idx];
            let finished = matches!(report.event, ReportEvent::Finished(_));
            let applied = if matches!(status.as_str(), "ok" | "failed" | "skipped") {
                false
            } else {
                match &report.event {
                    ReportEvent::Running {
                        attempt,
                        started_at_ms,
                    } => {
                        tx.execute(
                            "UPDATE steps SET status = 'running', attempts = ?5,
                             started_at_ms = COALESCE(started_at_ms, ?6)
                             WHERE instance = ?1 AND host = ?2 AND grp = ?3 AND idx = ?4",
                            params![key[0], key[1], key[2], key[3], attempt, started_at_ms],
                        )?;
                    }
                    ReportEvent::Finished(o) => {
                        let ok = o.status == FinalStatus::Ok && structured_refused.is_none();
                        let (structured, error) = match &structured_refused {
                            Some(why) => {
                                let why = format!("the service refused the structured result: {why}");
                                let error = match &o.error {
                                    Some(e) if !e.is_empty() => format!("{e}; {why}"),
                                    _ => why,
                                };
                                (None, Some(error))
                            }
                            None => (o.structured_result.as_ref().map(|j| j.as_str()), o.error.clone()),
                        };
                        tx.execute(
                            "UPDATE steps SET status = ?5, attempts = ?6, exit_code = ?7, signal = ?8,
                             timed_out = ?9, halted = ?10, started_at_ms = ?11, finished_at_ms = ?12,
                             log = ?13, log_truncated_bytes = ?14, result = ?15,
                             result_truncated_bytes = ?16, structured_result = ?17, error = ?18,
                             ever_ok = MAX(ever_ok, ?19)
                             WHERE instance = ?1 AND host = ?2 AND grp = ?3 AND idx = ?4",
                            params![
                                key[0],
                                key[1],
                                key[2],
                                key[3],
                                if ok { "ok" } else { "failed" },
                                o.attempts,
                                o.exit_code,
                                o.signal,
                                o.timed_out,
                                o.halted,
                                o.started_at_ms,
                                o.finished_at_ms,
                                o.log,
                                i64::try_from(o.log_truncated_bytes).unwrap_or(i64::MAX),
                                o.result,
                                i64::try_from(o.result_truncated_bytes).unwrap_or(i64::MAX),
                                structured,
                                error,
                                ok,
                            ],
                        )?;
                    }
                }
                true
            };
            tx.execute(
                "INSERT INTO processed_reports (instance, host, report_id, at) VALUES (?1, ?2, ?3, ?4)",
                params![a.instance, a.host, report.report_id, now_ms()],
            )?;
            if applied && finished {
                dispatch::recompute_status(&st, &tx, &inst)?;
            }
            let consumed = applied && finished && {
                let spec = dispatch::spec_of(&st, &tx, &inst)?;
                dispatch::group_is_consumed(&spec, &grp)
            };
            tx.commit()?;
            Ok(Some((applied, finished, consumed)))
        })
        .await?;
    let Some((applied, finished, consumed)) = applied else {
        return Ok(Json(
            serde_json::json!({"applied": false, "duplicate": true}),
        ));
    };
    if applied && finished {
        if consumed {
            s.notify_instance(&auth.instance);
        } else {
            s.notify_host(&auth.instance, &auth.host);
        }
    }
    Ok(Json(serde_json::json!({"applied": applied})))
}

pub async fn heartbeat(
    State(s): State<Arc<AppState>>,
    auth: AgentAuth,
    ApiJson(hb): ApiJson<Heartbeat>,
) -> ApiResult<Json<serde_json::Value>> {
    let version: String = hb.agent_version.chars().take(100).collect();
    s.record_heartbeat(&auth.instance, &auth.host, &version);
    Ok(Json(serde_json::json!({"ok": true})))
}

pub async fn health(
    State(s): State<Arc<AppState>>,
    auth: AgentAuth,
    ApiJson(h): ApiJson<HealthReport>,
) -> ApiResult<Json<serde_json::Value>> {
    let st = s.clone();
    let a = auth.clone();
    s.db
        .write(move |c| {
            let tx = c.transaction()?;
            let spec = dispatch::spec_of(&st, &tx, &a.instance)?;
            if !spec
                .health_checks
                .iter()
                .any(|c| c.name == h.check && c.applies_to(&a.host))
            {
                return Err(ApiError::conflict(format!(
                    "no health check {:?} for host {}",
                    h.check, a.host
                )));
            }
            let now = now_ms();
            let detail: String = h.detail.chars().take(4000).collect();
            tx.execute(
                "INSERT INTO health_results (instance, host, check_name, ok, detail, at_ms, received_at, last_ok_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, CASE WHEN ?4 THEN ?7 END)
                 ON CONFLICT (instance, host, check_name) DO UPDATE SET ok = ?4, detail = ?5,
                   at_ms = ?6, received_at = ?7, last_ok_at = CASE WHEN ?4 THEN ?7 ELSE last_ok_at END",
                params![a.instance, a.host, h.check, h.ok, detail, h.at_ms, now],
            )?;
            dispatch::recompute_status(&st, &tx, &a.instance)?;
            tx.commit()?;
            Ok(())
        })
        .await?;
    s.record_heartbeat(
        &auth.instance,
        &auth.host,
        &s.seen(&auth.instance, &auth.host)
            .map(|x| x.agent_version)
            .unwrap_or_default(),
    );
    Ok(Json(serde_json::json!({"ok": true})))
}

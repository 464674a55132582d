//! Agent endpoints: pairing, long-polled work, reports, heartbeats, health.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use ibkit_api::wire::{
    FinalStatus, HealthReport, Heartbeat, PairRequest, PairResponse, Report, ReportEvent,
    WorkResponse,
};
use rusqlite::{OptionalExtension as _, params};
use serde::Deserialize;

use crate::auth::{AgentAuth, hash_secret, new_secret};
use crate::db::now_ms;
use crate::dispatch;
use crate::error::{ApiError, ApiResult};
use crate::{ApiJson, ApiQuery, AppState};

/// A duration on the wire (`15s`), saturating.
pub(crate) fn duration(d: Duration) -> ibkit_api::Duration {
    ibkit_api::Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

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
    let (inst, host, version) = (
        req.instance.clone(),
        req.host.clone(),
        req.agent_version.clone(),
    );
    let st = s.clone();
    let spec =
        s.db.write(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE hosts SET credential_hash = ?4, paired_at = ?5, agent_version = ?6
                 WHERE instance = ?1 AND name = ?2 AND pairing_key_hash = ?3
                 AND EXISTS (SELECT 1 FROM instances WHERE id = ?1 AND status != 'deleted')",
                params![inst, host, key_hash, cred_hash, now_ms(), version],
            )?;
            let spec = if n == 1 {
                Some(dispatch::spec_of(&st, &tx, &inst)?)
            } else {
                None
            };
            tx.commit()?;
            Ok(spec)
        })
        .await?;
    let Some(spec) = spec else {
        return Err(ApiError::unauthorized(
            "pairing refused: unknown instance or host, or wrong pairing key",
        ));
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

pub async fn report(
    State(s): State<Arc<AppState>>,
    auth: AgentAuth,
    ApiJson(report): ApiJson<Report>,
) -> ApiResult<Json<serde_json::Value>> {
    if report.report_id.is_empty() || report.report_id.len() > 200 {
        return Err(ApiError::bad_request("report_id must be 1-200 characters"));
    }
    let st = s.clone();
    let a = auth.clone();
    let applied = s
        .db
        .write(move |c| {
            let tx = c.transaction()?;
            let seen: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM processed_reports WHERE report_id = ?1",
                    params![report.report_id],
                    |r| r.get(0),
                )
                .optional()?;
            if seen.is_some() {
                return Ok(None);
            }
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
                        let ok = o.status == FinalStatus::Ok;
                        let structured = o.structured_result.as_ref().map(|s| s.as_str());
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
                                o.error,
                                ok,
                            ],
                        )?;
                    }
                }
                true
            };
            tx.execute(
                "INSERT INTO processed_reports (report_id, at) VALUES (?1, ?2)",
                params![report.report_id, now_ms()],
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

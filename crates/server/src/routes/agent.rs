//! Agent endpoints: pairing, long-polled work, reports, heartbeats, health,
//! the billing token.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequest as _, Request, State};
use axum::http::StatusCode;
use ibkit_api::StructuredJson;
use ibkit_api::wire::{
    Ack, BillingToken, HealthReport, Heartbeat, PairRequest, PairResponse, Report, ReportAck,
    ReportEvent, StepStatus, WorkResponse,
};
use ibkit_support::clock::{format_utc_ms as when, now_ms};
use serde::Deserialize;

use crate::auth::{AgentAuth, digest_eq, hash_secret, new_secret};
use crate::error::{ApiError, ApiResult};
use crate::{ApiJson, ApiQuery, AppState, dispatch, store};

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
        s.db.write(move |c| -> ApiResult<Result<_, Refusal>> {
            let tx = c.transaction()?;
            let row = store::hosts::pairing_state(&tx, &inst, &host)?;
            let Some(store::hosts::PairingState {
                key_hash: stored,
                expires_at,
                used_at,
            }) = row
            else {
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
                store::hosts::note_pairing_refusal(&tx, &inst, &host, &note, now)?;
                tx.commit()?;
                return Ok(Err(r));
            }
            store::hosts::pair(&tx, &inst, &host, &cred_hash, &version, now)?;
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
    let _timer = s.metrics.time_work_answer();
    let st = s.clone();
    let a = auth.clone();
    let (next, checks, spec) =
        s.db.write(move |c| {
            let tx = c.transaction()?;
            // The credential may have been revoked while we waited.
            if store::hosts::by_credential(&tx, &a.credential_hash)?.is_none() {
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
    let started = std::time::Instant::now();
    let answer = long_poll(&s, &auth, &q).await;
    let handed_out = matches!(&answer, Ok(resp) if resp.work.is_some());
    s.metrics.long_poll_done(started, handed_out);
    answer.map(Json)
}

/// Answers at once when there is a step or the agent's config is stale,
/// else when something changes for the host or the wait ends.
async fn long_poll(s: &Arc<AppState>, auth: &AgentAuth, q: &WorkQuery) -> ApiResult<WorkResponse> {
    let wait = Duration::from_millis(q.wait_ms.min(60_000));
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribe before reading, so a change in between is not lost.
    let mut rx = s.subscribe(&auth.instance, &auth.host);
    rx.borrow_and_update();
    loop {
        let resp = compute_work(s, auth).await?;
        if resp.work.is_some()
            || q.config_rev.as_deref() != Some(resp.config_rev.as_str())
            || tokio::time::Instant::now() >= deadline
        {
            return Ok(resp);
        }
        tokio::select! {
            r = rx.changed() => {
                if r.is_err() {
                    return Ok(resp);
                }
            }
            _ = tokio::time::sleep_until(deadline) => return Ok(resp),
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
) -> ApiResult<Json<ReportAck>> {
    let _timer = s.metrics.time_report();
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
    let finished_step =
        crate::metrics::FinishedStep::of(&report.event, structured_refused.is_some());
    let st = s.clone();
    let a = auth.clone();
    let applied =
        s.db.write(move |c| {
            let tx = c.transaction()?;
            let Some(store::steps::Execution {
                instance: inst,
                host,
                key,
                status,
            }) = store::steps::by_exec(&tx, &report.exec_id)?
            else {
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
            if store::reports::seen(&tx, &a.instance, &a.host, &report.report_id)? {
                return Ok(None);
            }
            let finished = matches!(report.event, ReportEvent::Finished(_));
            let applied = if matches!(
                status,
                StepStatus::Ok | StepStatus::Failed | StepStatus::Skipped
            ) {
                false
            } else {
                match &report.event {
                    ReportEvent::Running {
                        attempt,
                        started_at_ms,
                    } => {
                        store::steps::mark_running(&tx, &inst, &key, *attempt, *started_at_ms)?;
                    }
                    ReportEvent::Finished(o) => {
                        store::steps::finish(&tx, &inst, &key, o, structured_refused.as_deref())?;
                    }
                }
                true
            };
            store::reports::record(&tx, &a.instance, &a.host, &report.report_id, now_ms())?;
            if applied && finished {
                dispatch::recompute_status(&st, &tx, &inst)?;
            }
            let consumed = applied && finished && {
                let spec = dispatch::spec_of(&st, &tx, &inst)?;
                dispatch::group_is_consumed(&spec, &key.1)
            };
            tx.commit()?;
            Ok::<_, ApiError>(Some((applied, finished, consumed)))
        })
        .await?;
    let Some((applied, finished, consumed)) = applied else {
        return Ok(Json(ReportAck {
            applied: false,
            duplicate: Some(true),
        }));
    };
    if applied && let Some(step) = finished_step {
        s.metrics.step_finished(step);
    }
    if applied && finished {
        if consumed {
            s.notify_instance(&auth.instance);
        } else {
            s.notify_host(&auth.instance, &auth.host);
        }
    }
    Ok(Json(ReportAck {
        applied,
        duplicate: None,
    }))
}

pub async fn heartbeat(
    State(s): State<Arc<AppState>>,
    auth: AgentAuth,
    ApiJson(hb): ApiJson<Heartbeat>,
) -> ApiResult<Json<Ack>> {
    let version: String = hb.agent_version.chars().take(100).collect();
    s.record_heartbeat(&auth.instance, &auth.host, &version);
    Ok(Json(Ack { ok: true }))
}

pub async fn health(
    State(s): State<Arc<AppState>>,
    auth: AgentAuth,
    ApiJson(h): ApiJson<HealthReport>,
) -> ApiResult<Json<Ack>> {
    let st = s.clone();
    let a = auth.clone();
    s.db.write(move |c| {
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
        store::health::record(&tx, &a.instance, &a.host, &h, &detail, now)?;
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
    Ok(Json(Ack { ok: true }))
}

/// The instance's marketplace access keys (rotated when due) for the token
/// file the agent keeps; 404 when the instance has no billing.
pub async fn billing_token(
    State(s): State<Arc<AppState>>,
    auth: AgentAuth,
) -> ApiResult<Json<BillingToken>> {
    crate::billing::agent_token(&s, &auth.instance)
        .await
        .map(Json)
}

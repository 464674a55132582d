//! Operator endpoints: instances, hosts, steps, results, recovery requests,
//! the billing emulator's key, credentials and usage.
//! Each is an [`Endpoint`] of `ibkit_api::operator::endpoint` implemented
//! here ([`Serve`]); the router and the OpenAPI document are derived from
//! the same list, and storage is [`crate::store`]'s.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use ibkit_api::operator::endpoint::{self as ep, Endpoint, RequestBody};
use ibkit_api::operator::{
    BillingPublicKey, CreateInstanceQuery, DayUsage, DeploymentStored, DeploymentTimeline,
    HealthResultView, HostPairing, InstanceBilling, InstanceCreated, InstanceDetail, InstanceId,
    InstanceStatusView, InstanceSummary, InstanceUsage, NoBody, NoQuery, PairingKeyQuery,
    ParamUsage, RecoveryQuery, RecoveryRequest, RecoveryResolved, RecoveryStatus, Redeployed,
    StepCounts, StepResult, StepView,
};
use ibkit_api::wire::{InstanceStatus, ServiceInfo, StepStatus};
use ibkit_api::{InstanceSpec, StructuredJson};
use ibkit_support::clock::now_ms;
use serde::de::DeserializeOwned;

use crate::auth::{Operator, hash_secret, new_secret};
use crate::error::{ApiError, ApiResult};
use crate::store::{self, StepKey, steps::Scope};
use crate::{ApiJson, ApiQuery, AppState, billing, dispatch};

/// An operator endpoint the service answers: `serve` gets the parsed path
/// parameters, query and body and returns the endpoint's answer type.
pub trait Serve: Endpoint {
    fn serve(
        s: Arc<AppState>,
        params: Self::Params,
        query: Self::Query,
        body: Self::Body,
    ) -> impl Future<Output = ApiResult<Self::Answer>> + Send;
}

/// The path parameters of an endpoint (none for a path without `{…}`).
pub struct EndpointParams<P>(pub P);

impl<P: DeserializeOwned + Send> FromRequestParts<Arc<AppState>> for EndpointParams<P> {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        use axum::extract::rejection::PathRejection;
        match axum::extract::Path::<P>::from_request_parts(parts, state).await {
            Ok(p) => Ok(EndpointParams(p.0)),
            Err(PathRejection::MissingPathParams(_)) => {
                let empty = serde::de::value::MapDeserializer::<_, serde::de::value::Error>::new(
                    std::iter::empty::<(String, String)>(),
                );
                P::deserialize(empty)
                    .map(EndpointParams)
                    .map_err(|e| ApiError::internal(format!("route parameters: {e}")))
            }
            Err(rej) => Err(ApiError::bad_request(rej.body_text())),
        }
    }
}

/// The body of an endpoint: JSON, or nothing read for one that takes none.
pub struct EndpointBody<B>(pub B);

impl<B: RequestBody> FromRequest<Arc<AppState>> for EndpointBody<B> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        match B::absent() {
            Some(none) => Ok(EndpointBody(none)),
            None => ApiJson::<B>::from_request(req, state)
                .await
                .map(|j| EndpointBody(j.0)),
        }
    }
}

/// The axum handler of endpoint `E`: operator token, then `E::serve`.
pub async fn handle<E: Serve>(
    _: Operator,
    State(s): State<Arc<AppState>>,
    EndpointParams(params): EndpointParams<E::Params>,
    ApiQuery(query): ApiQuery<E::Query>,
    EndpointBody(body): EndpointBody<E::Body>,
) -> ApiResult<(StatusCode, Json<E::Answer>)> {
    let answer = E::serve(s, params, query, body).await?;
    let status = StatusCode::from_u16(E::SUCCESS).unwrap_or(StatusCode::OK);
    Ok((status, Json(answer)))
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

/// `?pairing_key_ttl=` in milliseconds, checked.
fn pairing_key_ttl(ttl: Option<&String>) -> ApiResult<Option<i64>> {
    let Some(text) = ttl else {
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
    Ok(Some(ms(d)))
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn valid(spec: &InstanceSpec) -> ApiResult<()> {
    spec.validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

impl Serve for ep::GetService {
    /// How the service is set up. Behind the operator token because
    /// clients (`ibkit deploy`) trust the pins from here only over an
    /// authenticated, pinned connection.
    async fn serve(
        s: Arc<AppState>,
        _: ep::NoParams,
        _: NoQuery,
        _: NoBody,
    ) -> ApiResult<ServiceInfo> {
        Ok(ServiceInfo {
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
}

impl Serve for ep::ListInstances {
    async fn serve(
        s: Arc<AppState>,
        _: ep::NoParams,
        _: NoQuery,
        _: NoBody,
    ) -> ApiResult<Vec<InstanceSummary>> {
        s.db.read(|c| Ok(store::instances::list(c)?)).await
    }
}

impl Serve for ep::CreateInstance {
    async fn serve(
        s: Arc<AppState>,
        _: ep::NoParams,
        q: CreateInstanceQuery,
        spec: InstanceSpec,
    ) -> ApiResult<InstanceCreated> {
        valid(&spec)?;
        let ttl = pairing_key_ttl(q.pairing_key_ttl.as_ref())?;
        let expires_at = now_ms().saturating_add(ttl.unwrap_or(ms(s.cfg.pairing_key_ttl)));
        let id = q.id.unwrap_or_else(InstanceId::new_v4);
        let keys: Vec<(String, String)> = spec
            .host_names()
            .map(|h| (h.to_string(), new_secret("pk_")))
            .collect();
        let st = s.clone();
        let billing_ttl = billing::key_ttl_ms(&s);
        let (id2, keys2, spec2) = (id.clone(), keys.clone(), spec.clone());
        let status =
            s.db.write(move |c| {
                let tx = c.transaction()?;
                if store::instances::status(&tx, id2.as_str())?.is_some() {
                    return Err(ApiError::conflict(format!(
                        "an instance with id {id2} exists (or existed): ids are never reused"
                    )));
                }
                store::instances::insert(&tx, &id2, &spec2, ttl, now_ms())?;
                for (h, k) in &keys2 {
                    store::hosts::insert(&tx, &id2, h, &hash_secret(k), expires_at)?;
                }
                store::steps::insert_all(&tx, id2.as_str(), &spec2)?;
                if spec2.billing.is_some() {
                    billing::current_keys(&tx, id2.as_str(), billing_ttl, now_ms())?;
                }
                st.cache_spec(id2.as_str(), Arc::new(spec2));
                dispatch::recompute_status(&st, &tx, id2.as_str())?;
                let status = store::instances::existing_status(&tx, id2.as_str())?;
                tx.commit()?;
                Ok::<_, ApiError>(status)
            })
            .await?;
        tracing::info!("created instance {id} ({})", spec.name);
        let hosts = keys
            .iter()
            .map(|(h, k)| pairing(&s, &id, h, k, expires_at))
            .collect::<ApiResult<_>>()?;
        Ok(InstanceCreated {
            id,
            name: spec.name,
            status,
            hosts,
        })
    }
}

fn pairing(
    s: &AppState,
    id: &InstanceId,
    host: &str,
    key: &str,
    expires_at: i64,
) -> ApiResult<HostPairing> {
    Ok(HostPairing {
        name: ibkit_api::operator::HostName::parse(host)
            .map_err(|e| ApiError::internal(e.to_string()))?,
        pairing_key: key.to_string(),
        pairing_key_expires_at: expires_at,
        install_command: install_command(s, id.as_str(), host, key),
    })
}

impl Serve for ep::GetInstance {
    async fn serve(
        s: Arc<AppState>,
        p: ep::InstancePath,
        _: NoQuery,
        _: NoBody,
    ) -> ApiResult<InstanceDetail> {
        let st = s.clone();
        s.db.read(move |c| {
            let id = p.id;
            let (summary, spec_json) = store::instances::get(c, &id)?;
            let spec: InstanceSpec = serde_json::from_str(&spec_json)?;
            let mut per_host: BTreeMap<String, StepCounts> = BTreeMap::new();
            let mut total: StepCounts = StepStatus::ALL.iter().map(|s| (*s, 0)).collect();
            for (host, status, n) in store::steps::counts(c, id.as_str())? {
                *per_host.entry(host).or_default().entry(status).or_default() += n;
                *total.entry(status).or_default() += n;
            }
            let mut hosts = store::hosts::list(c, id.as_str())?;
            for h in &mut hosts {
                h.steps = per_host.remove(h.name.as_str()).unwrap_or_default();
                // Heartbeats reach the database every few seconds.
                if let Some(mem) = st.seen(id.as_str(), h.name.as_str()) {
                    h.last_heartbeat_at =
                        Some(h.last_heartbeat_at.map_or(mem.at_ms, |a| a.max(mem.at_ms)));
                    if !mem.agent_version.is_empty() {
                        h.agent_version = Some(mem.agent_version);
                    }
                }
            }
            Ok::<_, ApiError>(InstanceDetail {
                id,
                name: summary.name,
                status: summary.status,
                status_reason: summary.status_reason,
                generation: summary.generation,
                created_at: summary.created_at,
                updated_at: summary.updated_at,
                spec,
                hosts,
                steps: total,
            })
        })
        .await
    }
}

impl Serve for ep::UpdateInstance {
    async fn serve(
        s: Arc<AppState>,
        p: ep::InstancePath,
        _: NoQuery,
        spec: InstanceSpec,
    ) -> ApiResult<InstanceStatusView> {
        valid(&spec)?;
        let st = s.clone();
        let id = p.id.to_string();
        let billing_ttl = billing::key_ttl_ms(&s);
        let status =
            s.db.write(move |c| {
                let tx = c.transaction()?;
                store::instances::live_status(&tx, &id)?;
                let old = dispatch::spec_of(&st, &tx, &id)?;
                apply_update(&tx, &id, &old, &spec)?;
                store::instances::store_spec(&tx, &id, &spec, now_ms())?;
                // An instance that starts billing gets its credentials now.
                if spec.billing.is_some() {
                    billing::current_keys(&tx, &id, billing_ttl, now_ms())?;
                }
                st.cache_spec(&id, Arc::new(spec));
                dispatch::recompute_status(&st, &tx, &id)?;
                let status = store::instances::existing_status(&tx, &id)?;
                tx.commit()?;
                Ok::<_, ApiError>(status)
            })
            .await?;
        s.notify_instance(p.id.as_str());
        Ok(InstanceStatusView { id: p.id, status })
    }
}

/// Brings the steps of an instance from `old` to `spec`: new steps are
/// added, changed ones reset, removed ones deleted, and steps that use the
/// result of a step that runs again run again too.
fn apply_update(
    tx: &rusqlite::Connection,
    id: &str,
    old: &InstanceSpec,
    spec: &InstanceSpec,
) -> ApiResult<()> {
    let old_hosts: BTreeSet<&str> = old.host_names().collect();
    let new_hosts: BTreeSet<&str> = spec.host_names().collect();
    if old_hosts != new_hosts {
        return Err(ApiError::bad_request(format!(
            "an update must keep the same hosts ({old_hosts:?}); create a new instance to change them"
        )));
    }
    let existing = store::steps::hashes(tx, id)?;
    let mut wanted = BTreeSet::new();
    let mut touched_hosts = BTreeSet::new();
    // Steps reset because their hash changed (or that are new).
    let mut rerun: BTreeSet<StepKey> = BTreeSet::new();
    for g in &spec.groups {
        for h in &g.hosts {
            for stp in &g.steps {
                let key = (h.clone(), g.name.clone(), stp.index);
                let hash = stp.hash();
                match existing.get(&key) {
                    Some(old_hash) if *old_hash == hash => {}
                    Some(_) => {
                        store::steps::set_hash(tx, id, &key, &hash, stp.options.once)?;
                        store::steps::reset(tx, Scope::Step(id, &key))?;
                        touched_hosts.insert(h.clone());
                        rerun.insert(key.clone());
                    }
                    None => {
                        store::steps::insert(tx, id, &key, &hash, stp.options.once)?;
                        touched_hosts.insert(h.clone());
                        rerun.insert(key.clone());
                    }
                }
                wanted.insert(key);
            }
        }
    }
    // Steps that use the result of a step that runs again run again too
    // (transitively): their input may change. A `once` step that is
    // skipped keeps its result, so it does not propagate.
    let runs_again = |key: &StepKey| {
        store::steps::status(tx, id, key).is_ok_and(|st| st == Some(StepStatus::Pending))
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
                            let host = if r.host == "self" {
                                h.clone()
                            } else {
                                r.host.clone()
                            };
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
            store::steps::reset(tx, Scope::Step(id, &key))?;
            touched_hosts.insert(key.0.clone());
            if runs_again(&key) {
                rerun.insert(key.clone());
            }
            visited.insert(key);
        }
    }
    for key in existing.keys().filter(|k| !wanted.contains(*k)) {
        store::steps::delete(tx, id, key)?;
    }
    for h in &touched_hosts {
        store::hosts::deactivate_checks(tx, id, Some(h))?;
    }
    Ok(())
}

impl Serve for ep::Redeploy {
    async fn serve(
        s: Arc<AppState>,
        p: ep::InstancePath,
        _: NoQuery,
        _: NoBody,
    ) -> ApiResult<Redeployed> {
        let st = s.clone();
        let id = p.id.to_string();
        let (status, generation) =
            s.db.write(move |c| {
                let tx = c.transaction()?;
                store::instances::live_status(&tx, &id)?;
                store::steps::reset(&tx, Scope::Instance(&id))?;
                store::hosts::deactivate_checks(&tx, &id, None)?;
                store::instances::next_generation(&tx, &id, now_ms())?;
                dispatch::recompute_status(&st, &tx, &id)?;
                let r = store::instances::status_and_generation(&tx, &id)?;
                tx.commit()?;
                Ok::<_, ApiError>(r)
            })
            .await?;
        s.notify_instance(p.id.as_str());
        Ok(Redeployed {
            id: p.id,
            status,
            generation,
        })
    }
}

impl Serve for ep::DeleteInstance {
    async fn serve(
        s: Arc<AppState>,
        p: ep::InstancePath,
        _: NoQuery,
        _: NoBody,
    ) -> ApiResult<InstanceStatusView> {
        let id = p.id.to_string();
        s.db.write(move |c| {
            let tx = c.transaction()?;
            store::instances::existing_status(&tx, &id)?;
            let now = now_ms();
            store::instances::mark_deleted(&tx, &id, "deleted by the operator", now)?;
            store::hosts::revoke_all(&tx, &id)?;
            store::recovery::resolve_all(&tx, &id, now)?;
            tx.commit()?;
            Ok::<_, ApiError>(())
        })
        .await?;
        s.notify_instance(p.id.as_str());
        Ok(InstanceStatusView {
            id: p.id,
            status: InstanceStatus::Deleted,
        })
    }
}

impl Serve for ep::Rekey {
    async fn serve(
        s: Arc<AppState>,
        p: ep::HostPath,
        q: PairingKeyQuery,
        _: NoBody,
    ) -> ApiResult<HostPairing> {
        let ttl = pairing_key_ttl(q.pairing_key_ttl.as_ref())?;
        let key = new_secret("pk_");
        let st = s.clone();
        let (id, host, kh) = (p.id.to_string(), p.host.to_string(), hash_secret(&key));
        let default_ttl = ms(s.cfg.pairing_key_ttl);
        let expires_at =
            s.db.write(move |c| {
                let tx = c.transaction()?;
                store::instances::live_status(&tx, &id)?;
                // This request's lifetime, else the instance's, else the service's.
                let instance_ttl = store::instances::pairing_key_ttl_ms(&tx, &id)?;
                let expires_at =
                    now_ms().saturating_add(ttl.or(instance_ttl).unwrap_or(default_ttl));
                // A fresh key: unused, with its own expiry.
                store::hosts::rekey(&tx, &id, &host, &kh, expires_at)?;
                // The recreated VM runs its groups again (once steps are skipped).
                store::steps::reset(&tx, Scope::Host(&id, &host))?;
                store::health::clear_host(&tx, &id, &host)?;
                dispatch::recompute_status(&st, &tx, &id)?;
                tx.commit()?;
                Ok::<_, ApiError>(expires_at)
            })
            .await?;
        s.notify_instance(p.id.as_str());
        pairing(&s, &p.id, p.host.as_str(), &key, expires_at)
    }
}

/// Structured result text a step listing parses, all steps together: a
/// parsed tree costs many times its text, so big ones are left to the
/// result route (`structured_result` null, `structured_result_bytes` set).
const LISTING_STRUCTURED_BUDGET: usize = 256 << 10;

impl Serve for ep::ListSteps {
    async fn serve(
        s: Arc<AppState>,
        p: ep::HostPath,
        _: NoQuery,
        _: NoBody,
    ) -> ApiResult<Vec<StepView>> {
        let st = s.clone();
        s.db.read(move |c| {
            let (id, host) = (p.id.as_str(), p.host.as_str());
            store::hosts::ensure_exists(c, id, host)?;
            // The cached parse dispatch keeps (a listing is polled often).
            let spec = dispatch::spec_of(&st, c, id)?;
            let mut budget = LISTING_STRUCTURED_BUDGET;
            let mut steps: Vec<StepView> = store::steps::list_for_host(c, id, host)?
                .into_iter()
                .map(|(mut view, text)| {
                    if let Some(t) = text {
                        let len = t.len();
                        if len <= budget {
                            budget -= len;
                            view.structured_result =
                                StructuredJson::from_stored(t).parse_bounded(len).ok();
                        }
                    }
                    view
                })
                .collect();
            spec.sort_in_dispatch_order(&mut steps, |v| (v.group.as_str(), v.index));
            Ok::<_, ApiError>(steps)
        })
        .await
    }
}

impl Serve for ep::GetStepResult {
    async fn serve(
        s: Arc<AppState>,
        p: ep::StepPath,
        _: NoQuery,
        _: NoBody,
    ) -> ApiResult<StepResult> {
        let limit = s.cfg.max_structured_bytes;
        s.db.read(move |c| {
            let key: StepKey = (p.host.to_string(), p.group.to_string(), p.index);
            let (host, group, index) = (&key.0, &key.1, key.2);
            let (status, raw, structured) = store::steps::result(c, p.id.as_str(), &key)?
                .ok_or_else(|| {
                    ApiError::not_found(format!(
                        "no step {host}/{group}/{index} in instance {}",
                        p.id
                    ))
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
            Ok(StepResult {
                status,
                raw,
                structured,
            })
        })
        .await
    }
}

impl Serve for ep::HostHealthResults {
    async fn serve(
        s: Arc<AppState>,
        p: ep::HostPath,
        _: NoQuery,
        _: NoBody,
    ) -> ApiResult<Vec<HealthResultView>> {
        s.db.read(move |c| {
            store::hosts::ensure_exists(c, p.id.as_str(), p.host.as_str())?;
            Ok(store::health::list(c, p.id.as_str(), p.host.as_str())?)
        })
        .await
    }
}

impl Serve for ep::ListRecoveryRequests {
    async fn serve(
        s: Arc<AppState>,
        _: ep::NoParams,
        q: RecoveryQuery,
        _: NoBody,
    ) -> ApiResult<Vec<RecoveryRequest>> {
        s.db.read(move |c| Ok(store::recovery::list(c, &q)?)).await
    }
}

impl Serve for ep::ResolveRecoveryRequest {
    async fn serve(
        s: Arc<AppState>,
        p: ep::RecoveryPath,
        _: NoQuery,
        _: NoBody,
    ) -> ApiResult<RecoveryResolved> {
        let id = p.id.clone();
        s.db.write(move |c| Ok::<_, ApiError>(store::recovery::resolve(c, &id, now_ms())?))
            .await?;
        Ok(RecoveryResolved {
            id: p.id,
            status: RecoveryStatus::Resolved,
        })
    }
}

impl Serve for ep::GetBillingPublicKey {
    async fn serve(
        s: Arc<AppState>,
        _: ep::NoParams,
        _: NoQuery,
        _: NoBody,
    ) -> ApiResult<BillingPublicKey> {
        let key = s.billing.key().await?;
        Ok(BillingPublicKey {
            public_key_pem: key.spki_pem.clone(),
            rsa_public_key_pem: key.pkcs1_pem.clone(),
        })
    }
}

impl Serve for ep::GetInstanceBilling {
    async fn serve(
        s: Arc<AppState>,
        p: ep::InstancePath,
        _: NoQuery,
        _: NoBody,
    ) -> ApiResult<InstanceBilling> {
        let (spec, token, keys) = billing::credentials(&s, p.id.as_str()).await?;
        Ok(InstanceBilling {
            service_token: token.expose().to_string(),
            key: keys.key.expose().to_string(),
            secondary_key: keys.secondary.map(|k| k.expose().to_string()),
            key_expires_at: keys.key_expires_at,
            params: spec
                .billing
                .as_ref()
                .map(|b| b.params.clone())
                .unwrap_or_default(),
        })
    }
}

impl Serve for ep::GetInstanceUsage {
    async fn serve(
        s: Arc<AppState>,
        p: ep::InstancePath,
        _: NoQuery,
        _: NoBody,
    ) -> ApiResult<InstanceUsage> {
        let st = s.clone();
        s.db.read(move |c| {
            let id = p.id;
            store::instances::existing_status(c, id.as_str())?;
            let spec = dispatch::spec_of(&st, c, id.as_str())?;
            let mut by_param: BTreeMap<String, ParamUsage> = BTreeMap::new();
            for (param, day, total, count, last) in store::billing::usage(c, id.as_str())? {
                let u = by_param.entry(param.clone()).or_insert_with(|| ParamUsage {
                    param,
                    total: 0.0,
                    count: 0,
                    days: Vec::new(),
                    last_push_at: None,
                });
                u.total += total;
                u.count += count;
                u.last_push_at = Some(u.last_push_at.map_or(last, |l| l.max(last)));
                u.days.push(DayUsage { day, total, count });
            }
            // The spec's options first, in its order, then any it dropped.
            let mut params = Vec::new();
            for name in spec.billing.iter().flat_map(|b| &b.params) {
                params.push(by_param.remove(name).unwrap_or_else(|| ParamUsage {
                    param: name.clone(),
                    total: 0.0,
                    count: 0,
                    days: Vec::new(),
                    last_push_at: None,
                }));
            }
            params.extend(by_param.into_values());
            let pushes = store::billing::pushes(c, id.as_str())?;
            let keys = store::billing::key_history(c, id.as_str())?;
            Ok::<_, ApiError>(InstanceUsage {
                id,
                params,
                pushes,
                keys,
            })
        })
        .await
    }
}

impl Serve for ep::PutDeployment {
    /// Stored whatever the instance's status (`ibkit deploy down` publishes
    /// the final timeline of a deleted instance too).
    async fn serve(
        s: Arc<AppState>,
        p: ep::InstancePath,
        _: NoQuery,
        timeline: DeploymentTimeline,
    ) -> ApiResult<DeploymentStored> {
        if let Some(problem) = timeline.problem() {
            return Err(ApiError::bad_request(format!(
                "deployment timeline refused: {problem}"
            )));
        }
        let now = now_ms();
        let id = p.id.clone();
        s.db.write(move |c| {
            store::instances::existing_status(c, id.as_str())?;
            store::deployments::put(c, id.as_str(), &timeline, now)?;
            Ok::<_, ApiError>(())
        })
        .await?;
        Ok(DeploymentStored {
            id: p.id,
            stored_at: now,
        })
    }
}

impl Serve for ep::GetDeployment {
    async fn serve(
        s: Arc<AppState>,
        p: ep::InstancePath,
        _: NoQuery,
        _: NoBody,
    ) -> ApiResult<DeploymentTimeline> {
        let id = p.id;
        s.db.read(move |c| {
            store::instances::existing_status(c, id.as_str())?;
            store::deployments::get(c, id.as_str())?.ok_or_else(|| {
                ApiError::not_found(format!(
                    "no deployment controller published a timeline for instance {id}"
                ))
            })
        })
        .await
    }
}

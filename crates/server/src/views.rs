//! The shapes of the service's own JSON answers (operator views of instances,
//! hosts, steps, results, health and recovery requests, and the small
//! acknowledgements), for the OpenAPI document.
//!
//! The handlers build these answers with `serde_json::json!`; the service
//! tests check that the real answers have exactly the properties described
//! here, so the two cannot drift apart unnoticed.

use std::collections::BTreeMap;

use ibkit_api::InstanceSpec;
use ibkit_api::wire::{InstanceStatus, StepStatus};
use serde::Serialize;
use utoipa::ToSchema;

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    #[schema(example = "ok")]
    pub status: String,
}

/// An instance in the list of `GET /v1/instances`.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceSummary {
    /// The instance id (a UUID).
    pub id: String,
    pub name: String,
    pub status: InstanceStatus,
    /// Why the instance is `failed` (or `deleted`).
    pub status_reason: Option<String>,
    /// Counts spec updates and redeploys, from 1.
    pub generation: i64,
    /// Unix time in milliseconds.
    pub created_at: i64,
    /// Unix time in milliseconds.
    pub updated_at: i64,
}

/// `GET /v1/instances/{id}`: the instance with its spec, hosts and step counts.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceDetail {
    pub id: String,
    pub name: String,
    pub status: InstanceStatus,
    pub status_reason: Option<String>,
    pub generation: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// The instance's current spec.
    pub spec: InstanceSpec,
    pub hosts: Vec<HostView>,
    /// Step counts of all hosts, every status present.
    pub steps: BTreeMap<String, i64>,
}

/// Health of a host as the service judges it.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostHealth {
    Unknown,
    Healthy,
    Unhealthy,
}

/// A host of an instance as the operator sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct HostView {
    pub name: String,
    /// The host holds a live credential.
    pub paired: bool,
    pub paired_at: Option<i64>,
    pub last_heartbeat_at: Option<i64>,
    pub agent_version: Option<String>,
    pub health: HostHealth,
    pub unhealthy_reason: Option<String>,
    pub unhealthy_since: Option<i64>,
    /// Since when the host's health checks count (its steps are done).
    pub checks_active_since: Option<i64>,
    /// When the host's current pairing key stops being accepted.
    pub pairing_key_expires_at: Option<i64>,
    /// When the current pairing key was used (keys are single-use).
    pub pairing_key_used_at: Option<i64>,
    /// Why the last pairing attempt for this host was refused (a reused or
    /// expired key, a wrong key, an agent too old): a reused key means
    /// someone else holds it.
    pub last_pairing_refusal: Option<String>,
    pub last_pairing_refusal_at: Option<i64>,
    /// Step counts of this host by status (only statuses present).
    pub steps: BTreeMap<String, i64>,
}

/// A host's pairing key and the command that installs its agent; in the
/// answer of `POST /v1/instances` and of `…/pairing-key`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HostPairing {
    pub name: String,
    /// Shown once: the service keeps only its hash. Single-use.
    pub pairing_key: String,
    /// Unix time in milliseconds after which the key is refused.
    pub pairing_key_expires_at: i64,
    /// `curl … | IBKIT_PAIRING_KEY='…' sh -s -- --instance … --host …`:
    /// the key is in the installer's environment, not on a command line.
    pub install_command: String,
}

/// `POST /v1/instances`.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceCreated {
    pub id: String,
    pub name: String,
    pub status: InstanceStatus,
    pub hosts: Vec<HostPairing>,
}

/// `PUT` and `DELETE /v1/instances/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceStatusView {
    pub id: String,
    pub status: InstanceStatus,
}

/// `POST /v1/instances/{id}/redeploy`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Redeployed {
    pub id: String,
    pub status: InstanceStatus,
    pub generation: i64,
}

/// One step of a host, with its last execution's log and results.
#[derive(Debug, Serialize, ToSchema)]
pub struct StepView {
    pub host: String,
    pub group: String,
    pub index: u32,
    /// The step hash (see `ibkit_api::step_hash`).
    pub hash: String,
    pub once: bool,
    pub status: StepStatus,
    pub exec_id: Option<String>,
    pub dispatched_at: Option<i64>,
    pub attempts: i64,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub timed_out: bool,
    pub halted: bool,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub log: Option<String>,
    pub log_truncated_bytes: i64,
    pub result: Option<String>,
    pub result_truncated_bytes: i64,
    /// The structured result; null when there is none, or when the listing
    /// already parsed its share (then `structured_result_bytes` is set and
    /// the result route has it).
    pub structured_result: Option<serde_json::Value>,
    /// Size of the stored structured result (compact JSON), if any.
    pub structured_result_bytes: Option<i64>,
    pub error: Option<String>,
    /// The step succeeded on this host at least once.
    pub ever_ok: bool,
}

/// `GET /v1/instances/{id}/results/{host}/{group}/{index}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StepResult {
    pub status: StepStatus,
    /// stdout of the step: the raw result.
    pub raw: Option<String>,
    /// The JSON object of its `structured_result_file`.
    pub structured: Option<serde_json::Value>,
}

/// The latest result of one health check on a host.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResultView {
    pub check: String,
    pub ok: bool,
    pub detail: String,
    /// When the agent ran the check (its clock).
    pub at_ms: i64,
    /// When the service received it.
    pub received_at: i64,
    pub last_ok_at: Option<i64>,
}

/// Open or resolved.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryStatus {
    Open,
    Resolved,
}

/// A request to recreate a host's VM.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecoveryRequest {
    pub id: String,
    pub instance: String,
    pub host: String,
    /// Why: `agent_failed`, `agent_silent`, `health_missing`, …
    #[schema(example = "agent_silent")]
    pub kind: String,
    pub reason: String,
    pub created_at: i64,
    pub status: RecoveryStatus,
    pub resolved_at: Option<i64>,
}

/// `POST /v1/recovery-requests/{id}/resolve`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecoveryResolved {
    pub id: String,
    pub status: RecoveryStatus,
}

/// `POST /v1/agent/reports`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReportAck {
    /// The report changed the step (false once the step is final).
    pub applied: bool,
    /// Present (true) when the `report_id` was seen before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
}

/// `POST /v1/agent/heartbeat` and `POST /v1/agent/health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ack {
    pub ok: bool,
}

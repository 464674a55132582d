//! Every operator endpoint as a type: its method, path, parameters, query,
//! body and answer. The service's router and OpenAPI document and the
//! `ibkit-client` calls are all derived from these (see
//! [`for_each_operator_endpoint`]), so a route cannot be spelt twice or drift.
//!
//! To add an endpoint: declare it below and add it to the list macro; the
//! service then fails to compile until it implements it, and the checked-in
//! OpenAPI document test fails until the document is regenerated.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::*;
use crate::wire::ServiceInfo;

/// An HTTP method of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// The `{…}` parameters of a path, in their order in the path.
pub trait PathParams: Serialize + DeserializeOwned + Send + 'static {
    /// The value of each `{name}` in the path, by name.
    fn values(&self) -> Vec<(&'static str, String)>;
}

/// A request body: JSON, or none ([`NoBody`]).
pub trait RequestBody: Serialize + DeserializeOwned + Send + 'static {
    /// `Some` for a route without a body: the value handlers get.
    fn absent() -> Option<Self>;
}

impl RequestBody for NoBody {
    fn absent() -> Option<Self> {
        Some(NoBody)
    }
}

impl RequestBody for DeploymentTimeline {
    fn absent() -> Option<Self> {
        None
    }
}

impl RequestBody for InstanceSpec {
    fn absent() -> Option<Self> {
        None
    }
}

/// One operator endpoint.
pub trait Endpoint: Send + Sync + 'static {
    const METHOD: Method;
    /// The path with `{name}` parameters, as axum writes it.
    const PATH: &'static str;
    /// One line for the OpenAPI document and `--help`.
    const SUMMARY: &'static str;
    /// The status of a success.
    const SUCCESS: u16;
    /// What a success means.
    const ANSWER_DESCRIPTION: &'static str;
    /// The error statuses besides 401 and 500, with what they mean.
    const ERRORS: &'static [(u16, &'static str)];
    type Params: PathParams;
    type Query: Serialize + DeserializeOwned + Default + Send + 'static;
    type Body: RequestBody;
    type Answer: Serialize + DeserializeOwned + Send + 'static;
}

/// The path of a route without parameters.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize)]
pub struct NoParams {}

impl PathParams for NoParams {
    fn values(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

/// `{id}` of an instance.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct InstancePath {
    pub id: InstanceId,
}

impl PathParams for InstancePath {
    fn values(&self) -> Vec<(&'static str, String)> {
        vec![("id", self.id.to_string())]
    }
}

/// `{id}/…/{host}`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct HostPath {
    pub id: InstanceId,
    pub host: HostName,
}

impl PathParams for HostPath {
    fn values(&self) -> Vec<(&'static str, String)> {
        vec![("id", self.id.to_string()), ("host", self.host.to_string())]
    }
}

/// `{id}/results/{host}/{group}/{index}`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct StepPath {
    pub id: InstanceId,
    pub host: HostName,
    pub group: GroupName,
    pub index: u32,
}

impl PathParams for StepPath {
    fn values(&self) -> Vec<(&'static str, String)> {
        vec![
            ("id", self.id.to_string()),
            ("host", self.host.to_string()),
            ("group", self.group.to_string()),
            ("index", self.index.to_string()),
        ]
    }
}

/// `{id}` of a recovery request.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct RecoveryPath {
    pub id: RecoveryRequestId,
}

impl PathParams for RecoveryPath {
    fn values(&self) -> Vec<(&'static str, String)> {
        vec![("id", self.id.to_string())]
    }
}

/// Status lines shared by many endpoints.
const BAD_REQUEST: (u16, &str) = (400, "The request is malformed or invalid");
const NOT_FOUND: (u16, &str) = (404, "No such instance, host, step or request");
const CONFLICT: (u16, &str) = (
    409,
    "The instance is deleted, or the state does not allow it",
);

macro_rules! endpoint {
    (
        #[doc = $summary:literal]
        $name:ident: $method:ident $path:literal,
        params $params:ty, query $query:ty, body $body:ty => $answer:ty,
        $success:literal $answer_desc:literal,
        errors [$($err:expr),* $(,)?]
    ) => {
        #[doc = $summary]
        #[derive(Debug, Clone, Copy)]
        pub struct $name;

        impl Endpoint for $name {
            const METHOD: Method = Method::$method;
            const PATH: &'static str = $path;
            const SUMMARY: &'static str = $summary.trim_ascii();
            const SUCCESS: u16 = $success;
            const ANSWER_DESCRIPTION: &'static str = $answer_desc;
            const ERRORS: &'static [(u16, &'static str)] = &[$($err),*];
            type Params = $params;
            type Query = $query;
            type Body = $body;
            type Answer = $answer;
        }
    };
}

endpoint! {
    /// The service's URL, certificate pins, intervals and version.
    GetService: Get "/v1/service",
    params NoParams, query NoQuery, body NoBody => ServiceInfo,
    200 "The public URL, the certificate pins agents and installers use, the global intervals and the version",
    errors [BAD_REQUEST]
}

endpoint! {
    /// List instances.
    ListInstances: Get "/v1/instances",
    params NoParams, query NoQuery, body NoBody => Vec<InstanceSummary>,
    200 "Every instance, oldest first",
    errors [BAD_REQUEST]
}

endpoint! {
    /// Create an instance from an InstanceSpec.
    CreateInstance: Post "/v1/instances",
    params NoParams, query CreateInstanceQuery, body InstanceSpec => InstanceCreated,
    201 "The instance, with a pairing key and install command per host",
    errors [(400, "The spec is malformed or invalid (the message names where)"),
            (409, "An instance already has the id asked for")]
}

endpoint! {
    /// Instance status, hosts and step counts.
    GetInstance: Get "/v1/instances/{id}",
    params InstancePath, query NoQuery, body NoBody => InstanceDetail,
    200 "The instance, its spec, hosts and step counts",
    errors [BAD_REQUEST, NOT_FOUND]
}

endpoint! {
    /// Update the instance's spec.
    UpdateInstance: Put "/v1/instances/{id}",
    params InstancePath, query NoQuery, body InstanceSpec => InstanceStatusView,
    200 "The spec is stored; changed steps run again",
    errors [BAD_REQUEST, NOT_FOUND, CONFLICT]
}

endpoint! {
    /// Delete the instance (revokes credentials).
    DeleteInstance: Delete "/v1/instances/{id}",
    params InstancePath, query NoQuery, body NoBody => InstanceStatusView,
    200 "The instance is deleted and its credentials revoked",
    errors [BAD_REQUEST, NOT_FOUND]
}

endpoint! {
    /// Run all steps again (once steps are skipped).
    Redeploy: Post "/v1/instances/{id}/redeploy",
    params InstancePath, query NoQuery, body NoBody => Redeployed,
    200 "Every step runs again (`once` steps are skipped)",
    errors [BAD_REQUEST, NOT_FOUND, CONFLICT]
}

endpoint! {
    /// Issue a fresh pairing key (recreated VM).
    Rekey: Post "/v1/instances/{id}/hosts/{host}/pairing-key",
    params HostPath, query PairingKeyQuery, body NoBody => HostPairing,
    200 "A fresh pairing key; the old credential is revoked",
    errors [BAD_REQUEST, NOT_FOUND, CONFLICT]
}

endpoint! {
    /// Every step of a host with logs and results.
    ListSteps: Get "/v1/instances/{id}/hosts/{host}/steps",
    params HostPath, query NoQuery, body NoBody => Vec<StepView>,
    200 "The host's steps in run order",
    errors [BAD_REQUEST, NOT_FOUND]
}

endpoint! {
    /// Latest health results of a host.
    HostHealthResults: Get "/v1/instances/{id}/hosts/{host}/health",
    params HostPath, query NoQuery, body NoBody => Vec<HealthResultView>,
    200 "The latest result of each health check",
    errors [BAD_REQUEST, NOT_FOUND]
}

endpoint! {
    /// A step's raw and structured result.
    GetStepResult: Get "/v1/instances/{id}/results/{host}/{group}/{index}",
    params StepPath, query NoQuery, body NoBody => StepResult,
    200 "The step's raw and structured result",
    errors [
        BAD_REQUEST,
        NOT_FOUND,
        (422, "The stored structured result is over the size or depth limit"),
    ]
}

endpoint! {
    /// Recovery requests (status, instance filters).
    ListRecoveryRequests: Get "/v1/recovery-requests",
    params NoParams, query RecoveryQuery, body NoBody => Vec<RecoveryRequest>,
    200 "Matching recovery requests, oldest first",
    errors [BAD_REQUEST]
}

endpoint! {
    /// Mark a recovery request resolved.
    ResolveRecoveryRequest: Post "/v1/recovery-requests/{id}/resolve",
    params RecoveryPath, query NoQuery, body NoBody => RecoveryResolved,
    200 "The request is resolved",
    errors [BAD_REQUEST, NOT_FOUND]
}

endpoint! {
    /// The billing emulator's public key (secure push).
    GetBillingPublicKey: Get "/v1/billing/public-key",
    params NoParams, query NoQuery, body NoBody => BillingPublicKey,
    200 "The RSA public key pushes are encrypted to and answers signed with, as SPKI and PKCS#1 PEM",
    errors [BAD_REQUEST]
}

endpoint! {
    /// The instance's marketplace credentials (billing emulator).
    GetInstanceBilling: Get "/v1/instances/{id}/billing",
    params InstancePath, query NoQuery, body NoBody => InstanceBilling,
    200 "The service token and the current access keys (rotated when due) and the billed options",
    errors [BAD_REQUEST, (404, "No such instance, or it has no billing")]
}

endpoint! {
    /// The usage pushed for an instance (billing emulator).
    GetInstanceUsage: Get "/v1/instances/{id}/usage",
    params InstancePath, query NoQuery, body NoBody => InstanceUsage,
    200 "Per option: total, count, per UTC day, last push",
    errors [BAD_REQUEST, NOT_FOUND]
}

endpoint! {
    /// Publish the deployment controller's timeline (attempts, recoveries).
    PutDeployment: Put "/v1/instances/{id}/deployment",
    params InstancePath, query NoQuery, body DeploymentTimeline => DeploymentStored,
    200 "The timeline is stored (it replaces the one published before)",
    errors [(400, "The timeline is malformed or over a limit (the message names which)"),
            NOT_FOUND, CONFLICT]
}

endpoint! {
    /// The deployment controller's last published timeline.
    GetDeployment: Get "/v1/instances/{id}/deployment",
    params InstancePath, query NoQuery, body NoBody => DeploymentTimeline,
    200 "The attempts and VM recoveries as `ibkit deploy` last published them",
    errors [BAD_REQUEST, (404, "No such instance, or no deployment controller published a timeline for it")]
}

/// Calls `$m!(Endpoint)` for every operator endpoint, in the order of the
/// OpenAPI document: the one list the router, the document, the client
/// tests and the agreement test iterate.
#[macro_export]
macro_rules! for_each_operator_endpoint {
    ($m:ident) => {
        $m!($crate::operator::endpoint::GetService);
        $m!($crate::operator::endpoint::ListInstances);
        $m!($crate::operator::endpoint::CreateInstance);
        $m!($crate::operator::endpoint::GetInstance);
        $m!($crate::operator::endpoint::UpdateInstance);
        $m!($crate::operator::endpoint::DeleteInstance);
        $m!($crate::operator::endpoint::Redeploy);
        $m!($crate::operator::endpoint::Rekey);
        $m!($crate::operator::endpoint::ListSteps);
        $m!($crate::operator::endpoint::HostHealthResults);
        $m!($crate::operator::endpoint::GetStepResult);
        $m!($crate::operator::endpoint::ListRecoveryRequests);
        $m!($crate::operator::endpoint::ResolveRecoveryRequest);
        $m!($crate::operator::endpoint::GetBillingPublicKey);
        $m!($crate::operator::endpoint::GetInstanceBilling);
        $m!($crate::operator::endpoint::GetInstanceUsage);
        $m!($crate::operator::endpoint::PutDeployment);
        $m!($crate::operator::endpoint::GetDeployment);
    };
}

/// The path of `E` with its parameters filled in (each percent-encoded).
pub fn fill_path<E: Endpoint>(params: &E::Params) -> String {
    let values = params.values();
    let mut out = String::with_capacity(E::PATH.len() + 40);
    for seg in E::PATH.split('/').skip(1) {
        out.push('/');
        match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) => {
                let value = values
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or("", |(_, v)| v.as_str());
                for b in value.bytes() {
                    if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                        out.push(char::from(b));
                    } else {
                        out.push_str(&format!("%{b:02X}"));
                    }
                }
            }
            None => out.push_str(seg),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `{name}` of each path is a parameter its type fills.
    #[test]
    fn paths_and_parameter_types_agree() {
        fn check<E: Endpoint>(params: E::Params) {
            let filled = fill_path::<E>(&params);
            assert!(!filled.contains('{'), "{} leaves {filled}", E::PATH);
            let names: Vec<&str> = E::PATH
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            let given: Vec<&str> = params.values().iter().map(|(n, _)| *n).collect();
            assert_eq!(names, given, "{}", E::PATH);
        }
        let id = InstanceId::new_v4();
        let host = HostName::parse("web").ok();
        let group = GroupName::parse("g").ok();
        let (Some(host), Some(group)) = (host, group) else {
            panic!("valid names refused");
        };
        let instance = InstancePath { id: id.clone() };
        let host_path = HostPath {
            id: id.clone(),
            host: host.clone(),
        };
        check::<GetService>(NoParams {});
        check::<GetInstance>(instance.clone());
        check::<GetBillingPublicKey>(NoParams {});
        check::<GetInstanceBilling>(instance.clone());
        check::<GetInstanceUsage>(instance.clone());
        check::<Redeploy>(instance);
        check::<Rekey>(host_path.clone());
        check::<ListSteps>(host_path);
        check::<GetStepResult>(StepPath {
            id,
            host,
            group,
            index: 3,
        });
        check::<ResolveRecoveryRequest>(RecoveryPath {
            id: RecoveryRequestId::new_v4(),
        });
    }
}

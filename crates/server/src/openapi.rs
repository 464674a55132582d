//! The OpenAPI 3.1 document, built with utoipa: the operator endpoints
//! from their types in `ibkit_api::operator::endpoint` (the same list the
//! router mounts), the agent and document routes from [`shape`]. A copy is
//! checked in at `docs/api/openapi.json`; a test fails when they differ.

use ibkit_api::operator::endpoint::{Endpoint, RequestBody};
use ibkit_api::operator::{
    BillingPublicKey, DeploymentStored, DeploymentTimeline, HealthResultView, HostPairing,
    InstanceBilling, InstanceCreated, InstanceDetail, InstanceStatusView, InstanceSummary,
    InstanceUsage, NoBody, RecoveryRequest, RecoveryResolved, Redeployed, StepResult, StepView,
};
use ibkit_api::wire::{
    Ack, BillingToken, ErrorBody, HealthReport, Heartbeat, PairRequest, PairResponse, Report,
    ReportAck, ServiceInfo, WorkResponse,
};
use ibkit_api::{InstanceSpec, SpecError};
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, Parameter, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{
    ComponentsBuilder, Content, InfoBuilder, OpenApiBuilder, PathsBuilder, Ref, RefOr, Required,
    ResponseBuilder, Schema,
};
use utoipa::{IntoParams, ToSchema};

use crate::billing;
use crate::billing::crypto::EncryptedRequest;
use crate::billing::secure::{AuthKeyAnswer, SignedAnswer};
use crate::billing::simple::{SimplePush, SimplePushAck};
use crate::routes::agent::WorkQuery;
use crate::routes::docs::Liveness;
use crate::routes::{Auth, RouteInfo, SERVICE_ROUTES, endpoint_route};

/// A type the document describes: a named component or an array of one.
trait Doc {
    fn schema() -> RefOr<Schema>;
    /// Adds its component schemas (and those they use) to `v`.
    fn components(v: &mut Vec<(String, RefOr<Schema>)>);
}

macro_rules! named {
    ($($t:ty),* $(,)?) => {$(
        impl Doc for $t {
            fn schema() -> RefOr<Schema> {
                schema_ref::<$t>()
            }
            fn components(v: &mut Vec<(String, RefOr<Schema>)>) {
                v.push((<$t as ToSchema>::name().into_owned(), <$t as utoipa::PartialSchema>::schema()));
                <$t as ToSchema>::schemas(v);
            }
        }
    )*};
}

named!(
    ServiceInfo,
    InstanceSpec,
    InstanceSummary,
    InstanceCreated,
    InstanceDetail,
    InstanceStatusView,
    Redeployed,
    HostPairing,
    StepView,
    StepResult,
    HealthResultView,
    RecoveryRequest,
    RecoveryResolved,
    BillingPublicKey,
    InstanceBilling,
    InstanceUsage,
    DeploymentTimeline,
    DeploymentStored,
);

impl<T: Doc> Doc for Vec<T> {
    fn schema() -> RefOr<Schema> {
        ArrayBuilder::new().items(T::schema()).into()
    }
    fn components(v: &mut Vec<(String, RefOr<Schema>)>) {
        T::components(v)
    }
}

impl Doc for NoBody {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new().into()
    }
    fn components(_: &mut Vec<(String, RefOr<Schema>)>) {}
}

/// What operator endpoint `E` takes and answers.
fn endpoint_shape<E>() -> Shape
where
    E: Endpoint,
    E::Answer: Doc,
    E::Body: Doc,
    E::Query: IntoParams,
{
    let mut shape = ok(E::Answer::schema(), E::ANSWER_DESCRIPTION)
        .query(E::Query::into_params(|| Some(ParameterIn::Query)));
    shape.status = status_text(E::SUCCESS);
    if E::Body::absent().is_none() {
        shape.body = Some((E::Body::schema(), "The desired state"));
    }
    shape.errors = E::ERRORS
        .iter()
        .map(|(status, desc)| (status_text(*status), *desc))
        .collect();
    shape
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "200",
        201 => "201",
        400 => "400",
        404 => "404",
        409 => "409",
        413 => "413",
        422 => "422",
        _ => "default",
    }
}

/// A reference to the component schema of `T`.
fn schema_ref<T: ToSchema>() -> RefOr<Schema> {
    Ref::from_schema_name(T::name()).into()
}

/// The request body, success answer and parameters of one operation.
struct Shape {
    body: Option<(RefOr<Schema>, &'static str)>,
    status: &'static str,
    ok: (&'static str, RefOr<Schema>, &'static str),
    query: Vec<Parameter>,
    /// Error statuses besides 401 (for authenticated routes) and 500.
    errors: Vec<(&'static str, &'static str)>,
}

const JSON: &str = "application/json";
/// The refusals of a secure push besides 401.
const SECURE_PUSH_ERRORS: &[(&str, &str)] = &[
    (
        "400",
        "Bad base64, an RSA-OAEP field not for the marketplace's key, bad AES padding, \
         a plaintext not in the expected shape, a stale timestamp (over 1h old or 5m ahead), \
         more than 50 metrics, an unknown param, a bad value or metric id",
    ),
    ("413", "The body is over 64 KiB"),
];
const BAD_REQUEST: (&str, &str) = ("400", "The request is malformed or invalid");
fn ok(schema: RefOr<Schema>, desc: &'static str) -> Shape {
    Shape {
        body: None,
        status: "200",
        ok: (JSON, schema, desc),
        query: Vec::new(),
        errors: Vec::new(),
    }
}

impl Shape {
    fn body(mut self, schema: RefOr<Schema>, desc: &'static str) -> Self {
        self.body = Some((schema, desc));
        self
    }
    fn content_type(mut self, content_type: &'static str) -> Self {
        self.ok.0 = content_type;
        self
    }
    fn query(mut self, params: Vec<Parameter>) -> Self {
        self.query = params;
        self
    }
    fn errors(mut self, errors: &[(&'static str, &'static str)]) -> Self {
        self.errors = errors.to_vec();
        self
    }
}

/// What each route takes and answers; `None` for a route not described
/// (the tests refuse that).
fn shape(method: &str, path: &str) -> Option<Shape> {
    Some(match (method, path) {
        ("get", "/healthz") => ok(schema_ref::<Liveness>(), "The service is up"),
        ("get", crate::metrics::PATH) => ok(
            ObjectBuilder::new().schema_type(Type::String).into(),
            "The metrics in the Prometheus text format 0.0.4 (docs/metrics.md)",
        )
        .content_type(prometheus::TEXT_FORMAT),
        ("get", "/v1/openapi.json") => ok(
            ObjectBuilder::new()
                .description(Some("An OpenAPI 3.1 document"))
                .into(),
            "This document",
        ),
        ("get", "/v1/agent/install.sh") => ok(
            ObjectBuilder::new().schema_type(Type::String).into(),
            "A POSIX shell script that installs and pairs the agent",
        )
        .content_type("text/x-shellscript"),
        ("get", "/v1/agent/binary") => ok(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .content_media_type("application/octet-stream")
                .into(),
            "The agent executable",
        )
        .content_type("application/octet-stream")
        .errors(&[
            ("404", "The service has no agent binary to serve"),
            (
                "503",
                "Too many downloads at once (--max-agent-downloads): retry after Retry-After seconds",
            ),
        ]),
        ("get", crate::routes::docs::AGENT_DEB_PATH) => ok(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .content_media_type("application/vnd.debian.binary-package")
                .into(),
            "The ibkit-agent Debian package (install with apt install ./ibkit-agent.deb)",
        )
        .content_type("application/vnd.debian.binary-package")
        .errors(&[
            (
                "404",
                "The service serves no agent package (--agent-deb), or its file is missing",
            ),
            (
                "503",
                "Too many downloads at once (--max-agent-downloads): retry after Retry-After seconds",
            ),
        ]),
        ("post", "/v1/agent/pair") => ok(
            schema_ref::<PairResponse>(),
            "The host's credential (shown once)",
        )
        .body(schema_ref::<PairRequest>(), "The pairing key of a host")
        .errors(&[
            (
                "400",
                "The request is malformed, or the agent's protocol is too old or too new",
            ),
            ("401", "Unknown instance or host, or wrong pairing key"),
            (
                "403",
                "The pairing key was already used (keys are single-use) or expired: issue a new one",
            ),
        ]),
        ("get", "/v1/agent/work") => ok(
            schema_ref::<WorkResponse>(),
            "The next step (if any) and the host's health checks",
        )
        .query(WorkQuery::into_params(|| Some(ParameterIn::Query)))
        .errors(&[BAD_REQUEST]),
        ("post", "/v1/agent/reports") => ok(
            schema_ref::<ReportAck>(),
            "The report was applied, ignored as final, or is a duplicate",
        )
        .body(schema_ref::<Report>(), "A step event")
        .errors(&[
            BAD_REQUEST,
            ("408", "The body did not arrive in time"),
            ("413", "The body is over 16 MiB (ibkit_api::wire::MAX_REPORT_BYTES)"),
            ("403", "The execution belongs to another host"),
            (
                "409",
                "The execution is unknown or superseded: drop the report",
            ),
        ]),
        ("post", "/v1/agent/heartbeat") => ok(schema_ref::<Ack>(), "Recorded")
            .body(schema_ref::<Heartbeat>(), "The agent's state")
            .errors(&[BAD_REQUEST]),
        ("post", "/v1/agent/health") => ok(schema_ref::<Ack>(), "Recorded")
            .body(schema_ref::<HealthReport>(), "One health check result")
            .errors(&[
                BAD_REQUEST,
                ("409", "The host has no health check of that name"),
            ]),
        ("get", "/v1/agent/billing-token") => ok(
            schema_ref::<BillingToken>(),
            "The current access keys (rotated when due) and when to ask again",
        )
        .errors(&[("404", "The instance has no billing")]),
        ("post", billing::SIMPLE_PUSH_PATH) => ok(
            schema_ref::<SimplePushAck>(),
            "The usages are counted (all or none)",
        )
        .body(
            schema_ref::<SimplePush>(),
            "Usages of the service token's instance",
        )
        .errors(&[
            (
                "400",
                "Malformed body, unknown param, a value not finite or negative, a bad base_date",
            ),
            (
                "413",
                "The body is over 64 KiB (ibkit_server::billing::MAX_BODY_BYTES)",
            ),
        ]),
        ("get", billing::AUTH_KEY_PATH) => ok(
            schema_ref::<AuthKeyAnswer>(),
            "The newest key, and the older one while it is valid (then switch to `key`)",
        ),
        ("post", billing::DECRYPT_PATH) => ok(
            schema_ref::<SignedAnswer>(),
            "The push decrypts and is valid; nothing is counted",
        )
        .body(schema_ref::<EncryptedRequest>(), "An encrypted push")
        .errors(SECURE_PUSH_ERRORS),
        ("post", billing::PUSH_PATH) => ok(
            schema_ref::<SignedAnswer>(),
            "The metrics are counted (a metric id counted before is acknowledged, not counted again)",
        )
        .body(schema_ref::<EncryptedRequest>(), "An encrypted push")
        .errors(SECURE_PUSH_ERRORS),
        _ => return None,
    })
}

/// The parameters in `path`'s `{…}` segments.
fn path_params(path: &str) -> Vec<Parameter> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            let (schema, desc) = match name {
                "id" if path.starts_with("/v1/instances") => (
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .format(Some(SchemaFormat::Custom("uuid".into()))),
                    "The instance id",
                ),
                "id" => (
                    ObjectBuilder::new().schema_type(Type::String),
                    "The recovery request id",
                ),
                "index" => (
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(0)),
                    "The step index",
                ),
                "host" => (
                    ObjectBuilder::new().schema_type(Type::String),
                    "The host name",
                ),
                _ => (
                    ObjectBuilder::new().schema_type(Type::String),
                    "The group name",
                ),
            };
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some(desc))
                .schema(Some(schema))
                .build()
        })
        .collect()
}

/// Every component schema: the named types and the types they refer to.
fn schemas() -> Vec<(String, RefOr<Schema>)> {
    fn add<T: ToSchema>(v: &mut Vec<(String, RefOr<Schema>)>) {
        v.push((T::name().into_owned(), T::schema()));
        T::schemas(v);
    }
    let mut v = Vec::new();
    add::<ErrorBody>(&mut v);
    add::<SpecError>(&mut v);
    add::<PairRequest>(&mut v);
    add::<PairResponse>(&mut v);
    add::<WorkResponse>(&mut v);
    add::<Report>(&mut v);
    add::<Heartbeat>(&mut v);
    add::<HealthReport>(&mut v);
    add::<Liveness>(&mut v);
    add::<ReportAck>(&mut v);
    add::<Ack>(&mut v);
    add::<BillingToken>(&mut v);
    add::<SimplePush>(&mut v);
    add::<SimplePushAck>(&mut v);
    add::<AuthKeyAnswer>(&mut v);
    add::<EncryptedRequest>(&mut v);
    add::<SignedAnswer>(&mut v);
    macro_rules! components {
        ($e:ty) => {
            <<$e as Endpoint>::Answer as Doc>::components(&mut v);
            <<$e as Endpoint>::Body as Doc>::components(&mut v);
        };
    }
    ibkit_api::for_each_operator_endpoint!(components);
    v
}

/// One operation of the document.
fn operation(route: &RouteInfo, shape: Option<Shape>) -> utoipa::openapi::path::Operation {
    let RouteInfo {
        method,
        path,
        auth,
        summary,
    } = *route;
    let mut op = OperationBuilder::new()
        .summary(Some(summary))
        .operation_id(Some(format!(
            "{method}{}",
            path.replace(['/', '{', '}', '.', '-'], "_")
        )))
        .tag(if path.starts_with("/v1/agent") {
            "agent"
        } else if path.starts_with("/marketplace") {
            "billing"
        } else if auth == Auth::Operator {
            "operator"
        } else {
            "service"
        });
    if auth != Auth::None {
        op = op.security(SecurityRequirement::new::<_, _, &str>(auth.as_str(), []));
    }
    // Either token opens /metrics (two requirements: one or the other).
    if auth == Auth::Metrics {
        op = op.security(SecurityRequirement::new::<_, _, &str>(
            Auth::Operator.as_str(),
            [],
        ));
    }
    let error = |desc: &str| {
        ResponseBuilder::new()
            .description(desc)
            .content(JSON, Content::new(Some(schema_ref::<ErrorBody>())))
            .build()
    };
    if let Some(shape) = shape {
        for p in path_params(path).into_iter().chain(shape.query) {
            op = op.parameter(p);
        }
        if let Some((schema, desc)) = shape.body {
            op = op.request_body(Some(
                RequestBodyBuilder::new()
                    .description(Some(desc))
                    .required(Some(Required::True))
                    .content(JSON, Content::new(Some(schema)))
                    .build(),
            ));
        }
        let (content_type, schema, desc) = shape.ok;
        op = op.response(
            shape.status,
            ResponseBuilder::new()
                .description(desc)
                .content(content_type, Content::new(Some(schema)))
                .build(),
        );
        for (status, desc) in &shape.errors {
            op = op.response(*status, error(desc));
        }
        // Operator routes refuse unknown query parameters.
        if auth == Auth::Operator && !shape.errors.iter().any(|(st, _)| *st == "400") {
            op = op.response("400", error("Unknown query parameter"));
        }
    }
    match auth {
        Auth::None => {}
        Auth::ServiceToken => {
            op = op.response(
                "401",
                error("Missing or unknown x-service-token, or a usage of another instance"),
            );
        }
        Auth::BillingKey => {
            op = op.response("401", error("Missing, unknown or expired access key"));
        }
        Auth::Agent | Auth::Operator | Auth::Metrics => {
            op = op.response("401", error("Missing or wrong bearer token"));
        }
    }
    op.response("500", error("Internal error (database)"))
        .build()
}

fn http_method(method: &str) -> HttpMethod {
    match method {
        "get" => HttpMethod::Get,
        "post" => HttpMethod::Post,
        "put" => HttpMethod::Put,
        "delete" => HttpMethod::Delete,
        _ => HttpMethod::Patch,
    }
}

pub fn document() -> utoipa::openapi::OpenApi {
    let mut paths = PathsBuilder::new();
    for route in SERVICE_ROUTES {
        let op = operation(route, shape(route.method, route.path));
        paths = paths.path(route.path, PathItem::new(http_method(route.method), op));
    }
    macro_rules! describe {
        ($e:ty) => {
            let route = endpoint_route::<$e>();
            let op = operation(&route, Some(endpoint_shape::<$e>()));
            paths = paths.path(route.path, PathItem::new(http_method(route.method), op));
        };
    }
    ibkit_api::for_each_operator_endpoint!(describe);
    let bearer = |desc: &str| {
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(desc))
                .build(),
        )
    };
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("ibkit configuration service")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some("Desired state, step dispatch, results, heartbeats, health and recovery requests for ibkit agents."))
                .build(),
        )
        .paths(paths.build())
        .components(Some(
            ComponentsBuilder::new()
                .schemas_from_iter(schemas())
                .security_scheme("operator", bearer("the operator token"))
                .security_scheme("agent", bearer("a host credential from /v1/agent/pair"))
                .security_scheme(
                    "metrics",
                    bearer("the metrics token (ibkit serve --metrics-token-file); opens /metrics only"),
                )
                .security_scheme(
                    "service_token",
                    SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                        "x-service-token",
                        "an instance's billing service token (GET /v1/instances/{id}/billing)",
                    ))),
                )
                .security_scheme(
                    "billing_key",
                    bearer("an instance's billing access key (rotating; GET …/v1-public/auth/key)"),
                )
                .build(),
        ))
        .build()
}

pub fn document_json() -> String {
    document()
        .to_json()
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn doc() -> Value {
        serde_json::from_str(&document_json()).expect("the document is JSON")
    }

    /// Follows a `$ref` into `components.schemas`.
    fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
        match schema["$ref"].as_str() {
            Some(r) => {
                let name = r
                    .strip_prefix("#/components/schemas/")
                    .expect("local schema ref");
                let target = &doc["components"]["schemas"][name];
                assert!(target.is_object(), "dangling {r}");
                target
            }
            None => schema,
        }
    }

    #[test]
    fn every_route_has_a_json_answer_and_errors() {
        let doc = doc();
        for crate::routes::RouteInfo {
            method, path, auth, ..
        } in crate::routes::routes()
        {
            let auth = auth.as_str();
            let op = &doc["paths"][path][method];
            assert!(op.is_object(), "{method} {path} not documented");
            let responses = op["responses"].as_object().expect("responses");
            let raw = matches!(
                path,
                "/v1/agent/install.sh"
                    | "/v1/agent/binary"
                    | crate::metrics::PATH
                    | crate::routes::docs::AGENT_DEB_PATH
            );
            let json_ok = responses.iter().any(|(status, r)| {
                status.starts_with('2') && r["content"]["application/json"]["schema"].is_object()
            });
            assert!(raw || json_ok, "{method} {path}: no JSON success answer");
            if raw {
                assert!(
                    responses["200"]["content"].is_object(),
                    "{method} {path}: no content"
                );
            }
            assert_eq!(
                responses["500"]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{method} {path}"
            );
            if auth != "none" {
                assert!(responses["401"].is_object(), "{method} {path}: no 401");
            }
            for name in path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            {
                let params = op["parameters"].as_array().expect("parameters");
                assert!(
                    params
                        .iter()
                        .any(|p| p["name"] == name && p["in"] == "path" && p["required"] == true),
                    "{method} {path}: no path parameter {name}"
                );
            }
            if matches!(method, "post" | "put")
                && let Some(body) = op.get("requestBody")
            {
                assert!(body["content"]["application/json"]["schema"].is_object());
            }
        }
    }

    #[test]
    fn components_hold_the_wire_types_and_every_ref_resolves() {
        let doc = doc();
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        for name in [
            "InstanceSpec",
            "HostSpec",
            "GroupSpec",
            "StepSpec",
            "StepOptions",
            "ScriptType",
            "HealthCheck",
            "HealthKind",
            "Duration",
            "Report",
            "ReportEvent",
            "StepOutcome",
            "FinalStatus",
            "WorkResponse",
            "Work",
            "PairRequest",
            "PairResponse",
            "Heartbeat",
            "HealthReport",
            "StepStatus",
            "InstanceStatus",
            "ErrorBody",
            "SpecError",
            "InstanceDetail",
            "StepView",
            "RecoveryRequest",
            "ServiceInfo",
        ] {
            assert!(schemas.contains_key(name), "no schema {name}");
        }
        assert_eq!(schemas["Duration"]["type"], "string");
        assert_eq!(schemas["Duration"]["examples"][0], "15s");
        // Every $ref anywhere in the document points at a schema.
        fn walk(doc: &Value, v: &Value) {
            match v {
                Value::Object(m) => {
                    if m.contains_key("$ref") {
                        resolve(doc, v);
                    }
                    m.values().for_each(|x| walk(doc, x));
                }
                Value::Array(a) => a.iter().for_each(|x| walk(doc, x)),
                _ => {}
            }
        }
        walk(&doc, &doc);
        // Request bodies of the main routes.
        let body = |method: &str, path: &str| {
            doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
                ["$ref"]
                .clone()
        };
        assert_eq!(
            body("post", "/v1/instances"),
            "#/components/schemas/InstanceSpec"
        );
        assert_eq!(
            body("post", "/v1/agent/reports"),
            "#/components/schemas/Report"
        );
        let work = &doc["paths"]["/v1/agent/work"]["get"];
        assert_eq!(
            work["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/WorkResponse"
        );
        assert!(
            work["parameters"]
                .as_array()
                .expect("params")
                .iter()
                .any(|p| p["name"] == "wait_ms" && p["in"] == "query")
        );
    }
}

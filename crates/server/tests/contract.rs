//! The operator API's contract: the OpenAPI document the service serves,
//! its router and the typed client (`ibkit-client`) agree route by route,
//! and the document checked in at `docs/api/openapi.json` is the one the
//! code builds, so a renamed or removed field cannot slip through.
//!
//! After an intended API change: `IBKIT_BLESS=1 cargo test -p ibkit-server
//! --test contract` rewrites the checked-in document; review its diff.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Svc, config, tmp};
use ibkit_api::operator::endpoint::{self as ep, Endpoint, RequestBody};
use ibkit_api::operator::{
    CreateInstanceQuery, GroupName, HostName, InstanceDetail, InstanceId, PairingKeyQuery,
    RecoveryRequestId,
};
use ibkit_client::{OperatorClient, ServiceEndpoint};
use serde_json::{Value, json};

fn checked_in() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/api/openapi.json")
}

/// Where two JSON documents differ, as `a.b.c: …` lines (at most 20).
fn differences(want: &Value, got: &Value) -> Vec<String> {
    fn walk(want: &Value, got: &Value, at: &str, out: &mut Vec<String>) {
        if out.len() >= 20 {
            return;
        }
        match (want, got) {
            (Value::Object(w), Value::Object(g)) => {
                for (k, wv) in w {
                    let here = format!("{at}.{k}");
                    match g.get(k) {
                        Some(gv) => walk(wv, gv, &here, out),
                        None => out.push(format!(
                            "{here}: in the checked-in document, not in the code"
                        )),
                    }
                }
                for k in g.keys().filter(|k| !w.contains_key(*k)) {
                    out.push(format!(
                        "{at}.{k}: in the code, not in the checked-in document"
                    ));
                }
            }
            (Value::Array(w), Value::Array(g)) if w.len() == g.len() => {
                for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                    walk(wv, gv, &format!("{at}[{i}]"), out);
                }
            }
            _ if want != got => out.push(format!("{at}: checked in {want}, code {got}")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(want, got, "", &mut out);
    out
}

fn generated() -> Value {
    serde_json::from_str(&ibkit_server::openapi::document_json()).expect("the document is JSON")
}

#[test]
fn the_checked_in_openapi_document_is_the_one_the_code_builds() {
    let path = checked_in();
    let doc = generated();
    if std::env::var_os("IBKIT_BLESS").is_some() {
        let text = serde_json::to_string_pretty(&doc).expect("json") + "\n";
        std::fs::write(&path, text).expect("write the checked-in document");
        return;
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with IBKIT_BLESS=1 to create it",
            path.display()
        )
    });
    let want: Value = serde_json::from_str(&text).expect("checked-in document is JSON");
    let diff = differences(&want, &doc);
    assert!(
        diff.is_empty(),
        "the operator API changed; if intended, run `IBKIT_BLESS=1 cargo test -p ibkit-server \
         --test contract` and commit docs/api/openapi.json:\n{}",
        diff.join("\n")
    );
}

/// The check above fails on a renamed field, naming it; and the client
/// refuses an answer whose field was renamed.
#[test]
fn a_renamed_field_breaks_the_contract() {
    let doc = generated();
    let mut renamed = doc.clone();
    let props = renamed["components"]["schemas"]["StepView"]["properties"]
        .as_object_mut()
        .expect("StepView properties");
    let exit_code = props.remove("exit_code").expect("exit_code is a property");
    props.insert("exit_status".into(), exit_code);
    let diff = differences(&doc, &renamed);
    assert!(
        diff.iter()
            .any(|d| d.contains("StepView.properties.exit_code"))
            && diff
                .iter()
                .any(|d| d.contains("StepView.properties.exit_status")),
        "{diff:?}"
    );

    let id = InstanceId::new_v4();
    let answer = json!({"id": id, "name": "n", "status": "running", "status_reason": null,
        "generation": 1, "created_at": 1, "updated_at": 1,
        "spec": {"name": "n", "hosts": [{"name": "h"}]}, "hosts": [], "steps": {}});
    let parsed: Result<InstanceDetail, _> = serde_json::from_value(answer.clone());
    assert!(parsed.is_ok(), "{parsed:?}");
    let mut broken = answer;
    let status = broken
        .as_object_mut()
        .and_then(|m| m.remove("status"))
        .expect("status");
    broken["state"] = status;
    let e = serde_json::from_value::<InstanceDetail>(broken).expect_err("renamed field refused");
    assert!(e.to_string().contains("status"), "{e}");
}

/// The last segment of a type's name (`StepView`), and whether it is a `Vec`.
fn schema_name<T>() -> (String, bool) {
    let full = std::any::type_name::<T>();
    let (inner, array) = match full.strip_prefix("alloc::vec::Vec<") {
        Some(rest) => (rest.trim_end_matches('>'), true),
        None => (full, false),
    };
    (
        inner.rsplit("::").next().unwrap_or(inner).to_string(),
        array,
    )
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// The served document describes `E` as its types say, and the router
/// answers its method and path (not the 404/405 fallbacks).
async fn agrees<E: Endpoint>(svc: &Svc, doc: &Value, params: &E::Params) {
    let method = E::METHOD.as_str().to_ascii_lowercase();
    let op = &doc["paths"][E::PATH][&method];
    assert!(
        op.is_object(),
        "{method} {} not in the served document",
        E::PATH
    );
    let body = &op["requestBody"]["content"]["application/json"]["schema"];
    if E::Body::absent().is_some() {
        assert!(
            op.get("requestBody").is_none(),
            "{} documents a body",
            E::PATH
        );
    } else {
        assert_eq!(
            *body,
            reference(&schema_name::<E::Body>().0),
            "{} body",
            E::PATH
        );
    }
    let (answer, array) = schema_name::<E::Answer>();
    let want = if array {
        json!({"type": "array", "items": reference(&answer)})
    } else {
        reference(&answer)
    };
    let got = &op["responses"][E::SUCCESS.to_string()]["content"]["application/json"]["schema"];
    assert_eq!(*got, want, "{method} {} answer", E::PATH);
    let path = ep::fill_path::<E>(params);
    let (status, body) = svc.op(E::METHOD.as_str(), &path, None).await;
    assert!(
        status != 405 && body["error"] != "no such route",
        "{method} {path} is not routed: {status} {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_router_and_client_agree_route_by_route() {
    let dir = tmp();
    let mut cfg = config(dir.path());
    cfg.agent_timeout = Duration::from_secs(1);
    let svc = Svc::start(cfg).await;
    let (_, doc) = svc.req("GET", "/v1/openapi.json", None, None).await;

    // Every endpoint, by its types.
    let id = InstanceId::new_v4();
    let host = HostName::parse("h").expect("name");
    let group = GroupName::parse("g").expect("name");
    let inst = ep::InstancePath { id: id.clone() };
    let host_path = ep::HostPath {
        id: id.clone(),
        host: host.clone(),
    };
    let mut seen = Vec::new();
    macro_rules! check {
        ($e:ty, $params:expr) => {
            agrees::<$e>(&svc, &doc, &$params).await;
            seen.push(<$e as Endpoint>::PATH.to_string() + " " + <$e as Endpoint>::METHOD.as_str());
        };
    }
    check!(ep::GetService, ep::NoParams {});
    check!(ep::ListInstances, ep::NoParams {});
    check!(ep::CreateInstance, ep::NoParams {});
    check!(ep::GetInstance, inst);
    check!(ep::UpdateInstance, inst);
    check!(ep::DeleteInstance, inst);
    check!(ep::Redeploy, inst);
    check!(ep::Rekey, host_path);
    check!(ep::ListSteps, host_path);
    check!(ep::HostHealthResults, host_path);
    check!(
        ep::GetStepResult,
        ep::StepPath {
            id: id.clone(),
            host: host.clone(),
            group: group.clone(),
            index: 1,
        }
    );
    check!(ep::ListRecoveryRequests, ep::NoParams {});
    check!(
        ep::ResolveRecoveryRequest,
        ep::RecoveryPath {
            id: RecoveryRequestId::new_v4(),
        }
    );
    check!(ep::GetBillingPublicKey, ep::NoParams {});
    check!(ep::GetInstanceBilling, inst);
    check!(ep::GetInstanceUsage, inst);
    check!(ep::PutDeployment, inst);
    check!(ep::GetDeployment, inst);
    // ...and nothing else: the list the router mounts is the list checked.
    let mut all = Vec::new();
    macro_rules! list {
        ($e:ty) => {
            all.push(<$e as Endpoint>::PATH.to_string() + " " + <$e as Endpoint>::METHOD.as_str());
        };
    }
    ibkit_api::for_each_operator_endpoint!(list);
    assert_eq!(seen, all);
    let documented: usize = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .filter(|(p, _)| {
            !p.starts_with("/v1/agent")
                && !p.starts_with("/marketplace/")
                && !matches!(p.as_str(), "/healthz" | "/v1/openapi.json" | "/metrics")
        })
        .map(|(_, ops)| ops.as_object().map_or(0, |o| o.len()))
        .sum();
    assert_eq!(documented, all.len(), "operator operations in the document");

    // The typed client through every endpoint on a real instance: each
    // answer decodes into the endpoint's answer type.
    let client =
        OperatorClient::new(&ServiceEndpoint::from_serve_state(dir.path()).expect("endpoint"))
            .expect("client");
    let info = client.service_info().await.expect("service");
    assert_eq!(info.public_url, svc.url);
    let spec: ibkit_api::InstanceSpec = serde_json::from_value(json!({"name": "contract",
        "hosts": [{"name": "h"}],
        "groups": [{"name": "g", "hosts": ["h"], "steps": [{"index": 1, "content": "echo hi"}]}]}))
    .expect("spec");
    let created = client
        .create_instance(
            &spec,
            &CreateInstanceQuery {
                pairing_key_ttl: Some("10m".into()),
                id: None,
            },
        )
        .await
        .expect("create");
    let id = created.id.clone();
    assert_eq!(created.hosts.len(), 1);
    assert_eq!(client.list_instances().await.expect("list")[0].id, id);
    let detail = client.instance(&id).await.expect("get");
    assert_eq!(detail.hosts[0].name, host);
    assert_eq!(detail.hosts[0].steps_not_done(), 1);
    let steps = client.steps(&id, &host).await.expect("steps");
    assert_eq!((steps[0].group.as_str(), steps[0].index), ("g", 1));
    assert!(client.health(&id, &host).await.expect("health").is_empty());
    let result = client.result(&id, &host, &group, 1).await.expect("result");
    assert_eq!(result.raw, None);
    client.update_instance(&id, &spec).await.expect("update");
    assert_eq!(client.redeploy(&id).await.expect("redeploy").generation, 3);
    let keys = vec![("h".to_string(), created.hosts[0].pairing_key.clone())];
    // A paired agent that goes silent: the monitor asks for recovery.
    let _agent = svc.pair(id.as_str(), &keys, "h").await;
    let request = loop {
        let open = client.open_recovery_requests(&id).await.expect("recovery");
        if let Some(r) = open.into_iter().next() {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(request.kind, ibkit_api::operator::RecoveryKind::AgentSilent);
    client
        .resolve_recovery_request(&request.id)
        .await
        .expect("resolve");
    let pairing = client
        .rekey(&id, &host, &PairingKeyQuery::default())
        .await
        .expect("rekey");
    assert!(pairing.install_command.contains(id.as_str()));
    // Billing: the key, and an instance without billing has no credentials
    // but an (empty) usage.
    let key = client.billing_public_key().await.expect("billing key");
    assert!(key.public_key_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    let e = client.instance_billing(&id).await.expect_err("no billing");
    assert!(e.is_not_found(), "{e}");
    let usage = client.instance_usage(&id).await.expect("usage");
    assert!(usage.params.is_empty(), "{usage:?}");
    let deleted = client.delete_instance(&id).await.expect("delete");
    assert_eq!(deleted.status, ibkit_api::wire::InstanceStatus::Deleted);
    // Errors come back typed, with the service's message.
    let e = client
        .instance(&InstanceId::new_v4())
        .await
        .expect_err("unknown id");
    assert!(e.is_not_found(), "{e}");
}

//! Request shapes of the OpenStack client and backend, against an HTTP mock
//! on loopback that plays Keystone (token + catalog pointing at itself),
//! Nova, Glance and Neutron and records every request. Whether the calls
//! *work* is proven against a real control plane
//! (`crates/ibkit/tests/deploy_openstack.rs`); this file pins what the real
//! cloud does not let us provoke: a token refused mid-run, garbage and
//! oversized answers, pagination, the exact headers and bodies.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use ibkit_deploy::backend::{BackendError, ComputeBackend, InstanceRef, VmRequest};
use ibkit_deploy::manifest::Flavor;
use ibkit_deploy::openstack::api::{NOVA_MICROVERSION, Service};
use ibkit_deploy::openstack::config::{Auth, CloudConfig, Interface, NameOrId};
use ibkit_deploy::openstack::{ApiError, CloudApi, OpenStackBackend, OpenStackSettings};
use ibkit_deploy::userdata::Secret;
use serde_json::{Value, json};

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: HeaderMap,
    body: Value,
}

#[derive(Default)]
struct Mock {
    base: String,
    seen: Vec<Seen>,
    /// Nova answers 401 this many times (a token revoked mid-run).
    refuse_tokens: usize,
    tokens_issued: usize,
    servers_created: usize,
}

type Shared = Arc<Mutex<Mock>>;

fn json_answer(status: StatusCode, v: Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

async fn handle(
    State(mock): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let body_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut m = mock.lock().expect("mock");
    m.seen.push(Seen {
        method: method.to_string(),
        path: path.clone(),
        headers: headers.clone(),
        body: body_json.clone(),
    });
    let base = m.base.clone();
    let p = path.as_str();
    if p == "/identity/v3/auth/tokens" {
        m.tokens_issued += 1;
        let token = format!("token-{}", m.tokens_issued);
        let ep = |kind: &str, url: String| {
            json!({ "type": kind, "endpoints": [
                { "interface": "internal", "region": "RegionOne", "url": "http://127.0.0.1:1/wrong" },
                { "interface": "public", "region": "RegionOne", "url": url } ] })
        };
        let answer = json!({ "token": {
            "project": { "id": "p-1" },
            "catalog": [
                ep("compute", format!("{base}/compute/v2.1")),
                ep("image", format!("{base}/image")),
                ep("network", format!("{base}/network")),
            ] } });
        return (
            StatusCode::CREATED,
            [
                ("x-subject-token", token),
                ("content-type", "application/json".into()),
            ],
            answer.to_string(),
        )
            .into_response();
    }
    if p.starts_with("/compute") && m.refuse_tokens > 0 {
        m.refuse_tokens -= 1;
        return json_answer(
            StatusCode::UNAUTHORIZED,
            json!({ "error": { "message": "The request you have made requires authentication." } }),
        );
    }
    match (method.as_str(), p) {
        ("GET", "/compute/v2.1/flavors/detail") => json_answer(
            StatusCode::OK,
            json!({ "flavors": [
                { "id": "f-big", "name": "big", "vcpus": 8, "ram": 16384, "disk": 80 },
                { "id": "f-off", "name": "off", "vcpus": 1, "ram": 1024, "disk": 10, "OS-FLV-DISABLED:disabled": true },
                { "id": "f-small", "name": "small", "vcpus": 1, "ram": 1024, "disk": 10 },
                { "id": "f-tiny", "name": "tiny", "vcpus": 1, "ram": 512, "disk": 1 } ] }),
        ),
        ("GET", "/image/v2/images?name=app") => json_answer(
            StatusCode::OK,
            json!({ "images": [ { "id": "img-1", "name": "app", "status": "active" } ] }),
        ),
        ("GET", "/image/v2/images?name=twice") => json_answer(
            StatusCode::OK,
            json!({ "images": [ { "id": "img-a", "status": "active" }, { "id": "img-b", "status": "active" } ] }),
        ),
        ("GET", "/network/v2.0/networks?name=given") => json_answer(
            StatusCode::OK,
            json!({ "networks": [ { "id": "net-1", "name": "given" } ] }),
        ),
        ("GET", p) if p.starts_with("/network/v2.0/ports?tags=") => {
            json_answer(StatusCode::OK, json!({ "ports": [] }))
        }
        ("GET", p) if p.starts_with("/network/v2.0/security-groups?tags=") => {
            json_answer(StatusCode::OK, json!({ "security_groups": [] }))
        }
        ("POST", "/network/v2.0/security-groups") => json_answer(
            StatusCode::CREATED,
            json!({ "security_group": { "id": "sg-1", "name": body_json["security_group"]["name"],
                // Neutron's default egress rules only.
                "security_group_rules": [
                    { "direction": "egress", "ethertype": "IPv4", "protocol": null } ] } }),
        ),
        ("PUT", "/network/v2.0/security-groups/sg-1/tags") => {
            json_answer(StatusCode::OK, json!({ "tags": body_json["tags"] }))
        }
        ("POST", "/network/v2.0/security-group-rules") => json_answer(
            StatusCode::CREATED,
            json!({ "security_group_rule": body_json["security_group_rule"] }),
        ),
        ("POST", "/network/v2.0/ports") => json_answer(
            StatusCode::CREATED,
            json!({ "port": { "id": "port-1", "network_id": "net-1",
                "fixed_ips": [ { "subnet_id": "s", "ip_address": "10.0.0.5" } ] } }),
        ),
        ("PUT", "/network/v2.0/ports/port-1/tags") => {
            json_answer(StatusCode::OK, json!({ "tags": body_json["tags"] }))
        }
        ("POST", "/compute/v2.1/servers") => {
            m.servers_created += 1;
            json_answer(StatusCode::ACCEPTED, json!({ "server": { "id": "srv-1" } }))
        }
        ("GET", "/compute/v2.1/servers/srv-1") => json_answer(
            StatusCode::OK,
            json!({ "server": { "id": "srv-1", "name": "ibkit-demo-db-a1", "status": "ACTIVE",
                "addresses": { "n": [ { "addr": "10.0.0.5" } ] } } }),
        ),
        // Pagination: two pages, the second reached through the next link.
        ("GET", "/compute/v2.1/servers/detail?name=%5Eibkit-paged-") => json_answer(
            StatusCode::OK,
            json!({ "servers": [ { "id": "s1", "status": "ACTIVE",
                    "metadata": { "ibkit-instance": "00000000-0000-0000-0000-000000000000", "ibkit-host": "a", "ibkit-attempt": "1" } } ],
                "servers_links": [ { "rel": "next",
                    "href": format!("{base}/compute/v2.1/servers/detail?name=%5Eibkit-paged-&marker=s1") } ] }),
        ),
        ("GET", "/compute/v2.1/servers/detail?name=%5Eibkit-paged-&marker=s1") => json_answer(
            StatusCode::OK,
            json!({ "servers": [
                { "id": "s2", "status": "SHUTOFF",
                  "metadata": { "ibkit-instance": "00000000-0000-0000-0000-000000000000", "ibkit-host": "b", "ibkit-attempt": "3" } },
                { "id": "other", "status": "ACTIVE", "metadata": { "ibkit-instance": "someone-else" } } ] }),
        ),
        ("GET", "/compute/v2.1/garbage") => {
            (StatusCode::OK, "<html>not json</html>").into_response()
        }
        ("GET", "/compute/v2.1/huge") => (StatusCode::OK, vec![b' '; 40 << 20]).into_response(),
        _ => json_answer(
            StatusCode::NOT_FOUND,
            json!({ "itemNotFound": { "message": format!("mock: no route {method} {p}") } }),
        ),
    }
}

struct Cloud {
    mock: Shared,
    config: CloudConfig,
}

async fn cloud() -> Cloud {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let mock: Shared = Arc::new(Mutex::new(Mock {
        base: base.clone(),
        ..Mock::default()
    }));
    let app = Router::new().fallback(handle).with_state(mock.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let config = CloudConfig {
        name: "mock".into(),
        auth: Auth::Password {
            auth_url: format!("{base}/identity"),
            user: NameOrId::Name("demo".into()),
            user_domain: None,
            password: Secret::new("s3cr3t-pw"),
            project: Some(NameOrId::Name("demo".into())),
            project_domain: None,
        },
        region: Some("RegionOne".into()),
        interface: Interface::Public,
        verify: true,
        cacert: None,
        source: None,
    };
    Cloud { mock, config }
}

fn seen(c: &Cloud) -> Vec<Seen> {
    c.mock.lock().expect("mock").seen.clone()
}

#[tokio::test]
async fn a_refused_token_is_renewed_once_and_nova_gets_its_microversion() {
    let c = cloud().await;
    c.mock.lock().expect("mock").refuse_tokens = 1;
    let api = CloudApi::new(c.config.clone()).expect("api");
    let flavors = api
        .call(
            Service::Compute,
            reqwest::Method::GET,
            "/flavors/detail",
            None,
        )
        .await
        .expect("flavors after a renewal");
    assert!(flavors.is_some());
    let seen = seen(&c);
    let auth: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.path.ends_with("/auth/tokens"))
        .collect();
    assert_eq!(auth.len(), 2, "one renewal");
    let body = &auth[0].body["auth"]["identity"]["password"]["user"];
    assert_eq!(body["name"], "demo");
    assert_eq!(body["domain"]["id"], "default");
    let nova: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.path.starts_with("/compute"))
        .collect();
    assert_eq!(nova.len(), 2);
    assert_eq!(nova[1].headers["x-auth-token"], "token-2");
    assert_eq!(
        nova[1].headers["openstack-api-version"],
        format!("compute {NOVA_MICROVERSION}").as_str()
    );
    // A second refusal in a row is an error, not a loop.
    c.mock.lock().expect("mock").refuse_tokens = 5;
    let err = api
        .call(
            Service::Compute,
            reqwest::Method::GET,
            "/flavors/detail",
            None,
        )
        .await
        .expect_err("refused twice");
    assert_eq!(err.status(), Some(401));
    assert!(!format!("{err} {err:?}").contains("s3cr3t-pw"));
}

#[tokio::test]
async fn garbage_and_oversized_answers_are_errors_naming_the_call() {
    let c = cloud().await;
    let api = CloudApi::new(c.config.clone()).expect("api");
    let err = api
        .call(Service::Compute, reqwest::Method::GET, "/garbage", None)
        .await
        .expect_err("garbage");
    assert!(matches!(err, ApiError::Decode { .. }), "{err}");
    assert!(err.to_string().contains("Nova GET /garbage"), "{err}");
    let err = api
        .call(Service::Compute, reqwest::Method::GET, "/huge", None)
        .await
        .expect_err("huge");
    assert!(err.to_string().contains("over"), "{err}");
    let err = api
        .call(
            Service::Compute,
            reqwest::Method::GET,
            "/nothing-here",
            None,
        )
        .await
        .expect_err("404");
    assert!(err.is_not_found());
    assert!(
        err.to_string()
            .contains("mock: no route GET /compute/v2.1/nothing-here"),
        "{err}"
    );
}

fn request(user_data: Vec<u8>, image: &str) -> VmRequest {
    VmRequest {
        instance: InstanceRef {
            id: uuid::Uuid::nil(),
            name: "demo".into(),
        },
        host: "db".into(),
        image: image.into(),
        flavor: Flavor {
            vcpus: 1,
            memory_mib: 1024,
            disk_gib: 5,
        },
        os_flavor: None,
        ports: vec![443],
        user_data,
        service_url: "https://203.0.113.10:8443".into(),
        config_hash: "h1".into(),
        attempt: 1,
    }
}

fn backend(c: &Cloud) -> OpenStackBackend {
    let mut settings = OpenStackSettings::new(std::env::temp_dir().join("ibkit-mock-evidence"));
    settings.network = Some("given".into());
    settings.poll = std::time::Duration::from_millis(10);
    OpenStackBackend::new(CloudApi::new(c.config.clone()).expect("api"), settings)
}

#[tokio::test]
async fn create_vm_sends_the_server_the_platform_expects() {
    let c = cloud().await;
    let b = backend(&c);
    let user_data = b"#cloud-config\nkey: \xff binary-safe\n".to_vec();
    let vm = b
        .create_vm(request(user_data.clone(), "app"))
        .await
        .expect("created");
    assert_eq!(vm.id, "srv-1");
    assert_eq!(vm.addresses, vec![std::net::IpAddr::from([10, 0, 0, 5])]);
    let seen = seen(&c);
    let post = seen
        .iter()
        .find(|s| s.method == "POST" && s.path == "/compute/v2.1/servers")
        .expect("server POST");
    let server = &post.body["server"];
    assert_eq!(server["name"], "ibkit-demo-db-a1");
    assert_eq!(server["imageRef"], "img-1");
    // The smallest enabled flavor with 1 vCPU, 1024 MiB and 5 GiB.
    assert_eq!(server["flavorRef"], "f-small");
    assert_eq!(server["config_drive"], true);
    assert_eq!(server["networks"], json!([{ "port": "port-1" }]));
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(server["user_data"].as_str().expect("user_data"))
        .expect("base64");
    assert_eq!(decoded, user_data);
    let meta: BTreeMap<String, String> =
        serde_json::from_value(server["metadata"].clone()).expect("metadata strings");
    assert_eq!(
        meta,
        BTreeMap::from([
            ("ibkit-instance".into(), uuid::Uuid::nil().to_string()),
            ("ibkit-deployment".into(), "demo".into()),
            ("ibkit-host".into(), "db".into()),
            ("ibkit-attempt".into(), "1".into()),
            ("ibkit-config-hash".into(), "h1".into()),
        ])
    );
    let port = seen
        .iter()
        .find(|s| s.method == "POST" && s.path == "/network/v2.0/ports")
        .expect("port POST");
    assert_eq!(port.body["port"]["network_id"], "net-1");
    assert_eq!(port.body["port"]["security_groups"], json!(["sg-1"]));
    let mut rules: Vec<String> = seen
        .iter()
        .filter(|s| s.path == "/network/v2.0/security-group-rules")
        .map(|s| {
            let r = &s.body["security_group_rule"];
            assert_eq!(r["direction"], "ingress");
            assert_eq!(r["security_group_id"], "sg-1");
            assert_eq!(r["port_range_min"], r["port_range_max"]);
            format!(
                "{}/{}",
                r["protocol"].as_str().unwrap_or(""),
                r["port_range_min"]
            )
        })
        .collect();
    rules.sort();
    assert_eq!(rules, ["icmp/null", "tcp/22", "tcp/443"]);
    let tags = seen
        .iter()
        .find(|s| s.path == "/network/v2.0/ports/port-1/tags")
        .expect("port tags");
    assert_eq!(
        tags.body["tags"],
        json!([
            "ibkit",
            format!("ibkit-instance:{}", uuid::Uuid::nil()),
            "ibkit-host:db"
        ])
    );
    // Neutron and Glance get no compute microversion header.
    assert!(
        seen.iter()
            .filter(|s| !s.path.starts_with("/compute") && !s.path.contains("auth/tokens"))
            .all(|s| !s.headers.contains_key("openstack-api-version"))
    );
}

#[tokio::test]
async fn refusals_before_anything_is_created() {
    let c = cloud().await;
    let b = backend(&c);
    // 49152 bytes are 65536 once base64-encoded: one over Nova's limit.
    let err = b
        .create_vm(request(vec![b'x'; 49_152], "app"))
        .await
        .expect_err("too big");
    assert!(err.to_string().contains("65535"), "{err}");
    let err = b
        .create_vm(request(vec![b'x'; 10], "twice"))
        .await
        .expect_err("ambiguous image");
    assert!(
        matches!(&err, BackendError::Image { why, .. } if why.contains("img-a") && why.contains("img-b")),
        "{err}"
    );
    let mut big = request(vec![b'x'; 10], "app");
    big.flavor.vcpus = 16;
    let err = b.create_vm(big).await.expect_err("no flavor");
    assert!(
        matches!(&err, BackendError::Capacity(m) if m.contains("16 vCPUs") && m.contains("big (8/16384/80)")),
        "{err}"
    );
    let m = c.mock.lock().expect("mock");
    assert_eq!(m.servers_created, 0);
    assert!(
        !m.seen
            .iter()
            .any(|s| s.method == "POST" && s.path.contains("/ports"))
    );
}

#[tokio::test]
async fn list_follows_pagination_and_keeps_only_the_instance() {
    let c = cloud().await;
    let b = backend(&c);
    let vms = b
        .list(&InstanceRef {
            id: uuid::Uuid::nil(),
            name: "paged".into(),
        })
        .await
        .expect("listed");
    let summary: Vec<(String, String, u32, ibkit_deploy::VmState)> = vms
        .into_iter()
        .map(|v| (v.handle.id, v.handle.host, v.attempt, v.state))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("s1".into(), "a".into(), 1, ibkit_deploy::VmState::Running),
            ("s2".into(), "b".into(), 3, ibkit_deploy::VmState::Stopped),
        ]
    );
}

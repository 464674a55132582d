//! The OpenAPI 3.1 document, built with utoipa from the route table.

use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ComponentsBuilder, InfoBuilder, OpenApiBuilder, PathsBuilder};

use crate::routes::ROUTES;

pub fn document() -> utoipa::openapi::OpenApi {
    let mut paths = PathsBuilder::new();
    for (method, path, auth, summary) in ROUTES {
        let m = match *method {
            "get" => HttpMethod::Get,
            "post" => HttpMethod::Post,
            "put" => HttpMethod::Put,
            "delete" => HttpMethod::Delete,
            _ => HttpMethod::Patch,
        };
        let mut op = OperationBuilder::new()
            .summary(Some(*summary))
            .operation_id(Some(format!(
                "{method}{}",
                path.replace(['/', '{', '}', '.', '-'], "_")
            )))
            .tag(if path.starts_with("/v1/agent") {
                "agent"
            } else if *auth == "operator" {
                "operator"
            } else {
                "service"
            });
        if *auth != "none" {
            op = op.security(SecurityRequirement::new::<_, _, &str>(*auth, []));
        }
        paths = paths.path(*path, PathItem::new(m, op.build()));
    }
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
                .security_scheme("operator", bearer("the operator token"))
                .security_scheme("agent", bearer("a host credential from /v1/agent/pair"))
                .build(),
        ))
        .build()
}

pub fn document_json() -> String {
    document()
        .to_json()
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

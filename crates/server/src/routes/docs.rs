//! Unauthenticated documents: liveness, OpenAPI, installer, agent binary
//! and package.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::io::ReaderStream;

use crate::AppState;
use crate::error::ApiError;

/// `GET /healthz`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Liveness {
    #[schema(example = "ok")]
    pub status: String,
}

pub async fn healthz() -> Json<Liveness> {
    Json(Liveness {
        status: "ok".into(),
    })
}

pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document_json(),
    )
        .into_response()
}

pub async fn install_sh(State(s): State<Arc<AppState>>) -> Response {
    // Pins only for the generated certificate: an operator's certificate
    // is checked against the CA roots and survives its renewal.
    let script = ibkit_api::dist::install_script(
        &s.public_url,
        s.agent_cert_sha256.as_deref().unwrap_or(""),
        s.curl_pin.as_deref().unwrap_or(""),
    );
    ([(header::CONTENT_TYPE, "text/x-shellscript")], script).into_response()
}

/// How long a download holds its slot: a client that stops reading frees
/// it for others after this (its connection costs only its buffers).
const DOWNLOAD_SLOT_HOLD: Duration = Duration::from_secs(600);

/// The path of the agent's Debian package.
pub const AGENT_DEB_PATH: &str = "/v1/agent/ibkit-agent.deb";

/// Debian's media type for a binary package.
const DEB_CONTENT_TYPE: &str = "application/vnd.debian.binary-package";

/// The agent binary (`--agent-binary`), streamed by [`download`].
pub async fn binary(State(s): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let path = s.agent_binary.clone();
    download(&s, "the agent binary", &path, "application/octet-stream").await
}

/// The agent's Debian package (`--agent-deb`), streamed by [`download`],
/// so a VM installs the agent with its package manager.
pub async fn agent_deb(State(s): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let Some(path) = s.cfg.agent_deb.clone() else {
        return Err(ApiError::not_found(
            "this service serves no agent package (start it with --agent-deb FILE)",
        ));
    };
    download(&s, "the agent package", &path, DEB_CONTENT_TYPE).await
}

/// A file the agents download, streamed from disk (the file is never read
/// whole), at most `--max-agent-downloads` at once (all such files count
/// together); more get 503 + Retry-After (curl's `--retry` honours it)
/// instead of queueing without bound. A missing or non-regular file is a
/// 404 naming `what` and `path`.
async fn download(
    s: &AppState,
    what: &str,
    path: &std::path::Path,
    content_type: &'static str,
) -> Result<Response, ApiError> {
    let Ok(permit) = s.downloads.clone().try_acquire_owned() else {
        let mut r = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} agent downloads are in progress, the most served at once; retry shortly",
                s.cfg.max_agent_downloads.max(1)
            ),
        )
        .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return Ok(r);
    };
    let unavailable = |e: std::io::Error| {
        ApiError::not_found(format!("{what} {} is not available: {e}", path.display()))
    };
    let file = tokio::fs::File::open(path).await.map_err(unavailable)?;
    let meta = file.metadata().await.map_err(unavailable)?;
    if !meta.is_file() {
        return Err(ApiError::not_found(format!(
            "{what} {} is not a regular file",
            path.display()
        )));
    }
    let slot = Arc::new(Mutex::new(Some(permit)));
    {
        // Frees the slot of a download still running after the hold time.
        let slot = Arc::downgrade(&slot);
        tokio::spawn(async move {
            tokio::time::sleep(DOWNLOAD_SLOT_HOLD).await;
            if let Some(slot) = slot.upgrade() {
                slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            }
        });
    }
    let reader = SlotReader { file, _slot: slot };
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_LENGTH, HeaderValue::from(meta.len())),
        ],
        Body::from_stream(ReaderStream::with_capacity(reader, 64 << 10)),
    )
        .into_response())
}

/// The file being sent, holding its download slot until the body is
/// finished or dropped (client gone).
struct SlotReader {
    file: tokio::fs::File,
    _slot: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
}

impl AsyncRead for SlotReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_read(cx, buf)
    }
}

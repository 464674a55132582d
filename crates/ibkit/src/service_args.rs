//! How an operator command finds and trusts `ibkit serve`: the flags shared
//! by `ibkit deploy` and `ibkit instance`.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use ibkit_client::{Secret, ServiceEndpoint};

#[derive(clap::Args, Clone)]
pub struct ServiceArgs {
    /// The state directory of a local `ibkit serve` (its endpoint.json and
    /// operator-token), used unless --service is given.
    #[arg(
        long,
        global = true,
        env = "IBKIT_SERVE_STATE",
        default_value = "/var/lib/ibkit"
    )]
    pub serve_state: PathBuf,
    /// The service URL (then --operator-token-file is needed too).
    #[arg(long, global = true, env = "IBKIT_SERVICE")]
    pub service: Option<String>,
    /// Hex SHA-256 of the service's certificate (its ready line prints it);
    /// without it the certificate must be CA-signed.
    #[arg(long, global = true, env = "IBKIT_SERVICE_CERT_SHA256")]
    pub service_cert_sha256: Option<String>,
    #[arg(long, global = true, env = "IBKIT_OPERATOR_TOKEN_FILE")]
    pub operator_token_file: Option<PathBuf>,
}

impl ServiceArgs {
    /// The service's URL, certificate pin and operator token.
    pub fn endpoint(&self) -> Result<ServiceEndpoint> {
        let read_token = |f: &PathBuf| -> Result<Secret> {
            let token = std::fs::read_to_string(f).with_context(|| {
                format!(
                    "cannot read the operator token {} (--operator-token-file)",
                    f.display()
                )
            })?;
            Ok(Secret::new(token.trim()))
        };
        match &self.service {
            Some(url) => {
                let token_file = self
                    .operator_token_file
                    .clone()
                    .unwrap_or_else(|| self.serve_state.join("operator-token"));
                Ok(ServiceEndpoint {
                    url: url.clone(),
                    cert_sha256: self.service_cert_sha256.clone(),
                    operator_token: read_token(&token_file)?,
                })
            }
            None => {
                let mut ep = ServiceEndpoint::from_serve_state(&self.serve_state)?;
                if let Some(f) = &self.operator_token_file {
                    ep.operator_token = read_token(f)?;
                }
                Ok(ep)
            }
        }
    }
}

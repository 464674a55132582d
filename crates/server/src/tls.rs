//! The service certificate: generated self-signed (kept across restarts) or
//! provided; its SHA-256 (what agents pin) and curl's public-key pin.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use ibkit_api::step::sha256_hex;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::config::TlsMode;

pub struct TlsMaterial {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// Lowercase hex SHA-256 of the leaf certificate's DER.
    pub cert_sha256: String,
    /// `sha256//BASE64` of the leaf's SubjectPublicKeyInfo, for curl.
    pub curl_pin: String,
    /// The certificate was generated here (clients cannot already trust it).
    pub self_signed: bool,
}

/// Loads or creates the TLS material; `None` for plain HTTP.
pub fn load(mode: &TlsMode, state_dir: &Path) -> Result<Option<TlsMaterial>> {
    let (cert_pem, key_pem, self_signed) = match mode {
        TlsMode::InsecureHttp => return Ok(None),
        TlsMode::Provided { cert, key } => {
            // The operator's files: say so, but do not change them.
            if let Ok(m) = std::fs::metadata(key)
                && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o077 != 0
            {
                tracing::warn!(
                    "the TLS key {} is readable by group or others",
                    key.display()
                );
            }
            (
                std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?,
                std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?,
                false,
            )
        }
        TlsMode::Generated { extra_sans } => {
            let dir = state_dir.join("tls");
            let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
            crate::prepare_private_dir(&dir)?;
            if cert.exists() && key.exists() {
                // An older ibkit wrote them world-readable.
                crate::narrow_to_owner(&key)?;
                crate::narrow_to_owner(&cert)?;
                (std::fs::read(&cert)?, std::fs::read(&key)?, true)
            } else {
                let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
                if let Some(h) = crate::config::hostname() {
                    sans.push(h);
                }
                for s in extra_sans {
                    if !sans.contains(s) {
                        sans.push(s.clone());
                    }
                }
                let ck = rcgen::generate_simple_self_signed(sans)
                    .context("cannot generate the self-signed certificate")?;
                let cert_pem = ck.cert.pem().into_bytes();
                let key_pem = ck.signing_key.serialize_pem().into_bytes();
                crate::write_private(&key, &key_pem)?;
                crate::write_private(&cert, &cert_pem)?;
                (cert_pem, key_pem, true)
            }
        }
    };
    let leaf = CertificateDer::pem_slice_iter(&cert_pem)
        .next()
        .context("no certificate in the PEM file")?
        .context("unreadable certificate PEM")?;
    PrivateKeyDer::from_pem_slice(&key_pem).context("unreadable private key PEM")?;
    let spki = spki_of(&leaf).context("cannot find the certificate's public key")?;
    Ok(Some(TlsMaterial {
        cert_sha256: sha256_hex(&leaf),
        curl_pin: format!(
            "sha256//{}",
            base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki))
        ),
        cert_pem,
        key_pem,
        self_signed,
    }))
}

/// (tag, whole element, content, rest).
type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// One DER TLV.
fn tlv(data: &[u8]) -> Result<Tlv<'_>> {
    let (&tag, rest) = data.split_first().context("truncated DER")?;
    let (&first, rest) = rest.split_first().context("truncated DER")?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            bail!("bad DER length");
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |a, b| (a << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        bail!("truncated DER");
    }
    let header = data.len() - rest.len();
    Ok((tag, &data[..header + len], &rest[..len], &rest[len..]))
}

/// The SubjectPublicKeyInfo element of an X.509 certificate.
pub fn spki_of(cert_der: &[u8]) -> Result<Vec<u8>> {
    let (_, _, cert, _) = tlv(cert_der)?;
    let (_, _, tbs, _) = tlv(cert)?;
    let mut rest = tbs;
    let (tag, _, _, r) = tlv(rest)?;
    if tag == 0xa0 {
        rest = r; // explicit version
    }
    // serial, signature, issuer, validity, subject
    for _ in 0..5 {
        rest = tlv(rest)?.3;
    }
    let (tag, whole, _, _) = tlv(rest)?;
    if tag != 0x30 {
        bail!("unexpected DER tag {tag:#x} for SubjectPublicKeyInfo");
    }
    Ok(whole.to_vec())
}

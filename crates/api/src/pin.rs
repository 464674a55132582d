//! Certificate pinning for clients of `ibkit serve` (feature `pinning`).
//!
//! The service's generated certificate is self-signed, so its clients (the
//! agent in a VM, `ibkit deploy` on the operator's machine) accept exactly
//! the certificate whose SHA-256 they were given instead of a CA's word.
//! Both build a `reqwest::Client` from [`pinned_client_config`] with
//! `reqwest::ClientBuilder::tls_backend_preconfigured` (formerly
//! `use_preconfigured_tls`).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// Accepts exactly the leaf certificate whose DER SHA-256 is the pin,
/// whatever its name, issuer or dates; handshake signatures are still
/// verified with the provider's algorithms, so the peer must hold the key.
#[derive(Debug)]
pub struct PinnedCertVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl PinnedCertVerifier {
    pub fn new(pin: [u8; 32], provider: Arc<CryptoProvider>) -> Self {
        PinnedCertVerifier { pin, provider }
    }
}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest = Sha256::digest(end_entity.as_ref());
        if digest.as_slice() == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the service's certificate (sha256 {}) is not the pinned one ({})",
                crate::step::hex(digest.as_slice()),
                crate::step::hex(&self.pin)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Parses a certificate pin: 64 hex digits, case-insensitive, `:`
/// separators allowed (openssl's `-fingerprint` spelling).
pub fn parse_cert_sha256(hex: &str) -> Result<[u8; 32], String> {
    let digits: Vec<u8> = hex.bytes().filter(|b| *b != b':').collect();
    let bad = || format!("{hex:?}: expected 64 hex digits (SHA-256 of the certificate's DER)");
    // Checked digit by digit: from_str_radix alone would also take a sign.
    if digits.len() != 64 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks(2)) {
        let s = std::str::from_utf8(pair).map_err(|_| bad())?;
        *byte = u8::from_str_radix(s, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// A TLS client configuration that accepts only the pinned certificate,
/// with aws-lc-rs as the crypto provider and rustls' safe default protocol
/// versions. Hand it to `reqwest::ClientBuilder::tls_backend_preconfigured`.
pub fn pinned_client_config(pin: [u8; 32]) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(
        rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertVerifier::new(pin, provider)))
            .with_no_client_auth(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pins() {
        let hex = "AB".repeat(32);
        assert_eq!(parse_cert_sha256(&hex).expect("hex"), [0xab; 32]);
        let colons = vec!["ab"; 32].join(":");
        assert_eq!(parse_cert_sha256(&colons).expect("colons"), [0xab; 32]);
        let e = parse_cert_sha256("abc").expect_err("short");
        assert!(e.contains("\"abc\"") && e.contains("64 hex digits"), "{e}");
        assert!(parse_cert_sha256(&"+a".repeat(32)).is_err(), "signs");
        assert!(parse_cert_sha256(&"g0".repeat(32)).is_err(), "not hex");
        assert!(parse_cert_sha256(&"é".repeat(32)).is_err(), "not ASCII");
    }

    #[test]
    fn verifier_accepts_only_the_pinned_certificate() {
        let der = b"not really DER, the verifier only hashes it".to_vec();
        let pin: [u8; 32] = Sha256::digest(&der).into();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let v = PinnedCertVerifier::new(pin, provider);
        let name = ServerName::try_from("anything.invalid").expect("name");
        let now = UnixTime::now();
        assert!(
            v.verify_server_cert(&CertificateDer::from(der), &[], &name, &[], now)
                .is_ok()
        );
        let other = CertificateDer::from(b"another certificate".to_vec());
        let e = v
            .verify_server_cert(&other, &[], &name, &[], now)
            .expect_err("refused")
            .to_string();
        assert!(
            e.contains("not the pinned one") && e.contains(&crate::step::hex(&pin)),
            "{e}"
        );
        assert!(!v.supported_verify_schemes().is_empty());
    }

    #[test]
    fn client_config_uses_the_verifier() {
        let cfg = pinned_client_config([7; 32]).expect("config");
        assert!(format!("{:?}", cfg).contains("PinnedCertVerifier"));
    }
}

//! The emulated marketplace's RSA key pair: clients encrypt the AES key
//! and IV of a secure push to its public key, and it signs its answers.
//! Generated on first use and kept in `STATE/billing/key.pem` (PKCS#8,
//! 0600, in a 0700 directory) like the TLS key, so the public key vendors
//! configure stays the same across restarts; `STATE/billing/public.pem`
//! holds the public half for scripts.

use std::path::Path;

use anyhow::{Context as _, Result};
use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rsa::{
    KeyPair, KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, PrivateDecryptingKey,
};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject as _;

/// The key pair and its public key in the two PEM forms VK's examples read.
pub struct MarketplaceKey {
    signing: KeyPair,
    decrypting: OaepPrivateDecryptingKey,
    /// SubjectPublicKeyInfo, `-----BEGIN PUBLIC KEY-----`.
    pub spki_pem: String,
    /// PKCS#1 RSAPublicKey, `-----BEGIN RSA PUBLIC KEY-----`.
    pub pkcs1_pem: String,
}

impl std::fmt::Debug for MarketplaceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarketplaceKey")
            .field("spki_pem", &self.spki_pem)
            .finish_non_exhaustive()
    }
}

/// `der` as PEM with `label`, 64 columns.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl MarketplaceKey {
    /// Loads `DIR/key.pem`, or generates an RSA-2048 key pair and writes it.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        crate::prepare_private_dir(dir)?;
        let path = dir.join("key.pem");
        let pkcs8 = match std::fs::read(&path) {
            Ok(pem) => {
                crate::narrow_to_owner(&path)?;
                PrivatePkcs8KeyDer::from_pem_slice(&pem)
                    .with_context(|| format!("{}: no PKCS#8 private key", path.display()))?
                    .secret_pkcs8_der()
                    .to_vec()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let generated = KeyPair::generate(KeySize::Rsa2048)
                    .map_err(|_| anyhow::anyhow!("cannot generate the billing RSA key"))?;
                let der = generated
                    .as_der()
                    .map_err(|_| anyhow::anyhow!("cannot encode the billing RSA key"))?;
                crate::write_private(&path, pem("PRIVATE KEY", der.as_ref()).as_bytes())?;
                tracing::info!("generated the billing emulator's key in {}", path.display());
                der.as_ref().to_vec()
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let key = Self::from_pkcs8(&pkcs8).with_context(|| format!("{}", path.display()))?;
        crate::write_private(&dir.join("public.pem"), key.spki_pem.as_bytes())?;
        Ok(key)
    }

    /// The key pair of a PKCS#8 DER RSA private key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self> {
        let signing =
            KeyPair::from_pkcs8(der).map_err(|e| anyhow::anyhow!("not an RSA private key: {e}"))?;
        let decrypting = PrivateDecryptingKey::from_pkcs8(der)
            .map_err(|e| anyhow::anyhow!("not an RSA decryption key: {e}"))
            .and_then(|k| {
                OaepPrivateDecryptingKey::new(k)
                    .map_err(|_| anyhow::anyhow!("not an RSA-OAEP decryption key"))
            })?;
        let public = signing.public_key();
        let spki = public
            .as_der()
            .map_err(|_| anyhow::anyhow!("cannot encode the public key"))?;
        Ok(MarketplaceKey {
            spki_pem: pem("PUBLIC KEY", spki.as_ref()),
            pkcs1_pem: pem("RSA PUBLIC KEY", public.as_ref()),
            signing,
            decrypting,
        })
    }

    /// Bytes of an RSA ciphertext (and of a signature): 256 for RSA-2048.
    pub fn modulus_len(&self) -> usize {
        self.signing.public_modulus_len()
    }

    /// RSA-OAEP (SHA-256, MGF1 SHA-256, no label) decryption; `None` when
    /// `ciphertext` was not encrypted to this key with that padding.
    pub fn decrypt_oaep(&self, ciphertext: &[u8]) -> Option<Vec<u8>> {
        let mut out = vec![0u8; self.decrypting.min_output_size()];
        let plain = self
            .decrypting
            .decrypt(&OAEP_SHA256_MGF1SHA256, ciphertext, &mut out, None)
            .ok()?;
        Some(plain.to_vec())
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256 over `message`.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        let mut sig = vec![0u8; self.signing.public_modulus_len()];
        let rng = aws_lc_rs::rand::SystemRandom::new();
        self.signing
            .sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &rng,
                message,
                &mut sig,
            )
            .map_err(|_| anyhow::anyhow!("RSA signing failed"))?;
        Ok(sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_kept_private_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let billing = dir.path().join("billing");
        let a = MarketplaceKey::load_or_create(&billing).expect("generated");
        let b = MarketplaceKey::load_or_create(&billing).expect("reloaded");
        assert_eq!(a.spki_pem, b.spki_pem);
        assert!(a.spki_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert!(a.pkcs1_pem.starts_with("-----BEGIN RSA PUBLIC KEY-----\n"));
        assert_eq!(a.modulus_len(), 256);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&billing.join("key.pem")), 0o600);
        assert_eq!(mode(&billing), 0o700);
        // Garbage is refused, never decrypted to something.
        assert_eq!(a.decrypt_oaep(&[7u8; 256]), None);
        assert_eq!(a.decrypt_oaep(b"short"), None);
    }
}

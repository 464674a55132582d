//! Unwrapping a secure push: base64 (URL-safe or standard, padded or not),
//! RSA-OAEP of the AES key and IV, AES-256-CBC with PKCS#7 padding of the
//! payload. Each failure names the field and what was wrong with it.

use aws_lc_rs::cipher::{AES_256, DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey};
use aws_lc_rs::iv::FixedLength;
use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::{Deserialize, Serialize};

use super::keys::MarketplaceKey;

/// The body of `…/metrics/decrypt` and `…/metrics/push` (VK's names).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EncryptedRequest {
    /// Base64url (padded, as VK's examples write it; standard base64 and
    /// unpadded are accepted) of the AES-256-CBC, PKCS#7-padded JSON.
    #[serde(rename = "encryptedPayload")]
    pub payload: String,
    /// Base64url of RSA-OAEP (SHA-256, MGF1 SHA-256) of the 32-byte AES key
    /// under the marketplace's public key.
    #[serde(rename = "encryptedKey")]
    pub key: String,
    /// Base64url of RSA-OAEP (SHA-256, MGF1 SHA-256) of the 16-byte IV.
    #[serde(rename = "encryptedIV")]
    pub iv: String,
}

/// Why a secure push could not be unwrapped (all answered 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("{field} is not base64 (URL-safe or standard, padded or not): {why}")]
    Base64 { field: &'static str, why: String },
    #[error(
        "{field} is {got} bytes; an RSA-OAEP ciphertext for the marketplace's key is {want} bytes"
    )]
    RsaLength {
        field: &'static str,
        got: usize,
        want: usize,
    },
    #[error(
        "{field} cannot be decrypted with the marketplace's key (RSA-OAEP, SHA-256, MGF1 \
         SHA-256): encrypted for another public key or with another padding"
    )]
    Oaep { field: &'static str },
    #[error("encryptedKey holds {0} bytes; an AES-256 key is 32")]
    KeyLength(usize),
    #[error("encryptedIV holds {0} bytes; an AES-CBC IV is 16")]
    IvLength(usize),
    #[error("encryptedPayload is {0} bytes; AES-CBC ciphertext is a non-empty multiple of 16")]
    CipherLength(usize),
    #[error(
        "encryptedPayload has bad PKCS#7 padding after AES-256-CBC decryption: a wrong key \
         or IV, or altered ciphertext"
    )]
    Padding,
}

/// Standard alphabet, padding optional (URL-safe input is mapped onto it).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes base64url or standard base64, padded or not; mixing the two
/// alphabets is refused.
pub fn decode_b64(field: &'static str, text: &str) -> Result<Vec<u8>, CryptoError> {
    let url = text.contains(['-', '_']);
    if url && text.contains(['+', '/']) {
        return Err(CryptoError::Base64 {
            field,
            why: "mixes the URL-safe (-_) and standard (+/) alphabets".into(),
        });
    }
    let normal: std::borrow::Cow<'_, str> = if url {
        text.replace('-', "+").replace('_', "/").into()
    } else {
        text.into()
    };
    LENIENT
        .decode(normal.as_bytes())
        .map_err(|e| CryptoError::Base64 {
            field,
            why: e.to_string(),
        })
}

/// One RSA-OAEP field decrypted.
fn unwrap_rsa(
    key: &MarketplaceKey,
    field: &'static str,
    text: &str,
) -> Result<Vec<u8>, CryptoError> {
    let ct = decode_b64(field, text)?;
    let want = key.modulus_len();
    if ct.len() != want {
        return Err(CryptoError::RsaLength {
            field,
            got: ct.len(),
            want,
        });
    }
    key.decrypt_oaep(&ct).ok_or(CryptoError::Oaep { field })
}

/// AES-256-CBC decryption with PKCS#7 padding removed.
pub fn aes_cbc_decrypt(
    key: &[u8],
    iv: &[u8; 16],
    ciphertext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(16) {
        return Err(CryptoError::CipherLength(ciphertext.len()));
    }
    let unbound =
        UnboundCipherKey::new(&AES_256, key).map_err(|_| CryptoError::KeyLength(key.len()))?;
    let dec = PaddedBlockDecryptingKey::cbc_pkcs7(unbound)
        .map_err(|_| CryptoError::KeyLength(key.len()))?;
    let mut buf = ciphertext.to_vec();
    let plain = dec
        .decrypt(&mut buf, DecryptionContext::Iv128(FixedLength::from(iv)))
        .map_err(|_| CryptoError::Padding)?;
    Ok(plain.to_vec())
}

/// The plaintext of a secure push.
pub fn unwrap(key: &MarketplaceKey, req: &EncryptedRequest) -> Result<Vec<u8>, CryptoError> {
    let aes = unwrap_rsa(key, "encryptedKey", &req.key)?;
    if aes.len() != 32 {
        return Err(CryptoError::KeyLength(aes.len()));
    }
    let iv = unwrap_rsa(key, "encryptedIV", &req.iv)?;
    let iv: [u8; 16] = iv
        .as_slice()
        .try_into()
        .map_err(|_| CryptoError::IvLength(iv.len()))?;
    let ct = decode_b64("encryptedPayload", &req.payload)?;
    aes_cbc_decrypt(&aes, &iv, &ct)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_forms_are_accepted_and_mixtures_refused() {
        let bytes = [0xfbu8, 0xff, 0xfe, 0x01];
        for text in ["-__-AQ==", "-__-AQ", "+//+AQ==", "+//+AQ"] {
            assert_eq!(decode_b64("f", text).as_deref(), Ok(&bytes[..]), "{text}");
        }
        for bad in ["-/", "A", "AQ==\n", "a b", "AQ==AQ=="] {
            assert!(decode_b64("f", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cbc_lengths_are_checked() {
        let key = [1u8; 32];
        let iv = [2u8; 16];
        assert_eq!(
            aes_cbc_decrypt(&key, &iv, &[0u8; 15]),
            Err(CryptoError::CipherLength(15))
        );
        assert_eq!(
            aes_cbc_decrypt(&key, &iv, &[]),
            Err(CryptoError::CipherLength(0))
        );
        assert_eq!(
            aes_cbc_decrypt(&[1u8; 16], &iv, &[0u8; 16]),
            Err(CryptoError::KeyLength(16))
        );
    }
}

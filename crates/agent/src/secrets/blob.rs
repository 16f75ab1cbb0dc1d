//! Sealing a file-sized blob that is not an app's secret (the API certificate's private key) with
//! the master key: `nonce || ciphertext`, the purpose as associated data, so a blob sealed for one
//! use cannot be opened as another.
//!
//! It does not store anything: the caller writes and reads the sealed bytes.

use chacha20poly1305::XNonce;
use chacha20poly1305::aead::{Aead, AeadCore, OsRng, Payload};
use zeroize::Zeroizing;

use super::MasterKey;

const NONCE_LEN: usize = 24;

/// A sealed blob that does not open with this master key (another key, or altered bytes).
#[derive(Debug, thiserror::Error)]
#[error(
    "the sealed `{purpose}` does not open with this master key (another key, or altered bytes)"
)]
pub struct OpenError {
    pub purpose: String,
}

impl MasterKey {
    /// `plain` sealed for `purpose`.
    pub fn seal_blob(&self, purpose: &str, plain: &[u8]) -> Vec<u8> {
        let nonce = chacha20poly1305::XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = associated_data(purpose);
        let ciphertext = self
            .cipher()
            .encrypt(
                &nonce,
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            // XChaCha20-Poly1305 fails only past 256 GiB of input.
            .unwrap_or_default();
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    /// What [`MasterKey::seal_blob`] sealed for `purpose`.
    pub fn open_blob(&self, purpose: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        let error = || OpenError {
            purpose: purpose.to_owned(),
        };
        if sealed.len() <= NONCE_LEN {
            return Err(error());
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let aad = associated_data(purpose);
        self.cipher()
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| error())
    }
}

fn associated_data(purpose: &str) -> Vec<u8> {
    format!("rollway-blob\0{purpose}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_opens_with_its_key_and_purpose_only() {
        let key = MasterKey::generate();
        let sealed = key.seal_blob("api key", b"private");
        assert!(!sealed.windows(7).any(|window| window == b"private"));
        assert_eq!(
            key.open_blob("api key", &sealed)
                .ok()
                .as_deref()
                .map(Vec::as_slice),
            Some(&b"private"[..])
        );
        assert!(key.open_blob("other", &sealed).is_err());
        assert!(MasterKey::generate().open_blob("api key", &sealed).is_err());
        assert!(key.open_blob("api key", &sealed[..10]).is_err());
    }
}

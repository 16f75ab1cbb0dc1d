//! Sealing a file-sized blob that is not an app's secret (the API certificate's private key) with
//! the master key: `nonce || ciphertext`, the purpose as associated data, so a blob sealed for one
//! use cannot be opened as another.
//!
//! It does not store anything: the caller writes and reads the sealed bytes. The sealing itself is
//! [`super::seal_blob`]'s, the one the certificates' keys use.

use zeroize::Zeroizing;

use super::MasterKey;
use crate::store::SealedSecret;

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
    /// `plain` sealed for `purpose` ([`super::seal_blob`]), as one byte string for a file.
    pub fn seal_blob(&self, purpose: &str, plain: &[u8]) -> Vec<u8> {
        // XChaCha20-Poly1305 fails only past 256 GiB of input.
        super::seal_blob(self, purpose, plain)
            .map(|sealed| [sealed.nonce, sealed.ciphertext].concat())
            .unwrap_or_default()
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
        let sealed = SealedSecret {
            nonce: nonce.to_vec(),
            ciphertext: ciphertext.to_vec(),
        };
        super::open_blob(self, purpose, &sealed).map_err(|_| error())
    }
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

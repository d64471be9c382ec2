//! Secrets at rest: the TOTP keys are sealed with AES-256-GCM under `DATA_ENCRYPTION_KEY`, and
//! `DATA_ENCRYPTION_KEYS_PREVIOUS` still opens what older keys sealed. Each sealed value is
//! stored with the id of its key (so `keys reencrypt` finds what an older key sealed) and bound
//! to its row by the associated data (a sealed value copied to another row does not open).
//! Without a key, values are stored in the clear (the key id is then `None`).

use aes_gcm::{Aes256Gcm, KeyInit as _, aead::Aead as _, aead::Payload};
use base64::Engine as _;
use sha2::Digest as _;

/// Bytes of the random nonce in front of each sealed value.
const NONCE_BYTES: usize = 12;

/// A 32-byte key from its configured form, base64 (standard or URL-safe, padded or not) of 32
/// bytes; `None` for anything else.
#[must_use]
pub fn decode_key(text: &str) -> Option<[u8; 32]> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let text = text.trim();
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
}

/// One key and its id.
struct DataKey {
    /// The first 8 bytes of the key's SHA-256, in hex: names the key without revealing it.
    id: String,
    cipher: Aes256Gcm,
}

impl DataKey {
    fn new(key: &[u8; 32]) -> Self {
        let digest = sha2::Sha256::digest(key);
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Self {
            id,
            cipher: Aes256Gcm::new(key.into()),
        }
    }
}

/// Why a stored value could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// It was sealed under a key that is neither the current one nor a previous one.
    #[error(
        "sealed under data key {0}, which is not configured (DATA_ENCRYPTION_KEY, DATA_ENCRYPTION_KEYS_PREVIOUS)"
    )]
    UnknownKey(String),
    /// It does not open under its key: altered, or bound to another row.
    #[error("a sealed value does not open under its key: altered, or moved from another row")]
    Corrupt,
}

/// The configured data keys.
#[derive(Default)]
pub struct DataKeys {
    current: Option<DataKey>,
    previous: Vec<DataKey>,
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKeys")
            .field("current", &self.current_id())
            .field(
                "previous",
                &self.previous.iter().map(|k| &k.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl DataKeys {
    /// The keys: `current` seals, every one of them opens.
    #[must_use]
    pub fn new(current: Option<[u8; 32]>, previous: &[[u8; 32]]) -> Self {
        Self {
            current: current.as_ref().map(DataKey::new),
            previous: previous.iter().map(DataKey::new).collect(),
        }
    }

    /// The id of the key that seals (`None`: values are stored in the clear).
    #[must_use]
    pub fn current_id(&self) -> Option<&str> {
        self.current.as_ref().map(|key| key.id.as_str())
    }

    /// Seals `plain` for the row named by `row`: the stored bytes (a random nonce and the
    /// ciphertext with its tag) and the key's id; `plain` itself when no key is configured.
    ///
    /// # Errors
    /// Only if the cipher fails (it cannot for values this small).
    pub fn seal(&self, plain: &[u8], row: &[u8]) -> anyhow::Result<(Vec<u8>, Option<String>)> {
        let Some(key) = &self.current else {
            return Ok((plain.to_vec(), None));
        };
        let nonce: [u8; NONCE_BYTES] = rand::random();
        let sealed = key
            .cipher
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: plain,
                    aad: row,
                },
            )
            .map_err(|_| anyhow::anyhow!("sealing a value failed"))?;
        let mut stored = nonce.to_vec();
        stored.extend_from_slice(&sealed);
        Ok((stored, Some(key.id.clone())))
    }

    /// Opens a stored value of the row named by `row`, sealed under the key `key_id` (`None`:
    /// stored in the clear).
    ///
    /// # Errors
    /// `UnknownKey` when that key is not configured, `Corrupt` when it does not open.
    pub fn open(
        &self,
        stored: &[u8],
        key_id: Option<&str>,
        row: &[u8],
    ) -> Result<Vec<u8>, OpenError> {
        let Some(key_id) = key_id else {
            return Ok(stored.to_vec());
        };
        let key = self
            .current
            .iter()
            .chain(&self.previous)
            .find(|key| key.id == key_id)
            .ok_or_else(|| OpenError::UnknownKey(key_id.to_owned()))?;
        if stored.len() < NONCE_BYTES {
            return Err(OpenError::Corrupt);
        }
        let (nonce, sealed) = stored.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| OpenError::Corrupt)?;
        key.cipher
            .decrypt(
                &nonce.into(),
                Payload {
                    msg: sealed,
                    aad: row,
                },
            )
            .map_err(|_| OpenError::Corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_under_their_key_only_for_their_row() {
        let old = [7u8; 32];
        let new = [9u8; 32];
        let before = DataKeys::new(Some(old), &[]);
        let (sealed, id) = before.seal(b"JBSWY3DPEHPK3PXP", b"row-1").unwrap();
        assert!(!sealed.windows(16).any(|w| w == b"JBSWY3DPEHPK3PXP"));
        let after = DataKeys::new(Some(new), &[old]);
        assert_eq!(
            after.open(&sealed, id.as_deref(), b"row-1").unwrap(),
            b"JBSWY3DPEHPK3PXP"
        );
        assert!(matches!(
            after.open(&sealed, id.as_deref(), b"row-2"),
            Err(OpenError::Corrupt)
        ));
        assert!(matches!(
            DataKeys::new(Some(new), &[]).open(&sealed, id.as_deref(), b"row-1"),
            Err(OpenError::UnknownKey(_))
        ));
        let clear = DataKeys::default();
        assert_eq!(clear.seal(b"abc", b"r").unwrap(), (b"abc".to_vec(), None));
        assert_eq!(after.current_id().unwrap().len(), 16);
        assert_ne!(after.current_id(), id.as_deref());
    }

    #[test]
    fn a_key_is_base64_of_exactly_32_bytes() {
        let key = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        assert_eq!(decode_key(&key), Some([1u8; 32]));
        assert_eq!(decode_key("c2hvcnQ="), None);
        assert_eq!(decode_key("not base64 at all!"), None);
    }
}

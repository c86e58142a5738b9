//! age's X25519 recipient stanza on aws-lc's primitives: how each object's file key is wrapped for a
//! recipient and unwrapped with an identity, as <https://c2sp.org/age> ("X25519 recipient stanza")
//! specifies it, so the objects stay age files the `age` tool decrypts.
//!
//! The `age` crate's own X25519 keys do the same with curve25519-dalek's portable arithmetic and,
//! when unwrapping, derive the identity's public key again from its secret for every object: two
//! scalar multiplications per object read, about 120 µs here, which a restore of ~900 objects
//! pays in full. With aws-lc's X25519 (assembly, the public key computed once per process) a small
//! object opens in 33 µs and seals in 40 (the age crate's: 124 and 93). The age crate still parses the header and checks its MAC ([`super::stream`]):
//! a wrong file key fails that check, it cannot turn into wrong plaintext.

use std::collections::HashSet;

use age_core::format::{FileKey, Stanza};
use age_core::secrecy::ExposeSecret;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use aws_lc_rs::hkdf::{Salt, HKDF_SHA256};
use base64::Engine;
use bech32::FromBase32;
use zeroize::Zeroizing;

/// The stanza's tag.
const TAG: &str = "X25519";
/// The HKDF info of the wrapping key.
const LABEL: &[u8] = b"age-encryption.org/v1/X25519";
/// Bytes of a key, a share, a shared secret.
const KEY_BYTES: usize = 32;
/// A file key wrapped: 16 bytes and the Poly1305 tag.
const WRAPPED_BYTES: usize = 32;

/// Stanza arguments, bodies and the header's MAC are base64 without padding; the decoder
/// refuses non-canonical encodings, as the specification asks.
pub(super) const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD_NO_PAD;

/// A recipient: an X25519 public key, from its `age1…` text.
pub(super) struct RecipientKey {
    /// The `age1…` text (what fingerprints are taken of).
    pub(super) text: String,
    public: [u8; KEY_BYTES],
}

/// An identity: an X25519 secret key, from its `AGE-SECRET-KEY-1…` text, and its recipient.
pub(super) struct IdentityKey {
    secret: PrivateKey,
    public: [u8; KEY_BYTES],
    /// The recipient's `age1…` text.
    pub(super) recipient: String,
}

impl RecipientKey {
    /// The recipient of `text` (`age1…`), `None` when it is none.
    pub(super) fn parse(text: &str) -> Option<RecipientKey> {
        let public = bech32_key(text, "age")?;
        // bech32 is one case throughout: the lower one is the text age prints and fingerprints take.
        Some(RecipientKey {
            text: text.to_ascii_lowercase(),
            public,
        })
    }
}

impl IdentityKey {
    /// The identity of `text` (`AGE-SECRET-KEY-1…`), `None` when it is none.
    pub(super) fn parse(text: &str) -> Option<IdentityKey> {
        let secret_bytes = Zeroizing::new(bech32_key(text, "age-secret-key-")?);
        let secret = PrivateKey::from_private_key(&X25519, secret_bytes.as_slice()).ok()?;
        let public: [u8; KEY_BYTES] = secret.compute_public_key().ok()?.as_ref().try_into().ok()?;
        let recipient = bech32::encode("age", bech32::ToBase32::to_base32(&public), bech32::Variant::Bech32).ok()?;
        Some(IdentityKey {
            secret,
            public,
            recipient,
        })
    }
}

impl age::Recipient for RecipientKey {
    fn wrap_file_key(&self, file_key: &FileKey) -> Result<(Vec<Stanza>, HashSet<String>), age::EncryptError> {
        let failed = || age::EncryptError::Io(std::io::Error::other("X25519 key agreement failed"));
        let ephemeral = PrivateKey::generate(&X25519).map_err(|_| failed())?;
        let share: [u8; KEY_BYTES] = ephemeral
            .compute_public_key()
            .map_err(|_| failed())?
            .as_ref()
            .try_into()
            .map_err(|_| failed())?;
        let key = wrapping_key(&ephemeral, &self.public, &share, &self.public).ok_or_else(failed)?;
        let mut body = file_key.expose_secret().to_vec();
        key.seal_in_place_append_tag(zero_nonce(), Aad::empty(), &mut body)
            .map_err(|_| failed())?;
        let stanza = Stanza {
            tag: TAG.to_string(),
            args: vec![BASE64.encode(share)],
            body,
        };
        Ok((vec![stanza], HashSet::new()))
    }
}

impl age::Identity for IdentityKey {
    fn unwrap_stanza(&self, stanza: &Stanza) -> Option<Result<FileKey, age::DecryptError>> {
        if stanza.tag != TAG {
            return None;
        }
        let share = match &stanza.args[..] {
            [arg] => BASE64
                .decode(arg)
                .ok()
                .and_then(|b| <[u8; KEY_BYTES]>::try_from(b).ok()),
            _ => None,
        };
        let (Some(share), WRAPPED_BYTES) = (share, stanza.body.len()) else {
            return Some(Err(age::DecryptError::InvalidHeader));
        };
        // A share whose agreement is all zeros (a low-order point) is refused by aws-lc.
        let Some(key) = wrapping_key(&self.secret, &share, &share, &self.public) else {
            return Some(Err(age::DecryptError::InvalidHeader));
        };
        let mut body = Zeroizing::new(stanza.body.clone());
        // Not ours when it does not open: another recipient's stanza.
        let file_key = key
            .open_in_place(zero_nonce(), Aad::empty(), body.as_mut_slice())
            .ok()?;
        Some(Ok(FileKey::init_with_mut(|bytes| bytes.copy_from_slice(file_key))))
    }
}

/// The key that wraps the file key: HKDF-SHA-256 of the X25519 agreement of `secret` with
/// `peer` (the recipient when wrapping, the ephemeral share when unwrapping), salted with
/// `share ‖ recipient`. `None` when the agreement fails or is all zeros (a low-order point).
fn wrapping_key(
    secret: &PrivateKey,
    peer: &[u8; KEY_BYTES],
    share: &[u8; KEY_BYTES],
    recipient: &[u8; KEY_BYTES],
) -> Option<LessSafeKey> {
    let mut salt = [0u8; 2 * KEY_BYTES];
    salt[..KEY_BYTES].copy_from_slice(share);
    salt[KEY_BYTES..].copy_from_slice(recipient);
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    agreement::agree(secret, UnparsedPublicKey::new(&X25519, peer), (), |shared| {
        if shared.iter().all(|b| *b == 0) {
            return Err(());
        }
        Salt::new(HKDF_SHA256, &salt)
            .extract(shared)
            .expand(&[LABEL], HKDF_SHA256)
            .and_then(|okm| okm.fill(key.as_mut_slice()))
            .map_err(|_| ())
    })
    .ok()?;
    UnboundKey::new(&CHACHA20_POLY1305, key.as_slice())
        .ok()
        .map(LessSafeKey::new)
}

/// Each wrapping key is used once (its ephemeral share is new), so the nonce is zero.
fn zero_nonce() -> Nonce {
    Nonce::assume_unique_for_key([0u8; 12])
}

/// The 32-byte key of a bech32 text with human-readable part `hrp` (case-insensitive).
fn bech32_key(text: &str, hrp: &str) -> Option<[u8; KEY_BYTES]> {
    let (found, data, variant) = bech32::decode(text).ok()?;
    if found != hrp || variant != bech32::Variant::Bech32 {
        return None;
    }
    Vec::<u8>::from_base32(&data).ok()?.try_into().ok()
}

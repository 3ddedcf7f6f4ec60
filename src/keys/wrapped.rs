//! The KMS-wrapped keyring file: the keyring's entries, each secret wrapped on its own by the
//! KMS key the file names.
//!
//! ```json
//! {
//!   "format": "pseudonymizer-keyring-kms/v2",
//!   "kms": "aws-kms://arn:aws:kms:ap-southeast-1:111122223333:key/…",
//!   "keyring_id": "kr-5f0c9a1e27b4d3c8",
//!   "generation": 7,
//!   "manifest": "<b64 of the KMS ciphertext of the metadata's SHA-256>",
//!   "keys": [
//!     { "id": "p-20261130-1436da", "purpose": "pseudonym", "state": "active",
//!       "created_at": "2026-11-30T09:11:04Z", "wrapped_secret": "<b64 of the KMS ciphertext>" }
//!   ]
//! }
//! ```
//!
//! Each secret is wrapped with the encryption context of its entry ([`crate::kms::entry_context`]:
//! keyring id, key id, purpose), so a wrapped secret copied into another entry or another
//! keyring does not unwrap. Nothing here ever writes a clear secret: `rotate` wraps the new
//! secret before it is stored, `destroy` drops a wrapped one, `rewrap` unwraps in memory and
//! wraps under the new KMS key, and every write is atomic (temporary file, fsync, rename).
//!
//! Version 2 authenticates what is in clear too: the `manifest` is the SHA-256 of the file's
//! metadata (format, KMS, keyring id, generation, and every entry's id, purpose, state,
//! creation time and wrapped secret; [`WrappedKeyring::manifest_text`]) wrapped by the KMS, so
//! an edited state (a destroyed key made active) or a file copied back from an earlier
//! generation does not pass for the current one: the edit breaks the digest, and the old
//! generation is below what a worker has seen. Writing one takes `kms:Encrypt`, which a worker
//! never needs. Version-1 files (no generation, no manifest) load as generation 0 and are
//! written as version 2.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{KeyEntry, KeyState, Keyring, KeyringError, Need, Purpose, Secret};
use crate::kms::{entry_context, Kms, KmsError};
use crate::secret_file::Replace;

/// The `format` of a KMS-wrapped keyring file, as written.
pub const KMS_FORMAT: &str = "pseudonymizer-keyring-kms/v2";
/// Version 1: no generation and no manifest (metadata not authenticated).
pub const KMS_FORMAT_V1: &str = "pseudonymizer-keyring-kms/v1";

/// A KMS-wrapped keyring: metadata in clear, secrets wrapped.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrappedKeyring {
    format: String,
    /// The URI of the KMS key every secret is wrapped under.
    pub kms: String,
    /// Random, made at `init`/`seal`: binds each wrapped secret to this keyring.
    pub keyring_id: String,
    /// Version 2: one more with every write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generation: Option<u64>,
    /// Version 2: b64 of the KMS ciphertext of the SHA-256 of [`WrappedKeyring::manifest_text`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    manifest: Option<String>,
    keys: Vec<WrappedEntry>,
}

/// One entry: as in the clear keyring, with the wrapped secret in place of the secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrappedEntry {
    pub id: String,
    pub purpose: Purpose,
    pub state: KeyState,
    pub created_at: String,
    /// b64 of the KMS ciphertext; absent exactly when the key is destroyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wrapped_secret: Option<String>,
}

/// Whether keyring file text is the KMS-wrapped form (looks only at `format`).
pub fn is_wrapped(text: &str) -> bool {
    #[derive(Deserialize)]
    struct FormatOnly {
        format: String,
    }
    serde_json::from_str::<FormatOnly>(text)
        .is_ok_and(|f| f.format == KMS_FORMAT || f.format == KMS_FORMAT_V1)
}

impl WrappedKeyring {
    /// Parses a wrapped keyring's text (no KMS call).
    pub fn from_text(text: &str) -> Result<Self, KeyringError> {
        let ring: WrappedKeyring = serde_json::from_str(text)
            .map_err(|e| KeyringError::Syntax(format!("KMS keyring: {e}")))?;
        match (ring.format.as_str(), &ring.generation, &ring.manifest) {
            (KMS_FORMAT, Some(_), Some(_)) | (KMS_FORMAT_V1, None, None) => {}
            (KMS_FORMAT, _, _) => {
                return Err(KeyringError::Syntax(
                    "KMS keyring v2: `generation` and `manifest` are required".to_owned(),
                ))
            }
            (KMS_FORMAT_V1, _, _) => {
                return Err(KeyringError::Syntax(
                    "KMS keyring v1 has no `generation` or `manifest`".to_owned(),
                ))
            }
            _ => return Err(KeyringError::Format(ring.format)),
        }
        // The manifest's lines are fields separated by one space: a field holding a space, a
        // line break or another control character could make two different files one text.
        super::keyring::check_keyring_id(&ring.keyring_id)?;
        one_word("kms", &ring.kms)?;
        for entry in &ring.keys {
            one_word("id", &entry.id)?;
            one_word("created_at", &entry.created_at)?;
            if let Some(wrapped) = &entry.wrapped_secret {
                one_word("wrapped_secret", wrapped)?;
            }
        }
        for entry in &ring.keys {
            match (entry.state, &entry.wrapped_secret) {
                (KeyState::Destroyed, Some(_)) => {
                    return Err(KeyringError::DestroyedWithSecret(entry.id.clone()))
                }
                (KeyState::Active | KeyState::Retired, None) => {
                    return Err(KeyringError::MissingSecret(entry.id.clone()))
                }
                _ => {}
            }
        }
        Ok(ring)
    }

    /// Reads a wrapped keyring file (owner-only, as every keyring file).
    pub fn load(path: &Path) -> Result<Self, KeyringError> {
        let text = Keyring::read_owner_only(path)?;
        WrappedKeyring::from_text(&text)
    }

    /// Wraps every secret of a clear keyring under `kms` (one KMS call per live key). Used by
    /// `keys init --kms` and `keys seal --kms`; the clear keyring exists in memory only.
    pub fn wrap(ring: &Keyring, kms: &dyn Kms) -> Result<Self, KeyringError> {
        // The same keyring, now wrapped: it keeps its id (a v1 file gets one).
        let keyring_id = ring
            .keyring_id()
            .map(str::to_owned)
            .unwrap_or_else(super::keyring::new_keyring_id);
        let keys = ring
            .entries()
            .iter()
            .map(|entry| wrap_entry(kms, &keyring_id, entry))
            .collect::<Result<_, _>>()?;
        Ok(WrappedKeyring {
            format: KMS_FORMAT.to_owned(),
            kms: kms.uri().to_owned(),
            keyring_id,
            generation: Some(ring.generation()),
            manifest: None,
            keys,
        })
    }

    /// The file's generation (0 for a version-1 file).
    pub fn generation(&self) -> u64 {
        self.generation.unwrap_or(0)
    }

    /// The text whose SHA-256 the manifest wraps (docs/formats.md, "KMS-wrapped keyring"):
    /// one line each for the format, the KMS, the keyring id and the generation, then one per
    /// entry in file order, fields separated by one space (none of them can hold one).
    pub fn manifest_text(&self) -> String {
        let mut text = format!(
            "{KMS_FORMAT}\nkms {}\nkeyring {}\ngeneration {}\n",
            self.kms,
            self.keyring_id,
            self.generation()
        );
        for e in &self.keys {
            text.push_str(&format!(
                "key {} {} {} {} {}\n",
                e.id,
                e.purpose.as_str(),
                e.state.as_str(),
                e.created_at,
                e.wrapped_secret.as_deref().unwrap_or("-")
            ));
        }
        text
    }

    /// The encryption context the manifest is wrapped with.
    fn manifest_context(&self) -> crate::kms::Context {
        [
            ("pseudonymizer:keyring", self.keyring_id.clone()),
            ("pseudonymizer:purpose", "manifest".to_owned()),
            ("pseudonymizer:generation", self.generation().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn manifest_digest(&self) -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::digest(self.manifest_text().as_bytes()).into()
    }

    /// Checks a version-2 file's manifest with the KMS (one `Decrypt`): the metadata in clear
    /// is the one the last writer wrote. A version-1 file has none to check. `rotate` and
    /// `destroy` call it before they write, so that an edited file is never signed anew.
    pub fn check_manifest(&self, kms: &dyn Kms) -> Result<(), KeyringError> {
        let Some(b64) = &self.manifest else {
            return Ok(());
        };
        let wrapped = STANDARD
            .decode(b64)
            .map_err(|_| KeyringError::ManifestMismatch)?;
        let digest =
            kms.unwrap(&wrapped, &self.manifest_context())
                .map_err(|error| match error {
                    KmsError::Refused { .. } => KeyringError::ManifestMismatch,
                    other => KeyringError::Kms(other),
                })?;
        if digest.as_slice() != self.manifest_digest() {
            return Err(KeyringError::ManifestMismatch);
        }
        Ok(())
    }

    /// The entries, in file order (ids, purposes, states; never a secret).
    pub fn entries(&self) -> &[WrappedEntry] {
        &self.keys
    }

    /// Unwraps what `need` asks for, one KMS call per key and one for a version-2 manifest,
    /// and returns the clear keyring of
    /// those keys (destroyed entries kept as records; other live keys left out).
    pub fn unwrap(&self, kms: &dyn Kms, need: Need) -> Result<Keyring, KeyringError> {
        let mut entries = Vec::new();
        for entry in &self.keys {
            if entry.state != KeyState::Destroyed && !need.wants(entry.purpose, entry.state) {
                continue;
            }
            let secret = match &entry.wrapped_secret {
                None => None,
                Some(b64) => Some(self.unwrap_secret(kms, entry, b64)?),
            };
            entries.push(KeyEntry {
                id: entry.id.clone(),
                purpose: entry.purpose,
                state: entry.state,
                created_at: entry.created_at.clone(),
                secret,
            });
        }
        // After the entries, so that a secret moved between entries is named as such; then the
        // manifest, which an edited state, id or generation does not pass.
        self.check_manifest(kms)?;
        let mut ring = Keyring::from_entries(entries)?;
        ring.generation = self.generation();
        ring.keyring_id = Some(self.keyring_id.clone());
        ring.kms_uri = Some(self.kms.clone());
        ring.protection = super::Protection::Kms;
        ring.ended = super::keyring::ended_ids(self.keys.iter().map(|e| (&e.id, e.state)));
        Ok(ring)
    }

    fn unwrap_secret(
        &self,
        kms: &dyn Kms,
        entry: &WrappedEntry,
        b64: &str,
    ) -> Result<Secret, KeyringError> {
        let fail = |error: KmsError| KeyringError::KmsEntry {
            id: entry.id.clone(),
            error,
        };
        let wrapped = STANDARD
            .decode(b64)
            .map_err(|_| KeyringError::BadSecret(entry.id.clone()))?;
        let context = entry_context(&self.keyring_id, &entry.id, entry.purpose.as_str());
        let clear = kms.unwrap(&wrapped, &context).map_err(fail)?;
        Secret::from_bytes(&clear).ok_or_else(|| KeyringError::BadSecret(entry.id.clone()))
    }

    /// Adds a new active key of `purpose` (its secret wrapped before it is stored) and retires
    /// the previously active one: one KMS call, nothing unwrapped. Returns the new id.
    pub fn rotate(
        &mut self,
        kms: &dyn Kms,
        purpose: Purpose,
        id: Option<String>,
    ) -> Result<String, KeyringError> {
        super::keyring::refuse_subject_rotation(
            self.keys.iter().map(|e| (e.purpose, e.state)),
            purpose,
        )?;
        let mut entry = super::new_active_entry(purpose);
        if let Some(id) = id {
            entry.id = id;
        }
        if !super::valid_id(&entry.id) {
            return Err(KeyringError::BadId(entry.id));
        }
        if self.keys.iter().any(|e| e.id == entry.id) {
            return Err(KeyringError::DuplicateId(entry.id));
        }
        let wrapped = wrap_entry(kms, &self.keyring_id, &entry)?;
        for old in &mut self.keys {
            if old.purpose == purpose && old.state == KeyState::Active {
                old.state = KeyState::Retired;
            }
        }
        self.keys.push(wrapped);
        Ok(entry.id)
    }

    /// Drops a key's wrapped secret, keeping its entry (crypto-shredding; no KMS call). The
    /// active key of a purpose is refused unless `force`, as in [`Keyring::destroy`].
    pub fn destroy(&mut self, id: &str, force: bool) -> Result<(), KeyringError> {
        let entry = self
            .keys
            .iter_mut()
            .find(|e| e.id == id)
            .ok_or_else(|| KeyringError::UnknownId(id.to_owned()))?;
        super::keyring::refuse_destroy(id, entry.purpose, entry.state, force)?;
        entry.state = KeyState::Destroyed;
        entry.wrapped_secret = None;
        Ok(())
    }

    /// The same keyring with every secret wrapped under `to` instead (KEK rotation): each live
    /// secret is unwrapped with `from` and wrapped with `to` in memory, never written clear.
    pub fn rewrap(&self, from: &dyn Kms, to: &dyn Kms) -> Result<Self, KeyringError> {
        let clear = self.unwrap(from, Need::ALL)?;
        // The keyring stays the same keyring: its id is kept, so entries stay bound to it.
        Ok(WrappedKeyring {
            format: KMS_FORMAT.to_owned(),
            kms: to.uri().to_owned(),
            keyring_id: self.keyring_id.clone(),
            generation: self.generation,
            manifest: None,
            keys: clear
                .entries()
                .iter()
                .map(|entry| wrap_entry(to, &self.keyring_id, entry))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Writes the file as the next generation (format version 2) with its manifest wrapped by
    /// `kms` (one call), mode 0600, atomically (temporary file, fsync, rename).
    pub fn save(&mut self, path: &Path, kms: &dyn Kms) -> Result<(), KeyringError> {
        self.generation = Some(super::keyring::next_generation(self.generation())?);
        self.write(path, kms, Replace::Existing)
    }

    /// [`WrappedKeyring::save`] to a new file (`keys init --kms`): refused if anything exists
    /// at `path`, whenever it appeared.
    pub fn save_new(&mut self, path: &Path, kms: &dyn Kms) -> Result<(), KeyringError> {
        self.generation = Some(super::keyring::next_generation(self.generation())?);
        self.write(path, kms, Replace::Never)
    }

    /// Whether the file is format version 1: its metadata (states, generation) is not
    /// authenticated, so `rotate`, `destroy` and `export` refuse it until `keys upgrade`.
    pub fn is_v1(&self) -> bool {
        self.manifest.is_none()
    }

    /// The entries `need` asks for (destroyed ones kept as records), nothing unwrapped: what
    /// `keys export` writes for a process that should hold no more.
    pub fn subset(&self, need: Need) -> WrappedKeyring {
        WrappedKeyring {
            keys: self
                .keys
                .iter()
                .filter(|e| e.state == KeyState::Destroyed || need.wants(e.purpose, e.state))
                .cloned()
                .collect(),
            manifest: None,
            ..self.clone()
        }
    }

    /// Writes the file at its current generation with a new manifest (one KMS call) to a new
    /// file: a copy, such as a [`WrappedKeyring::subset`], not a change.
    pub fn write_copy(&mut self, path: &Path, kms: &dyn Kms) -> Result<(), KeyringError> {
        self.write(path, kms, Replace::Never)
    }

    fn write(&mut self, path: &Path, kms: &dyn Kms, replace: Replace) -> Result<(), KeyringError> {
        self.format = KMS_FORMAT.to_owned();
        self.generation = Some(self.generation());
        let wrapped = kms
            .wrap(&self.manifest_digest(), &self.manifest_context())
            .map_err(KeyringError::Kms)?;
        self.manifest = Some(STANDARD.encode(wrapped));
        let mut text = serde_json::to_string_pretty(self).expect("wrapped keyring serializes");
        text.push('\n');
        crate::secret_file::write(path, text.as_bytes(), replace).map_err(|source| {
            KeyringError::Write {
                path: path.to_owned(),
                source,
            }
        })
    }
}

/// An entry with its secret wrapped (`None` stays `None`: destroyed).
fn wrap_entry(
    kms: &dyn Kms,
    keyring_id: &str,
    entry: &KeyEntry,
) -> Result<WrappedEntry, KeyringError> {
    let wrapped_secret = match &entry.secret {
        None => None,
        Some(secret) => {
            let context = entry_context(keyring_id, &entry.id, entry.purpose.as_str());
            let wrapped =
                kms.wrap(secret.expose(), &context)
                    .map_err(|error| KeyringError::KmsEntry {
                        id: entry.id.clone(),
                        error,
                    })?;
            Some(STANDARD.encode(wrapped))
        }
    };
    Ok(WrappedEntry {
        id: entry.id.clone(),
        purpose: entry.purpose,
        state: entry.state,
        created_at: entry.created_at.clone(),
        wrapped_secret,
    })
}

/// A field of the manifest text: non-empty, with no space or control character.
fn one_word(field: &str, value: &str) -> Result<(), KeyringError> {
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(KeyringError::Syntax(format!(
            "KMS keyring: `{field}` is empty or holds a space or control character"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wrapped keyring with an active and a retired pseudonym key (no KMS needed: `destroy`
    /// makes no KMS call).
    fn ring() -> WrappedKeyring {
        WrappedKeyring::from_text(&format!(
            r#"{{"format":"{KMS_FORMAT_V1}","kms":"aws-kms://arn:aws:kms:ap-southeast-1:111122223333:key/k",
                "keyring_id":"kr-1","keys":[
                {{"id":"p-old","purpose":"pseudonym","state":"retired","created_at":"2026-01-01T00:00:00Z","wrapped_secret":"AAAA"}},
                {{"id":"p-new","purpose":"pseudonym","state":"active","created_at":"2026-02-01T00:00:00Z","wrapped_secret":"BBBB"}}]}}"#
        ))
        .unwrap()
    }

    /// A line break in a field could carry a forged entry line inside another entry, so that
    /// a file without an entry has the manifest text of the file with it: refused.
    #[test]
    fn manifest_fields_are_single_words() {
        let text = serde_json::to_string(&ring()).unwrap();
        for (from, to) in [
            ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z\\nkey x"),
            ("2026-01-01T00:00:00Z", "2026 01"),
            ("\"kr-1\"", "\"kr 1\""),
            ("AAAA", "AA AA"),
            ("p-old", "p\\told"),
        ] {
            let edited = text.replacen(from, to, 1);
            assert_ne!(edited, text);
            assert!(
                matches!(
                    WrappedKeyring::from_text(&edited),
                    Err(KeyringError::Syntax(m)) if m.contains("space or control") || m.contains("`keyring_id`")
                ),
                "{to:?} accepted"
            );
        }
    }

    #[test]
    fn the_active_wrapped_key_is_destroyed_only_when_forced() {
        let mut ring = ring();
        ring.destroy("p-old", false).unwrap();
        assert!(matches!(
            ring.destroy("p-new", false),
            Err(KeyringError::DestroyActive { .. })
        ));
        assert!(ring.keys[1].wrapped_secret.is_some(), "nothing dropped");
        ring.destroy("p-new", true).unwrap();
        assert!(ring.keys.iter().all(|e| e.wrapped_secret.is_none()));
        assert!(matches!(
            ring.destroy("p-new", true),
            Err(KeyringError::AlreadyDestroyed(_))
        ));
    }
}

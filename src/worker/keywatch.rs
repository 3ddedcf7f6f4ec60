//! Live keyring reload and the rotation policy, for a running worker.
//!
//! [`KeyWatch`] owns the sending side of the worker's keys channel. It reloads the keyring on
//! SIGHUP and whenever the file's content changes (polled once a second: it works the same on
//! every filesystem, and an atomic rename by `keys rotate` is one change). A reloaded keyring
//! is checked exactly like at start; a keyring that fails is refused, loudly (error log line and
//! `pseudonymizer_keyring_reloads_total{result="refused"}`), and the worker keeps the keys it
//! has. The worker snapshots the keys once per record, so every record is made with one key set.
//!
//! A reload never lowers protection and never goes back in time: a keyring less protected than
//! the one the worker started with (clear after sealed, sealed after KMS), one of an earlier
//! generation, and one whose active key this worker has seen retired or destroyed are refused
//! like a broken one. Sealed and KMS keyrings authenticate their generation and states (the
//! KEK seals the whole file; the KMS wraps a manifest of it), so whoever can replace the file
//! without the KEK or the KMS can neither forge nor roll it back (docs/security.md).
//!
//! The same task checks the rotation policy ([`crate::keys::policy`]) of the active keys every
//! `check_interval_secs` and after each reload.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::config::RotationConfig;
use crate::keys::policy::{self, KeyFacts};
use crate::keys::{KeySet, Keyring, KeyringError, Protection, Purpose};
use crate::metrics::Metrics;
use crate::transform::{ActiveKeys, Engine};

/// Why a keyring was not used.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error("no active encryption key: the dead-letter topic needs one")]
    NoEncryptionKey,
    #[error("the keyring is {got} but this worker started on a {had} one: a reload never lowers protection (restart the worker to change it)")]
    Downgrade {
        had: &'static str,
        got: &'static str,
    },
    #[error("the keyring is generation {got}, older than generation {had} already loaded: a copy from before (rollback)")]
    Rollback { had: u64, got: u64 },
    #[error("the keyring makes {purpose} key {id:?} active, which this worker has seen retired or destroyed")]
    Revived { id: String, purpose: &'static str },
    #[error("the file is keyring {got}, not keyring {had} this worker runs on: a reload never switches keyrings (restart the worker to change it)")]
    OtherKeyring { had: String, got: String },
    #[error("the keyring is wrapped by another KMS key ({got}, this worker's is {had}): after `keys rewrap`, restart the workers")]
    OtherKmsKey { had: String, got: String },
}

impl ReloadError {
    /// Whether loading again later may succeed (the KMS was unreachable).
    pub fn is_transient(&self) -> bool {
        matches!(self, ReloadError::Keyring(e) if e.is_transient())
    }
}

/// The reload and policy task of one worker.
pub struct KeyWatch {
    path: PathBuf,
    engine: Arc<Engine>,
    policy: RotationConfig,
    metrics: Arc<Metrics>,
    sender: watch::Sender<Arc<ActiveKeys>>,
    /// Creation times of the keys in the current keyring, by id (for the age policy).
    created: HashMap<String, OffsetDateTime>,
    /// Hash of the file content last looked at, applied or refused.
    seen: [u8; 32],
    /// (key id, reason) warnings already logged, so a due key is logged once, not every check.
    warned: HashSet<(String, &'static str)>,
    /// After a reload the KMS could not serve: when to try the same file again, and the wait
    /// after that (doubling, at most a minute), so an unreachable KMS is not called every second.
    retry: Option<(tokio::time::Instant, Duration)>,
    /// What no reload may go below or back to (see the module's comment).
    floor: ReloadFloor,
}

/// The protection, generation and ended keys a reloaded keyring is held to.
#[derive(Debug, Clone, Default)]
pub struct ReloadFloor {
    protection: Protection,
    generation: u64,
    /// The keyring id this worker runs on (from its first version-2 file on).
    keyring_id: Option<String>,
    /// The KMS key of a KMS-wrapped keyring: whoever can write the file must not be able to
    /// bring secrets wrapped under a key of their own.
    kms_uri: Option<String>,
    /// Ids this worker has seen retired or destroyed, or replaced as active.
    ended: HashSet<String>,
}

impl ReloadFloor {
    /// The floor a worker starts with: the keyring it started on.
    pub fn of(keyring: &Keyring) -> Self {
        ReloadFloor {
            protection: keyring.protection(),
            generation: keyring.generation(),
            keyring_id: keyring.keyring_id().map(str::to_owned),
            kms_uri: keyring.kms_uri().map(str::to_owned),
            ended: keyring.ended_ids().iter().cloned().collect(),
        }
    }

    /// Whether `keyring` (with `active`, its keys for new output) may replace the current one.
    pub fn admit(&self, keyring: &Keyring, active: &ActiveKeys) -> Result<(), ReloadError> {
        if keyring.protection() < self.protection {
            return Err(ReloadError::Downgrade {
                had: self.protection.as_str(),
                got: keyring.protection().as_str(),
            });
        }
        if let Some(had) = &self.keyring_id {
            if keyring.keyring_id() != Some(had.as_str()) {
                return Err(ReloadError::OtherKeyring {
                    had: had.clone(),
                    got: keyring
                        .keyring_id()
                        .unwrap_or("none (format v1)")
                        .to_owned(),
                });
            }
        }
        if let Some(had) = &self.kms_uri {
            if keyring.kms_uri() != Some(had.as_str()) {
                return Err(ReloadError::OtherKmsKey {
                    had: had.clone(),
                    got: keyring.kms_uri().unwrap_or("none").to_owned(),
                });
            }
        }
        if keyring.generation() < self.generation {
            return Err(ReloadError::Rollback {
                had: self.generation,
                got: keyring.generation(),
            });
        }
        let pseudonym = active
            .pseudonym
            .as_ref()
            .map(|k| (k.id(), Purpose::Pseudonym));
        let encryption = active
            .encryption
            .as_ref()
            .map(|k| (k.id(), Purpose::Encryption));
        for (id, purpose) in pseudonym.into_iter().chain(encryption) {
            if self.ended.contains(id) {
                return Err(ReloadError::Revived {
                    id: id.to_owned(),
                    purpose: purpose.as_str(),
                });
            }
        }
        Ok(())
    }

    /// Raises the floor to an applied keyring; `before` are the keys it replaces.
    pub fn raise(&mut self, keyring: &Keyring, before: &ActiveKeys, after: &ActiveKeys) {
        self.protection = self.protection.max(keyring.protection());
        self.generation = self.generation.max(keyring.generation());
        if self.keyring_id.is_none() {
            // A worker started on a version-1 file adopts the id of the first upgraded one.
            self.keyring_id = keyring.keyring_id().map(str::to_owned);
        }
        if self.kms_uri.is_none() {
            self.kms_uri = keyring.kms_uri().map(str::to_owned);
        }
        self.ended.extend(keyring.ended_ids().iter().cloned());
        fn replaced<'a>(old: Option<&'a str>, new: Option<&str>) -> Option<&'a str> {
            old.filter(|o| Some(*o) != new)
        }
        let pseudonym = replaced(
            before.pseudonym.as_ref().map(|k| k.id()),
            after.pseudonym.as_ref().map(|k| k.id()),
        );
        let encryption = replaced(
            before.encryption.as_ref().map(|k| k.id()),
            after.encryption.as_ref().map(|k| k.id()),
        );
        self.ended
            .extend(pseudonym.into_iter().chain(encryption).map(str::to_owned));
    }
}

impl KeyWatch {
    /// Loads the keyring for the worker's start; fails the start on any error.
    pub fn start(
        path: PathBuf,
        engine: Arc<Engine>,
        policy: RotationConfig,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, watch::Receiver<Arc<ActiveKeys>>), ReloadError> {
        let seen = file_hash(&path);
        let (keyring, active) = load(&path, &engine)?;
        let (sender, receiver) = watch::channel(Arc::new(active));
        let mut watch = KeyWatch {
            path,
            engine,
            policy,
            metrics,
            sender,
            created: HashMap::new(),
            seen,
            warned: HashSet::new(),
            retry: None,
            floor: ReloadFloor::of(&keyring),
        };
        watch.created = created_times(&keyring);
        Ok((watch, receiver))
    }

    /// Reloads on SIGHUP (`hangup` yields once per signal) and on file changes, and checks the
    /// policy, until `shutdown` turns true.
    pub async fn run(
        mut self,
        mut hangup: tokio::signal::unix::Signal,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut poll = tokio::time::interval(Duration::from_secs(1));
        let mut check = tokio::time::interval(Duration::from_secs(self.policy.check_interval_secs));
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                Some(()) = hangup.recv() => {
                    tracing::info!(keyring = %self.path.display(), "SIGHUP: reloading the keyring");
                    self.reload();
                }
                _ = poll.tick() => {
                    if file_hash(&self.path) != self.seen {
                        tracing::info!(keyring = %self.path.display(), "keyring file changed: reloading");
                        self.reload();
                    } else if self.retry.is_some_and(|(at, _)| tokio::time::Instant::now() >= at) {
                        tracing::info!(keyring = %self.path.display(), "retrying the keyring load the KMS could not serve");
                        self.reload();
                    }
                }
                _ = check.tick() => self.check_policy(),
            }
        }
    }

    /// Loads, checks and applies the keyring, or refuses it and keeps the current keys.
    pub fn reload(&mut self) {
        self.seen = file_hash(&self.path);
        let backoff = self.retry.take().map(|(_, wait)| wait);
        let before = self.sender.borrow().clone();
        let loaded = load(&self.path, &self.engine).and_then(|(keyring, active)| {
            self.floor.admit(&keyring, &active)?;
            Ok((keyring, active))
        });
        match loaded {
            Ok((keyring, active)) => {
                self.floor.raise(&keyring, &before, &active);
                if let (Some(old), Some(new)) = (&before.encryption, &active.encryption) {
                    new.continue_count(old);
                }
                self.metrics.set_active_keys(
                    active.pseudonym.as_ref().map(|k| k.id()),
                    active.encryption.as_ref(),
                );
                tracing::info!(
                    old_pseudonym_key = before.pseudonym.as_ref().map(|k| k.id()),
                    old_encryption_key = before.encryption.as_ref().map(|k| k.id()),
                    pseudonym_key = active.pseudonym.as_ref().map(|k| k.id()),
                    encryption_key = active.encryption.as_ref().map(|k| k.id()),
                    "keyring reloaded; new output uses these keys"
                );
                self.created = created_times(&keyring);
                self.sender.send_replace(Arc::new(active));
                self.metrics
                    .key_reloads
                    .with_label_values(&["applied"])
                    .inc();
                self.check_policy();
            }
            Err(error) => {
                self.metrics
                    .key_reloads
                    .with_label_values(&["refused"])
                    .inc();
                if error.is_transient() {
                    let wait = backoff.map_or(Duration::from_secs(2), |w| {
                        (w * 2).min(Duration::from_secs(60))
                    });
                    self.retry = Some((tokio::time::Instant::now() + wait, wait));
                }
                tracing::error!(
                    keyring = %self.path.display(),
                    %error,
                    pseudonym_key = before.pseudonym.as_ref().map(|k| k.id()),
                    encryption_key = before.encryption.as_ref().map(|k| k.id()),
                    "keyring REFUSED; the worker keeps its current keys"
                );
            }
        }
    }

    /// Raises (log once, gauge 1) or clears (gauge reset) rotation warnings of the active keys.
    pub fn check_policy(&mut self) {
        let active = self.sender.borrow().clone();
        let now = OffsetDateTime::now_utc();
        let mut facts = Vec::new();
        if let Some(key) = &active.pseudonym {
            facts.push((key.id().to_owned(), Purpose::Pseudonym));
        }
        if let Some(key) = &active.encryption {
            facts.push((key.id().to_owned(), Purpose::Encryption));
        }
        self.metrics.key_warnings.reset();
        for (id, purpose) in facts {
            // 0 until due, so the series exists for alerts from the start.
            self.metrics
                .key_warnings
                .with_label_values(&[&id, "age"])
                .set(0);
            let Some(&created_at) = self.created.get(&id) else {
                continue;
            };
            let key = KeyFacts {
                id: &id,
                purpose,
                created_at,
            };
            for due in policy::check(&self.policy, &key, now) {
                self.metrics
                    .key_warnings
                    .with_label_values(&[&due.key_id, due.reason])
                    .set(1);
                if self.warned.insert((due.key_id.clone(), due.reason)) {
                    tracing::warn!(
                        key_id = %due.key_id,
                        reason = due.reason,
                        detail = %due.detail,
                        "key is due for rotation: run `pseudonymizer keys rotate`"
                    );
                }
            }
        }
    }
}

/// Loads a keyring and the active keys the engine needs, exactly as at start.
pub fn load(path: &std::path::Path, engine: &Engine) -> Result<(Keyring, ActiveKeys), ReloadError> {
    // New output only: the active key of each purpose, one KMS call each for a KMS keyring;
    // the subject key only with a subject registry.
    let need = crate::keys::Need {
        subject: match engine.needs_subject_key() {
            true => crate::keys::Scope::Active,
            false => crate::keys::Scope::Nothing,
        },
        ..crate::keys::Need::NEW_OUTPUT
    };
    let keyring = Keyring::load_for(path, need)?;
    let active = engine.active_keys(&KeySet::from_keyring(&keyring))?;
    if active.encryption.is_none() {
        return Err(ReloadError::NoEncryptionKey);
    }
    Ok((keyring, active))
}

fn created_times(keyring: &Keyring) -> HashMap<String, OffsetDateTime> {
    keyring
        .entries()
        .iter()
        .filter_map(|e| {
            let at = OffsetDateTime::parse(&e.created_at, &Rfc3339).ok()?;
            Some((e.id.clone(), at))
        })
        .collect()
}

/// SHA-256 of the file's bytes (all zero when unreadable), to notice any change of content.
fn file_hash(path: &std::path::Path) -> [u8; 32] {
    std::fs::read(path)
        .map(|bytes| Sha256::digest(zeroize::Zeroizing::new(bytes).as_slice()).into())
        .unwrap_or([0; 32])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(id: Option<&str>, kms: Option<&str>, generation: u64) -> Keyring {
        let mut ring = Keyring::generate();
        ring.keyring_id = id.map(str::to_owned);
        ring.kms_uri = kms.map(str::to_owned);
        ring.generation = generation;
        if kms.is_some() {
            ring.protection = Protection::Kms;
        }
        ring
    }

    /// A reload stays on the keyring and the KMS key the worker started on: another keyring
    /// of a higher generation, or the same keyring id with secrets wrapped under another KMS
    /// key (someone else's key the worker's role may also use), is refused.
    #[test]
    fn a_reload_keeps_the_keyring_and_the_kms_key_it_started_on() {
        let none = ActiveKeys::new(None, None);
        let kms = "aws-kms://arn:aws:kms:ap-southeast-1:111122223333:key/ours";
        let floor = ReloadFloor::of(&ring(Some("kr-1"), Some(kms), 4));
        assert!(floor
            .admit(&ring(Some("kr-1"), Some(kms), 5), &none)
            .is_ok());
        assert!(matches!(
            floor.admit(&ring(Some("kr-2"), Some(kms), 9), &none),
            Err(ReloadError::OtherKeyring { .. })
        ));
        let theirs = "aws-kms://arn:aws:kms:ap-southeast-1:444455556666:key/theirs";
        assert!(matches!(
            floor.admit(&ring(Some("kr-1"), Some(theirs), 5), &none),
            Err(ReloadError::OtherKmsKey { .. })
        ));
        // A worker on a version-1 file adopts the first id it is given, then keeps it.
        let mut floor = ReloadFloor::of(&ring(None, None, 0));
        let upgraded = ring(Some("kr-7"), None, 1);
        assert!(floor.admit(&upgraded, &none).is_ok());
        floor.raise(&upgraded, &none, &none);
        assert!(matches!(
            floor.admit(&ring(Some("kr-8"), None, 2), &none),
            Err(ReloadError::OtherKeyring { .. })
        ));
        assert!(matches!(
            floor.admit(&ring(None, None, 3), &none),
            Err(ReloadError::OtherKeyring { .. })
        ));
    }
}

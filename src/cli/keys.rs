//! `pseudonymizer keys …`: create, rotate, list, destroy, seal and unseal keyrings, clear,
//! sealed under a KEK, or wrapped by a KMS (`--kms URI`). Secrets never reach the output;
//! `list` prints ids, purposes and states. On a KMS keyring, `rotate`, `destroy` and `list`
//! unwrap nothing, and no command writes a clear secret unless asked to (`unseal`).

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use super::check::Format;
use crate::keys::{is_wrapped, Kek, Keyring, Need, Purpose, Secret, WrappedKeyring};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a keyring with one active key of each purpose (refuses to overwrite).
    Init {
        /// The keyring file to create (mode 0600; its directory is created if missing).
        #[arg(long)]
        keyring: PathBuf,
        /// Seal the file under the KEK from $PSEUDONYMIZER_KEK or $PSEUDONYMIZER_KEK_FILE.
        #[arg(long, conflicts_with = "kms")]
        sealed: bool,
        /// Wrap each secret with this KMS key instead (aws-kms://<key ARN>).
        #[arg(long)]
        kms: Option<String>,
    },
    /// Write a new random key-encryption key (base64) to a new owner-only file.
    NewKek {
        /// The file to create (mode 0600; refused if it exists).
        #[arg(long)]
        out: PathBuf,
    },
    /// Seal a clear keyring under the KEK from the environment, or wrap a clear or sealed one
    /// with a KMS key (`--kms`; the clear keyring exists in memory only).
    Seal {
        /// The keyring file, rewritten in place (atomically).
        #[arg(long)]
        keyring: PathBuf,
        /// Wrap each secret with this KMS key (aws-kms://<key ARN>).
        #[arg(long)]
        kms: Option<String>,
    },
    /// Wrap a KMS keyring's secrets with another KMS key (KMS key rotation): unwrapped and
    /// wrapped again in memory, written atomically; never a clear keyring on disk.
    Rewrap {
        /// The KMS-wrapped keyring file, rewritten in place (atomically).
        #[arg(long)]
        keyring: PathBuf,
        /// The new KMS key (aws-kms://<key ARN>).
        #[arg(long)]
        kms: String,
    },
    /// Write a sealed keyring back in clear (needs its KEK in the environment).
    Unseal {
        /// The sealed or KMS-wrapped keyring file, rewritten in clear (atomically).
        #[arg(long)]
        keyring: PathBuf,
    },
    /// Add a new active key of a purpose and retire the old one.
    Rotate {
        /// The keyring file, rewritten in place (atomically).
        #[arg(long)]
        keyring: PathBuf,
        /// Which key to rotate: pseudonym (tokens) or encryption (envelopes); subject only
        /// adds the subject key to a keyring that has none (it is never rotated).
        #[arg(long, value_parser = parse_purpose)]
        purpose: Purpose,
        /// Id of the new key, 1 to 32 of A-Z a-z 0-9 . _ - (default: generated).
        #[arg(long)]
        id: Option<String>,
    },
    /// List keys: ids, purposes, states and creation times (never secrets).
    List {
        /// The keyring file (clear, sealed or KMS-wrapped; nothing is unwrapped).
        #[arg(long)]
        keyring: PathBuf,
        /// `text` (a table), or `json`: one document `{ "protection": ..., "keys": [...] }`.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Rewrite a keyring of format v1 as v2 (a generation, a keyring id and, for a KMS
    /// keyring, a manifest that authenticates every entry's state); a v2 file is left as it is.
    /// Check `keys list` first: for a KMS keyring, what v1 says is what v2 will vouch for.
    Upgrade {
        /// The keyring file, rewritten in place (atomically).
        #[arg(long)]
        keyring: PathBuf,
    },
    /// Write, as a new file, only the keys one kind of process needs (the keyring a worker's
    /// Secret ships): same protection and generation, every other key left out.
    Export {
        /// The full keyring (the security team's copy; only read).
        #[arg(long)]
        keyring: PathBuf,
        /// Who the copy is for: `worker` (also `check` and `transform`: the two active keys),
        /// `lookup` (every pseudonym key), or `decrypt` (also `reseal` and `dlq replay`: every
        /// encryption key). Destroyed entries are kept, without secrets.
        #[arg(long = "for", value_enum)]
        for_: ExportFor,
        /// The file to create (mode 0600; refused if it exists).
        #[arg(long)]
        out: PathBuf,
    },
    /// Remove a retired key's secret, keeping its entry (crypto-shredding). What it sealed no
    /// longer opens and its tokens can no longer be looked up.
    Destroy {
        /// The keyring file, rewritten in place (atomically).
        #[arg(long)]
        keyring: PathBuf,
        /// The id of the key to destroy (`keys list` shows them).
        #[arg(long)]
        id: String,
        /// Destroy the key even if it is the active key of its purpose. The keyring then has
        /// no key for new output of that purpose until a `keys rotate`.
        #[arg(long)]
        force: bool,
    },
}

/// The processes `keys export` writes a keyring for.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ExportFor {
    Worker,
    Lookup,
    Decrypt,
}

impl ExportFor {
    fn name(self) -> &'static str {
        match self {
            ExportFor::Worker => "worker",
            ExportFor::Lookup => "lookup",
            ExportFor::Decrypt => "decrypt",
        }
    }

    fn need(self) -> Need {
        match self {
            ExportFor::Worker => Need::NEW_OUTPUT,
            ExportFor::Lookup => Need::TOKENS,
            ExportFor::Decrypt => Need::ENVELOPES,
        }
    }
}

fn parse_purpose(s: &str) -> Result<Purpose, String> {
    match s {
        "pseudonym" => Ok(Purpose::Pseudonym),
        "encryption" => Ok(Purpose::Encryption),
        "subject" => Ok(Purpose::Subject),
        _ => Err("expected pseudonym, encryption or subject".to_owned()),
    }
}

pub(super) fn keys(command: KeysCommand, out: &mut dyn std::io::Write) -> Result<()> {
    match command {
        KeysCommand::Init {
            keyring,
            sealed,
            kms,
        } => {
            Keyring::refuse_existing(&keyring)?;
            let mut ring = Keyring::generate();
            if sealed {
                ring.set_kek(Some(kek_from_env()?));
            }
            if let Some(dir) = keyring.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            if let Some(uri) = kms {
                let kms = crate::kms::open(&uri)?;
                let mut wrapped = WrappedKeyring::wrap(&ring, kms.as_ref())?;
                wrapped.save_new(&keyring, kms.as_ref())?;
                writeln!(
                    out,
                    "created {} wrapped by {uri} with keys:",
                    keyring.display()
                )?;
                return Listing::of_wrapped(&wrapped).print(out);
            }
            ring.save_new(&keyring)?;
            writeln!(out, "created {} with keys:", keyring.display())?;
            Listing::of(&ring).print(out)
        }
        KeysCommand::NewKek { out: path } => {
            use std::os::unix::fs::OpenOptionsExt;
            let secret = Secret::generate();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating {} (it must not exist)", path.display()))?;
            // Written in two parts: pushing the newline onto the zeroized text could move it
            // and leave a copy behind.
            let written = file
                .write_all(secret.to_b64().as_bytes())
                .and_then(|()| file.write_all(b"\n"))
                .and_then(|()| file.sync_all());
            if let Err(error) = written {
                // This command created the file a moment ago (create_new): a partial KEK file
                // is worse than none, so it goes.
                drop(file);
                let _ = std::fs::remove_file(&path);
                return Err(error).with_context(|| format!("writing {}", path.display()));
            }
            let kek = Kek::from_secret(&secret);
            writeln!(
                out,
                "wrote key-encryption key {} to {}; keep it away from the keyring",
                kek.id(),
                path.display()
            )?;
            Ok(())
        }
        KeysCommand::Seal {
            keyring,
            kms: Some(uri),
        } => {
            if let Some(wrapped) = read_wrapped(&keyring)? {
                bail!(
                    "{} is already wrapped by {}; `keys rewrap --kms` moves it to another KMS key",
                    keyring.display(),
                    wrapped.kms
                );
            }
            let ring = Keyring::load(&keyring)?;
            let kms = crate::kms::open(&uri)?;
            let mut wrapped = WrappedKeyring::wrap(&ring, kms.as_ref())?;
            wrapped.save(&keyring, kms.as_ref())?;
            writeln!(
                out,
                "wrapped every secret of {} with {uri}",
                keyring.display()
            )?;
            Ok(())
        }
        KeysCommand::Rewrap { keyring, kms } => {
            let Some(wrapped) = read_wrapped(&keyring)? else {
                bail!(
                    "{} is not wrapped by a KMS; `keys seal --kms` wraps it",
                    keyring.display()
                );
            };
            refuse_v1(&wrapped)?;
            let from = crate::kms::open(&wrapped.kms)?;
            let to = crate::kms::open(&kms)?;
            let mut rewrapped = wrapped.rewrap(from.as_ref(), to.as_ref())?;
            rewrapped.save(&keyring, to.as_ref())?;
            writeln!(
                out,
                "rewrapped every secret of {} from {} to {kms}",
                keyring.display(),
                wrapped.kms
            )?;
            Ok(())
        }
        KeysCommand::Seal { keyring, kms: None } => {
            let mut ring = Keyring::load(&keyring)?;
            if let Some(kek) = ring.kek() {
                bail!("{} is already sealed under {}", keyring.display(), kek.id());
            }
            let kek = kek_from_env()?;
            let id = kek.id().to_owned();
            ring.set_kek(Some(kek));
            ring.save(&keyring)?;
            writeln!(out, "sealed {} under {id}", keyring.display())?;
            Ok(())
        }
        KeysCommand::Unseal { keyring } => {
            let mut ring = Keyring::load_for(&keyring, Need::ALL)?;
            if ring.kek().is_none() && read_wrapped(&keyring)?.is_none() {
                bail!("{} is not sealed", keyring.display());
            }
            ring.set_kek(None);
            ring.save(&keyring)?;
            writeln!(out, "wrote {} in clear", keyring.display())?;
            Ok(())
        }
        KeysCommand::Rotate {
            keyring,
            purpose,
            id,
        } => {
            if let Some(mut wrapped) = read_wrapped(&keyring)? {
                refuse_v1(&wrapped)?;
                let kms = crate::kms::open(&wrapped.kms)?;
                wrapped.check_manifest(kms.as_ref())?;
                let id = wrapped.rotate(kms.as_ref(), purpose, id)?;
                wrapped.save(&keyring, kms.as_ref())?;
                writeln!(out, "new active {} key {id}", purpose.as_str())?;
                return Ok(());
            }
            let mut ring = Keyring::load(&keyring)?;
            let id = ring.rotate(purpose, id)?;
            ring.save(&keyring)?;
            writeln!(out, "new active {} key {id}", purpose.as_str())?;
            Ok(())
        }
        KeysCommand::List { keyring, format } => {
            let listing = match read_wrapped(&keyring)? {
                Some(wrapped) => Listing::of_wrapped(&wrapped),
                None => Listing::of(&Keyring::load(&keyring)?),
            };
            match format {
                Format::Text => listing.print(out),
                Format::Json => {
                    serde_json::to_writer_pretty(&mut *out, &listing.to_json())?;
                    writeln!(out)?;
                    Ok(())
                }
            }
        }
        KeysCommand::Upgrade { keyring } => {
            if let Some(mut wrapped) = read_wrapped(&keyring)? {
                if !wrapped.is_v1() {
                    writeln!(
                        out,
                        "{} is already format v2: left as it is",
                        keyring.display()
                    )?;
                    return Ok(());
                }
                let kms = crate::kms::open(&wrapped.kms)?;
                wrapped.save(&keyring, kms.as_ref())?;
                writeln!(
                    out,
                    "upgraded {} to format v2 (generation {}, keyring {}); its states are now authenticated:",
                    keyring.display(),
                    wrapped.generation(),
                    wrapped.keyring_id
                )?;
                return Listing::of_wrapped(&wrapped).print(out);
            }
            let mut ring = Keyring::load(&keyring)?;
            if ring.keyring_id().is_some() {
                writeln!(
                    out,
                    "{} is already format v2: left as it is",
                    keyring.display()
                )?;
                return Ok(());
            }
            ring.save(&keyring)?;
            writeln!(
                out,
                "upgraded {} to format v2 (generation {}, keyring {})",
                keyring.display(),
                ring.generation(),
                ring.keyring_id().unwrap_or("?")
            )?;
            Ok(())
        }
        KeysCommand::Export {
            keyring,
            for_,
            out: path,
        } => {
            // Never over an existing file, a link included: above all not the source itself.
            if std::fs::symlink_metadata(&path).is_ok() {
                return Err(crate::keys::KeyringError::Exists { path }.into());
            }
            let need = for_.need();
            let kept: Vec<String> = if let Some(wrapped) = read_wrapped(&keyring)? {
                refuse_v1(&wrapped)?;
                let kms = crate::kms::open(&wrapped.kms)?;
                wrapped.check_manifest(kms.as_ref())?;
                let mut subset = wrapped.subset(need);
                subset.write_copy(&path, kms.as_ref())?;
                live_ids(subset.entries().iter().map(|e| (&e.id, e.state)))
            } else {
                let subset = Keyring::load_for(&keyring, need)?;
                subset.write_copy(&path)?;
                live_ids(subset.entries().iter().map(|e| (&e.id, e.state)))
            };
            writeln!(
                out,
                "wrote {} for {} with keys: {}",
                path.display(),
                for_.name(),
                kept.join(", ")
            )?;
            Ok(())
        }
        KeysCommand::Destroy { keyring, id, force } => {
            if let Some(mut wrapped) = read_wrapped(&keyring)? {
                let was_active = is_active(wrapped.entries().iter().map(|e| (&e.id, e.state)), &id);
                // The manifest is checked, then rewritten (one KMS call each): an edited file
                // is refused rather than signed anew, and the new state is authenticated.
                refuse_v1(&wrapped)?;
                let kms = crate::kms::open(&wrapped.kms)?;
                wrapped.check_manifest(kms.as_ref())?;
                wrapped.destroy(&id, force)?;
                wrapped.save(&keyring, kms.as_ref())?;
                writeln!(out, "destroyed the wrapped secret of key {id}")?;
                return warn_no_active(was_active, out);
            }
            let mut ring = Keyring::load(&keyring)?;
            let was_active = is_active(ring.entries().iter().map(|e| (&e.id, e.state)), &id);
            ring.destroy(&id, force)?;
            ring.save(&keyring)?;
            writeln!(out, "destroyed the secret of key {id}")?;
            warn_no_active(was_active, out)
        }
    }
}

/// Whether key `id` is among `entries` as the active key of its purpose.
fn is_active<'a>(
    mut entries: impl Iterator<Item = (&'a String, crate::keys::KeyState)>,
    id: &str,
) -> bool {
    entries.any(|(e, state)| e == id && state == crate::keys::KeyState::Active)
}

/// After a forced destruction of an active key: what the keyring can no longer do.
fn warn_no_active(was_active: bool, out: &mut dyn std::io::Write) -> Result<()> {
    if was_active {
        writeln!(
            out,
            "the keyring has no active key of that purpose now: `keys rotate` makes one before \
             the worker, `check` or `transform` can use it"
        )?;
    }
    Ok(())
}

fn kek_from_env() -> Result<Kek> {
    Kek::from_env()?.with_context(|| {
        format!(
            "no key-encryption key: set {} or {}",
            crate::keys::KEK_ENV,
            crate::keys::KEK_FILE_ENV
        )
    })
}

/// The keyring file as a KMS-wrapped keyring, if it is one (nothing unwrapped).
/// A KMS keyring of format v1 is written from only by `keys upgrade`: its states are not
/// authenticated, so an edited one would be signed by the next write.
fn refuse_v1(wrapped: &WrappedKeyring) -> Result<()> {
    if wrapped.is_v1() {
        return Err(crate::keys::KeyringError::V1Unauthenticated.into());
    }
    Ok(())
}

/// The ids of entries that still have a secret.
fn live_ids<'a>(entries: impl Iterator<Item = (&'a String, crate::keys::KeyState)>) -> Vec<String> {
    entries
        .filter(|(_, state)| *state != crate::keys::KeyState::Destroyed)
        .map(|(id, _)| id.clone())
        .collect()
}

fn read_wrapped(path: &std::path::Path) -> Result<Option<WrappedKeyring>> {
    let text = Keyring::read_owner_only(path)?;
    if !is_wrapped(&text) {
        return Ok(None);
    }
    Ok(Some(WrappedKeyring::from_text(&text)?))
}

/// How a keyring file protects its secrets, as `keys list` shows it.
enum Protection {
    Clear,
    /// Sealed whole under the key-encryption key of this id.
    Sealed {
        kek_id: String,
    },
    /// Each secret wrapped by this KMS key, bound to this keyring id.
    Kms {
        uri: String,
        keyring_id: String,
    },
}

/// What `keys list` shows of a keyring: its protection and each key's metadata.
struct Listing {
    protection: Protection,
    generation: u64,
    /// `None`: a version-1 file.
    keyring_id: Option<String>,
    keys: Vec<(String, Purpose, crate::keys::KeyState, String)>,
}

impl Listing {
    fn of(ring: &Keyring) -> Listing {
        Listing {
            protection: match ring.kek() {
                Some(kek) => Protection::Sealed {
                    kek_id: kek.id().to_owned(),
                },
                None => Protection::Clear,
            },
            generation: ring.generation(),
            keyring_id: ring.keyring_id().map(str::to_owned),
            keys: ring
                .entries()
                .iter()
                .map(|e| (e.id.clone(), e.purpose, e.state, e.created_at.clone()))
                .collect(),
        }
    }

    fn of_wrapped(ring: &WrappedKeyring) -> Listing {
        Listing {
            protection: Protection::Kms {
                uri: ring.kms.clone(),
                keyring_id: ring.keyring_id.clone(),
            },
            generation: ring.generation(),
            keyring_id: Some(ring.keyring_id.clone()),
            keys: ring
                .entries()
                .iter()
                .map(|e| (e.id.clone(), e.purpose, e.state, e.created_at.clone()))
                .collect(),
        }
    }

    /// A header line for a sealed or wrapped keyring, then ids, purposes, states and
    /// creation times, one key a line.
    fn print(&self, out: &mut dyn std::io::Write) -> Result<()> {
        match &self.protection {
            Protection::Clear => {}
            Protection::Sealed { kek_id } => {
                writeln!(out, "sealed under key-encryption key {kek_id}")?
            }
            Protection::Kms { uri, keyring_id } => writeln!(
                out,
                "wrapped by {uri} (keyring {keyring_id}); each secret on its own"
            )?,
        }
        match &self.keyring_id {
            Some(id) => writeln!(out, "keyring {id}, generation {}", self.generation)?,
            None => writeln!(
                out,
                "format v1 (no keyring id, generation 0): `keys upgrade` writes it as v2"
            )?,
        }
        writeln!(
            out,
            "{:<32}  {:<10}  {:<9}  created_at",
            "id", "purpose", "state"
        )?;
        for (id, purpose, state, created_at) in &self.keys {
            writeln!(
                out,
                "{:<32}  {:<10}  {:<9}  {}",
                id,
                purpose.as_str(),
                state.as_str(),
                created_at
            )?;
        }
        Ok(())
    }

    /// `{ "protection": "clear" | "sealed" | "kms", "kek_id" (sealed), "kms" and
    /// "kms" (kms), "keyring_id" (null for format v1), "generation", "keys": [{ id, purpose,
    /// state, created_at }] }`.
    fn to_json(&self) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self
            .keys
            .iter()
            .map(|(id, purpose, state, created_at)| {
                serde_json::json!({
                    "id": id,
                    "purpose": purpose.as_str(),
                    "state": state.as_str(),
                    "created_at": created_at,
                })
            })
            .collect();
        let (generation, keyring_id) = (self.generation, &self.keyring_id);
        match &self.protection {
            Protection::Clear => serde_json::json!({
                "protection": "clear", "keyring_id": keyring_id, "generation": generation,
                "keys": keys
            }),
            Protection::Sealed { kek_id } => serde_json::json!({
                "protection": "sealed", "kek_id": kek_id, "keyring_id": keyring_id,
                "generation": generation, "keys": keys
            }),
            Protection::Kms { uri, keyring_id } => serde_json::json!({
                "protection": "kms", "kms": uri, "keyring_id": keyring_id,
                "generation": generation, "keys": keys
            }),
        }
    }
}

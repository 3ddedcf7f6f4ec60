//! `pseudonymizer keys …`: create, rotate, list, destroy, seal and unseal keyrings, clear,
//! sealed under a KEK, or wrapped by a KMS (`--kms URI`). Secrets never reach the output;
//! `list` prints ids, purposes and states. On a KMS keyring, `rotate`, `destroy` and `list`
//! unwrap nothing, and no command writes a clear secret unless asked to (`unseal`).

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use crate::keys::{Kek, Keyring, Need, Purpose, Secret};
use crate::kms::keyring::{is_wrapped, WrappedKeyring};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a keyring with one active key of each purpose (refuses to overwrite).
    Init {
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
        #[arg(long)]
        out: PathBuf,
    },
    /// Seal a clear keyring under the KEK from the environment, or wrap a clear or sealed one
    /// with a KMS key (`--kms`; the clear keyring exists in memory only).
    Seal {
        #[arg(long)]
        keyring: PathBuf,
        /// Wrap each secret with this KMS key (aws-kms://<key ARN>).
        #[arg(long)]
        kms: Option<String>,
    },
    /// Wrap a KMS keyring's secrets with another KMS key (KMS key rotation): unwrapped and
    /// wrapped again in memory, written atomically; never a clear keyring on disk.
    Rewrap {
        #[arg(long)]
        keyring: PathBuf,
        /// The new KMS key (aws-kms://<key ARN>).
        #[arg(long)]
        kms: String,
    },
    /// Write a sealed keyring back in clear (needs its KEK in the environment).
    Unseal {
        #[arg(long)]
        keyring: PathBuf,
    },
    /// Add a new active key of a purpose and retire the old one.
    Rotate {
        #[arg(long)]
        keyring: PathBuf,
        #[arg(long, value_parser = parse_purpose)]
        purpose: Purpose,
        /// Id of the new key (default: generated).
        #[arg(long)]
        id: Option<String>,
    },
    /// List keys (never secrets).
    List {
        #[arg(long)]
        keyring: PathBuf,
    },
    /// Remove a key's secret, keeping its entry (crypto-shredding).
    Destroy {
        #[arg(long)]
        keyring: PathBuf,
        #[arg(long)]
        id: String,
    },
}

fn parse_purpose(s: &str) -> Result<Purpose, String> {
    match s {
        "pseudonym" => Ok(Purpose::Pseudonym),
        "encryption" => Ok(Purpose::Encryption),
        _ => Err("expected pseudonym or encryption".to_owned()),
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
                let wrapped = WrappedKeyring::wrap(&ring, crate::kms::open(&uri)?.as_ref())?;
                wrapped.save(&keyring)?;
                writeln!(
                    out,
                    "created {} wrapped by {uri} with keys:",
                    keyring.display()
                )?;
                return list_wrapped(&wrapped, out);
            }
            ring.save(&keyring)?;
            writeln!(out, "created {} with keys:", keyring.display())?;
            list(&ring, out)
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
            let mut text = secret.to_b64();
            text.push('\n');
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
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
            let wrapped = WrappedKeyring::wrap(&ring, crate::kms::open(&uri)?.as_ref())?;
            wrapped.save(&keyring)?;
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
            let from = crate::kms::open(&wrapped.kms)?;
            let to = crate::kms::open(&kms)?;
            let rewrapped = wrapped.rewrap(from.as_ref(), to.as_ref())?;
            rewrapped.save(&keyring)?;
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
                let kms = crate::kms::open(&wrapped.kms)?;
                let id = wrapped.rotate(kms.as_ref(), purpose, id)?;
                wrapped.save(&keyring)?;
                writeln!(out, "new active {} key {id}", purpose.as_str())?;
                return Ok(());
            }
            let mut ring = Keyring::load(&keyring)?;
            let id = ring.rotate(purpose, id)?;
            ring.save(&keyring)?;
            writeln!(out, "new active {} key {id}", purpose.as_str())?;
            Ok(())
        }
        KeysCommand::List { keyring } => match read_wrapped(&keyring)? {
            Some(wrapped) => list_wrapped(&wrapped, out),
            None => list(&Keyring::load(&keyring)?, out),
        },
        KeysCommand::Destroy { keyring, id } => {
            if let Some(mut wrapped) = read_wrapped(&keyring)? {
                wrapped.destroy(&id)?;
                wrapped.save(&keyring)?;
                writeln!(out, "destroyed the wrapped secret of key {id}")?;
                return Ok(());
            }
            let mut ring = Keyring::load(&keyring)?;
            ring.destroy(&id)?;
            ring.save(&keyring)?;
            writeln!(out, "destroyed the secret of key {id}")?;
            Ok(())
        }
    }
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
fn read_wrapped(path: &std::path::Path) -> Result<Option<WrappedKeyring>> {
    let text = Keyring::read_owner_only(path)?;
    if !is_wrapped(&text) {
        return Ok(None);
    }
    Ok(Some(WrappedKeyring::from_text(&text)?))
}

fn list_wrapped(ring: &WrappedKeyring, out: &mut dyn std::io::Write) -> Result<()> {
    writeln!(
        out,
        "wrapped by {} (keyring {}); each secret on its own",
        ring.kms, ring.keyring_id
    )?;
    let rows = ring
        .entries()
        .iter()
        .map(|e| (e.id.as_str(), e.purpose, e.state, e.created_at.as_str()));
    table(rows, out)
}

fn list(ring: &Keyring, out: &mut dyn std::io::Write) -> Result<()> {
    if let Some(kek) = ring.kek() {
        writeln!(out, "sealed under key-encryption key {}", kek.id())?;
    }
    let rows = ring
        .entries()
        .iter()
        .map(|e| (e.id.as_str(), e.purpose, e.state, e.created_at.as_str()));
    table(rows, out)
}

/// Ids, purposes, states and creation times, one key a line (never a secret).
fn table<'a>(
    rows: impl Iterator<Item = (&'a str, Purpose, crate::keys::KeyState, &'a str)>,
    out: &mut dyn std::io::Write,
) -> Result<()> {
    writeln!(
        out,
        "{:<32}  {:<10}  {:<9}  created_at",
        "id", "purpose", "state"
    )?;
    for (id, purpose, state, created_at) in rows {
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

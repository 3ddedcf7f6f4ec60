//! `pseudonymizer keys …`: create, rotate, list, destroy, seal and unseal keyrings. Secrets
//! never reach the output; `list` prints ids, purposes and states.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use crate::keys::{Kek, Keyring, Purpose, Secret};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a keyring with one active key of each purpose (refuses to overwrite).
    Init {
        #[arg(long)]
        keyring: PathBuf,
        /// Seal the file under the KEK from $PSEUDONYMIZER_KEK or $PSEUDONYMIZER_KEK_FILE.
        #[arg(long)]
        sealed: bool,
    },
    /// Write a new random key-encryption key (base64) to a new owner-only file.
    NewKek {
        #[arg(long)]
        out: PathBuf,
    },
    /// Seal a clear keyring under the KEK from the environment.
    Seal {
        #[arg(long)]
        keyring: PathBuf,
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
        KeysCommand::Init { keyring, sealed } => {
            Keyring::refuse_existing(&keyring)?;
            let mut ring = Keyring::generate();
            if sealed {
                ring.set_kek(Some(kek_from_env()?));
            }
            if let Some(dir) = keyring.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
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
        KeysCommand::Seal { keyring } => {
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
            let mut ring = Keyring::load(&keyring)?;
            if ring.kek().is_none() {
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
            let mut ring = Keyring::load(&keyring)?;
            let id = ring.rotate(purpose, id)?;
            ring.save(&keyring)?;
            writeln!(out, "new active {} key {id}", purpose.as_str())?;
            Ok(())
        }
        KeysCommand::List { keyring } => list(&Keyring::load(&keyring)?, out),
        KeysCommand::Destroy { keyring, id } => {
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

fn list(ring: &Keyring, out: &mut dyn std::io::Write) -> Result<()> {
    if let Some(kek) = ring.kek() {
        writeln!(out, "sealed under key-encryption key {}", kek.id())?;
    }
    writeln!(
        out,
        "{:<32}  {:<10}  {:<9}  created_at",
        "id", "purpose", "state"
    )?;
    for e in ring.entries() {
        writeln!(
            out,
            "{:<32}  {:<10}  {:<9}  {}",
            e.id,
            e.purpose.as_str(),
            e.state.as_str(),
            e.created_at
        )?;
    }
    Ok(())
}

//! `pseudonymizer lookup`: the tokens of given values under every pseudonym key that still has
//! a secret, audited before anything is printed.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::audit::AuditLog;
use crate::keys::{KeySet, Keyring, Need};
use crate::phone::PhoneCanon;
use crate::token::{self, TokenClass};

/// `lookup`: the tokens of values under every pseudonym key that still has a secret (audited).
#[derive(Debug, Args)]
pub struct LookupArgs {
    /// The keyring whose pseudonym keys make the tokens.
    #[arg(long)]
    pub keyring: PathBuf,
    /// Audit log to append to (else $PSEUDONYMIZER_AUDIT_LOG); lookup refuses without one.
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    /// Token class: phone, ip, email, id, or id.<role> (an id sub-class, as a rule's
    /// `{ action = "id", class = "<role>" }` makes).
    #[arg(long)]
    pub class: String,
    /// The role of an id (same as --class id.<role>).
    #[arg(long)]
    pub sub_class: Option<String>,
    /// The pseudonymisation domain of the pipeline whose tokens are looked up (its
    /// `domain`); absent: the default domain.
    #[arg(long)]
    pub domain: Option<String>,
    /// Default region for phone numbers without a country code.
    #[arg(long, default_value = "ID")]
    pub region: String,
    /// Read the values from this file, one per line (`-`: standard input), so that they
    /// stay out of the process list and the shell history.
    #[arg(long)]
    pub values_from: Option<PathBuf>,
    /// The values on the command line (visible in `ps` and kept in shell history: a
    /// warning is printed; prefer --values-from).
    pub values: Vec<String>,
}

pub(super) fn lookup(args: LookupArgs, out: &mut dyn Write) -> Result<()> {
    let LookupArgs {
        keyring,
        audit_log,
        class,
        sub_class,
        domain,
        region,
        values_from,
        values,
    } = args;
    let mut audit = AuditLog::open(audit_log.as_deref(), None)?;
    let values = lookup_values(values_from.as_deref(), values)?;
    let class = match (TokenClass::parse(&class), sub_class) {
        (Some(TokenClass::Id), Some(sub)) => {
            TokenClass::IdOf(token::SubClass::new(&sub).map_err(anyhow::Error::msg)?)
        }
        (_, Some(_)) => bail!("--sub-class goes with --class id"),
        (Some(c), None) if c.is_requestable() => c,
        _ => bail!("--class must be phone, ip, email, id or id.<role>"),
    };
    if let Some(domain) = &domain {
        crate::keys::check_domain(domain).map_err(anyhow::Error::msg)?;
    }
    let phone = PhoneCanon::new(&region)?;
    let keys = KeySet::from_keyring(&Keyring::load_for(&keyring, Need::TOKENS)?);
    if keys.pseudonym_keys().is_empty() {
        bail!("no pseudonym key with a secret in {}", keyring.display());
    }
    let in_domain: Vec<_> = keys
        .pseudonym_keys()
        .iter()
        .map(|k| match &domain {
            Some(d) => std::sync::Arc::new(k.in_domain(d)),
            None => k.clone(),
        })
        .collect();
    // Audited before anything is printed: no log line, no tokens. A domain is named
    // with the key ids it applies to (`p-…/domain:fraud`).
    let key_ids: Vec<String> = in_domain
        .iter()
        .map(|k| match k.domain() {
            Some(d) => format!("{}/domain:{d}", k.id()),
            None => k.id().to_owned(),
        })
        .collect();
    let count = values.len() as u64;
    audit.append("lookup", key_ids.clone(), count, None, None, "started")?;
    // One JSON line per (value, key). The value is named by its position on the
    // command line, not repeated, so captured output never pairs a value with its token.
    for (n, value) in values.iter().enumerate() {
        let (class, canonical) = token::canonical(class, value, &phone);
        for key in &in_domain {
            let token = token::token(key, class, canonical.as_bytes());
            let line = serde_json::json!({"arg": n + 1, "class": class.as_str(), "key_id": key.id(), "token": token.as_str()});
            writeln!(out, "{line}")?;
        }
    }
    audit.append("lookup", key_ids, count, None, None, "ok")?;
    Ok(())
}

/// `lookup`'s values: from a file or standard input, one per line; or from the command line,
/// with a warning (they stay in `ps` and the shell's history).
fn lookup_values(from: Option<&std::path::Path>, args: Vec<String>) -> Result<Vec<String>> {
    let values = match from {
        Some(path) => {
            if !args.is_empty() {
                bail!("give the values with --values-from or on the command line, not both");
            }
            let text = if path == std::path::Path::new("-") {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            } else {
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?
            };
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()
        }
        None => {
            if !args.is_empty() {
                eprintln!(
                    "warning: values on the command line stay in the process list and the \
                     shell's history; use --values-from FILE (or - for standard input)"
                );
            }
            args
        }
    };
    if values.is_empty() {
        bail!("no values to look up");
    }
    Ok(values)
}

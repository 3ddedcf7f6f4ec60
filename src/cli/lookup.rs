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
    /// A config whose `[kafka] subjects_topic` names the subject registry: each line then
    /// says whether the person was erased, and when (`"erased": {"at", "request"}` or null).
    #[arg(long)]
    pub config: Option<PathBuf>,
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
        config,
        audit_log,
        class,
        sub_class,
        domain,
        region,
        values_from,
        values,
    } = args;
    // With --config, its `audit_log` is the default (as for every command that reads one).
    let configured = match &config {
        Some(path) => {
            crate::config::Config::load(path)
                .with_context(|| format!("config {}", path.display()))?
                .audit_log
        }
        None => None,
    };
    let mut audit = AuditLog::open(audit_log.as_deref(), configured.as_deref())?;
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
    let registry = match &config {
        Some(path) => match Registry::read(path, &keys) {
            Ok(registry) => Some(registry),
            Err(error) => {
                audit.append("lookup", key_ids, count, None, None, "failed")?;
                return Err(error);
            }
        },
        None => None,
    };
    // One JSON line per (value, key). The value is named by its position on the
    // command line, not repeated, so captured output never pairs a value with its token.
    for (n, value) in values.iter().enumerate() {
        let (class, canonical) = token::canonical(class, value, &phone);
        let erased = registry
            .as_ref()
            .map(|r| r.erased(class, canonical.as_bytes()));
        for key in &in_domain {
            let token = token::token(key, class, canonical.as_bytes());
            let mut line = serde_json::json!({"arg": n + 1, "class": class.as_str(), "key_id": key.id(), "token": token.as_str()});
            if let Some(erased) = &erased {
                line["erased"] = erased.clone();
            }
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

/// The erasures of the subject registry a config names, by subject id.
struct Registry {
    key: std::sync::Arc<crate::keys::SubjectKey>,
    erased: std::collections::HashMap<String, (String, String)>,
}

impl Registry {
    fn read(config: &std::path::Path, keys: &KeySet) -> Result<Self> {
        use crate::subjects::{kafka::TopicReader, RegistryRecord, SubjectState};
        let config = crate::config::Config::load(config)
            .with_context(|| format!("config {}", config.display()))?;
        let kafka = config
            .kafka
            .as_ref()
            .context("the config has no [kafka] section")?;
        let topic = kafka
            .subjects_topic
            .as_ref()
            .context("the config's [kafka] names no subjects_topic")?;
        let key = keys
            .subject()
            .context("the keyring has no active subject key")?
            .clone();
        let reader = TopicReader::open_subject_topic(kafka, topic, "lookup registry reader")
            .map_err(anyhow::Error::msg)?;
        let mut erased = std::collections::HashMap::new();
        reader
            .read_to_end(
                std::time::Duration::from_secs(120),
                |read| {
                    if let (Some(k), Some(v)) = (read.key, read.value) {
                        if let Ok(record) = RegistryRecord::parse(k, v) {
                            if record.state == SubjectState::Erased {
                                erased.insert(record.subject, (record.at, record.request));
                            }
                        }
                    }
                },
                |_, _| {},
            )
            .map_err(anyhow::Error::msg)
            .context("reading the subject registry")?;
        Ok(Registry { key, erased })
    }

    /// `{"at", "request"}` of the value's erasure, or null.
    fn erased(&self, class: TokenClass, canonical: &[u8]) -> serde_json::Value {
        let bytes = crate::subjects::subject_bytes(&self.key, class, canonical);
        match self
            .erased
            .get(&crate::subjects::subject_text(&self.key, &bytes))
        {
            Some((at, request)) => serde_json::json!({"at": at, "request": request}),
            None => serde_json::Value::Null,
        }
    }
}

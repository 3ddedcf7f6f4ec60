//! Secrets by reference: a string value of the config may hold `${file:PATH}` (the file's
//! contents, trailing newline trimmed) or `${env:NAME}` (an environment variable), resolved
//! when the config is loaded (at start, and when the worker reconnects after a referenced file
//! changed). This is how passwords, key passwords and per-instance values
//! (`transactional_id = "pseudonymizer-${env:POD_NAME}"`) reach the config without being
//! written in it, as Kafka Connect's `${file:…}` config providers and Vector's `SECRET[…]` do.
//!
//! Properties that carry a secret ([`SECRET_PROPERTIES`]) must be given by reference: written
//! inline they are refused, with an error that names the property and never the value.
//! Resolved values are kept (zeroized on drop) so that any later error message can be scrubbed
//! of them ([`Resolved::redact`]): a value read through a reference is never printed, wherever
//! it was used (a region, a rule, a path), and the message says "the value of ${file:…}"
//! instead.

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// librdkafka properties whose values are secrets: refused inline, never echoed. These are the
/// properties librdkafka itself marks sensitive (`_RK_SENSITIVE` in its `rdkafka_conf.c`, whose
/// values it redacts from its own logs) but for those in [`SENSITIVE_NOT_SECRET`]; a test
/// holds the two lists to the librdkafka this crate is built with.
pub const SECRET_PROPERTIES: &[&str] = &[
    "sasl.password",
    "sasl.oauthbearer.config",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.oauthbearer.assertion.private.key.pem",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl.keystore.password",
    "ssl_key",
];

/// Properties librdkafka marks sensitive whose values are not secrets, so they may be written
/// inline: two paths to a file that holds the secret (the file is the secret, not its name), a
/// public CA certificate, and the SASL user name (an identity; its password is the secret).
pub const SENSITIVE_NOT_SECRET: &[&str] = &[
    "ssl.key.location",
    "sasl.oauthbearer.assertion.private.key.file",
    "ssl.ca.pem",
    "sasl.username",
];

/// The config tables whose keys are librdkafka properties.
const PROPERTY_TABLES: &[&str] = &["properties", "consumer_properties", "producer_properties"];

/// Whether `name` is a librdkafka property that carries a secret.
pub fn is_secret_property(name: &str) -> bool {
    SECRET_PROPERTIES.contains(&name)
}

/// What resolving a config's references produced.
#[derive(Default)]
pub struct Resolved {
    /// Every resolved value with the reference it came from (`${file:pw}`), to scrub from
    /// error messages.
    values: Vec<(Zeroizing<String>, String)>,
    /// The files referenced, to watch for rotation.
    pub files: Vec<PathBuf>,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("values", &format_args!("[{} hidden]", self.values.len()))
            .field("files", &self.files)
            .finish()
    }
}

impl Resolved {
    /// `message` with every resolved value replaced by "the value of ${…}" (its reference).
    /// Longer values first, so that a value inside another is not left half. A value is also
    /// looked for as Rust's `{:?}` writes it (escaped), as messages often quote that way.
    pub fn redact(&self, message: &str) -> String {
        let mut values: Vec<&(Zeroizing<String>, String)> = self.values.iter().collect();
        values.sort_by_key(|(value, _)| std::cmp::Reverse(value.len()));
        let mut message = message.to_owned();
        for (value, reference) in values {
            if value.is_empty() {
                continue;
            }
            let instead = format!("the value of {reference}");
            let escaped = Zeroizing::new(format!("{:?}", value.as_str()));
            let escaped = &escaped[1..escaped.len() - 1];
            if escaped != value.as_str() {
                message = message.replace(escaped, &instead);
            }
            message = message.replace(value.as_str(), &instead);
        }
        message
    }
}

/// Resolves every reference in `table` in place (relative file paths against `base`) and
/// checks that secret properties are given by reference. Every problem is reported at once;
/// no problem names a value.
pub fn resolve(table: &mut toml::Table, base: &Path) -> Result<Resolved, Vec<String>> {
    let mut problems = inline_secrets(table);
    let mut resolved = Resolved::default();
    walk(table, "", base, &mut resolved, &mut problems);
    if problems.is_empty() {
        Ok(resolved)
    } else {
        Err(problems)
    }
}

/// Secret properties written inline, by name.
fn inline_secrets(table: &toml::Table) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(toml::Value::Table(kafka)) = table.get("kafka") else {
        return problems;
    };
    for section in PROPERTY_TABLES {
        let Some(toml::Value::Table(properties)) = kafka.get(*section) else {
            continue;
        };
        for (name, value) in properties {
            let by_reference = value.as_str().is_some_and(|s| !references(s).is_empty());
            if is_secret_property(name) && !by_reference {
                problems.push(format!(
                    "[kafka.{section}] {name:?} is written inline (its value is not shown); a \
                     secret must be given as \"${{file:PATH}}\" or \"${{env:NAME}}\""
                ));
            }
        }
    }
    problems
}

fn walk(
    table: &mut toml::Table,
    path: &str,
    base: &Path,
    resolved: &mut Resolved,
    problems: &mut Vec<String>,
) {
    for (key, value) in table.iter_mut() {
        let here = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        walk_value(value, &here, base, resolved, problems);
    }
}

fn walk_value(
    value: &mut toml::Value,
    here: &str,
    base: &Path,
    resolved: &mut Resolved,
    problems: &mut Vec<String>,
) {
    match value {
        toml::Value::String(text) => {
            if references(text).is_empty() {
                return;
            }
            match substitute(text, base, resolved) {
                Ok(new) => *text = new,
                Err(problem) => problems.push(format!("{here}: {problem}")),
            }
        }
        toml::Value::Table(table) => walk(table, here, base, resolved, problems),
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk_value(item, &format!("{here}[{i}]"), base, resolved, problems);
            }
        }
        _ => {}
    }
}

/// A reference found in a string: its byte range and what it names.
#[derive(Debug, PartialEq, Eq)]
enum Reference<'a> {
    File(&'a str),
    Env(&'a str),
}

/// The references in `text`, with their byte ranges.
fn references(text: &str) -> Vec<(std::ops::Range<usize>, Reference<'_>)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(start) = text[from..].find("${").map(|i| from + i) {
        let Some(end) = text[start..].find('}').map(|i| start + i) else {
            break;
        };
        let inner = &text[start + 2..end];
        let reference = if let Some(path) = inner.strip_prefix("file:") {
            Some(Reference::File(path))
        } else {
            inner.strip_prefix("env:").map(Reference::Env)
        };
        if let Some(reference) = reference {
            found.push((start..end + 1, reference));
        }
        from = end + 1;
    }
    found
}

/// `text` with its references replaced by what they name.
fn substitute(text: &str, base: &Path, resolved: &mut Resolved) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (range, reference) in references(text) {
        out.push_str(&text[last..range.start]);
        let written = text[range.clone()].to_owned();
        let value = match reference {
            Reference::Env(name) => match std::env::var(name) {
                Ok(value) if !value.is_empty() => Zeroizing::new(value),
                Ok(_) => return Err(format!("environment variable {name} is empty")),
                Err(_) => return Err(format!("environment variable {name} is not set")),
            },
            Reference::File(path) => {
                let path = base.join(path);
                let value = read_secret_file(&path)?;
                resolved.files.push(path);
                value
            }
        };
        out.push_str(&value);
        resolved.values.push((value, written));
        last = range.end;
    }
    out.push_str(&text[last..]);
    Ok(out)
}

/// A secret file's contents (UTF-8, at most [`crate::fsio::SECRET_LIMIT`] bytes, read
/// without waiting on a FIFO, its mode held to [`crate::secret_file`]'s rule), one trailing
/// newline trimmed.
fn read_secret_file(path: &Path) -> Result<Zeroizing<String>, String> {
    // Follows symlinks: Kubernetes mounts secrets as links into a `..data` folder.
    let bytes = crate::secret_file::read(path, "secret file", crate::fsio::SECRET_LIMIT)
        .map_err(|e| e.to_string())?;
    let cannot = |why: &str| format!("secret file {}: {why}", path.display());
    let text = std::str::from_utf8(&bytes).map_err(|_| cannot("not UTF-8"))?;
    let text = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(text);
    if text.is_empty() {
        return Err(cannot("the file is empty"));
    }
    Ok(Zeroizing::new(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn file_and_env_references_resolve_anywhere_in_a_string() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "s3cret-pw\n").unwrap();
        // Owner-only, as every secret file must be.
        std::fs::set_permissions(
            dir.path().join("pw"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        std::env::set_var("SECRET_REF_TEST_POD", "worker-7");
        let mut t = table(
            "[kafka]\ntransactional_id = \"pseudonymizer-${env:SECRET_REF_TEST_POD}\"\n\
             [kafka.properties]\n\"sasl.password\" = \"${file:pw}\"\n\"sasl.username\" = \"u\"\n",
        );
        let resolved = resolve(&mut t, dir.path()).unwrap();
        assert_eq!(
            t["kafka"]["transactional_id"].as_str(),
            Some("pseudonymizer-worker-7")
        );
        assert_eq!(
            t["kafka"]["properties"]["sasl.password"].as_str(),
            Some("s3cret-pw")
        );
        assert_eq!(resolved.files, vec![dir.path().join("pw")]);
        assert_eq!(
            resolved.redact("bad value s3cret-pw here"),
            "bad value the value of ${file:pw} here"
        );
        assert!(!format!("{resolved:?}").contains("s3cret"));
    }

    /// The properties librdkafka marks sensitive, read from the source of the librdkafka this
    /// crate builds: rdkafka-sys's vendored `rdkafka_conf.c`, at the version Cargo.lock pins,
    /// in Cargo's registry sources (which a build has unpacked).
    fn librdkafka_sensitive_properties() -> Vec<String> {
        let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let lock = std::fs::read_to_string(manifest_dir.join("Cargo.lock")).unwrap();
        let version = lock
            .split("[[package]]")
            .find(|p| p.contains("name = \"rdkafka-sys\""))
            .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
            .expect("rdkafka-sys in Cargo.lock")
            .trim_matches('"')
            .to_owned();
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").unwrap()).join(".cargo"));
        let conf = std::fs::read_dir(cargo_home.join("registry/src"))
            .unwrap()
            .map(|index| {
                index.unwrap().path().join(format!(
                    "rdkafka-sys-{version}/librdkafka/src/rdkafka_conf.c"
                ))
            })
            .find(|path| path.is_file())
            .expect("rdkafka-sys's sources in Cargo's registry");
        let source = std::fs::read_to_string(&conf).unwrap();
        // A property's entry: `{_RK_GLOBAL | _RK_SENSITIVE, "name", …` (the name may be on
        // the next line).
        let entry = regex::Regex::new(r#"\{[^{}"]*_RK_SENSITIVE[^{}"]*"([^"]+)""#).unwrap();
        let mut names: Vec<String> = entry
            .captures_iter(&source)
            .map(|c| c[1].to_owned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    #[test]
    fn every_property_librdkafka_marks_sensitive_is_classified_and_secrets_refused_inline() {
        let sensitive = librdkafka_sensitive_properties();
        assert!(sensitive.len() >= 10, "{sensitive:?}");
        let mut ours: Vec<String> = SECRET_PROPERTIES
            .iter()
            .chain(SENSITIVE_NOT_SECRET)
            .map(|s| s.to_string())
            .collect();
        ours.sort();
        // A librdkafka upgrade that marks a new property sensitive fails here until it is
        // classified (and one that unmarks a property, until it is dropped).
        assert_eq!(ours, sensitive);
        for name in SECRET_PROPERTIES {
            let mut t = table(&format!(
                "[kafka.consumer_properties]\n{name:?} = \"canary-inline\"\n"
            ));
            let problems = resolve(&mut t, Path::new(".")).unwrap_err();
            assert_eq!(problems.len(), 1, "{name}: {problems:?}");
            assert!(problems[0].contains(&format!("{name:?} is written inline")));
            assert!(!problems[0].contains("canary-inline"));
        }
    }

    #[test]
    fn inline_secrets_are_refused_by_name_never_by_value() {
        let mut t = table(
            "[kafka.properties]\n\"sasl.password\" = \"canary-inline-1\"\n\
             [kafka.producer_properties]\n\"ssl.key.password\" = \"canary-inline-2\"\n",
        );
        let problems = resolve(&mut t, Path::new(".")).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("\"sasl.password\" is written inline"));
        assert!(problems[1].contains("[kafka.producer_properties] \"ssl.key.password\""));
        assert!(!problems.concat().contains("canary-inline"));
    }

    #[test]
    fn missing_sources_name_the_reference_not_a_value() {
        std::env::remove_var("SECRET_REF_TEST_MISSING");
        let mut t = table(
            "[kafka.properties]\n\"sasl.password\" = \"${env:SECRET_REF_TEST_MISSING}\"\n\
             \"ssl.key.password\" = \"${file:/nonexistent/pw}\"\n\"x\" = \"${file:/dev/zero}\"\n",
        );
        let problems = resolve(&mut t, Path::new(".")).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems
            .iter()
            .any(|p| p.contains("SECRET_REF_TEST_MISSING is not set")));
        assert!(problems.iter().any(|p| p.contains("/nonexistent/pw")));
        assert!(problems.iter().any(|p| p.contains("not a regular file")));
    }

    #[test]
    fn text_without_references_is_left_alone() {
        assert!(references("plain ${not a ref} $ {env:X} ${env:").is_empty());
        assert_eq!(
            references("a${env:X}b${file:y}"),
            vec![(1..9, Reference::Env("X")), (10..19, Reference::File("y"))]
        );
    }
}

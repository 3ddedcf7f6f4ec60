//! The rotation policy: when an active key is due for rotation.
//!
//! A pure function of (policy, key, its age, its envelope count) so it can be tested without a
//! clock. Three reasons, each raised at `warn_fraction` of its limit:
//! - `age`: the key is older than the configured maximum age of its purpose;
//! - `envelopes`: this process sealed more than the configured maximum under the key;
//! - `nonce-limit`: this process sealed more than half of spec §4's 2^32 random-nonce budget,
//!   whatever the configuration says.

use time::{Duration, OffsetDateTime};

use super::Purpose;
use crate::config::RotationConfig;

/// Spec §4: at most 2^32 envelopes under one key with random 96-bit nonces.
pub const NONCE_LIMIT: u64 = 1 << 32;

/// One reason a key should be rotated soon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationDue {
    /// The key's id.
    pub key_id: String,
    /// `age`, `envelopes` or `nonce-limit`.
    pub reason: &'static str,
    /// For the log line: how far along the key is, in plain words (no secret, no value).
    pub detail: String,
}

/// What the policy knows about one active key.
pub struct KeyFacts<'a> {
    pub id: &'a str,
    pub purpose: Purpose,
    pub created_at: OffsetDateTime,
    /// Envelopes sealed by this process (encryption keys; 0 for pseudonym keys).
    pub sealed: u64,
}

/// Every reason `key` is due for rotation at `now`.
pub fn check(policy: &RotationConfig, key: &KeyFacts<'_>, now: OffsetDateTime) -> Vec<RotationDue> {
    let mut due = Vec::new();
    let max_age_days = match key.purpose {
        Purpose::Encryption => policy.encryption_max_age_days,
        Purpose::Pseudonym => policy.pseudonym_max_age_days,
    };
    if let Some(days) = max_age_days {
        let max_age = Duration::days(i64::from(days));
        let age = now - key.created_at;
        if age.as_seconds_f64() >= max_age.as_seconds_f64() * policy.warn_fraction {
            due.push(RotationDue {
                key_id: key.id.to_owned(),
                reason: "age",
                detail: format!(
                    "{} key is {} days old; the maximum is {days}",
                    key.purpose.as_str(),
                    age.whole_days()
                ),
            });
        }
    }
    if key.purpose == Purpose::Encryption {
        let warn_at = (policy.max_envelopes_per_key as f64 * policy.warn_fraction) as u64;
        if key.sealed >= warn_at.max(1) {
            due.push(RotationDue {
                key_id: key.id.to_owned(),
                reason: "envelopes",
                detail: format!(
                    "{} envelopes sealed by this process; the maximum is {}",
                    key.sealed, policy.max_envelopes_per_key
                ),
            });
        }
        if key.sealed >= NONCE_LIMIT / 2 {
            due.push(RotationDue {
                key_id: key.id.to_owned(),
                reason: "nonce-limit",
                detail: format!(
                    "{} envelopes sealed by this process; random nonces allow 2^32 per key",
                    key.sealed
                ),
            });
        }
    }
    due
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(
        purpose: Purpose,
        days_old: i64,
        sealed: u64,
        now: OffsetDateTime,
    ) -> KeyFacts<'static> {
        KeyFacts {
            id: "k-1",
            purpose,
            created_at: now - Duration::days(days_old),
            sealed,
        }
    }

    fn reasons(
        policy: &RotationConfig,
        key: &KeyFacts<'_>,
        now: OffsetDateTime,
    ) -> Vec<&'static str> {
        check(policy, key, now)
            .into_iter()
            .map(|d| d.reason)
            .collect()
    }

    #[test]
    fn warns_at_the_fraction_of_each_limit_and_not_before() {
        let now = OffsetDateTime::now_utc();
        let policy = RotationConfig {
            encryption_max_age_days: Some(100),
            pseudonym_max_age_days: None,
            max_envelopes_per_key: 1000,
            warn_fraction: 0.8,
            check_interval_secs: 60,
        };
        let e = Purpose::Encryption;
        assert!(reasons(&policy, &facts(e, 79, 799, now), now).is_empty());
        assert_eq!(reasons(&policy, &facts(e, 80, 0, now), now), ["age"]);
        assert_eq!(reasons(&policy, &facts(e, 0, 800, now), now), ["envelopes"]);
        assert_eq!(
            reasons(&policy, &facts(e, 200, 5000, now), now),
            ["age", "envelopes"]
        );
        // Pseudonym keys: no age limit unless configured, never an envelope count.
        let p = Purpose::Pseudonym;
        assert!(reasons(&policy, &facts(p, 1000, 10_000, now), now).is_empty());
        let policy = RotationConfig {
            pseudonym_max_age_days: Some(365),
            ..policy
        };
        assert_eq!(reasons(&policy, &facts(p, 300, 0, now), now), ["age"]);
    }

    #[test]
    fn the_nonce_limit_warns_whatever_the_configuration() {
        let now = OffsetDateTime::now_utc();
        let policy = RotationConfig {
            encryption_max_age_days: None,
            max_envelopes_per_key: NONCE_LIMIT,
            warn_fraction: 1.0,
            ..RotationConfig::default()
        };
        let e = Purpose::Encryption;
        assert!(reasons(&policy, &facts(e, 0, NONCE_LIMIT / 2 - 1, now), now).is_empty());
        assert_eq!(
            reasons(&policy, &facts(e, 0, NONCE_LIMIT / 2, now), now),
            ["nonce-limit"]
        );
    }
}

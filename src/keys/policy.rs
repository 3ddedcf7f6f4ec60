//! The rotation policy: when an active key is due for rotation.
//!
//! A pure function of (policy, key, its age) so it can be tested without a clock. One reason,
//! raised at `warn_fraction` of its limit: `age`, the key is older than the configured maximum
//! age of its purpose. (The envelope count of spec v1's AES-256-GCM, 2^32 seals per key, is
//! moot for version-2 envelopes: docs/security.md, "The encryption bound".)

use time::{Duration, OffsetDateTime};

use super::Purpose;
use crate::config::RotationConfig;

/// One reason a key should be rotated soon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationDue {
    /// The key's id.
    pub key_id: String,
    /// `age`.
    pub reason: &'static str,
    /// For the log line: how far along the key is, in plain words (no secret, no value).
    pub detail: String,
}

/// What the policy knows about one active key.
pub struct KeyFacts<'a> {
    pub id: &'a str,
    pub purpose: Purpose,
    pub created_at: OffsetDateTime,
}

/// Every reason `key` is due for rotation at `now`.
pub fn check(policy: &RotationConfig, key: &KeyFacts<'_>, now: OffsetDateTime) -> Vec<RotationDue> {
    let mut due = Vec::new();
    let max_age_days = match key.purpose {
        Purpose::Encryption => policy.encryption_max_age_days,
        Purpose::Pseudonym => policy.pseudonym_max_age_days,
        // Never rotated (keyring.rs, `refuse_subject_rotation`).
        Purpose::Subject => None,
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
    due
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(purpose: Purpose, days_old: i64, now: OffsetDateTime) -> KeyFacts<'static> {
        KeyFacts {
            id: "k-1",
            purpose,
            created_at: now - Duration::days(days_old),
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
    fn warns_at_the_fraction_of_the_age_limit_and_not_before() {
        let now = OffsetDateTime::now_utc();
        let policy = RotationConfig {
            encryption_max_age_days: Some(100),
            pseudonym_max_age_days: None,
            max_envelopes_per_key: None,
            warn_fraction: 0.8,
            check_interval_secs: 60,
        };
        let e = Purpose::Encryption;
        assert!(reasons(&policy, &facts(e, 79, now), now).is_empty());
        assert_eq!(reasons(&policy, &facts(e, 80, now), now), ["age"]);
        assert_eq!(reasons(&policy, &facts(e, 200, now), now), ["age"]);
        // Pseudonym keys: no age limit unless configured.
        let p = Purpose::Pseudonym;
        assert!(reasons(&policy, &facts(p, 1000, now), now).is_empty());
        let policy = RotationConfig {
            pseudonym_max_age_days: Some(365),
            ..policy
        };
        assert_eq!(reasons(&policy, &facts(p, 300, now), now), ["age"]);
    }
}

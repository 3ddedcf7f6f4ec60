//! `pseudonymizer audit …`: the re-identification audit log's hash chain checked.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the log's whole hash chain: every edited, removed or reordered record is named
    /// (exit 1), and the chain's head hash is printed in any case.
    Verify {
        /// The audit log to check.
        #[arg(long)]
        audit_log: PathBuf,
    },
}

pub(super) fn audit(command: AuditCommand, out: &mut dyn Write) -> Result<()> {
    match command {
        AuditCommand::Verify { audit_log } => {
            let v = crate::audit::verify(&audit_log)
                .map_err(|problem| anyhow::anyhow!("{}: {problem}", audit_log.display()))?;
            // Every break, then the head hash whatever was found: an operator compares it with
            // the head recorded last time, so records cut from the end are seen too.
            for problem in &v.breaks {
                writeln!(out, "break: {problem}")?;
            }
            let state = if v.breaks.is_empty() {
                "chain intact".to_owned()
            } else {
                format!("chain broken ({} breaks)", v.breaks.len())
            };
            writeln!(
                out,
                "{}: {} records, {state} ({} from before the chain); head sha256 {}",
                audit_log.display(),
                v.records,
                v.unchained,
                v.head
            )?;
            if !v.breaks.is_empty() {
                bail!(
                    "{}: the chain is broken in {} places (listed above)",
                    audit_log.display(),
                    v.breaks.len()
                );
            }
            Ok(())
        }
    }
}

//! `pseudonymizer audit …`: the re-identification audit log's hash chain checked.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the log's hash chain; names the first edited, removed or reordered record and
    /// exits non-zero, or prints the record count and the chain's head hash.
    Verify {
        /// The audit log to check.
        #[arg(long)]
        audit_log: PathBuf,
    },
}

pub(super) fn audit(command: AuditCommand, out: &mut dyn Write) -> Result<()> {
    match command {
        AuditCommand::Verify { audit_log } => match crate::audit::verify(&audit_log) {
            Ok(v) => {
                writeln!(
                    out,
                    "{}: {} records, chain intact ({} from before the chain); head sha256 {}",
                    audit_log.display(),
                    v.records,
                    v.unchained,
                    v.head
                )?;
                Ok(())
            }
            Err(problem) => bail!("{}: {problem}", audit_log.display()),
        },
    }
}

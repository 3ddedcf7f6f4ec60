//! The `pseudonymizer` binary: parses the command line and reports errors with their context.
//!
//! Exit codes (README, "Exit codes"): 0 success; 1 any failure, standard output or error
//! closed by its reader included; 2 a usage error (clap's); 101 an internal error (a panic, its
//! message withheld when it may carry data).

use std::io::Write as _;

use clap::Parser;

fn main() -> std::process::ExitCode {
    // First, before any thread exists: no core dumps, no KEK left in the environment.
    let hardened = pseudonymizer::hardening::harden();
    // A standard descriptor closed by the caller (`>&-`) is already open on /dev/null: std
    // does that before `main`, so no file the command opens takes its number. A reader that
    // goes away (a closed pipe) makes writes fail: that is exit 1, and never a panic.
    std::panic::set_hook(Box::new(|info| {
        // Never a second panic from a closed stderr (that would abort).
        let _ = writeln!(
            std::io::stderr(),
            "{}",
            pseudonymizer::cli::panic_report(info.payload(), info.location())
        );
    }));
    let cli = match pseudonymizer::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(said) => {
            // Help and version (exit 0) and usage errors (exit 2), printed as clap prints them;
            // help that standard output cannot take (a closed pipe, a full disk) is exit 1, as
            // for any other output. (A usage error stays 2 even if stderr is closed.)
            let printed = said.print().and_then(|()| std::io::stdout().flush());
            return match (said.exit_code(), printed) {
                (0, Err(_)) => std::process::ExitCode::FAILURE,
                (code, _) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(2)),
            };
        }
    };
    pseudonymizer::cli::set_hardening(hardened);
    match pseudonymizer::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // A closed stderr cannot be told; the exit code still says it.
            let _ = writeln!(
                std::io::stderr(),
                "error: {}",
                pseudonymizer::cli::error_report(&error)
            );
            std::process::ExitCode::FAILURE
        }
    }
}

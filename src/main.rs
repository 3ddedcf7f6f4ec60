//! The `pseudonymizer` binary: parses the command line and reports errors with their context.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // First, before any thread exists: no core dumps, no KEK left in the environment.
    let hardened = pseudonymizer::hardening::harden();
    std::panic::set_hook(Box::new(|info| {
        eprintln!(
            "{}",
            pseudonymizer::cli::panic_report(info.payload(), info.location())
        );
    }));
    let cli = pseudonymizer::cli::Cli::parse();
    pseudonymizer::cli::set_hardening(hardened);
    match pseudonymizer::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

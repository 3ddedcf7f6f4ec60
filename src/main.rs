//! The `pseudonymizer` binary: parses the command line and reports errors with their context.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = pseudonymizer::cli::Cli::parse();
    match pseudonymizer::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

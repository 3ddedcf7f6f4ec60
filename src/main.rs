//! The `pseudonymizer` binary: parses the command line and reports errors with their context.

use clap::Parser;

fn main() -> std::process::ExitCode {
    std::panic::set_hook(Box::new(|info| {
        eprintln!(
            "{}",
            pseudonymizer::cli::panic_report(info.payload(), info.location())
        );
    }));
    let cli = pseudonymizer::cli::Cli::parse();
    match pseudonymizer::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

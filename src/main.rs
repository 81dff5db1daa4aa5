use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    rpcpin::cli::Cli::parse().execute()
}

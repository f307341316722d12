use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = bake::commands::Cli::parse();
    bake::commands::init_tracing(&cli.global);
    bake::commands::run(cli)
}

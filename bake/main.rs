use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = bake::cli::Cli::parse();
    bake::app::init_tracing(&cli.global);
    bake::app::run(cli)
}

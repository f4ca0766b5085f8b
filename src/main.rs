//! The `saobp` command-line tool: `info` lists adapters, `demo` runs the main job.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(
    name = "saobp",
    version,
    about = "Attention and SAOBP on any GPU through wgpu"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every adapter (backend, type, driver) and mark the one `auto` picks.
    Info,
    /// Run attention on a built-in workload and check it against the float64 reference.
    Demo(cli::demo::DemoArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Info => cli::info::run(),
        Command::Demo(a) => cli::demo::run(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

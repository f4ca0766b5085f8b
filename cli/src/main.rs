//! The `saobp` command-line tool: `info` lists adapters, `demo` runs the main job,
//! `refine` runs on your tensors, `maps` on saved attention maps, `analyze` a
//! model's attention, `conformance` checks every kernel on every adapter;
//! `train`, `eval` and `generate` train and use a character-level GPT. Every
//! subcommand takes `--backend` and `--adapter` (over `SAOBP_BACKEND` and
//! `SAOBP_ADAPTER`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;

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
    Info(commands::info::InfoArgs),
    /// Run attention and SAOBP on a built-in workload, check against the float64 reference.
    Demo(commands::demo::DemoArgs),
    /// Attention + SAOBP on q, k, v from a safetensors file; writes outputs and metrics.
    Refine(commands::refine::RefineArgs),
    /// SAOBP and metrics on saved attention maps [L, B, H, N, N] (f32, f16 or bf16).
    Maps(commands::maps::MapsArgs),
    /// A BERT-family model's attention by layer and head, with and without SAOBP.
    Analyze(commands::analyze::AnalyzeArgs),
    /// Every kernel at a fixed set of sizes on every adapter, against the float64
    /// reference; exits non-zero if any fails.
    Conformance(commands::conformance::ConformanceArgs),
    /// Train a character-level GPT on a text file, with or without SAOBP.
    Train(commands::train::TrainArgs),
    /// A trained GPT's loss and perplexity on a text (and its gradients).
    Eval(commands::eval::EvalArgs),
    /// Text sampled from a trained GPT.
    Generate(commands::generate::GenerateArgs),
}

fn main() -> ExitCode {
    quiet_wayland_probe();
    let args = Args::parse();
    let result = match args.command {
        Command::Info(a) => commands::info::run(&a),
        Command::Demo(a) => commands::demo::run(&a),
        Command::Refine(a) => commands::refine::run(&a),
        Command::Maps(a) => commands::maps::run(&a),
        Command::Analyze(a) => commands::analyze::run(&a),
        Command::Conformance(a) => commands::conformance::run(&a),
        Command::Train(a) => commands::train::run(&a),
        Command::Eval(a) => commands::eval::run(&a),
        Command::Generate(a) => commands::generate::run(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// On a headless Linux machine, wgpu's GL backend probes for a Wayland
/// display, and libwayland prints "error: XDG_RUNTIME_DIR is invalid" when the
/// variable is unset, which reads like one of our errors. Pointing it at the
/// temporary directory (where no compositor socket exists) keeps the probe
/// silent; it changes nothing when a session sets the variable.
fn quiet_wayland_probe() {
    if cfg!(target_os = "linux")
        && std::env::var_os("XDG_RUNTIME_DIR").is_none()
        && std::env::var_os("WAYLAND_DISPLAY").is_none()
    {
        // Single-threaded here: nothing else reads the environment yet.
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
}

//! `meshd`: the coordmesh agent and its tools. See CONTRACT.md for the
//! command line; `meshd --help` for the same in short.

mod agent;
mod bench;
mod demo;
mod keygen;
mod lock;
mod status;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The coordmesh agent and its tools.
#[derive(Parser, Debug)]
#[command(name = "meshd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs one node in the foreground until SIGINT or SIGTERM.
    Agent(Box<agent::AgentArgs>),
    /// Shows the cluster as one agent sees it.
    Status(status::StatusArgs),
    /// Runs a command while holding a lock: `meshd lock NAME -- CMD`.
    Lock(lock::LockArgs),
    /// Ends a `meshd lock` command's process group when `meshd lock` dies
    /// or its lease's deadline passes (started by `meshd lock` itself).
    #[command(name = "lock-watchdog", hide = true)]
    LockWatchdog {
        /// The deadline, CLOCK_BOOTTIME nanoseconds.
        deadline_ns: u64,
    },
    /// Makes a new cluster secret (for `--cluster-key`).
    Keygen(keygen::KeygenArgs),
    /// Runs the multi-process local demo on loopback.
    Demo(demo::DemoArgs),
    /// Runs a benchmark.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            use clap::error::ErrorKind;
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                err.exit();
            }
            // One line, naming the problem; the usage is one --help away.
            let text = err.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("meshd: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Agent(args) => agent::run(*args),
        Command::Status(args) => status::run(args),
        Command::Lock(args) => lock::run(args),
        Command::LockWatchdog { deadline_ns } => lock::watchdog(deadline_ns),
        Command::Keygen(args) => keygen::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench::run(args),
    }
}

/// Installs the tracing subscriber for this process (RUST_LOG, default
/// `info`), writing to stderr.
fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

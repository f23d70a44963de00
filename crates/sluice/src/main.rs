//! The `sluice` binary: parses the command line and dispatches to one subcommand module. No
//! domain logic lives here; the library crates do the work and this is the only place that prints.

mod certs;
mod client;
mod demo;
mod gen;
mod store;
mod supervise;
mod units;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// mimalloc instead of the system allocator: the store allocates and frees many short-lived
/// buffers per page and per batch (Parquet pages, Arrow arrays, zstd output) from several
/// threads, where glibc's malloc spent about a fifth of a needle query's CPU (`_int_malloc`,
/// `_int_free`, `malloc_consolidate`) and kept freed memory resident after ingest.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// sluice: an observability-event pipeline.
///
/// Every process writes JSON events to stdout; `sluice supervise` runs it, keeps its events on disk
/// in chunks and serves them over mutually-authenticated HTTPS; `sluice store` pulls them into
/// columnar segments; `sluice query`, `search` and `tail` ask a store from the command line.
#[derive(Parser)]
#[command(name = "sluice", version, propagate_version = true, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Supervise(Box<supervise::Args>),
    Gen(gen::Args),
    Certs(certs::Args),
    Store(store::Args),
    Query(client::QueryArgs),
    Search(client::SearchArgs),
    Tail(client::TailArgs),
    Demo(demo::Args),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            if let Some(var) = value_from_environment(&e) {
                eprintln!("note: the value came from the environment variable {var}");
            }
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let result = match cli.command {
        Command::Supervise(args) => supervise::run(*args),
        Command::Gen(args) => gen::run(args),
        Command::Certs(args) => certs::run(args),
        Command::Store(args) => store::run(args),
        Command::Query(args) => client::query(args),
        Command::Search(args) => client::search(args),
        Command::Tail(args) => client::tail(args),
        Command::Demo(args) => demo::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluice: error: {}", error_text(&e));
            ExitCode::from(2)
        }
    }
}

/// The environment variable a refused value came from, when it did: clap's message names only
/// the flag (`invalid value 'abc' for '--flush-rows-max <N>'`), which the user never typed.
fn value_from_environment(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let ContextValue::String(shown) = e.get(ContextKind::InvalidArg)? else { return None };
    let long = shown.strip_prefix("--")?.split([' ', '=']).next()?;
    let typed = std::env::args().any(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")));
    if typed {
        return None;
    }
    let cli = Cli::command();
    let var = cli
        .get_subcommands()
        .flat_map(|c| c.get_arguments())
        .chain(cli.get_arguments())
        .find(|a| a.get_long() == Some(long))?
        .get_env()?
        .to_string_lossy()
        .into_owned();
    std::env::var_os(&var).is_some().then_some(var)
}

/// The error and its causes, each cause left out if the text so far already says it (most of our
/// messages quote their cause, and `thiserror` makes it the error's source as well).
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

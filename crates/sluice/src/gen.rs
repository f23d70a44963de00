//! `sluice gen`: writes realistic, deterministic events to stdout (see the sluice-gen crate).

use std::process::ExitCode;

use sluice_gen::GenConfig;

/// Write realistic observability events to stdout, one JSON object per line.
///
/// The same seed and flags give the same events. Without --rate, events follow a synthetic
/// timeline from --start-ns; with --rate, they carry the wall-clock time they are written.
#[derive(clap::Args)]
pub struct Args {
    /// Number of events to write (default: forever).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Events per second (default: as fast as possible).
    #[arg(long, value_name = "PER_SECOND")]
    rate: Option<f64>,
    /// Seed of the pseudo-random sequence.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Share of stdout lines that are deliberately bad (0 to 1).
    #[arg(long, default_value_t = 0.0, value_name = "RATIO")]
    bad_ratio: f64,
    /// Share of events written as plain text to stderr instead (0 to 1).
    #[arg(long, default_value_t = 0.0, value_name = "RATIO")]
    stderr_ratio: f64,
    /// Start of the synthetic timeline, ns since the Unix epoch.
    #[arg(long, default_value_t = sluice_gen::GEN_START_NS_DEFAULT, value_name = "NS")]
    start_ns: u64,
    /// Mean spacing of events on the synthetic timeline, ns.
    #[arg(long, default_value_t = 1_000_000, value_name = "NS")]
    step_ns: u64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    for (flag, v) in [("--bad-ratio", args.bad_ratio), ("--stderr-ratio", args.stderr_ratio)] {
        anyhow::ensure!((0.0..=1.0).contains(&v), "{flag} {v} is outside 0..1");
    }
    if let Some(r) = args.rate {
        anyhow::ensure!(r > 0.0 && r.is_finite(), "--rate {r} must be a positive number of events per second");
    }
    let cfg = GenConfig {
        seed: args.seed,
        count: args.count,
        rate: args.rate,
        bad_ratio: args.bad_ratio,
        stderr_ratio: args.stderr_ratio,
        start_ns: args.start_ns,
        step_ns: args.step_ns,
    };
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    sluice_gen::run(&cfg, &mut stdout.lock(), &mut stderr.lock())?;
    Ok(ExitCode::SUCCESS)
}

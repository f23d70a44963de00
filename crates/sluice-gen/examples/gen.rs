//! A stand-in for `sluice gen` while the CLI is wired elsewhere: `cargo run --release -p sluice-gen
//! --example gen -- [count] [seed] [rate] [bad_ratio] [stderr_ratio]` ("-" keeps a default).
//! Not the real command line; no validation beyond what `run` does.

use std::io::{self, Write};

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> Option<T> {
    args.get(i).filter(|s| *s != "-").and_then(|s| s.parse().ok())
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let d = sluice_gen::GenConfig::default();
    let cfg = sluice_gen::GenConfig {
        count: arg(&args, 0),
        seed: arg(&args, 1).unwrap_or(d.seed),
        rate: arg(&args, 2),
        bad_ratio: arg(&args, 3).unwrap_or(0.0),
        stderr_ratio: arg(&args, 4).unwrap_or(0.0),
        ..d
    };
    let stdout = io::stdout();
    let stderr = io::stderr();
    let n = sluice_gen::run(&cfg, &mut stdout.lock(), &mut stderr.lock())?;
    io::stdout().flush()?;
    let _ = n;
    Ok(())
}

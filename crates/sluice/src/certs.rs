//! `sluice certs`: a CA, a server certificate and client certificates for mTLS, in one command.

use std::path::PathBuf;
use std::process::ExitCode;

use sluice_tls::{format_fingerprint, CertSpec};

/// Create a CA, a server certificate and client certificates (PEM) for mutual TLS.
///
/// Writes ca.pem/ca.key, server.pem/server.key, NAME.pem/NAME.key for each client, and
/// allowed-clients.txt (the client fingerprints, for `sluice supervise --allow-clients`).
/// Keys are written with mode 0600. Existing files are never overwritten.
#[derive(clap::Args)]
#[command(after_help = "A complete mTLS set-up in three commands:\n  \
sluice certs --dir certs --client store\n  \
sluice supervise --data-dir data --tls-cert certs/server.pem --tls-key certs/server.key \\\n      --allow-clients certs/allowed-clients.txt -- sluice gen --rate 100\n  \
curl --cacert certs/ca.pem --cert certs/store.pem --key certs/store.key https://localhost:7701/chunk/")]
pub struct Args {
    /// Directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Subject alternative name of the server certificate (DNS name or IP); repeat for more.
    #[arg(long = "san", value_name = "NAME", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
    sans: Vec<String>,
    /// Name of a client certificate to create; repeat for more.
    #[arg(long = "client", value_name = "NAME", default_values_t = ["store".to_string()])]
    clients: Vec<String>,
    /// Validity of every certificate, in days.
    #[arg(long, default_value_t = sluice_tls::DAYS_DEFAULT)]
    days: u32,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let spec = CertSpec { server_sans: args.sans, clients: args.clients, days: args.days };
    let g = sluice_tls::generate(&args.dir, &spec)?;
    println!("ca          {}", g.ca.display());
    println!("server      {}  {}", g.server_cert.display(), format_fingerprint(&g.server_fingerprint));
    for (name, cert, _key, fp) in &g.clients {
        println!("client {name:<4} {}  {}", cert.display(), format_fingerprint(fp));
    }
    println!("allow list  {}", g.allow_list.display());
    Ok(ExitCode::SUCCESS)
}

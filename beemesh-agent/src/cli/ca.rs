//! `ca init|issue-host|issue-issuer|revoke-host`: the trust domain's certificate authority,
//! offline (no agent needed, none contacted). See `mesh::trust::files` for the directories.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Subcommand;

use super::fail;
use crate::config::Config;
use crate::mesh::trust::files;

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Make a trust domain's root in DIR (0700; the key 0600). Keep DIR offline: only
    /// `ca issue-*` and `ca revoke-host` need it, never a running host.
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue host NAME's credentials into STATE_DIR/host/: its ed25519 key (its mesh PeerId),
    /// its host certificate and its issuing key for its workloads' SVIDs, and the root.
    /// `run --state-dir STATE_DIR` then uses them.
    IssueHost {
        /// The CA directory: a root's (`ca init`) or an issuer's (`ca issue-issuer`).
        #[arg(long)]
        ca: PathBuf,
        /// The host's node name ([a-z0-9.-], as in a host name).
        #[arg(long)]
        name: String,
        /// The host's state directory.
        #[arg(long)]
        out: PathBuf,
        /// Lifetime of the host certificate and its workload issuer.
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
    /// Make an issuer: an intermediate allowed to issue hosts (`ca issue-host --ca OUT`),
    /// for members the operator chooses; written as a CA directory OUT.
    IssueIssuer {
        /// The root's CA directory.
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// The issuer's name.
        #[arg(long, default_value = "issuer")]
        name: String,
    },
    /// Sign a revocation of host NAME (every certificate for it issued until now; its key
    /// too when this CA directory issued it), written to FILE (default
    /// CA/revocations/NAME-<unix time>.pem).
    RevokeHost {
        #[arg(long)]
        ca: PathBuf,
        name: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub(super) fn run(cfg: &Config, command: CaCommand) -> ExitCode {
    let now = SystemTime::now();
    match command {
        CaCommand::Init { dir } => match files::init_ca(&dir, &cfg.trust_domain, now) {
            Ok(_) => {
                outln!("root for trust domain {} in {}", cfg.trust_domain, dir.display());
                outln!("keep {} offline: hosts never need it", dir.join("ca.key").display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        CaCommand::IssueHost { ca, name, out, days } => {
            let ttl = Duration::from_secs(days.saturating_mul(86_400));
            let issued =
                files::load_ca(&ca, now).and_then(|ca| files::issue_host(&ca, &name, &out, now, ttl));
            match issued {
                Ok(peer) => {
                    outln!("host {name} (peer {peer}) in {}", out.join(files::HOST_DIR).display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        CaCommand::IssueIssuer { ca, out, name } => {
            match files::load_ca(&ca, now).and_then(|ca| files::issue_issuer(&ca, &name, &out, now)) {
                Ok(()) => {
                    outln!("issuer {name} in {}", out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        CaCommand::RevokeHost { ca, name, out } => {
            let signed = files::load_ca(&ca, now).and_then(|dir| {
                let signed = files::revoke_host(&dir, &name, now)?;
                let secs = now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                let path =
                    out.unwrap_or_else(|| dir.dir.join("revocations").join(format!("{name}-{secs}.pem")));
                files::write_revocation(&path, &signed)?;
                Ok(path)
            });
            match signed {
                Ok(path) => {
                    outln!("revocation of {name} in {}", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
    }
}

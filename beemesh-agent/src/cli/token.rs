//! `token create|list|delete`: join tokens of the issuer the running member holds (through
//! its admin socket), and `run --join`'s parsing of a token (a malformed one exits 64).

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Subcommand;

use super::{fail, json, unexpected, Output, EXIT_CONFIG};
use crate::api::{client, JoinTokenInfo, Request, Response, TokenAction};
use crate::mesh::trust::join::JoinToken;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a single-use join token (printed once) for `run --join TOKEN --bootstrap THIS_HOST`
    /// on a new host; this member must hold an issuer (`ca issue-issuer`).
    Create {
        /// How long it admits a host: NUMBER with s, m, h or d (default 1h).
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
        /// The only node name it admits (`--node-name` is this host's own, a global flag).
        #[arg(long = "for-node", value_name = "NAME")]
        node: Option<String>,
    },
    /// The member's tokens (never their secrets).
    List {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Delete a token by its id (the second field of the token).
    Delete { id: String },
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().map_err(|_| format!("ttl {s:?}: expected NUMBER[s|m|h|d]"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("ttl {s:?}: unit must be s, m, h or d")),
    };
    match n.checked_mul(scale) {
        Some(0) | None => Err(format!("ttl {s:?}: must be above zero and reasonable")),
        Some(secs) => Ok(Duration::from_secs(secs)),
    }
}

/// `run --join TOKEN`: the token, or the exit for a malformed one (64, as bad usage).
pub(super) fn parse_join(text: &str) -> Result<JoinToken, ExitCode> {
    text.parse().map_err(|e| {
        eprintln!("beemesh-agent: --join: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn expires(at: u64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    match at.checked_sub(now) {
        Some(left) if left > 0 => format!("in {}m{}s", left / 60, left % 60),
        _ => "expired".into(),
    }
}

pub(super) async fn run(socket: &Path, command: TokenCommand) -> ExitCode {
    let action = match &command {
        TokenCommand::Create { ttl, node } => {
            TokenAction::Create { ttl_secs: ttl.as_secs(), node_name: node.clone() }
        }
        TokenCommand::List { .. } => TokenAction::List,
        TokenCommand::Delete { id } => TokenAction::Delete { id: id.clone() },
    };
    match (client::call(socket, &Request::JoinTokens { action }).await, command) {
        (Ok(Response::JoinToken { token, .. }), _) => {
            outln!("{token}");
            ExitCode::SUCCESS
        }
        (Ok(Response::JoinTokens { items }), TokenCommand::List { output }) => {
            match output {
                Output::Json => outln!("{}", json(&items)),
                Output::Table => print(&items),
            }
            ExitCode::SUCCESS
        }
        (Ok(Response::Done), TokenCommand::Delete { id }) => {
            outln!("token {id} deleted");
            ExitCode::SUCCESS
        }
        (Ok(Response::Error { message }), _) => fail(message),
        (other, _) => unexpected(other),
    }
}

fn print(items: &[JoinTokenInfo]) {
    outln!("{:<10} {:<16} {:<6} NODE", "ID", "EXPIRES", "USED");
    for t in items {
        let used = if t.used { "yes" } else { "no" };
        outln!(
            "{:<10} {:<16} {used:<6} {}",
            t.id,
            expires(t.expires_at),
            t.node_name.as_deref().unwrap_or("<any>")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;
    use std::time::Duration;

    #[test]
    fn the_command_line_is_consistent() {
        // clap checks (unique long names across global and local flags) at first use only.
        <crate::cli::Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn ttls_parse_with_units() {
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("2d"), Ok(Duration::from_secs(172_800)));
        for bad in ["", "h", "0s", "1w", "-1h", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}

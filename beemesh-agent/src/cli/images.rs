//! `image import` and `image list`: through the running agent's admin socket when one
//! answers on `--run-dir` (the agent owns the store), offline on `--state-dir` otherwise.

use std::path::Path;
use std::process::ExitCode;

use super::{fail, json, unexpected, GlobalOpts, ImageCommand, Output};
use crate::api::client::{self, ClientError};
use crate::api::{ImageInfo, Request, Response};
use crate::config::Config;
use crate::image::ImageStore;

/// The state directory the user chose (flag, `BEEMESH_STATE_DIR` or config file), which a
/// running agent must share; `None` when it is only the default.
fn chosen_state_dir(global: &GlobalOpts, cfg: &Config) -> Option<String> {
    let chosen = global.state_dir.is_some() || cfg.state_dir != Config::default().state_dir;
    chosen.then(|| {
        std::path::absolute(&cfg.state_dir).unwrap_or_else(|_| cfg.state_dir.clone()).display().to_string()
    })
}

/// No agent listens on the socket (absent, or left behind by a dead agent).
fn no_agent(r: &Result<Response, ClientError>) -> bool {
    matches!(r, Err(ClientError::Connect { source, .. })
        if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused))
}

pub(super) async fn run(global: &GlobalOpts, cfg: &Config, socket: &Path, command: ImageCommand) -> ExitCode {
    let state_dir = chosen_state_dir(global, cfg);
    let store = ImageStore::new(&cfg.state_dir)
        .max_unpacked(cfg.image_max_unpacked_bytes)
        .max_entries(cfg.image_max_entries);
    match command {
        ImageCommand::Import { file, name } => {
            // The agent has its own working directory: send an absolute path, never the bytes.
            let path = match std::fs::canonicalize(&file) {
                Ok(p) => p,
                Err(e) => return fail(format!("{}: {e}", file.display())),
            };
            let req =
                Request::ImportImage { path: path.display().to_string(), name: name.clone(), state_dir };
            let answer = client::call(socket, &req).await;
            let tags = match answer {
                Ok(Response::Imported { tags }) => tags,
                r if no_agent(&r) => match store.import_as(&path, name.as_deref()) {
                    Ok(tags) => tags,
                    Err(e) => return fail(e),
                },
                other => return unexpected(other),
            };
            for t in tags {
                outln!("imported {t}");
            }
            ExitCode::SUCCESS
        }
        ImageCommand::List { output } => {
            let answer = client::call(socket, &Request::ListImages { state_dir }).await;
            let items = match answer {
                Ok(Response::Images { items }) => items,
                r if no_agent(&r) => match store.list() {
                    Ok(list) => list
                        .into_iter()
                        .map(|(tag, id)| ImageInfo { tag, id, size: None, holders: Vec::new() })
                        .collect(),
                    Err(e) => return fail(e),
                },
                other => return unexpected(other),
            };
            match output {
                Output::Json => outln!("{}", json(&items)),
                Output::Table => {
                    outln!("{:<50} {:<20} {:>10}  HOLDERS", "IMAGE", "ID", "SIZE");
                    for i in items {
                        let id = i.id.strip_prefix("sha256:").unwrap_or(&i.id);
                        let size = i.size.map_or_else(|| "-".to_string(), human_size);
                        let holders =
                            if i.holders.is_empty() { "-".to_string() } else { i.holders.join(",") };
                        outln!("{:<50} {:<20} {:>10}  {holders}", i.tag, &id[..id.len().min(12)], size);
                    }
                }
            }
            ExitCode::SUCCESS
        }
    }
}

/// `1.5MiB`-style sizes for the table.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

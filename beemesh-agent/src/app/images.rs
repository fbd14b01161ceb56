//! The agent's side of `image import` and `image list`: the agent owns `<state-dir>/images`,
//! so CLI imports come here while it runs. An import (copy, verify, unpack: slow) runs on a
//! blocking thread and answers when done; the actor never waits for it. The store's own lock
//! orders imports among themselves and against offline ones. Images are shared peer to peer
//! (`sharing`: holder records and the list across the mesh; `blobs`: the blob server;
//! `pull`: the puller; `chunks`: its sans-IO choices).

pub(crate) mod blobs;
pub(crate) mod chunks;
pub(crate) mod pull;
pub(crate) mod sharing;

use std::path::Path;

use tokio::sync::oneshot;
use tracing::info;

use super::{Agent, AgentHandle, Command};
use crate::api::{ImageInfo, Request, Response};
use crate::image::ImageStore;

impl Agent {
    fn image_store(&self) -> ImageStore {
        ImageStore::new(&self.cfg.state_dir)
            .max_unpacked(self.cfg.image_max_unpacked_bytes)
            .max_entries(self.cfg.image_max_entries)
    }

    /// Refuses a client that names another state directory than this agent's.
    fn same_state_dir(&self, state_dir: Option<&str>) -> Result<(), String> {
        let Some(given) = state_dir else { return Ok(()) };
        let ours = &self.cfg.state_dir;
        let same = match (std::fs::canonicalize(given), std::fs::canonicalize(ours)) {
            (Ok(a), Ok(b)) => a == b,
            _ => Path::new(given) == ours,
        };
        if same {
            Ok(())
        } else {
            Err(format!(
                "the agent on this --run-dir keeps its images in {}, not in {given}/images: \
                 give both the same --state-dir",
                self.image_store().root().display()
            ))
        }
    }

    /// Starts an import; `reply` gets the tags or the error when it is done.
    pub(super) fn import_image(
        &self,
        path: String,
        name: Option<String>,
        state_dir: Option<String>,
        reply: oneshot::Sender<Response>,
    ) {
        if let Err(message) = self.same_state_dir(state_dir.as_deref()) {
            let _ = reply.send(Response::Error { message });
            return;
        }
        if !Path::new(&path).is_absolute() {
            let message =
                format!("image path {path:?} must be absolute (the agent has its own working directory)");
            let _ = reply.send(Response::Error { message });
            return;
        }
        let store = self.image_store();
        tokio::task::spawn_blocking(move || {
            let resp = match store.import_as(Path::new(&path), name.as_deref()) {
                Ok(tags) => {
                    info!(path, ?tags, "image imported");
                    Response::Imported { tags }
                }
                Err(e) => Response::Error { message: e.to_string() },
            };
            let _ = reply.send(resp);
        });
    }

    pub(super) fn list_images(&self, state_dir: Option<&str>) -> Result<Response, String> {
        self.same_state_dir(state_dir)?;
        let items = self.image_store().list().map_err(|e| e.to_string())?;
        Ok(Response::Images {
            items: items
                .into_iter()
                .map(|(tag, id)| ImageInfo { tag, id, size: None, holders: Vec::new() })
                .collect(),
        })
    }
}

impl AgentHandle {
    /// `importImage` / `listImages` through the actor (it owns the store); with a mesh, an
    /// import rewrites this host's holder record and the list names every image of the mesh
    /// with its holders.
    pub(super) async fn images(&self, req: Request) -> Response {
        let import = matches!(req, Request::ImportImage { .. });
        let resp = self.actor(Command::Api(req)).await;
        let Some(m) = &self.mesh else { return resp };
        match resp {
            Response::Imported { tags } if import => {
                m.images.publish().await;
                Response::Imported { tags }
            }
            Response::Images { items } if !import => {
                let local: Vec<(String, String)> = items.into_iter().map(|i| (i.tag, i.id)).collect();
                match m.images.list(&local).await {
                    Ok(items) => Response::Images { items },
                    Err(message) => Response::Error { message },
                }
            }
            other => other,
        }
    }
}

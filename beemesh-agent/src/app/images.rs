//! The agent's side of `image import` and `image list`: the agent owns `<state-dir>/images`,
//! so CLI imports come here while it runs. An import (copy, verify, unpack: slow) runs on a
//! blocking thread and answers when done; the actor never waits for it. The store's own lock
//! orders imports among themselves and against offline ones.

use std::path::Path;

use tokio::sync::oneshot;
use tracing::info;

use super::Agent;
use crate::api::{ImageInfo, Response};
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
        Ok(Response::Images { items: items.into_iter().map(|(tag, id)| ImageInfo { tag, id }).collect() })
    }
}

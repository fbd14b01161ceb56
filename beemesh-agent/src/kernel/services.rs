//! The capture maps: which Service addresses the kernel sends to the agent (`SERVICES`,
//! `BACKENDS`), where to (`REDIRECT`), and what `connect4` recorded for each captured
//! connection (`CAPTURED`, by client port) and for each captured UDP flow (`UDP_CAPTURES`, by
//! flow id). Owned by the forwarder (`app::forward`), apart
//! from the actor's maps: the data path reads a capture per accepted connection without
//! waiting for the actor.

use std::collections::BTreeMap;

use aya::maps::{Array, HashMap, MapData};
use beemesh_common::{BackendKey, BackendValue, Capture, EndpointKey, Redirect, ServiceValue, UdpCapture};

use super::KernelError;

/// What one Service port resolves to: its id in the maps and its backends in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Captured {
    pub id: u32,
    pub backends: Vec<BackendValue>,
}

/// The agent's side of the capture maps.
pub struct ServiceMaps {
    services: HashMap<MapData, EndpointKey, ServiceValue>,
    backends: HashMap<MapData, BackendKey, BackendValue>,
    captured: HashMap<MapData, u16, Capture>,
    udp_captures: HashMap<MapData, u32, UdpCapture>,
    redirect: Array<MapData, Redirect>,
    installed: BTreeMap<EndpointKey, Captured>,
}

impl std::fmt::Debug for ServiceMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceMaps").field("installed", &self.installed.len()).finish_non_exhaustive()
    }
}

impl ServiceMaps {
    pub(super) fn new(ebpf: &mut aya::Ebpf) -> Result<Self, KernelError> {
        let redirect = ebpf.take_map("REDIRECT").ok_or(KernelError::MissingMap("REDIRECT"))?;
        Ok(Self {
            services: super::loader::take_hash(ebpf, "SERVICES")?,
            backends: super::loader::take_hash(ebpf, "BACKENDS")?,
            captured: super::loader::take_hash(ebpf, "CAPTURED")?,
            udp_captures: super::loader::take_hash(ebpf, "UDP_CAPTURES")?,
            redirect: Array::try_from(redirect).map_err(KernelError::map("REDIRECT"))?,
            installed: BTreeMap::new(),
        })
    }

    /// Where captured connections, DNS queries and UDP datagrams go (ports on 127.0.0.1, the
    /// UDP flows' on 127.0.0.0/8; 0: not captured).
    pub fn set_redirect(
        &mut self,
        capture_port: u16,
        dns_port: u16,
        udp_port: u16,
    ) -> Result<(), KernelError> {
        let redirect = Redirect { capture_port, dns_port, udp_port, _pad: 0 };
        self.redirect.set(0, redirect, 0).map_err(KernelError::map("REDIRECT"))
    }

    /// What `sendmsg4` recorded for the captured UDP flow `id` (left in place: the flow's
    /// later datagrams use it too).
    pub fn udp_capture(&self, id: u32) -> Option<UdpCapture> {
        self.udp_captures.get(&id, 0).ok()
    }

    /// Makes the maps hold exactly `wanted`, writing only what changed. A Service's new
    /// backends are written before its count grows and its count shrinks before backends
    /// go, so a connect never picks an empty slot.
    pub fn install(&mut self, wanted: &BTreeMap<EndpointKey, Captured>) -> Result<(), KernelError> {
        let gone: Vec<EndpointKey> =
            self.installed.keys().filter(|k| !wanted.contains_key(k)).copied().collect();
        for key in gone {
            if let Some(old) = self.installed.remove(&key) {
                let _ = self.services.remove(&key);
                for index in 0..old.backends.len() as u32 {
                    let _ = self.backends.remove(&BackendKey { service: old.id, index });
                }
            }
        }
        for (key, new) in wanted {
            let old = self.installed.get(key).cloned();
            let old = old.as_ref();
            if old == Some(new) {
                continue;
            }
            let same_id = old.is_some_and(|o| o.id == new.id);
            let old_count = old.filter(|_| same_id).map_or(0, |o| o.backends.len());
            if same_id && new.backends.len() < old_count {
                self.put_service(key, new.id, new.backends.len())?;
            }
            for (index, backend) in new.backends.iter().enumerate() {
                let unchanged = old.filter(|_| same_id).and_then(|o| o.backends.get(index)) == Some(backend);
                if !unchanged {
                    let slot = BackendKey { service: new.id, index: index as u32 };
                    self.backends.insert(slot, backend, 0).map_err(KernelError::map("BACKENDS"))?;
                }
            }
            self.put_service(key, new.id, new.backends.len())?;
            if let Some(old) = old {
                let from = if same_id { new.backends.len() } else { 0 };
                for index in from..old.backends.len() {
                    let _ = self.backends.remove(&BackendKey { service: old.id, index: index as u32 });
                }
            }
            self.installed.insert(*key, new.clone());
        }
        Ok(())
    }

    fn put_service(&mut self, key: &EndpointKey, id: u32, backends: usize) -> Result<(), KernelError> {
        let value = ServiceValue { id, backends: backends as u32 };
        self.services.insert(key, value, 0).map_err(KernelError::map("SERVICES"))
    }

    /// What `connect4` recorded for the captured connection from client port `port`,
    /// removed from the map (each capture is taken once).
    pub fn take_capture(&mut self, port: u16) -> Option<Capture> {
        let capture = self.captured.get(&port, 0).ok()?;
        let _ = self.captured.remove(&port);
        Some(capture)
    }
}

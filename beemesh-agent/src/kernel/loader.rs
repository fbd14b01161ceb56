//! Loading, attaching and pinning the kernel programs, and the small identity maps.
//!
//! Links are pinned under `<bpffs>/beemesh/<instance>/gen-<pid>`: if the agent dies, the
//! programs stay attached with the last policy in force (no unenforced window). The next
//! start fills fresh maps, attaches its own programs next to the old ones (cgroup
//! multi-attach: every program must allow), and only then unpins the old generation.

use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSkbAttachType, Program};
use aya::{include_bytes_aligned, Ebpf};
use beemesh_common::{Addr, LocalPortKey, LocalPortValue};
use tracing::{debug, info, warn};

use super::flows::{FlowReader, LogReader};
use super::services::ServiceMaps;
use super::slots::{addr_of, SlotWriter};
use super::KernelError;

static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/beemesh-ebpf.o"));

/// Every program in the object, in attach order (taggers before enforcers).
const PROGRAMS: [&str; 11] = [
    "post_bind4",
    "post_bind6",
    "sock_release",
    "capture_port",
    "connect4",
    "connect6",
    "sendmsg4",
    "sendmsg6",
    "recvmsg4",
    "recvmsg6",
    "ingress",
];

/// Where the programs go.
#[derive(Clone, Debug)]
pub struct KernelOptions {
    /// Root of the agent's cgroup2 subtree; programs attach here and cover every workload.
    pub cgroup_root: PathBuf,
    /// This instance's pin directory on bpffs.
    pub pin_dir: PathBuf,
}

/// The loaded programs and the maps the agent writes.
#[derive(Debug)]
pub struct Kernel {
    ebpf: Ebpf,
    opts: KernelOptions,
    links: Vec<(PathBuf, PinnedLink)>,
    generation: Option<PathBuf>,
    /// Pinned generations of earlier instances, still enforcing their last policy until
    /// this one has installed a policy of its own ([`Self::retire_previous`]).
    previous: Vec<PathBuf>,
    cgroups: HashMap<MapData, u64, u32>,
    local_addrs: HashMap<MapData, Addr, u8>,
    local_ports: HashMap<MapData, LocalPortKey, LocalPortValue>,
    cookie_ports: HashMap<MapData, u64, LocalPortKey>,
    refuse_cgroups: HashMap<MapData, u64, u8>,
    /// The capture maps, until the forwarder takes them.
    services: Option<ServiceMaps>,
}

pub(super) fn take_hash<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, KernelError> {
    let map = ebpf.take_map(name).ok_or(KernelError::MissingMap(name))?;
    HashMap::try_from(map).map_err(KernelError::map(name))
}

impl Kernel {
    /// Loads (but does not attach) every program. Returns the policy slots (owned by the
    /// agent's policy thread), the flow reader and, when the object carries aya-log records,
    /// the log forwarder.
    #[allow(clippy::type_complexity)]
    pub fn load(
        opts: KernelOptions,
    ) -> Result<(Self, SlotWriter, FlowReader, Option<LogReader>), KernelError> {
        let mut ebpf = Ebpf::load(OBJECT)?;
        let logs = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(LogReader::new(logger).map_err(KernelError::io("aya-log ring"))?),
            Err(e) => {
                warn!(error = %e, "kernel program logs unavailable");
                None
            }
        };
        let flows = {
            let map = ebpf.take_map("FLOWS").ok_or(KernelError::MissingMap("FLOWS"))?;
            let ring = aya::maps::RingBuf::try_from(map).map_err(KernelError::map("FLOWS"))?;
            FlowReader::new(ring).map_err(KernelError::io("flow ring"))?
        };
        for name in PROGRAMS {
            let program = ebpf.program_mut(name).ok_or(KernelError::MissingMap(name))?;
            let result = match program {
                Program::CgroupSockAddr(p) => p.load(),
                Program::CgroupSock(p) => p.load(),
                Program::CgroupSkb(p) => p.load(),
                Program::SockOps(p) => p.load(),
                _ => unreachable!("the object only has cgroup programs"),
            };
            result.map_err(|source| KernelError::Program { name, source })?;
        }
        let slots = SlotWriter::new(&mut ebpf)?;
        let services = Some(ServiceMaps::new(&mut ebpf)?);
        let kernel = Self {
            services,
            cgroups: take_hash(&mut ebpf, "CGROUPS")?,
            local_addrs: take_hash(&mut ebpf, "LOCAL_ADDRS")?,
            local_ports: take_hash(&mut ebpf, "LOCAL_PORTS")?,
            cookie_ports: take_hash(&mut ebpf, "COOKIE_PORTS")?,
            refuse_cgroups: take_hash(&mut ebpf, "REFUSE_CGROUPS")?,
            ebpf,
            opts,
            links: Vec::new(),
            generation: None,
            previous: Vec::new(),
        };
        Ok((kernel, slots, flows, logs))
    }

    /// Attaches every program to the cgroup root and pins the links. Links left pinned by an
    /// earlier instance that did not shut down cleanly stay attached (every program must
    /// allow) until [`Self::retire_previous`].
    pub fn attach(&mut self) -> Result<(), KernelError> {
        let cgroup = File::open(&self.opts.cgroup_root)
            .map_err(KernelError::io(format!("open {}", self.opts.cgroup_root.display())))?;
        let stale = self.previous_generations();
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        // Unique even when a restarted agent gets its predecessor's pid (pid 1 in a container).
        let generation = self.opts.pin_dir.join(format!("gen-{}-{started}", std::process::id()));
        std::fs::create_dir_all(&generation)
            .map_err(|source| KernelError::Pin { path: generation.clone(), source })?;
        self.generation = Some(generation.clone());
        for name in PROGRAMS {
            let link = attach_one(&mut self.ebpf, name, &cgroup)?;
            let path = generation.join(name);
            let _ = std::fs::remove_file(&path);
            let pinned = link.pin(&path).map_err(|e| KernelError::Pin {
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
            self.links.push((path, pinned));
        }
        info!(cgroup = %self.opts.cgroup_root.display(), programs = PROGRAMS.len(), "kernel programs attached");
        self.previous = stale.into_iter().filter(|d| *d != generation).collect();
        Ok(())
    }

    /// Unpins (detaching them) the programs of earlier instances. Called once this instance
    /// enforces a policy of its own, so there is never a moment with less enforcement.
    pub fn retire_previous(&mut self) {
        for dir in std::mem::take(&mut self.previous) {
            retire_generation(&dir);
        }
    }

    fn previous_generations(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.opts.pin_dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("gen-")))
            .collect()
    }

    /// Detaches every program and removes this instance's pins (clean shutdown).
    pub fn detach(&mut self) {
        for (path, pinned) in self.links.drain(..) {
            match pinned.unpin() {
                Ok(link) => drop(link),
                Err(e) => warn!(path = %path.display(), error = %e, "unpin failed"),
            }
        }
        if let Some(dir) = self.generation.take() {
            let _ = std::fs::remove_dir(&dir);
        }
        let _ = std::fs::remove_dir(&self.opts.pin_dir);
        if let Some(parent) = self.opts.pin_dir.parent() {
            // Shared by all instances; only goes when the last one does.
            let _ = std::fs::remove_dir(parent);
        }
        info!("kernel programs detached");
    }

    /// The capture maps, for the forwarder (once).
    pub fn take_service_maps(&mut self) -> Option<ServiceMaps> {
        self.services.take()
    }

    /// Maps a workload cgroup to its numeric identity.
    pub fn set_cgroup(&mut self, cgroup_id: u64, identity: u32) -> Result<(), KernelError> {
        self.cgroups.insert(cgroup_id, identity, 0).map_err(KernelError::map("CGROUPS"))
    }

    pub fn remove_cgroup(&mut self, cgroup_id: u64) -> Result<(), KernelError> {
        match self.cgroups.remove(&cgroup_id) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(KernelError::map("CGROUPS")(e)),
        }
    }

    /// Marks a slirp4netns leaf (`flags`: `NET_LEAF_*`, 0 forgets it): denied connects from
    /// its processes fail with ECONNREFUSED (the pod sees a refused connection), and unless
    /// `NET_LEAF_OWN_DNS` is set its DNS queries go to the agent's resolver.
    pub fn set_refuse_cgroup(&mut self, cgroup_id: u64, flags: u8) -> Result<(), KernelError> {
        let result = if flags != 0 {
            self.refuse_cgroups.insert(cgroup_id, flags, 0)
        } else {
            match self.refuse_cgroups.remove(&cgroup_id) {
                Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                other => other,
            }
        };
        result.map_err(KernelError::map("REFUSE_CGROUPS"))
    }

    /// Replaces the set of this host's own (non-loopback) addresses.
    pub fn set_local_addrs(&mut self, addrs: &[IpAddr]) -> Result<(), KernelError> {
        let wanted: Vec<Addr> = addrs.iter().map(|a| addr_of(*a)).collect();
        let present: Vec<Addr> = self.local_addrs.keys().filter_map(Result::ok).collect();
        for old in present.iter().filter(|a| !wanted.contains(a)) {
            let _ = self.local_addrs.remove(old);
        }
        for addr in wanted.iter().filter(|a| !present.contains(a)) {
            self.local_addrs.insert(addr, 1, 0).map_err(KernelError::map("LOCAL_ADDRS"))?;
        }
        Ok(())
    }

    /// Workload that owns a local port, as tagged by the kernel programs (O(1)).
    pub fn local_port_owner(&self, port: u16, proto: u8) -> Option<u32> {
        let key = LocalPortKey { port, proto, _pad: 0 };
        self.local_ports.get(&key, 0).ok().map(|v| v.identity)
    }

    /// Tags a local port as owned by a workload socket that existed before these programs
    /// (a restart): the same entry the programs write at bind/connect time.
    pub fn tag_local_port(
        &mut self,
        port: u16,
        proto: u8,
        identity: u32,
        cookie: u64,
    ) -> Result<(), KernelError> {
        let key = LocalPortKey { port, proto, _pad: 0 };
        let value = LocalPortValue { identity, _pad: 0, cookie };
        self.local_ports.insert(key, value, 0).map_err(KernelError::map("LOCAL_PORTS"))?;
        self.cookie_ports.insert(cookie, key, 0).map_err(KernelError::map("COOKIE_PORTS"))
    }
}

fn attach_one(ebpf: &mut Ebpf, name: &'static str, cgroup: &File) -> Result<FdLink, KernelError> {
    let program = ebpf.program_mut(name).ok_or(KernelError::MissingMap(name))?;
    let perr = |source| KernelError::Program { name, source };
    // cgroup bpf_links are always multi-attach and the kernel rejects any attach flag on
    // them, so "Single" (no flags) is what lets old and new generations coexist.
    let mode = CgroupAttachMode::Single;
    let link: Result<FdLink, _> = match program {
        Program::CgroupSockAddr(p) => {
            let id = p.attach(cgroup, mode).map_err(perr)?;
            p.take_link(id).map_err(perr)?.try_into()
        }
        Program::CgroupSock(p) => {
            let id = p.attach(cgroup, mode).map_err(perr)?;
            p.take_link(id).map_err(perr)?.try_into()
        }
        Program::CgroupSkb(p) => {
            let id = p.attach(cgroup, CgroupSkbAttachType::Ingress, mode).map_err(perr)?;
            p.take_link(id).map_err(perr)?.try_into()
        }
        Program::SockOps(p) => {
            let id = p.attach(cgroup, mode).map_err(perr)?;
            p.take_link(id).map_err(perr)?.try_into()
        }
        _ => unreachable!("the object only has cgroup programs"),
    };
    link.map_err(|e| KernelError::Io {
        what: format!("link of {name} is not an fd link"),
        source: std::io::Error::other(e.to_string()),
    })
}

/// Unpins (and so detaches) every link of an earlier instance's generation.
fn retire_generation(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        match PinnedLink::from_pin(&path) {
            Ok(link) => match link.unpin() {
                Ok(fd) => drop(fd),
                Err(e) => warn!(path = %path.display(), error = %e, "cannot unpin stale link"),
            },
            Err(e) => {
                debug!(path = %path.display(), error = %e, "stale pin is not a link; removing");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => info!(dir = %dir.display(), "retired links of a previous agent instance"),
        Err(e) => warn!(dir = %dir.display(), error = %e, "cannot remove stale pin directory"),
    }
}

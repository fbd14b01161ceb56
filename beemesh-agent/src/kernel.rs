//! The only module that touches aya: loads the embedded kernel programs, attaches them to
//! the agent's cgroup2 subtree, pins their links so enforcement outlives a crash, and
//! exposes typed writers for the maps. Owned by the agent actor (`app`).

mod flows;
mod loader;
mod services;
mod slots;

pub use flows::{FlowReader, LogReader};
pub use loader::{Kernel, KernelOptions};
pub use services::{Captured, ServiceMaps};
pub use slots::{SlotContents, SlotWriter};

/// Errors from loading, attaching and updating the kernel side.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("pinning under {path}: {source}")]
    Pin {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl KernelError {
    fn map(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> Self {
        move |source| Self::Map { name, source }
    }
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

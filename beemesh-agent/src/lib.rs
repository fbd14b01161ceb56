//! beemesh host agent: loads the kernel programs, keeps workload identities and enforces
//! identity policy from policy.d, live. `main.rs` is the CLI entry; `app` wires the rest.

pub mod api;
pub mod app;
pub mod authz;
pub mod cli;
pub mod config;
pub mod flows;
pub mod identity;
pub mod image;
pub mod kernel;
pub mod manifest;
pub mod mesh;
pub mod pod;
pub mod policy;
pub mod sockpath;
pub mod state;
pub mod sys;
pub mod tunnel;
pub mod workload;
pub mod yamldoc;

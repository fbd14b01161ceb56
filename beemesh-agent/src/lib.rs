//! beemesh host agent: loads the kernel programs, keeps workload identities and enforces
//! identity policy from policy.d. `main.rs` is the CLI; everything else lives here.

pub mod kernel;
pub mod sys;

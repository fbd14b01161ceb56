//! beemesh's replicated cluster state, sans-IO: every host holds a [`Replica`] of all mesh
//! objects (versioned by a hybrid logical clock, last writer wins per key, deletions kept as
//! tombstones for a while), spread by gossip and repaired by anti-entropy. The agent's swarm
//! loop drives it with time and messages and persists what changes; [`sim`] drives many of
//! them over a faulty simulated network. The design is in `docs/state.md`.

pub mod liveness;
pub mod msg;
pub mod object;
pub mod replica;
pub mod rng;
pub mod sched;
pub mod sim;

pub use liveness::{Detector, LiveMsg, LiveOutput, Liveness, LivenessConfig};
pub use msg::{Msg, MsgError};
pub use object::{Clock, Digest, Key, Object, ObjectError, Stamp, Version};
pub use replica::{Config, Output, Replica, ReplicaError, Snapshot, Stats, WriteId};

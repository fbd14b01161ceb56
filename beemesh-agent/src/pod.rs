//! Pods. `lifecycle` is the sans-IO core (restart policy, back-off, termination deadlines,
//! phase), driven with time passed in; the runtime that spawns containers in namespaces with
//! slirp4netns is its driver (issue 3, in progress).

pub mod dns;
pub mod init;
pub mod lifecycle;
pub mod logs;
pub mod net;
pub mod probe;
pub mod proto;
pub mod rootfs;
pub mod sandbox;
pub mod seccomp;
pub mod security;
pub mod spec;
pub mod userns;

//! The mesh of hosts: how peers prove membership ([`attest`]) and the libp2p swarm that carries
//! gossip and requests between them ([`swarm`]).

pub mod attest;
pub mod swarm;

//! The mesh of hosts: host credentials and peer attestation ([`trust`]), the interface the
//! swarm uses to attest peers ([`attest`]), and the libp2p swarm that carries gossip and
//! requests between them ([`swarm`]).

pub mod attest;
pub mod swarm;
pub mod trust;

//! The mesh of hosts: host credentials and peer attestation ([`trust`]), and the interface
//! the swarm uses to attest peers ([`attest`]).

pub mod attest;
pub mod trust;

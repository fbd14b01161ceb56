//! The agent's DNS answers for pods, sans-IO (wire format: hickory-proto): Services by
//! `NAME.NS.svc` and `NAME.NS.svc.cluster.local` (a ClusterIP Service's address; a headless
//! Service's pods), StatefulSet pods by `HOST.SERVICE.NS.svc[.cluster.local]`. A name under
//! the cluster's domain that names nothing is NXDOMAIN, answered with authority; every other
//! name is the host's resolvers' to answer ([`Answer::Forward`]). The records come from the
//! cluster state ([`Records`]); the driver owns the socket.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};

/// The cluster's DNS domain, as Kubernetes names it by default.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// How long answers may be cached: endpoints move when pods do.
const TTL: u32 = 5;

/// What the mesh's names resolve to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Records {
    /// (namespace, Service) -> its addresses: a cluster IP, or a headless Service's pods.
    services: BTreeMap<(String, String), Vec<Ipv4Addr>>,
    /// (namespace, Service, hostname) -> a pod's address (`spec.hostname` + `spec.subdomain`).
    pods: BTreeMap<(String, String, String), Ipv4Addr>,
}

impl Records {
    /// Service `name` in `namespace` resolves to `addrs` (empty: it exists, with no address
    /// yet).
    pub fn add_service(&mut self, namespace: &str, name: &str, addrs: Vec<Ipv4Addr>) {
        self.services.insert((namespace.to_ascii_lowercase(), name.to_ascii_lowercase()), addrs);
    }

    /// The pod with `hostname` under Service `service` (its `subdomain`) resolves to `addr`.
    pub fn add_pod(&mut self, namespace: &str, service: &str, hostname: &str, addr: Ipv4Addr) {
        let key =
            (namespace.to_ascii_lowercase(), service.to_ascii_lowercase(), hostname.to_ascii_lowercase());
        self.pods.insert(key, addr);
    }

    fn namespaces(&self) -> BTreeSet<&str> {
        self.services.keys().map(|(ns, _)| ns.as_str()).collect()
    }
}

/// What to do with a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Not the mesh's name: ask the host's resolvers.
    Forward,
}

/// A query that cannot be answered at all (not even with an error): drop it.
#[derive(Debug, thiserror::Error)]
#[error("not a DNS message: {0}")]
pub struct DnsError(String);

/// What a name under the mesh's zones is.
enum Found<'a> {
    Addrs(&'a [Ipv4Addr]),
    One(Ipv4Addr),
    Nothing,
}

/// Answers `query` (a DNS message as received) from `records`.
pub fn answer(query: &[u8], records: &Records) -> Result<Answer, DnsError> {
    let msg = Message::from_vec(query).map_err(|e| DnsError(e.to_string()))?;
    if msg.message_type() != MessageType::Query {
        return Err(DnsError("a response, not a query".into()));
    }
    let reply = |code: ResponseCode, answers: Vec<Record>| -> Result<Answer, DnsError> {
        let mut r = Message::new();
        r.set_id(msg.id())
            .set_message_type(MessageType::Response)
            .set_op_code(msg.op_code())
            .set_authoritative(code != ResponseCode::FormErr && code != ResponseCode::NotImp)
            .set_recursion_desired(msg.recursion_desired())
            .set_recursion_available(true)
            .set_response_code(code);
        r.add_queries(msg.queries().to_vec());
        r.add_answers(answers);
        r.to_vec().map(Answer::Reply).map_err(|e| DnsError(e.to_string()))
    };
    if msg.op_code() != OpCode::Query {
        return reply(ResponseCode::NotImp, Vec::new());
    }
    let [q] = msg.queries() else { return reply(ResponseCode::FormErr, Vec::new()) };
    let name = q.name().to_lowercase();
    let labels: Vec<String> = name.iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect();
    let Some(found) = lookup(&labels, records) else { return Ok(Answer::Forward) };
    let addrs: Vec<Ipv4Addr> = match found {
        Found::Addrs(a) => a.to_vec(),
        Found::One(a) => vec![a],
        Found::Nothing => return reply(ResponseCode::NXDomain, Vec::new()),
    };
    // The name exists: A records for A (and ANY) queries, none for other types (NODATA).
    let answers = match q.query_type() {
        RecordType::A | RecordType::ANY => {
            addrs.into_iter().map(|a| Record::from_rdata(q.name().clone(), TTL, RData::A(A(a)))).collect()
        }
        _ => Vec::new(),
    };
    reply(ResponseCode::NoError, answers)
}

/// What `labels` (lowercase, without the root) name under the mesh's zones, or `None` for a
/// name outside them.
fn lookup<'a>(labels: &[String], records: &'a Records) -> Option<Found<'a>> {
    let domain: Vec<&str> = CLUSTER_DOMAIN.split('.').collect();
    let rest: Vec<&str> = labels.iter().map(String::as_str).collect();
    // `...svc.cluster.local`, `...svc`, or anything else under `cluster.local`.
    let (inner, in_domain) = match rest.strip_suffix(domain.as_slice()) {
        Some(inner) => (inner, true),
        None => (rest.as_slice(), false),
    };
    let Some(inner) = inner.strip_suffix(&["svc"]) else {
        return in_domain.then_some(Found::Nothing);
    };
    let found = match inner {
        [name, ns] => records.services.get(&(ns.to_string(), name.to_string())).map(|a| Found::Addrs(a)),
        [host, svc, ns] => {
            records.pods.get(&(ns.to_string(), svc.to_string(), host.to_string())).map(|a| Found::One(*a))
        }
        _ => None,
    };
    match found {
        Some(f) => Some(f),
        // `NAME.NS.svc` of a namespace the mesh has no Service in may be a real domain: only
        // under the cluster's domain, or in a namespace of ours, is a miss ours to answer.
        None if in_domain || inner.last().is_some_and(|ns| records.namespaces().contains(ns)) => {
            Some(Found::Nothing)
        }
        None => None,
    }
}

#[cfg(test)]
mod tests;

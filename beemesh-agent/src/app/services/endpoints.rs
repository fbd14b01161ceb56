//! Service endpoints, sans-IO: which pods of the mesh serve each Service port, read from the
//! cluster state (Services, Pods and the statuses their hosts publish). Every host computes
//! the same table from the same state; `app::forward` installs it in the kernel's capture
//! maps and forwards captured connections to it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use beemesh_common::{PROTO_TCP, PROTO_UDP};

use crate::app::cluster::pods::{placement, PodReport};

/// A pod serving a Service port: where it runs and the port it listens on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    /// The node name of the host that runs it.
    pub node: String,
    /// The pod's port (the Service port's `targetPort`, a named port resolved).
    pub port: u16,
}

/// One TCP or UDP port of a Service with a cluster IP, and its ready backends in a stable
/// order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub namespace: String,
    pub service: String,
    pub ip: Ipv4Addr,
    pub port: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
    /// A NodePort Service's port on every host's addresses.
    pub node_port: Option<u16>,
    pub backends: Vec<Backend>,
    /// `internalTrafficPolicy: Local`: a connection to the cluster IP goes only to the
    /// backends on the host it starts on (none there: refused).
    pub internal_local: bool,
    /// `externalTrafficPolicy: Local`: a connection to the node port goes only to the
    /// backends on the host it enters.
    pub external_local: bool,
}

impl ServicePort {
    /// The backends a connection to the cluster IP from a workload of `node` may go to.
    pub fn serving(&self, node: &str) -> Vec<Backend> {
        local_if(&self.backends, self.internal_local, node)
    }

    /// The backends a connection entering `node` by the node port may go to.
    pub fn serving_node_port(&self, node: &str) -> Vec<Backend> {
        local_if(&self.backends, self.external_local, node)
    }
}

fn local_if(backends: &[Backend], local: bool, node: &str) -> Vec<Backend> {
    backends.iter().filter(|b| !local || b.node == node).cloned().collect()
}

/// The endpoints of every Service port with a cluster IP (`services`: namespace, name,
/// Service), from the stored `pods` and their hosts' `reports` (by uid). A pod is an
/// endpoint when its labels match the Service's selector in its namespace, the host it is
/// placed on reports it with every container ready, and it is not being deleted. Services
/// without a selector, headless and ExternalName Services, and ports other than TCP and UDP
/// capture nothing.
pub fn compute(
    services: &[(String, String, Service)],
    pods: &[Pod],
    reports: &BTreeMap<String, PodReport>,
) -> Vec<ServicePort> {
    let (ready, running) = candidates(pods, reports);
    let mut out = Vec::new();
    for (namespace, name, svc) in services {
        let Some(spec) = svc.spec.as_ref() else { continue };
        let Some(ip) = super::cluster_ip(svc).map(Ipv4Addr::from) else { continue };
        if spec.selector.as_ref().is_none_or(|s| s.is_empty()) {
            continue;
        }
        let selected = selected(svc, namespace, if publishes_not_ready(svc) { &running } else { &ready });
        for port in spec.ports.iter().flatten() {
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            let proto = match protocol {
                "TCP" => PROTO_TCP,
                "UDP" => PROTO_UDP,
                _ => continue,
            };
            let Ok(service_port) = u16::try_from(port.port) else { continue };
            let mut backends: Vec<Backend> = selected
                .iter()
                .filter_map(|pod| {
                    let target = target_port(pod, port.target_port.as_ref(), service_port, protocol)?;
                    Some(backend(pod, target))
                })
                .collect();
            backends.sort();
            let node_port = port.node_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0);
            out.push(ServicePort {
                namespace: namespace.clone(),
                service: name.clone(),
                ip,
                port: service_port,
                proto,
                node_port: node_port.filter(|_| spec.type_.as_deref() == Some("NodePort")),
                backends,
                internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
                external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
            });
        }
    }
    out
}

/// The pods of `ready` in `namespace` that `svc`'s selector selects (none without a
/// selector).
pub fn selected<'a>(svc: &Service, namespace: &str, ready: &[&'a Pod]) -> Vec<&'a Pod> {
    let selector = svc.spec.as_ref().and_then(|s| s.selector.as_ref()).filter(|s| !s.is_empty());
    let Some(selector) = selector else { return Vec::new() };
    ready
        .iter()
        .copied()
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
        .filter(|p| {
            let labels = p.metadata.labels.as_ref();
            selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .collect()
}

/// Whether the host `pod` is placed on reports it with every container ready, and it is not
/// being deleted.
pub fn is_ready(pod: &Pod, reports: &BTreeMap<String, PodReport>) -> bool {
    is_running(pod, reports) && reports.get(placement(pod).1).is_some_and(|r| r.all_ready)
}

/// Whether the host `pod` is placed on reports it, ready or not, and it is not being
/// deleted: an endpoint of a Service with `publishNotReadyAddresses`.
pub fn is_running(pod: &Pod, reports: &BTreeMap<String, PodReport>) -> bool {
    let (node, uid) = placement(pod);
    pod.metadata.deletion_timestamp.is_none()
        && !node.is_empty()
        && reports.get(uid).is_some_and(|r| r.node == node)
}

/// `pods` that are ready, and those that run (ready or not).
pub fn candidates<'a>(
    pods: &'a [Pod],
    reports: &BTreeMap<String, PodReport>,
) -> (Vec<&'a Pod>, Vec<&'a Pod>) {
    let running: Vec<&Pod> = pods.iter().filter(|p| is_running(p, reports)).collect();
    let ready = running.iter().copied().filter(|p| is_ready(p, reports)).collect();
    (ready, running)
}

/// `spec.publishNotReadyAddresses`: the Service's endpoints and DNS answers include its pods
/// that are not ready (a StatefulSet's peers finding each other before they are ready).
pub fn publishes_not_ready(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.publish_not_ready_addresses) == Some(true)
}

fn backend(pod: &Pod, port: u16) -> Backend {
    let (node, uid) = placement(pod);
    Backend {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        pod: pod.metadata.name.clone().unwrap_or_default(),
        uid: uid.to_owned(),
        node: node.to_owned(),
        port,
    }
}

/// The port `target` names on `pod`: a number as it is, a name looked up among its
/// containers' ports of the Service port's `protocol` (a pod without that name is no
/// endpoint of the port, as in Kubernetes); none means the Service port itself.
fn target_port(pod: &Pod, target: Option<&IntOrString>, service_port: u16, protocol: &str) -> Option<u16> {
    match target {
        None => Some(service_port),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok().filter(|p| *p != 0),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<u16>() {
                return Some(n);
            }
            let containers = pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
            containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .and_then(|p| u16::try_from(p.container_port).ok())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: &str, labels: &str, ports: &str) -> Pod {
        let yaml = format!(
            "metadata: {{name: {name}, namespace: default, uid: u-{name}, labels: {labels}}}\n\
             spec: {{nodeName: {node}, containers: [{{name: c, image: x, ports: {ports}}}]}}\n"
        );
        serde_yaml::from_str(&yaml).expect("pod")
    }

    fn report(uid: &str, node: &str, ready: bool) -> (String, PodReport) {
        let r = PodReport {
            uid: uid.to_owned(),
            namespace: "default".into(),
            name: String::new(),
            node: node.to_owned(),
            ready: String::new(),
            status: "Running".into(),
            restarts: 0,
            identity: String::new(),
            all_ready: ready,
            pod_status: serde_json::Value::Null,
            annotations: BTreeMap::new(),
        };
        (uid.to_owned(), r)
    }

    fn service(yaml: &str) -> (String, String, Service) {
        let svc: Service = serde_yaml::from_str(yaml).expect("service");
        ("default".into(), svc.metadata.name.clone().unwrap_or_default(), svc)
    }

    #[test]
    fn ready_selected_pods_are_the_endpoints_with_named_ports_resolved() {
        let pods = vec![
            pod("a", "h1", "{app: web}", "[{name: http, containerPort: 8080}]"),
            pod("b", "h2", "{app: web}", "[{name: http, containerPort: 9090}]"),
            pod("c", "h2", "{app: web}", "[]"),
            pod("d", "h1", "{app: db}", "[{name: http, containerPort: 1}]"),
            pod("e", "h3", "{app: web}", "[{name: http, containerPort: 7}]"),
        ];
        let reports: BTreeMap<_, _> = [
            report("u-a", "h1", true),
            report("u-b", "h2", true),
            report("u-c", "h2", true),
            report("u-d", "h1", true),
            // Not ready, and another report from a host it is no longer placed on.
            report("u-e", "h1", true),
        ]
        .into_iter()
        .collect();
        let services = [service(
            "metadata: {name: web}\nspec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80, targetPort: http}, {port: 81, targetPort: 8081}, {port: 53, protocol: UDP}]}",
        )];
        let table = compute(&services, &pods, &reports);
        assert_eq!(table.len(), 3, "{table:?}");
        let http: Vec<(&str, u16)> = table[0].backends.iter().map(|b| (b.pod.as_str(), b.port)).collect();
        assert_eq!(table[0].ip, Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!(
            http,
            [("a", 8080), ("b", 9090)],
            "c has no port named http; d is not selected; e is not ready"
        );
        let numbered: Vec<(&str, u16)> = table[1].backends.iter().map(|b| (b.pod.as_str(), b.port)).collect();
        assert_eq!(numbered, [("a", 8081), ("b", 8081), ("c", 8081)]);
        assert_eq!(table[0].backends[1].node, "h2");
        assert_eq!((table[2].port, table[2].proto), (53, PROTO_UDP));
        assert_eq!(table[2].backends.len(), 3);
        assert!(table[..2].iter().all(|sp| sp.proto == PROTO_TCP));
    }

    #[test]
    fn a_named_target_port_matches_a_container_port_of_the_same_protocol() {
        let pods = vec![
            pod(
                "a",
                "h1",
                "{app: dns}",
                "[{name: dns, containerPort: 5353, protocol: UDP}, {name: dns-tcp, containerPort: 5353}]",
            ),
            pod("b", "h1", "{app: dns}", "[{name: dns, containerPort: 53}]"),
        ];
        let reports: BTreeMap<_, _> =
            [report("u-a", "h1", true), report("u-b", "h1", true)].into_iter().collect();
        let services = [service(
            "metadata: {name: dns}\nspec: {clusterIP: 10.96.0.10, selector: {app: dns}, ports: [{port: 53, protocol: UDP, targetPort: dns}, {port: 53, targetPort: dns-tcp}]}",
        )];
        let table = compute(&services, &pods, &reports);
        let udp: Vec<(&str, u16)> = table[0].backends.iter().map(|b| (b.pod.as_str(), b.port)).collect();
        assert_eq!(udp, [("a", 5353)], "b's port named dns is TCP");
        let tcp: Vec<(&str, u16)> = table[1].backends.iter().map(|b| (b.pod.as_str(), b.port)).collect();
        assert_eq!(tcp, [("a", 5353)]);
    }

    #[test]
    fn headless_selectorless_and_unaddressed_services_capture_nothing() {
        let pods = vec![pod("a", "h1", "{app: web}", "[]")];
        let reports: BTreeMap<_, _> = [report("u-a", "h1", true)].into_iter().collect();
        let services = [
            service(
                "metadata: {name: h}\nspec: {clusterIP: None, selector: {app: web}, ports: [{port: 80}]}",
            ),
            service("metadata: {name: s}\nspec: {clusterIP: 10.96.0.11, ports: [{port: 80}]}"),
            service("metadata: {name: n}\nspec: {selector: {app: web}, ports: [{port: 80}]}"),
        ];
        assert!(compute(&services, &pods, &reports).is_empty());
    }

    #[test]
    fn publish_not_ready_addresses_makes_running_pods_endpoints_before_they_are_ready() {
        let pods = vec![
            pod("a", "h1", "{app: db}", "[]"),
            pod("b", "h2", "{app: db}", "[]"),
            // Placed, but its host has not reported it yet.
            pod("c", "h2", "{app: db}", "[]"),
        ];
        let reports: BTreeMap<_, _> =
            [report("u-a", "h1", true), report("u-b", "h2", false)].into_iter().collect();
        let plain = service(
            "metadata: {name: db}\nspec: {clusterIP: 10.96.0.9, selector: {app: db}, ports: [{port: 5432}]}",
        );
        let published = service(
            "metadata: {name: peers}\nspec: {clusterIP: 10.96.0.10, publishNotReadyAddresses: true, selector: {app: db}, ports: [{port: 5432}]}",
        );
        let table = compute(&[plain, published], &pods, &reports);
        let uids = |i: usize| table[i].backends.iter().map(|b| b.uid.clone()).collect::<Vec<_>>();
        assert_eq!(uids(0), ["u-a"]);
        assert_eq!(uids(1), ["u-a", "u-b"]);
    }

    #[test]
    fn local_traffic_policies_keep_connections_on_the_host_they_enter() {
        let pods = vec![pod("a", "h1", "{app: web}", "[]"), pod("b", "h2", "{app: web}", "[]")];
        let reports: BTreeMap<_, _> =
            [report("u-a", "h1", true), report("u-b", "h2", true)].into_iter().collect();
        let spec = "selector: {app: web}, ports: [{port: 80, nodePort: 30080}]";
        let services = [
            service(&format!("metadata: {{name: spread}}\nspec: {{clusterIP: 10.96.0.9, type: NodePort, {spec}}}")),
            service(&format!(
                "metadata: {{name: local}}\nspec: {{clusterIP: 10.96.0.10, type: NodePort, internalTrafficPolicy: Local, externalTrafficPolicy: Local, {spec}}}"
            )),
        ];
        let table = compute(&services, &pods, &reports);
        let pods_of = |b: Vec<Backend>| b.into_iter().map(|b| b.pod).collect::<Vec<_>>();
        // Cluster (the default): every endpoint of the mesh, from any host.
        assert_eq!(pods_of(table[0].serving("h1")), ["a", "b"]);
        assert_eq!(pods_of(table[0].serving_node_port("h3")), ["a", "b"]);
        // Local: only the entering host's; a host without one refuses.
        assert_eq!(pods_of(table[1].serving("h1")), ["a"]);
        assert_eq!(pods_of(table[1].serving_node_port("h2")), ["b"]);
        assert!(table[1].serving("h3").is_empty() && table[1].serving_node_port("h3").is_empty());
    }
}

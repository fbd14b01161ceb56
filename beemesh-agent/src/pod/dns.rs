//! A pod's name resolution, as the kubelet sets it up: `/etc/resolv.conf` from `dnsPolicy`
//! and `dnsConfig`, `/etc/hosts` with the pod's own names and `hostAliases`. Pure: the
//! host's resolv.conf is passed in.
//!
//! Every policy but `None` names slirp4netns' resolver (10.0.2.3), whose queries the
//! kernel hands to the agent's resolver (`app::dns`): cluster names are answered there,
//! others forwarded to the host's resolvers. A `None` pod's queries go to the nameservers
//! its `dnsConfig` names, under its egress policy, as they would in Kubernetes.

use k8s_openapi::api::core::v1::{Pod, PodSpec};

use crate::app::dns::CLUSTER_DOMAIN;
use crate::identity::is_dns_subdomain;

/// slirp4netns' resolver inside every pod.
pub const SLIRP_DNS: &str = "10.0.2.3";
/// The pod's own address inside slirp4netns.
const POD_ADDR: &str = "10.0.2.100";
/// As Kubernetes: at most 3 nameservers, 32 search domains of 2048 characters in all.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;
const MAX_SEARCH_CHARS: usize = 2048;

/// `spec.dnsPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// `ClusterFirst` (the default; `ClusterFirstWithHostNet` is the same for a pod without
    /// the host's network, which beemesh never gives).
    #[default]
    ClusterFirst,
    /// `Default`: the host's search domains and options (resolved through the agent).
    Host,
    /// `None`: only what `dnsConfig` says.
    None,
}

/// What a pod's resolv.conf is made of.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsPlan {
    pub policy: Policy,
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    /// `name` or `name:value`, in order.
    pub options: Vec<(String, Option<String>)>,
    /// `hostAliases`: an address and its names, one /etc/hosts line each.
    pub host_aliases: Vec<(String, Vec<String>)>,
    /// `spec.subdomain`: the pod's fully qualified name in /etc/hosts.
    pub subdomain: Option<String>,
}

impl DnsPlan {
    pub fn of(pod: &Pod) -> Self {
        let Some(spec) = pod.spec.as_ref() else { return Self::default() };
        let policy = match spec.dns_policy.as_deref() {
            Some("Default") => Policy::Host,
            Some("None") => Policy::None,
            _ => Policy::ClusterFirst,
        };
        let config = spec.dns_config.as_ref();
        Self {
            policy,
            nameservers: config.and_then(|c| c.nameservers.clone()).unwrap_or_default(),
            searches: config.and_then(|c| c.searches.clone()).unwrap_or_default(),
            options: (config.and_then(|c| c.options.as_deref()).unwrap_or_default().iter())
                .filter_map(|o| Some((o.name.clone()?, o.value.clone())))
                .collect(),
            host_aliases: (spec.host_aliases.iter().flatten())
                .map(|a| (a.ip.clone(), a.hostnames.clone().unwrap_or_default()))
                .collect(),
            subdomain: spec.subdomain.clone().filter(|s| !s.is_empty()),
        }
    }

    /// The pod's /etc/resolv.conf (`host`: the host's), as the kubelet merges it: the
    /// policy's nameservers, search domains and options first, then `dnsConfig`'s
    /// (duplicates dropped, an option of the same name replaced), cut to Kubernetes' limits.
    pub fn resolv_conf(&self, namespace: &str, host: &str) -> String {
        let host = HostResolv::parse(host);
        let (mut servers, mut searches, mut options) = match self.policy {
            Policy::ClusterFirst => {
                let d = CLUSTER_DOMAIN;
                let mut searches = vec![format!("{namespace}.svc.{d}"), format!("svc.{d}"), d.to_owned()];
                searches.extend(host.searches);
                (vec![SLIRP_DNS.to_owned()], searches, vec![("ndots".to_owned(), Some("5".to_owned()))])
            }
            Policy::Host => (vec![SLIRP_DNS.to_owned()], host.searches, host.options),
            Policy::None => (Vec::new(), Vec::new(), Vec::new()),
        };
        push_new(&mut servers, &self.nameservers);
        servers.truncate(MAX_NAMESERVERS);
        push_new(&mut searches, &self.searches);
        let mut chars = 0;
        searches.retain(|s| {
            chars += s.len() + 1;
            chars <= MAX_SEARCH_CHARS
        });
        searches.truncate(MAX_SEARCHES);
        for (name, value) in &self.options {
            match options.iter_mut().find(|(n, _)| n == name) {
                Some(o) => o.1 = value.clone(),
                None => options.push((name.clone(), value.clone())),
            }
        }
        let mut out = String::new();
        if !searches.is_empty() {
            out.push_str(&format!("search {}\n", searches.join(" ")));
        }
        for s in &servers {
            out.push_str(&format!("nameserver {s}\n"));
        }
        if !options.is_empty() {
            let opts: Vec<String> = (options.iter())
                .map(|(n, v)| v.as_ref().map_or_else(|| n.clone(), |v| format!("{n}:{v}")))
                .collect();
            out.push_str(&format!("options {}\n", opts.join(" ")));
        }
        out
    }

    /// The pod's /etc/hosts: localhost, the pod's own names, then its `hostAliases`.
    pub fn hosts(&self, hostname: &str, namespace: &str) -> String {
        let own = match &self.subdomain {
            Some(sub) => format!("{hostname}.{sub}.{namespace}.svc.{CLUSTER_DOMAIN}\t{hostname}"),
            None => hostname.to_owned(),
        };
        let mut out =
            format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{POD_ADDR}\t{own}\n");
        if !self.host_aliases.is_empty() {
            out.push_str("\n# Entries added by HostAliases.\n");
            for (ip, names) in &self.host_aliases {
                out.push_str(&format!("{ip}\t{}\n", names.join("\t")));
            }
        }
        out
    }

    /// Whether the pod's queries go where it sends them (`None`) rather than to the agent.
    pub fn own_resolvers(&self) -> bool {
        self.policy == Policy::None
    }
}

fn push_new(list: &mut Vec<String>, more: &[String]) {
    for m in more {
        if !list.contains(m) {
            list.push(m.clone());
        }
    }
}

/// What a pod takes from the host's resolv.conf.
struct HostResolv {
    searches: Vec<String>,
    options: Vec<(String, Option<String>)>,
}

impl HostResolv {
    fn parse(text: &str) -> Self {
        let mut r = Self { searches: Vec::new(), options: Vec::new() };
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                // The last `search` or `domain` line wins, as in the resolver.
                Some("search" | "domain") => {
                    r.searches = words.filter(|w| !w.starts_with(['#', ';'])).map(str::to_owned).collect()
                }
                Some("options") => r.options.extend(words.map(|w| match w.split_once(':') {
                    Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                    None => (w.to_owned(), None),
                })),
                _ => {}
            }
        }
        r
    }
}

/// Kubernetes' checks of `dnsPolicy`, `dnsConfig` and `hostAliases`: the field and what is
/// wrong with it.
pub fn validate(spec: &PodSpec) -> Result<(), (String, String)> {
    let err = |f: &str, m: String| Err((f.to_owned(), m));
    let policy = spec.dns_policy.as_deref();
    if let Some(p) = policy {
        if !matches!(p, "ClusterFirst" | "ClusterFirstWithHostNet" | "Default" | "None") {
            return err(
                "spec.dnsPolicy",
                format!("{p:?}: expected ClusterFirst, ClusterFirstWithHostNet, Default or None"),
            );
        }
    }
    let config = spec.dns_config.as_ref();
    let servers = config.and_then(|c| c.nameservers.as_deref()).unwrap_or_default();
    if policy == Some("None") && servers.is_empty() {
        return err("spec.dnsConfig.nameservers", "dnsPolicy None needs at least one nameserver".into());
    }
    if servers.len() > MAX_NAMESERVERS {
        return err("spec.dnsConfig.nameservers", format!("at most {MAX_NAMESERVERS} nameservers"));
    }
    for (i, s) in servers.iter().enumerate() {
        if s.parse::<std::net::IpAddr>().is_err() {
            return err(&format!("spec.dnsConfig.nameservers[{i}]"), format!("{s:?} is not an IP address"));
        }
    }
    let searches = config.and_then(|c| c.searches.as_deref()).unwrap_or_default();
    if searches.len() > MAX_SEARCHES {
        return err("spec.dnsConfig.searches", format!("at most {MAX_SEARCHES} search domains"));
    }
    if searches.iter().map(|s| s.len() + 1).sum::<usize>() > MAX_SEARCH_CHARS {
        return err("spec.dnsConfig.searches", format!("at most {MAX_SEARCH_CHARS} characters in all"));
    }
    for (i, s) in searches.iter().enumerate() {
        if !is_dns_subdomain(s.strip_suffix('.').unwrap_or(s)) {
            return err(&format!("spec.dnsConfig.searches[{i}]"), format!("{s:?} is not a DNS name"));
        }
    }
    let options = config.and_then(|c| c.options.as_deref()).unwrap_or_default();
    for (i, o) in options.iter().enumerate() {
        if o.name.as_deref().is_none_or(str::is_empty) {
            return err(&format!("spec.dnsConfig.options[{i}].name"), "an option needs a name".into());
        }
    }
    for (i, a) in spec.host_aliases.iter().flatten().enumerate() {
        if a.ip.parse::<std::net::IpAddr>().is_err() {
            return err(&format!("spec.hostAliases[{i}].ip"), format!("{:?} is not an IP address", a.ip));
        }
        for (j, h) in a.hostnames.iter().flatten().enumerate() {
            if !is_dns_subdomain(h) {
                return err(
                    &format!("spec.hostAliases[{i}].hostnames[{j}]"),
                    format!("{h:?} is not a DNS name"),
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: &str) -> Pod {
        let yaml = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers: [{{name: c, image: a:1}}]\n{spec}");
        serde_yaml::from_str(&yaml).expect("pod")
    }

    const HOST: &str =
        "# generated\nnameserver 127.0.0.53\nsearch corp.example lab.example\noptions edns0 trust-ad\n";

    #[test]
    fn cluster_first_puts_the_cluster_domains_before_the_hosts_and_merges_dns_config() {
        let plain = DnsPlan::of(&pod(""));
        assert_eq!(
            plain.resolv_conf("shop", HOST),
            "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example lab.example\n\
             nameserver 10.0.2.3\noptions ndots:5\n"
        );
        let merged = DnsPlan::of(&pod(
            "  dnsConfig:\n    nameservers: [10.0.2.3, 192.0.2.53]\n    searches: [extra.example, svc.cluster.local]\n    \
             options: [{name: ndots, value: \"2\"}, {name: edns0}]\n",
        ));
        assert_eq!(
            merged.resolv_conf("shop", ""),
            "search shop.svc.cluster.local svc.cluster.local cluster.local extra.example\n\
             nameserver 10.0.2.3\nnameserver 192.0.2.53\noptions ndots:2 edns0\n"
        );
        assert!(!merged.own_resolvers());
    }

    #[test]
    fn default_takes_the_hosts_searches_and_options_through_the_agent() {
        let plan = DnsPlan::of(&pod("  dnsPolicy: Default\n"));
        assert_eq!(
            plan.resolv_conf("shop", HOST),
            "search corp.example lab.example\nnameserver 10.0.2.3\noptions edns0 trust-ad\n"
        );
        let with_host_net = DnsPlan::of(&pod("  dnsPolicy: ClusterFirstWithHostNet\n"));
        assert_eq!(with_host_net.policy, Policy::ClusterFirst);
    }

    #[test]
    fn none_is_only_dns_config_and_its_queries_go_where_it_says() {
        let plan = DnsPlan::of(&pod(
            "  dnsPolicy: None\n  dnsConfig:\n    nameservers: [192.0.2.53]\n    searches: [a.example]\n",
        ));
        assert_eq!(plan.resolv_conf("shop", HOST), "search a.example\nnameserver 192.0.2.53\n");
        assert!(plan.own_resolvers());
    }

    #[test]
    fn hosts_hold_the_pods_names_and_its_aliases() {
        let plan = DnsPlan::of(&pod(
            "  subdomain: db\n  hostAliases:\n  - {ip: 192.0.2.7, hostnames: [foo.local, bar.local]}\n  - {ip: \"2001:db8::1\", hostnames: [six.local]}\n",
        ));
        assert_eq!(
            plan.hosts("db-0", "shop"),
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             10.0.2.100\tdb-0.db.shop.svc.cluster.local\tdb-0\n\n# Entries added by HostAliases.\n\
             192.0.2.7\tfoo.local\tbar.local\n2001:db8::1\tsix.local\n"
        );
        assert_eq!(
            DnsPlan::of(&pod("")).hosts("p", "default"),
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n10.0.2.100\tp\n"
        );
    }

    #[test]
    fn bad_dns_fields_are_named() {
        let bad = |spec: &str| validate(pod(spec).spec.as_ref().expect("spec")).expect_err(spec).0;
        assert_eq!(bad("  dnsPolicy: Cluster\n"), "spec.dnsPolicy");
        assert_eq!(bad("  dnsPolicy: None\n"), "spec.dnsConfig.nameservers");
        assert_eq!(
            bad("  dnsConfig: {nameservers: [1.1.1.1, 1.0.0.1, 8.8.8.8, 8.8.4.4]}\n"),
            "spec.dnsConfig.nameservers"
        );
        assert_eq!(bad("  dnsConfig: {nameservers: [dns.example]}\n"), "spec.dnsConfig.nameservers[0]");
        assert_eq!(
            bad("  dnsConfig: {searches: [ok.example, \"bad_domain\"]}\n"),
            "spec.dnsConfig.searches[1]"
        );
        assert_eq!(bad("  dnsConfig: {options: [{value: \"1\"}]}\n"), "spec.dnsConfig.options[0].name");
        assert_eq!(bad("  hostAliases: [{ip: 300.1.1.1, hostnames: [a]}]\n"), "spec.hostAliases[0].ip");
        assert_eq!(
            bad("  hostAliases: [{ip: 1.2.3.4, hostnames: [a, \"-b\"]}]\n"),
            "spec.hostAliases[0].hostnames[1]"
        );
        let fine = pod("  dnsPolicy: None\n  dnsConfig: {nameservers: [\"2001:db8::53\"], searches: [a.example.], options: [{name: rotate}]}\n  hostAliases: [{ip: 1.2.3.4, hostnames: [a.b]}]\n");
        assert_eq!(validate(fine.spec.as_ref().expect("spec")), Ok(()));
    }
}

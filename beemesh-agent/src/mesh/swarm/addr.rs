//! Bootstrap addresses: `HOST:PORT` (a QUIC address on UDP, DNS names resolved at each dial)
//! or a multiaddr, as given to `--bootstrap` and `mesh.bootstrap`.

use std::net::{IpAddr, SocketAddr};

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;

use super::SwarmError;

/// One `--bootstrap` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootstrapAddr {
    /// A full multiaddr, dialed as is.
    Multiaddr(Multiaddr),
    /// `HOST:PORT`: QUIC on UDP `PORT` of every address `HOST` resolves to.
    HostPort { host: String, port: u16 },
}

impl std::fmt::Display for BootstrapAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Multiaddr(a) => write!(f, "{a}"),
            Self::HostPort { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Self::HostPort { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl std::str::FromStr for BootstrapAddr {
    type Err = SwarmError;

    fn from_str(s: &str) -> Result<Self, SwarmError> {
        let bad = |why: &str| SwarmError::BadAddress { addr: s.to_string(), why: why.to_string() };
        let s = s.trim();
        if s.starts_with('/') {
            let a: Multiaddr = s.parse().map_err(|e: libp2p::multiaddr::Error| bad(&e.to_string()))?;
            return Ok(Self::Multiaddr(a));
        }
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(Self::HostPort { host: sa.ip().to_string(), port: sa.port() });
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("expected HOST:PORT or a multiaddr"))?;
        let port: u16 = port.parse().map_err(|_| bad("port is not a number from 1 to 65535"))?;
        if port == 0 {
            return Err(bad("port 0"));
        }
        if host.is_empty() || host.contains(':') || host.contains('/') {
            return Err(bad("bad host name (IPv6 addresses go in brackets: [::1]:4001)"));
        }
        Ok(Self::HostPort { host: host.to_string(), port })
    }
}

/// The QUIC multiaddr of `ip:port`.
pub fn quic_addr(ip: IpAddr, port: u16) -> Multiaddr {
    let ip = match ip {
        IpAddr::V4(v4) => Protocol::Ip4(v4),
        IpAddr::V6(v6) => Protocol::Ip6(v6),
    };
    Multiaddr::empty().with(ip).with(Protocol::Udp(port)).with(Protocol::QuicV1)
}

impl BootstrapAddr {
    /// The multiaddrs to dial now: a multiaddr as is, `HOST:PORT` through the resolver.
    pub async fn resolve(&self) -> Result<Vec<Multiaddr>, SwarmError> {
        match self {
            Self::Multiaddr(a) => Ok(vec![a.clone()]),
            Self::HostPort { host, port } => {
                if let Ok(ip) = host.parse::<IpAddr>() {
                    return Ok(vec![quic_addr(ip, *port)]);
                }
                let found = tokio::net::lookup_host((host.as_str(), *port))
                    .await
                    .map_err(|e| SwarmError::Resolve { addr: self.to_string(), source: e })?;
                let mut out: Vec<Multiaddr> = Vec::new();
                for sa in found {
                    let a = quic_addr(sa.ip(), sa.port());
                    if !out.contains(&a) {
                        out.push(a);
                    }
                }
                Ok(out)
            }
        }
    }
}

/// The listen addresses of a mesh port: all IPv4 addresses, QUIC on UDP.
pub fn default_listen(port: u16) -> Vec<Multiaddr> {
    vec![quic_addr(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), port)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_and_multiaddr_forms_parse() {
        let a: BootstrapAddr = "10.200.0.2:4001".parse().expect("ip:port");
        assert_eq!(a, BootstrapAddr::HostPort { host: "10.200.0.2".into(), port: 4001 });
        let a: BootstrapAddr = "[::1]:4001".parse().expect("[v6]:port");
        assert_eq!(a.to_string(), "[::1]:4001");
        let a: BootstrapAddr = "node-a.example:4001".parse().expect("name:port");
        assert_eq!(a.to_string(), "node-a.example:4001");
        let a: BootstrapAddr = "/ip4/10.0.0.1/udp/4001/quic-v1".parse().expect("multiaddr");
        assert_eq!(a.to_string(), "/ip4/10.0.0.1/udp/4001/quic-v1");
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        for (input, why) in [
            ("node-a", "HOST:PORT"),
            ("node-a:http", "port"),
            ("node-a:0", "port 0"),
            ("node-a:70000", "port"),
            (":4001", "host"),
            ("::1:4001", "brackets"),
            ("/ip4/nonsense", "/ip4/nonsense"),
        ] {
            let err = input.parse::<BootstrapAddr>().expect_err(input).to_string();
            assert!(err.contains(input) && err.contains(why), "{input}: {err}");
        }
    }

    #[tokio::test]
    async fn host_port_resolves_to_quic_multiaddrs() {
        let a: BootstrapAddr = "127.0.0.1:4001".parse().expect("parse");
        let addrs = a.resolve().await.expect("resolve");
        assert_eq!(addrs, vec!["/ip4/127.0.0.1/udp/4001/quic-v1".parse::<Multiaddr>().expect("ma")]);
        let a: BootstrapAddr = "localhost:4002".parse().expect("parse");
        let addrs = a.resolve().await.expect("resolve localhost");
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|m| m.to_string().ends_with("/udp/4002/quic-v1")), "{addrs:?}");
    }
}

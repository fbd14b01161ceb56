//! Tunnel benchmark, as root: two hosts (network namespaces on one bridge, 10.200.59.x), each
//! side on a thread of its own inside its host's namespace with a single-threaded runtime,
//! as an agent's data path would be. Every figure is a ratio against plain TCP on the same
//! veth pair, measured in the same run, rounds interleaved (median of the rounds):
//! (1) throughput of one QUIC stream between two tunnel endpoints (`beemesh_agent::tunnel`,
//! mutual TLS with a workload SVID and a host certificate, as agents run them) against one
//! TCP connection, with the process's CPU seconds per GB beside each; (2) 1-byte
//! request/response rate on one stream against one TCP connection; (3) new streams per
//! second (open, header, 1 byte each way, close) against new TCP connections per second.
//!
//! `--quick` runs one short round (CI proves it runs; not a measurement); `--profile` only the
//! tunnel throughput, for 10 s, and `--profile forwarded` only the forwarded throughput (to run
//! under `perf record`; the forwarded phase's threads are named `client`, `agent-h1`,
//! `agent-h2` and `server`, for `perf report --sort comm`, and it prints each one's CPU
//! seconds per GB: the agent threads' figures are steadier than the throughput between runs).

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use beemesh_agent::identity::svid::Authority;
use beemesh_agent::mesh::trust::{generate_keypair, issue};
use beemesh_agent::tunnel::splice;
use beemesh_agent::tunnel::{Endpoint, Proto, RecvStream, SendStream, StreamHeader, Target, TlsIdentity};
use beemesh_tests::lan::Lan;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SUBNET: u8 = 59;
const TD: &str = "beemesh.local";
const WORKLOAD: &str = "spiffe://beemesh.local/ns/bench/sa/client";
const TCP_PORT: u16 = 5401;
const QUIC_PORT: u16 = 5402;
const CHUNK: usize = 256 << 10;
/// The h1 agent's capture listener in the forwarded phase (on 127.0.0.1).
const FORWARD_PORT: u16 = 5403;
/// The forwarding agents' idle timeout: longer than any phase.
const IDLE: Duration = Duration::from_secs(3600);

/// What a measurement run sends or how long it lasts.
#[derive(Clone, Copy)]
struct Plan {
    seconds: f64,
    rounds: usize,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// CPU seconds this process has used (all threads).
fn cpu_seconds() -> f64 {
    beemesh_tests::cpu_seconds("self").unwrap_or(0.0)
}

/// The future a bench thread runs.
type Task<T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>>>>;

/// Runs `f` on a new thread inside network namespace `ns`, on a single-threaded runtime.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Task<T> + Send + 'static,
) -> std::thread::JoinHandle<Result<T>> {
    named_in_netns("bench", ns, f)
}

/// [`in_netns`] on a thread named `name` (what `perf report --sort comm` shows).
fn named_in_netns<T: Send + 'static>(
    name: &str,
    ns: &str,
    f: impl FnOnce() -> Task<T> + Send + 'static,
) -> std::thread::JoinHandle<Result<T>> {
    let path = format!("/run/netns/{ns}");
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let out = tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f());
            let cpu = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)?;
            let name = std::thread::current().name().unwrap_or("?").to_owned();
            THREAD_CPU.lock().expect("thread cpu").push((name, Duration::from(cpu).as_secs_f64()));
            out
        })
        .expect("spawn a bench thread")
}

/// Each bench thread's CPU time when it ended (user and system, not softirq work accounted
/// apart), for `--profile`.
static THREAD_CPU: std::sync::Mutex<Vec<(String, f64)>> = std::sync::Mutex::new(Vec::new());

fn joined_as<T>(what: &str, h: std::thread::JoinHandle<Result<T>>) -> Result<T> {
    h.join().map_err(|_| anyhow::anyhow!("{what}: bench thread panicked"))?.with_context(|| what.to_owned())
}

/// The two ends' tunnel identities under one root: host h2 accepts, a workload of h1 connects.
struct Identities {
    h1: TlsIdentity,
    h2: TlsIdentity,
    workload: TlsIdentity,
}

fn identities() -> Result<Identities> {
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let root = Authority::generate(TD, now, day)?;
    let host = |name: &str| -> Result<TlsIdentity> {
        let keypair = generate_keypair()?;
        let cert = issue::host_cert(&root, name, &keypair.public(), now, day)?;
        Ok(TlsIdentity::host(vec![cert], &keypair, vec![root.cert_der()], TD)?)
    };
    let ca = issue::workload_ca(&root, "h1", now, day)?;
    let svid = ca.issue(WORKLOAD, now, day)?;
    let workload = TlsIdentity::workload(&svid, &[ca.cert_der()], vec![root.cert_der()], TD)?;
    Ok(Identities { h1: host("h1")?, h2: host("h2")?, workload })
}

fn header() -> StreamHeader {
    StreamHeader {
        source: WORKLOAD.into(),
        pod: None,
        target: Target { host: "bench/sink".into(), port: 1, proto: Proto::Tcp },
    }
}

/// What the receiving side does with each connection or stream.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Serve {
    /// Reads to the end, then answers one byte.
    Sink,
    /// Echoes every byte.
    Echo,
}

async fn serve<R, W>(mut r: R, mut w: W, how: Serve) -> Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if how == Serve::Echo {
            w.write_all(&buf[..n]).await?;
        }
    }
    if how == Serve::Sink {
        w.write_all(b"k").await?;
    }
    w.shutdown().await?;
    Ok(())
}

/// The TCP server on h2: serves `connections` connections, one at a time.
fn tcp_server(lan: &Lan, how: Serve, connections: usize) -> std::thread::JoinHandle<Result<()>> {
    let addr: SocketAddr = format!("{}:{TCP_PORT}", lan.addr(2)).parse().expect("address");
    named_in_netns("server", &lan.netns(2), move || {
        Box::pin(async move {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            for _ in 0..connections {
                let (s, _) = listener.accept().await?;
                s.set_nodelay(true)?;
                let (r, w) = s.into_split();
                serve(r, w, how).await?;
            }
            Ok(())
        })
    })
}

/// The tunnel endpoint on h2: accepts one connection and serves `streams` streams in turn.
fn quic_server(
    lan: &Lan,
    identity: TlsIdentity,
    how: Serve,
    streams: usize,
) -> Result<std::thread::JoinHandle<Result<()>>> {
    let addr: SocketAddr = format!("{}:{QUIC_PORT}", lan.addr(2)).parse()?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = in_netns(&lan.netns(2), move || {
        Box::pin(async move {
            let endpoint = Endpoint::bind(addr, identity)?;
            let _ = ready_tx.send(());
            let conn = endpoint.accept().await.context("endpoint closed")?.handshake().await?;
            for _ in 0..streams {
                let (_, mut send, mut recv) = conn.accept_stream().await?;
                if how == Serve::Sink {
                    // Chunks as the stream holds them (no copy), as the agent's relay reads.
                    while recv.read_chunk(CHUNK, true).await?.is_some() {}
                    send.write_all(b"k").await?;
                    send.finish()?;
                    continue;
                }
                serve(recv, send, how).await?;
            }
            conn.closed().await;
            Ok(())
        })
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).context("tunnel server never bound")?;
    Ok(h)
}

/// Sends for `seconds` on `w`, then closes and waits for `r`'s one-byte answer; bits/s.
async fn blast<R, W>(mut r: R, mut w: W, seconds: f64) -> Result<f64>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let buf = vec![7u8; CHUNK];
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed().as_secs_f64() < seconds {
        w.write_all(&buf).await?;
        sent += buf.len() as u64;
    }
    w.shutdown().await?;
    let mut ack = [0u8; 1];
    r.read_exact(&mut ack).await?;
    Ok(sent as f64 * 8.0 / started.elapsed().as_secs_f64())
}

/// [`blast`] on a tunnel stream, handing it shared chunks (`write_chunk`, no copy), as the
/// agent's relay hands it what it read from a workload's socket.
async fn blast_chunks(mut r: RecvStream, mut w: SendStream, seconds: f64) -> Result<f64> {
    let buf = bytes::Bytes::from(vec![7u8; CHUNK]);
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed().as_secs_f64() < seconds {
        w.write_chunk(buf.clone()).await?;
        sent += buf.len() as u64;
    }
    w.finish()?;
    let mut ack = [0u8; 1];
    r.read_exact(&mut ack).await?;
    Ok(sent as f64 * 8.0 / started.elapsed().as_secs_f64())
}

/// 1-byte requests answered for `seconds`; requests/s.
async fn ping_pong<R, W>(mut r: R, mut w: W, seconds: f64) -> Result<f64>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let started = Instant::now();
    let mut n = 0u64;
    let mut b = [0u8; 1];
    while started.elapsed().as_secs_f64() < seconds {
        w.write_all(b"x").await?;
        r.read_exact(&mut b).await?;
        n += 1;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    // The other side's end too, so that closing the connection cuts nothing it still sends.
    w.shutdown().await?;
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).await?;
    Ok(rate)
}

struct Round {
    tcp_bps: f64,
    tcp_cpu_per_gb: f64,
    quic_bps: f64,
    quic_cpu_per_gb: f64,
    fwd_bps: f64,
    fwd_cpu_per_gb: f64,
    tcp_rr: f64,
    quic_rr: f64,
    tcp_conns: f64,
    quic_streams: f64,
}

fn round(lan: &Lan, plan: Plan) -> Result<Round> {
    let tcp_addr: SocketAddr = format!("{}:{TCP_PORT}", lan.addr(2)).parse()?;
    let quic_addr: SocketAddr = format!("{}:{QUIC_PORT}", lan.addr(2)).parse()?;
    let seconds = plan.seconds;
    let h1 = lan.netns(1);

    // (1) Throughput.
    let server = tcp_server(lan, Serve::Sink, 1);
    let cpu = cpu_seconds();
    let tcp_bps = joined_as(
        "tcp throughput client",
        in_netns(&h1, move || {
            Box::pin(async move {
                let s = connect_retrying(tcp_addr).await?;
                let (r, w) = s.into_split();
                blast(r, w, seconds).await
            })
        }),
    )?;
    let tcp_cpu = cpu_seconds() - cpu;
    joined_as("tcp throughput server", server)?;
    let ids = identities()?;
    let server = quic_server(lan, ids.h2, Serve::Sink, 1)?;
    let cpu = cpu_seconds();
    let (h1_id, workload) = (ids.h1, ids.workload);
    let quic_bps = joined_as(
        "quic throughput client",
        in_netns(&h1, move || {
            Box::pin(async move {
                let endpoint = Endpoint::bind(SocketAddr::from(([0, 0, 0, 0], 0)), h1_id)?;
                let conn = endpoint.connect(quic_addr, &workload, "h2").await?;
                let (send, recv) = conn.open(&header()).await?;
                let bps = blast_chunks(recv, send, seconds).await?;
                conn.close();
                endpoint.wait_idle().await;
                Ok(bps)
            })
        }),
    )?;
    let quic_cpu = cpu_seconds() - cpu;
    joined_as("quic throughput server", server)?;
    let per_gb = |cpu: f64, bps: f64| cpu / (bps / 8.0 * seconds / 1e9);

    // (1b) Forwarded.
    let cpu = cpu_seconds();
    let fwd_bps = forwarded(lan, seconds)?;
    let fwd_cpu = cpu_seconds() - cpu;

    // (2) Request/response.
    let server = tcp_server(lan, Serve::Echo, 1);
    let tcp_rr = joined_as(
        "tcp rr client",
        in_netns(&h1, move || {
            Box::pin(async move {
                let s = connect_retrying(tcp_addr).await?;
                s.set_nodelay(true)?;
                let (r, w) = s.into_split();
                ping_pong(r, w, seconds).await
            })
        }),
    )?;
    joined_as("tcp rr server", server)?;
    let ids = identities()?;
    let server = quic_server(lan, ids.h2, Serve::Echo, 1)?;
    let (h1_id, workload) = (ids.h1, ids.workload);
    let quic_rr = joined_as(
        "quic rr client",
        in_netns(&h1, move || {
            Box::pin(async move {
                let endpoint = Endpoint::bind(SocketAddr::from(([0, 0, 0, 0], 0)), h1_id)?;
                let conn = endpoint.connect(quic_addr, &workload, "h2").await?;
                let (send, recv) = conn.open(&header()).await?;
                let rate = ping_pong(recv, send, seconds).await?;
                conn.close();
                endpoint.wait_idle().await;
                Ok(rate)
            })
        }),
    )?;
    joined_as("quic rr server", server)?;

    // (3) New connections (TCP) and new streams (tunnel), each with one exchange, for a
    // fixed count (the servers serve that many).
    let count = (seconds * 1000.0) as usize;
    let server = tcp_server(lan, Serve::Echo, count);
    let tcp_conns = joined_as(
        "tcp conns client",
        in_netns(&h1, move || {
            Box::pin(async move {
                let started = Instant::now();
                for _ in 0..count {
                    let s = connect_retrying(tcp_addr).await?;
                    s.set_nodelay(true)?;
                    let (r, w) = s.into_split();
                    one_exchange(r, w).await?;
                }
                Ok(count as f64 / started.elapsed().as_secs_f64())
            })
        }),
    )?;
    joined_as("tcp conns server", server)?;
    let ids = identities()?;
    let server = quic_server(lan, ids.h2, Serve::Echo, count)?;
    let (h1_id, workload) = (ids.h1, ids.workload);
    let quic_streams = joined_as(
        "quic streams client",
        in_netns(&h1, move || {
            Box::pin(async move {
                let endpoint = Endpoint::bind(SocketAddr::from(([0, 0, 0, 0], 0)), h1_id)?;
                let conn = endpoint.connect(quic_addr, &workload, "h2").await?;
                let started = Instant::now();
                for _ in 0..count {
                    let (send, recv) = conn.open(&header()).await?;
                    one_exchange(recv, send).await?;
                }
                let rate = count as f64 / started.elapsed().as_secs_f64();
                conn.close();
                endpoint.wait_idle().await;
                Ok(rate)
            })
        }),
    )?;
    joined_as("quic streams server", server)?;
    Ok(Round {
        tcp_bps,
        tcp_cpu_per_gb: per_gb(tcp_cpu, tcp_bps),
        quic_bps,
        quic_cpu_per_gb: per_gb(quic_cpu, quic_bps),
        fwd_bps,
        fwd_cpu_per_gb: per_gb(fwd_cpu, fwd_bps),
        tcp_rr,
        quic_rr,
        tcp_conns,
        quic_streams,
    })
}

/// Forwarded throughput (bits/s): client -> agent (h1) -> tunnel -> agent (h2) -> server,
/// every hop a thread of its own, the agents relaying with the agent's own `splice`.
fn forwarded(lan: &Lan, seconds: f64) -> Result<f64> {
    let tcp_addr: SocketAddr = format!("{}:{TCP_PORT}", lan.addr(2)).parse()?;
    let server = tcp_server(lan, Serve::Sink, 1);
    let agents = forwarding_agents(lan, identities()?, tcp_addr)?;
    let bps = joined_as(
        "forwarded client",
        named_in_netns("client", &lan.netns(1), move || {
            Box::pin(async move {
                let s = connect_retrying(SocketAddr::from(([127, 0, 0, 1], FORWARD_PORT))).await?;
                let (r, w) = s.into_split();
                blast(r, w, seconds).await
            })
        }),
    )?;
    for (what, agent) in ["agent h1", "agent h2"].into_iter().zip(agents) {
        joined_as(what, agent)?;
    }
    joined_as("forwarded server", server)?;
    Ok(bps)
}

/// The two agents of the forwarded phase, each relaying one connection: h1's takes the
/// client's connection on 127.0.0.1:[`FORWARD_PORT`] and opens a tunnel stream for it; h2's
/// accepts the stream and dials `server`.
fn forwarding_agents(
    lan: &Lan,
    ids: Identities,
    server: SocketAddr,
) -> Result<[std::thread::JoinHandle<Result<()>>; 2]> {
    let quic_addr: SocketAddr = format!("{}:{QUIC_PORT}", lan.addr(2)).parse()?;
    let never = || std::sync::Arc::new(tokio::sync::Notify::new());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h2 = named_in_netns("agent-h2", &lan.netns(2), move || {
        Box::pin(async move {
            let endpoint = Endpoint::bind(quic_addr, ids.h2)?;
            let _ = ready_tx.send(());
            let conn = endpoint.accept().await.context("endpoint closed")?.handshake().await?;
            let (_, mut send, mut recv) = conn.accept_stream().await?;
            let mut upstream = tokio::net::TcpStream::connect(server).await?;
            upstream.set_nodelay(true)?;
            splice::tcp_stream(&mut upstream, &mut send, &mut recv, IDLE, &never()).await?;
            conn.closed().await;
            Ok(())
        })
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).context("agent h2 never bound")?;
    let (h1_id, workload) = (ids.h1, ids.workload);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h1 = named_in_netns("agent-h1", &lan.netns(1), move || {
        Box::pin(async move {
            let listener =
                tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], FORWARD_PORT))).await?;
            let _ = ready_tx.send(());
            let (mut stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let endpoint = Endpoint::bind(SocketAddr::from(([0, 0, 0, 0], 0)), h1_id)?;
            let conn = endpoint.connect(quic_addr, &workload, "h2").await?;
            let (mut send, mut recv) = conn.open(&header()).await?;
            splice::tcp_stream(&mut stream, &mut send, &mut recv, IDLE, &never()).await?;
            conn.close();
            endpoint.wait_idle().await;
            Ok(())
        })
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).context("agent h1 never listened")?;
    Ok([h1, h2])
}

async fn one_exchange<R, W>(mut r: R, mut w: W) -> Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    w.write_all(b"x").await?;
    w.shutdown().await?;
    let mut answer = Vec::with_capacity(1);
    r.read_to_end(&mut answer).await?;
    anyhow::ensure!(answer == b"x", "echo answered {answer:?}");
    Ok(())
}

/// The server thread may not listen yet: connection refused is tried again (for 10 s).
async fn connect_retrying(addr: SocketAddr) -> Result<tokio::net::TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                tokio::task::yield_now().await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// `--profile`: only the tunnel's throughput, for 10 s, to run under `perf record`.
fn profile(what: &str) -> Result<()> {
    let mut lan = Lan::new("tnb", SUBNET)?;
    lan.host(1)?;
    lan.host(2)?;
    if what == "forwarded" {
        let seconds = 10.0;
        let bps = forwarded(&lan, seconds)?;
        let gb = bps * seconds / 8e9;
        let threads = THREAD_CPU.lock().expect("thread cpu");
        let per_gb: Vec<String> = threads.iter().map(|(name, s)| format!("{name} {:.3}", s / gb)).collect();
        println!("threads' CPU s/GB: {}", per_gb.join(", "));
        println!("forwarded throughput {:.2} Gbit/s", bps / 1e9);
        return Ok(());
    }
    let quic_addr: SocketAddr = format!("{}:{QUIC_PORT}", lan.addr(2)).parse()?;
    let ids = identities()?;
    let server = quic_server(&lan, ids.h2, Serve::Sink, 1)?;
    let (h1_id, workload) = (ids.h1, ids.workload);
    let bps = joined_as(
        "quic throughput client",
        in_netns(&lan.netns(1), move || {
            Box::pin(async move {
                let endpoint = Endpoint::bind(SocketAddr::from(([0, 0, 0, 0], 0)), h1_id)?;
                let conn = endpoint.connect(quic_addr, &workload, "h2").await?;
                let (send, recv) = conn.open(&header()).await?;
                let bps = blast_chunks(recv, send, 10.0).await?;
                conn.close();
                endpoint.wait_idle().await;
                Ok(bps)
            })
        }),
    )?;
    joined_as("quic throughput server", server)?;
    println!("tunnel throughput {:.2} Gbit/s", bps / 1e9);
    Ok(())
}

fn main() -> Result<()> {
    beemesh_tests::require_root();
    let quick = std::env::args().any(|a| a == "--quick");
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--profile") {
        return profile(args.get(i + 1).map_or("tunnel", String::as_str));
    }
    let plan = if quick { Plan { seconds: 0.5, rounds: 1 } } else { Plan { seconds: 3.0, rounds: 5 } };
    let mut lan = Lan::new("tnb", SUBNET)?;
    lan.host(1)?;
    lan.host(2)?;
    let rounds: Vec<Round> = (0..plan.rounds).map(|_| round(&lan, plan)).collect::<Result<_>>()?;
    let med = |f: fn(&Round) -> f64| median(&mut rounds.iter().map(f).collect::<Vec<_>>());
    let (tcp, quic) = (med(|r| r.tcp_bps), med(|r| r.quic_bps));
    println!(
        "tunnel bench ({} rounds of {:.1} s, medians; one stream, one connection)",
        plan.rounds, plan.seconds
    );
    println!(
        "  throughput      tcp {:>8.2} Gbit/s ({:.2} CPU s/GB)   tunnel {:>8.2} Gbit/s ({:.2} CPU s/GB)   ratio {:.3} (target >= 0.6)",
        tcp / 1e9,
        med(|r| r.tcp_cpu_per_gb),
        quic / 1e9,
        med(|r| r.quic_cpu_per_gb),
        quic / tcp
    );
    let fwd = med(|r| r.fwd_bps);
    println!(
        "  forwarded       tcp {:>8.2} Gbit/s                  client->agent->tunnel->agent->server {:>8.2} Gbit/s ({:.2} CPU s/GB)   ratio {:.3} (target >= 0.45)",
        tcp / 1e9,
        fwd / 1e9,
        med(|r| r.fwd_cpu_per_gb),
        fwd / tcp
    );
    let (tcp_rr, quic_rr) = (med(|r| r.tcp_rr), med(|r| r.quic_rr));
    println!(
        "  1-byte req/resp tcp {:>8.0} /s   tunnel {:>8.0} /s   ratio {:.3} (target >= 0.3)",
        tcp_rr,
        quic_rr,
        quic_rr / tcp_rr
    );
    let (tcp_c, quic_s) = (med(|r| r.tcp_conns), med(|r| r.quic_streams));
    println!(
        "  new connections tcp {:>8.0} /s   tunnel streams {:>8.0} /s   ratio {:.3}",
        tcp_c,
        quic_s,
        quic_s / tcp_c
    );
    Ok(())
}

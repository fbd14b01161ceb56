//! Test workload: a tiny TCP/UDP client and server whose output the end-to-end tests read.
//! Every outcome is one line on stdout: `listening`, `connected`, `error <errno> <text>`,
//! `closed <reason>`, `sent`.
//!
//! probe listen ADDR         accept forever, echo each connection's bytes back
//! probe connect ADDR [MS]   one connect (timeout MS, default 2000), then exit
//! probe hold ADDR           connect, then block until the connection dies
//! probe ask ADDR            connect, send `hi\n`, print `reply <line>` (or `closed <reason>`)
//! probe udp-send ADDR       one datagram with sendto()
//! probe udp-listen ADDR     print `datagram <len>` for each datagram received
//! probe udp-echo ADDR       send every datagram back to its sender
//! probe udp-ask ADDR [c]    send one datagram, print `reply <len> from <addr>` or `timeout`
//!                           (c: connect first)
//! probe loop ADDR           connect every 20 ms forever, print each outcome change
//! probe rate ADDR MS        connect, await the server's close, close; for MS: `count N`
//! probe watch-deny ADDR     connect+close in a tight loop until refused: `denied <unix ns>`
//! probe hold-ts ADDR        as hold, but the close line is `closed <unix ns>`
//! probe grpc-health ADDR F  a gRPC health server (grpc.health.v1.Health/Check over HTTP/2):
//!                           SERVING while file F exists, else NOT_SERVING

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

fn errno_line(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => format!("error {code} {e}"),
        None => format!("error 0 {e}"),
    }
}

/// Reports `e` as the probe's outcome and exits with `code`.
fn fail(e: &std::io::Error, code: i32) -> ! {
    say(&errno_line(e));
    std::process::exit(code)
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn connect(addr: SocketAddr, ms: u64) -> std::io::Result<TcpStream> {
    TcpStream::connect_timeout(&addr, Duration::from_millis(ms))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: probe listen|connect|hold|udp-send|loop ADDR [MS]");
        std::process::exit(64)
    };
    if args.len() < 3 {
        usage();
    }
    let addr: SocketAddr = args[2].parse().unwrap_or_else(|_| usage());
    match args[1].as_str() {
        "listen" => {
            let l = TcpListener::bind(addr).unwrap_or_else(|e| fail(&e, 1));
            say("listening");
            for conn in l.incoming() {
                let Ok(mut c) = conn else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 || c.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        }
        "connect" => {
            let ms = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(2000);
            match connect(addr, ms) {
                Ok(_) => say("connected"),
                Err(e) => fail(&e, 2),
            }
        }
        "ask" => match connect(addr, 2000) {
            Ok(mut c) => {
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                if let Err(e) = c.write_all(b"hi\n") {
                    fail(&e, 2);
                }
                let mut line = Vec::new();
                let mut byte = [0u8; 1];
                loop {
                    match c.read(&mut byte) {
                        Ok(0) => return say("closed eof"),
                        Ok(_) if byte[0] == b'\n' => break,
                        Ok(_) => line.push(byte[0]),
                        Err(e) => return say(&format!("closed {}", errno_line(&e))),
                    }
                }
                say(&format!("reply {}", String::from_utf8_lossy(&line)));
            }
            Err(e) => fail(&e, 2),
        },
        "hold" => match connect(addr, 2000) {
            Ok(mut c) => {
                say("connected");
                let mut buf = [0u8; 64];
                loop {
                    match c.read(&mut buf) {
                        Ok(0) => {
                            say("closed eof");
                            return;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            say(&format!("closed {}", errno_line(&e)));
                            return;
                        }
                    }
                }
            }
            Err(e) => fail(&e, 2),
        },
        "udp-send" => {
            let bind: SocketAddr =
                if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
            let s = UdpSocket::bind(bind).unwrap_or_else(|e| fail(&e, 1));
            match s.send_to(b"ping", addr) {
                Ok(_) => say("sent"),
                Err(e) => fail(&e, 2),
            }
        }
        "udp-listen" => {
            let s = UdpSocket::bind(addr).unwrap_or_else(|e| fail(&e, 1));
            say("listening");
            let mut buf = [0u8; 2048];
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                say(&format!("datagram {n}"));
            }
        }
        "udp-echo" => {
            let s = UdpSocket::bind(addr).unwrap_or_else(|e| fail(&e, 1));
            say("listening");
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        }
        "udp-ask" => {
            let bind: SocketAddr =
                if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
            let s = UdpSocket::bind(bind).unwrap_or_else(|e| fail(&e, 1));
            let _ = s.set_read_timeout(Some(Duration::from_millis(800)));
            let sent = if args.get(3).map(String::as_str) == Some("c") {
                s.connect(addr).and_then(|()| s.send(b"ping"))
            } else {
                s.send_to(b"ping", addr)
            };
            if let Err(e) = sent {
                fail(&e, 2)
            }
            let mut buf = [0u8; 64];
            match s.recv_from(&mut buf) {
                Ok((n, from)) => say(&format!("reply {n} from {from}")),
                Err(_) => say("timeout"),
            }
        }
        "loop" => {
            let mut last = String::new();
            loop {
                let now = match connect(addr, 500) {
                    Ok(_) => "connected".to_string(),
                    Err(e) => errno_line(&e),
                };
                if now != last {
                    say(&now);
                    last = now;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        "rate" => {
            let ms: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1000);
            let end = std::time::Instant::now() + Duration::from_millis(ms);
            let mut count = 0u64;
            while std::time::Instant::now() < end {
                // One connection in flight: wait for the server's close (EOF or reset), so the
                // loop measures connect/accept/close and never overflows the accept queue.
                match TcpStream::connect(addr) {
                    Ok(mut c) => {
                        let _ = c.read(&mut [0u8; 1]);
                        abort(c);
                        count += 1;
                    }
                    Err(e) => fail(&e, 2),
                }
            }
            say(&format!("count {count}"));
        }
        "watch-deny" => {
            // "watching" once the first connect went through: the loop is running.
            let mut watching = false;
            loop {
                match TcpStream::connect(addr) {
                    Ok(c) => {
                        abort(c);
                        if !watching {
                            say("watching");
                            watching = true;
                        }
                    }
                    Err(e) if e.raw_os_error() == Some(1) => {
                        say(&format!("denied {}", unix_ns()));
                        return;
                    }
                    // The revocation sweep may abort a connection that was just accepted.
                    Err(e) if matches!(e.raw_os_error(), Some(103) | Some(104)) => {}
                    Err(e) => fail(&e, 2),
                }
            }
        }
        "hold-ts" => match connect(addr, 2000) {
            Ok(mut c) => {
                say("connected");
                let mut buf = [0u8; 64];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                }
                say(&format!("closed {}", unix_ns()));
            }
            Err(e) => fail(&e, 2),
        },
        "grpc-health" => {
            let flag = std::path::PathBuf::from(args.get(3).cloned().unwrap_or_else(|| usage()));
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let runtime = runtime.unwrap_or_else(|e| fail(&e, 1));
            runtime.block_on(grpc_health(addr, flag));
        }
        _ => usage(),
    }
}

/// Closes with a reset (SO_LINGER 0): tight connect loops must not pile up TIME_WAIT
/// sockets, which exhaust ephemeral ports and make later runs crawl.
fn abort(c: TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    let _ = nix::sys::socket::setsockopt(&c, nix::sys::socket::sockopt::Linger, &linger);
}

fn unix_ns() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// Serves `grpc.health.v1.Health/Check` on `addr`: `SERVING` (1) while `flag` exists, else
/// `NOT_SERVING` (2), whatever service is asked.
async fn grpc_health(addr: SocketAddr, flag: std::path::PathBuf) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap_or_else(|e| fail(&e, 1));
    say("listening");
    while let Ok((socket, _)) = listener.accept().await {
        let flag = flag.clone();
        tokio::spawn(async move {
            let Ok(mut conn) = h2::server::handshake(socket).await else { return };
            while let Some(Ok((request, mut respond))) = conn.accept().await {
                let mut body = request.into_body();
                while let Some(Ok(_)) = body.data().await {}
                let status: u8 = if flag.exists() { 1 } else { 2 };
                let response = http::Response::builder()
                    .status(200)
                    .header("content-type", "application/grpc")
                    .body(())
                    .expect("a static response");
                let Ok(mut send) = respond.send_response(response, false) else { return };
                // One length-prefixed HealthCheckResponse: field 1 (status), varint.
                let _ = send.send_data(bytes::Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]), false);
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                let _ = send.send_trailers(trailers);
            }
        });
    }
}

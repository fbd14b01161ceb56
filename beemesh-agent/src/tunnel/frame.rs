//! The header that opens every tunnel stream: which workload sends and where the bytes go.
//! Sans-IO: [`encode`] for the opening side, an incremental [`decode`] (and [`wanted`], how
//! many bytes to read next) for the accepting side. Used by [`super::Connection`].
//!
//! Wire format: one version byte, the body length as a big-endian u16, then the body as
//! JSON. The whole frame is at most [`MAX_FRAME`] bytes; the stream's payload follows it.

use serde::{Deserialize, Serialize};

/// The only frame version spoken so far.
pub const VERSION: u8 = 1;

/// Upper bound of a whole frame, prefix included: a header names a workload and a
/// target, so anything longer is a broken or hostile peer, and the accepting side never
/// buffers more than this before it knows where a stream goes.
pub const MAX_FRAME: usize = 4096;

/// Version byte and body length.
const PREFIX: usize = 3;

/// Errors of encoding and decoding stream headers.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame would be or claims to be longer than [`MAX_FRAME`].
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME}")]
    Oversized {
        /// The frame's length, prefix included.
        len: usize,
    },
    /// A version byte this agent does not speak.
    #[error("unsupported frame version {0}, expected {VERSION}")]
    Version(u8),
    /// A body that is not the JSON of a [`StreamHeader`].
    #[error("malformed header: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Opens every stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamHeader {
    /// SPIFFE id of the sending workload, for the accepting agent's policy check.
    pub source: String,
    /// The sending pod, `namespace/name`: the accepting agent checks that the cluster state
    /// places it on the host that vouches for the connection, with the proven identity, and
    /// decides its policy on that pod's labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Where the accepting agent sends the stream's bytes.
    pub target: Target,
}

/// The destination of a stream on the accepting agent's side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// An IP address or a service name, resolved by the accepting agent.
    pub host: String,
    /// Destination port.
    pub port: u16,
    /// Transport protocol of the workload's connection.
    pub proto: Proto,
}

/// Transport protocol carried by a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// A TCP connection, its bytes relayed as they are.
    Tcp,
    /// A UDP flow: each datagram a frame of a 2-byte big-endian length and its bytes
    /// ([`crate::tunnel::datagrams`]).
    Udp,
}

/// The frame for `header`; refuses headers that would exceed [`MAX_FRAME`].
pub fn encode(header: &StreamHeader) -> Result<Vec<u8>, FrameError> {
    let body = serde_json::to_vec(header)?;
    let len = PREFIX + body.len();
    let body_len = u16::try_from(body.len()).map_err(|_| FrameError::Oversized { len })?;
    if len > MAX_FRAME {
        return Err(FrameError::Oversized { len });
    }
    let mut frame = Vec::with_capacity(len);
    frame.push(VERSION);
    frame.extend_from_slice(&body_len.to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// How many bytes from the start of the stream the frame needs, given the first bytes
/// `buf`: the prefix length until the prefix is complete, then the whole frame's length.
/// Lets a reader fetch exactly the frame and leave the payload in the stream. Fails as soon
/// as the version byte or the length is wrong.
pub fn wanted(buf: &[u8]) -> Result<usize, FrameError> {
    match *buf {
        [] => Ok(PREFIX),
        [version, ..] if version != VERSION => Err(FrameError::Version(version)),
        [_, hi, lo, ..] => {
            let len = PREFIX + usize::from(u16::from_be_bytes([hi, lo]));
            if len > MAX_FRAME {
                return Err(FrameError::Oversized { len });
            }
            Ok(len)
        }
        _ => Ok(PREFIX),
    }
}

/// The header at the start of `buf` and the number of bytes it took, `None` while the frame
/// is incomplete. Bytes after the frame are payload and left alone.
pub fn decode(buf: &[u8]) -> Result<Option<(StreamHeader, usize)>, FrameError> {
    let len = wanted(buf)?;
    if buf.len() < len {
        return Ok(None);
    }
    let header = serde_json::from_slice(&buf[PREFIX..len])?;
    Ok(Some((header, len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> StreamHeader {
        StreamHeader {
            source: "spiffe://beemesh.local/ns/shop/sa/web".to_owned(),
            pod: Some("shop/web-1".to_owned()),
            target: Target { host: "10.42.0.7".to_owned(), port: 8080, proto: Proto::Tcp },
        }
    }

    #[test]
    fn round_trip_leaves_the_payload() {
        let frame = encode(&header()).expect("encodes");
        assert_eq!(frame[0], VERSION);
        assert_eq!(usize::from(u16::from_be_bytes([frame[1], frame[2]])), frame.len() - PREFIX);
        assert_eq!(wanted(&frame).expect("valid"), frame.len());
        let mut stream = frame.clone();
        stream.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let (back, used) = decode(&stream).expect("valid").expect("complete");
        assert_eq!(back, header());
        assert_eq!(used, frame.len());
        assert_eq!(&stream[used..], b"GET / HTTP/1.1\r\n");
        let body = std::str::from_utf8(&frame[PREFIX..]).expect("json");
        assert!(body.contains(r#""proto":"tcp""#), "{body}");
    }

    #[test]
    fn every_split_point_is_partial_until_the_end() {
        let frame = encode(&header()).expect("encodes");
        for cut in 0..frame.len() {
            assert!(decode(&frame[..cut]).expect("valid prefix").is_none(), "cut at {cut}");
            let want = wanted(&frame[..cut]).expect("valid prefix");
            assert!(want > cut, "cut at {cut}: wants {want}");
            assert!(want == PREFIX || want == frame.len(), "cut at {cut}: wants {want}");
        }
        let (back, used) = decode(&frame).expect("valid").expect("complete");
        assert_eq!((back, used), (header(), frame.len()));
    }

    #[test]
    fn oversized_headers_are_refused_both_ways() {
        let mut big = header();
        big.target.host = "a".repeat(MAX_FRAME);
        let err = encode(&big).expect_err("too big");
        assert!(matches!(err, FrameError::Oversized { len } if len > MAX_FRAME), "{err}");

        let mut huge = header();
        huge.source = "a".repeat(usize::from(u16::MAX) + 1);
        assert!(matches!(encode(&huge), Err(FrameError::Oversized { .. })));

        // The prefix alone is enough to refuse: nothing more is buffered.
        let err = decode(&[VERSION, 0x10, 0x00]).expect_err("claims 4099 bytes");
        assert_eq!(err.to_string(), "frame of 4099 bytes exceeds the limit of 4096");
        let limit = u16::try_from(MAX_FRAME - PREFIX).expect("fits").to_be_bytes();
        assert_eq!(wanted(&[VERSION, limit[0], limit[1]]).expect("at the limit"), MAX_FRAME);
    }

    #[test]
    fn wrong_version_fails_on_the_first_byte() {
        let err = decode(&[2]).expect_err("version 2");
        assert_eq!(err.to_string(), "unsupported frame version 2, expected 1");
        let mut frame = encode(&header()).expect("encodes");
        frame[0] = 0;
        assert!(matches!(decode(&frame), Err(FrameError::Version(0))));
        assert!(matches!(decode(b"GET / HTTP/1.1"), Err(FrameError::Version(b'G'))));
    }

    #[test]
    fn garbage_bodies_are_malformed() {
        let frame = |body: &[u8]| {
            let mut f = vec![VERSION];
            f.extend_from_slice(&u16::try_from(body.len()).expect("short").to_be_bytes());
            f.extend_from_slice(body);
            f
        };
        for body in [
            &b""[..],
            b"\xff\xfe\x00",
            b"{}",
            b"[1,2,3]",
            br#"{"source":"x","target":{"host":"h","port":70000,"proto":"tcp"}}"#,
            br#"{"source":"x","target":{"host":"h","port":80,"proto":"sctp"}}"#,
            br#"{"source":"x","target":{"host":"h","port":80,"proto":"tcp"},"extra":1}"#,
        ] {
            let err = decode(&frame(body)).expect_err("garbage");
            assert!(err.to_string().starts_with("malformed header: "), "{err}");
        }
        let ok = br#"{"source":"x","target":{"host":"h","port":80,"proto":"tcp"}}"#;
        assert!(decode(&frame(ok)).expect("valid").is_some());
    }
}

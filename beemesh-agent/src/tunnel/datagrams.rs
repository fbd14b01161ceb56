//! UDP over a tunnel stream: one UDP flow per stream, each datagram a frame of a 2-byte
//! big-endian length and its bytes, so the datagram boundaries survive the byte stream.
//! A stream keeps the flow's datagrams in order and never loses one; a datagram the far side
//! cannot deliver is dropped there, as UDP would drop it. A frame longer than a UDP payload
//! can be is refused: the stream ends with an error rather than buffering it.

use std::io;

use bytes::{BufMut, Bytes, BytesMut};
use quinn::{RecvStream, SendStream};

/// The largest UDP payload over IPv4 (65,535 less the IP and UDP headers).
pub const MAX_DATAGRAM: usize = 65_507;

/// The frame carrying `datagram`.
pub fn encode(datagram: &[u8]) -> io::Result<Bytes> {
    let len =
        u16::try_from(datagram.len()).ok().filter(|l| usize::from(*l) <= MAX_DATAGRAM).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("datagram of {} bytes", datagram.len()))
        })?;
    let mut frame = BytesMut::with_capacity(2 + datagram.len());
    frame.put_u16(len);
    frame.put_slice(datagram);
    Ok(frame.freeze())
}

/// Sends `datagram` as one frame (waits while the stream's flow control holds it back).
pub async fn send(stream: &mut SendStream, datagram: &[u8]) -> io::Result<()> {
    let frame = encode(datagram)?;
    stream.write_chunk(frame).await.map_err(io::Error::from)
}

/// The next datagram of the stream into `buf` (its length), or `None` when the stream ended
/// between frames.
pub async fn recv(stream: &mut RecvStream, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
    let mut prefix = [0u8; 2];
    match stream.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "stream ended inside a frame's length"))
        }
        Err(quinn::ReadExactError::ReadError(e)) => return Err(e.into()),
    }
    let len = usize::from(u16::from_be_bytes(prefix));
    if len > MAX_DATAGRAM {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes")));
    }
    buf.resize(len, 0);
    match stream.read_exact(&mut buf[..len]).await {
        Ok(()) => Ok(Some(len)),
        Err(quinn::ReadExactError::FinishedEarly(_)) => {
            Err(io::Error::new(io::ErrorKind::UnexpectedEof, "stream ended inside a datagram"))
        }
        Err(quinn::ReadExactError::ReadError(e)) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_the_length_then_the_bytes_and_oversized_datagrams_are_refused() {
        assert_eq!(&encode(b"ping").expect("frame")[..], b"\x00\x04ping");
        assert_eq!(&encode(b"").expect("frame")[..], b"\x00\x00");
        assert_eq!(encode(&vec![7; MAX_DATAGRAM]).expect("frame").len(), MAX_DATAGRAM + 2);
        assert!(encode(&vec![7; MAX_DATAGRAM + 1]).is_err());
        assert!(encode(&vec![7; 70_000]).is_err());
    }
}

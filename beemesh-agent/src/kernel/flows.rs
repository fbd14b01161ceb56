//! Readers for the two kernel-to-agent ring buffers: flow events and aya-log records.

use std::io;

use aya::maps::{MapData, RingBuf};
use beemesh_common::FlowEvent;
use tokio::io::unix::AsyncFd;

/// Async reader of the `FLOWS` ring buffer.
pub struct FlowReader {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl std::fmt::Debug for FlowReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlowReader")
    }
}

impl FlowReader {
    pub(super) fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        Ok(Self {
            ring: crate::sys::async_fd(ring)?,
        })
    }

    /// Waits for events and appends every pending one to `out`.
    pub async fn read(&mut self, out: &mut Vec<FlowEvent>) -> io::Result<()> {
        loop {
            let mut guard = self.ring.readable_mut().await?;
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                if item.len() >= std::mem::size_of::<FlowEvent>() {
                    // SAFETY: the kernel wrote a whole FlowEvent (repr(C), any bit pattern is
                    // valid) at the start of the record; read_unaligned copes with alignment.
                    out.push(unsafe {
                        std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>())
                    });
                }
            }
            guard.clear_ready();
            if !out.is_empty() {
                return Ok(());
            }
        }
    }
}

/// Forwards aya-log records from the kernel programs to `tracing` (via the `log` bridge).
pub struct LogReader {
    logger: AsyncFd<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl std::fmt::Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogReader")
    }
}

impl LogReader {
    pub(super) fn new(logger: aya_log::EbpfLogger<&'static dyn log::Log>) -> io::Result<Self> {
        Ok(Self {
            logger: crate::sys::async_fd(logger)?,
        })
    }

    /// Runs until the ring buffer fd fails (agent shutdown drops the task first).
    pub async fn run(mut self) {
        loop {
            let Ok(mut guard) = self.logger.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }
}

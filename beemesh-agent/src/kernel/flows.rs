//! Readers for the two kernel-to-agent ring buffers: flow events and aya-log records.

use std::io;

use aya::maps::{MapData, RingBuf};
use beemesh_common::FlowEvent;
use tokio::io::unix::AsyncFd;

/// How often the flow ring is drained when the kernel has not woken us.
pub const FLOW_POLL: std::time::Duration = std::time::Duration::from_millis(20);

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
        Ok(Self { ring: crate::sys::async_fd(ring)? })
    }

    /// Waits for events and appends every pending one to `out`. The kernel only wakes us
    /// when the ring fills up, so this also polls every [`FLOW_POLL`].
    pub async fn read(&mut self, out: &mut Vec<FlowEvent>) -> io::Result<()> {
        loop {
            let ring = self.ring.get_mut();
            while let Some(item) = ring.next() {
                if item.len() >= std::mem::size_of::<FlowEvent>() {
                    // SAFETY: the kernel wrote a whole FlowEvent (repr(C), any bit pattern is
                    // valid) at the start of the record; read_unaligned copes with alignment.
                    out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) });
                }
            }
            if !out.is_empty() {
                return Ok(());
            }
            if let Ok(ready) = tokio::time::timeout(FLOW_POLL, self.ring.readable_mut()).await {
                ready?.clear_ready();
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
        Ok(Self { logger: crate::sys::async_fd(logger)? })
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

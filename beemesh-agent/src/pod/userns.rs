//! Per-pod user-namespace id ranges (like Kubernetes `hostUsers: false` or podman
//! `--userns=auto`): every pod's ids 0..65536 map onto its own block of host ids, so the pod's
//! root owns nothing on the host. Sans-IO: the agent actor (`app::pods`) allocates a block
//! when it creates a pod, claims the persisted blocks of pods it re-adopts, and releases a
//! block once the pod is gone; pod-init writes the map, the sandbox chowns the pod's files.

use std::collections::BTreeSet;

/// Ids every pod gets: 0..65536 inside (root, the usual system users and `nobody`).
pub const POD_IDS: u32 = 65_536;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsernsError {
    #[error(
        "no free pod id range: all {blocks} blocks of {POD_IDS} ids from podIdRangeStart {start} \
         are in use (raise podIdRangeSize or delete pods)"
    )]
    Exhausted { start: u32, blocks: u32 },
    #[error("pod id range {base}..{end} overlaps the range of another pod", end = u64::from(*base) + u64::from(POD_IDS))]
    Overlap { base: u32 },
    #[error("podIdRangeStart {start} + podIdRangeSize {size}: {reason}")]
    BadRange { start: u32, size: u32, reason: &'static str },
}

/// How a pod's ids map onto the host's: pod id `n` is host id `host + n`, for `count` ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMap {
    pub host: u32,
    pub count: u32,
}

impl IdMap {
    /// Every id maps to itself (pods recorded before per-pod ranges existed).
    pub const IDENTITY: IdMap = IdMap { host: 0, count: u32::MAX };

    /// A pod's block starting at host id `base`.
    pub fn pod(base: u32) -> Self {
        Self { host: base, count: POD_IDS }
    }

    /// The block of a pod record (`None`: recorded before ranges existed).
    pub fn of(base: Option<u32>) -> Self {
        base.map_or(Self::IDENTITY, Self::pod)
    }

    pub fn is_identity(&self) -> bool {
        self.host == 0
    }

    /// The line for `/proc/<pid>/uid_map` and `gid_map`.
    pub fn proc_line(&self) -> String {
        format!("0 {} {}", self.host, self.count)
    }

    /// The host id of pod id `id`, if the pod has it.
    pub fn host_id(&self, id: u32) -> Option<u32> {
        (id < self.count).then(|| self.host.checked_add(id)).flatten()
    }

    /// The host id of the pod's root (uid and gid 0).
    pub fn root(&self) -> u32 {
        self.host
    }
}

/// The configured range and the blocks in use; the lowest free block is handed out, so a
/// block is reused only after its pod was released.
#[derive(Clone, Debug)]
pub struct IdRanges {
    start: u32,
    blocks: u32,
    used: BTreeSet<u32>,
}

impl IdRanges {
    /// `size` ids from `start`: `size / 65536` blocks (config `podIdRangeStart`/`Size`).
    pub fn new(start: u32, size: u32) -> Result<Self, UsernsError> {
        let bad = |reason| UsernsError::BadRange { start, size, reason };
        if start < POD_IDS {
            return Err(bad("the range must start at 65536 or above (host users and root)"));
        }
        if size < POD_IDS || !size.is_multiple_of(POD_IDS) {
            return Err(bad("the size must be a non-zero multiple of 65536"));
        }
        if u64::from(start) + u64::from(size) > u64::from(u32::MAX) {
            return Err(bad("the range must end below 4294967295"));
        }
        Ok(Self { start, blocks: size / POD_IDS, used: BTreeSet::new() })
    }

    /// Blocks not in use.
    pub fn free(&self) -> usize {
        (0..self.blocks).filter(|k| self.fits(self.base_of(*k))).count()
    }

    fn base_of(&self, block: u32) -> u32 {
        self.start + block * POD_IDS
    }

    /// Whether a block at `base` overlaps no block in use.
    fn fits(&self, base: u32) -> bool {
        let lo = base.saturating_sub(POD_IDS - 1);
        let hi = base.saturating_add(POD_IDS - 1);
        self.used.range(lo..=hi).next().is_none()
    }

    /// Hands out the lowest free block; its base.
    pub fn allocate(&mut self) -> Result<u32, UsernsError> {
        let base = (0..self.blocks)
            .map(|k| self.base_of(k))
            .find(|b| self.fits(*b))
            .ok_or(UsernsError::Exhausted { start: self.start, blocks: self.blocks })?;
        self.used.insert(base);
        Ok(base)
    }

    /// Marks a persisted block (a re-adopted pod's) as in use. It may lie outside the
    /// configured range (the range changed since): the pod keeps it, and it is never handed
    /// out to another pod while in use.
    pub fn claim(&mut self, base: u32) -> Result<(), UsernsError> {
        if self.used.contains(&base) || !self.fits(base) {
            return Err(UsernsError::Overlap { base });
        }
        self.used.insert(base);
        Ok(())
    }

    /// The pod of this block is gone: the block can be handed out again.
    pub fn release(&mut self, base: u32) {
        self.used.remove(&base);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_never_overlap_and_are_reused_only_after_release() {
        let mut r = IdRanges::new(1 << 30, 3 * POD_IDS).expect("valid");
        assert_eq!(r.free(), 3);
        let a = r.allocate().expect("first");
        let b = r.allocate().expect("second");
        let c = r.allocate().expect("third");
        assert_eq!((a, b, c), (1 << 30, (1 << 30) + POD_IDS, (1 << 30) + 2 * POD_IDS));
        let err = r.allocate().expect_err("exhausted");
        assert!(err.to_string().contains("no free pod id range"), "{err}");
        assert!(err.to_string().contains("podIdRangeSize"), "{err}");
        r.release(b);
        assert_eq!(r.free(), 1);
        assert_eq!(r.allocate().expect("reused"), b);
    }

    #[test]
    fn persisted_blocks_are_claimed_and_respected() {
        let mut r = IdRanges::new(1 << 30, 5 * POD_IDS).expect("valid");
        let base = (1 << 30) + POD_IDS;
        r.claim(base).expect("claim");
        assert!(r.claim(base).is_err(), "claimed twice");
        // An unaligned block (the range start changed since) blocks both blocks it touches.
        r.claim((1 << 30) + 2 * POD_IDS + 10).expect("unaligned claim");
        assert!(r.claim((1 << 30) + 2 * POD_IDS).is_err(), "overlaps the unaligned block");
        assert_eq!(r.allocate().expect("lowest free"), 1 << 30);
        assert_eq!(r.allocate().expect("skips used and overlapped"), (1 << 30) + 4 * POD_IDS);
        assert!(r.allocate().is_err());
        // A block outside the configured range is kept for its pod, never handed out.
        r.claim(7 * POD_IDS).expect("outside the range");
        r.release(base);
        assert_eq!(r.allocate().expect("released"), base);
    }

    #[test]
    fn bad_ranges_are_refused_by_name() {
        for (start, size) in [(0, POD_IDS), (1 << 30, 0), (1 << 30, 100), (u32::MAX - POD_IDS, 2 * POD_IDS)] {
            let err = IdRanges::new(start, size).expect_err("invalid");
            assert!(err.to_string().contains("podIdRangeStart"), "{err}");
        }
    }

    #[test]
    fn maps_translate_pod_ids_to_host_ids() {
        let m = IdMap::pod(200_000);
        assert_eq!(m.proc_line(), "0 200000 65536");
        assert_eq!(m.host_id(0), Some(200_000));
        assert_eq!(m.host_id(65_534), Some(265_534));
        assert_eq!(m.host_id(65_536), None);
        assert_eq!(IdMap::of(None), IdMap::IDENTITY);
        assert_eq!(IdMap::IDENTITY.proc_line(), "0 0 4294967295");
        assert_eq!(IdMap::IDENTITY.host_id(1000), Some(1000));
        assert!(IdMap::IDENTITY.is_identity() && !m.is_identity());
    }
}

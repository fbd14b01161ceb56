//! Per-pod user-namespace id ranges (like Kubernetes `hostUsers: false` or podman
//! `--userns=auto`): every pod's ids 0..65536 map onto its own block of host ids, so the pod's
//! root owns nothing on the host. Sans-IO: the agent actor (`app::pods`) allocates a block
//! when it creates a pod (round-robin from a persisted cursor, so a freed block is reused as
//! late as possible), claims the persisted blocks of pods it re-adopts, and releases a block
//! once the pod is gone; pod-init writes the map, the sandbox chowns the pod's files. At start
//! the agent checks the range against `/etc/subuid` and `/etc/subgid` (`subid_overlap`).

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
    #[error(
        "podIdRangeStart {start} + podIdRangeSize {size} overlaps {file}:{line} ({entry:?}): that \
         user's subordinate ids would be ids of pods; move the range (or the entry)"
    )]
    SubidOverlap { start: u32, size: u32, file: String, line: usize, entry: String },
}

/// The default `podIdRangeStart`: 2000224256 (0x7739_0000), the first multiple of 65536
/// above 2000200000, so the default range stays clear of systemd's container ids
/// (524288..=1879048191), SSSD's default AD id mapping (200000..=2000200000), systemd's
/// "foreign" ids (from 2147352576 = 0x7FFE_0000) and everything from 2^31 on (ids some tools
/// take for negative), and far from 65534 and 4294967295. `/etc/subuid` and `/etc/subgid`
/// are checked at start.
pub const DEFAULT_RANGE_START: u32 = 0x7739_0000;

/// The default `podIdRangeSize`: 2245 blocks of 65536, up to systemd's foreign range.
pub const DEFAULT_RANGE_SIZE: u32 = 2245 * POD_IDS;

/// The first entry (line number from 1, the line) of an `/etc/subuid` or `/etc/subgid` text
/// (`name:start:count` lines) that overlaps `start..start + size`; malformed lines are skipped,
/// as newuidmap skips them.
pub fn subid_overlap(text: &str, start: u32, size: u32) -> Option<(usize, String)> {
    let (lo, hi) = (u64::from(start), u64::from(start) + u64::from(size));
    text.lines().enumerate().find_map(|(i, line)| {
        let mut f = line.trim().split(':');
        let (_, first, count) = (f.next()?, f.next()?.parse::<u64>().ok()?, f.next()?.parse::<u64>().ok()?);
        (count > 0 && first < hi && lo < first + count).then(|| (i + 1, line.trim().to_owned()))
    })
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

/// The configured range and the blocks in use. Blocks are handed out round-robin: the next
/// free block after the last one handed out, wrapping around. A released block is reused only
/// once every other block had its turn: files a deleted pod left behind (in a hostPath, owned by
/// its host ids) do not fall to the next pod at once.
#[derive(Clone, Debug)]
pub struct IdRanges {
    start: u32,
    blocks: u32,
    used: BTreeSet<u32>,
    /// The block index the next search starts at.
    next: u32,
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
        Ok(Self { start, blocks: size / POD_IDS, used: BTreeSet::new(), next: 0 })
    }

    /// Continues round-robin after `base`, the block last handed out (persisted by the agent;
    /// a base outside the range, which changed since, starts over at its first block).
    pub fn resume_after(&mut self, base: u32) {
        let block = base.checked_sub(self.start).map(|d| d / POD_IDS).filter(|k| *k < self.blocks);
        self.next = block.map_or(0, |k| (k + 1) % self.blocks);
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

    /// Hands out the next free block, round-robin; its base (to persist, for `resume_after`).
    pub fn allocate(&mut self) -> Result<u32, UsernsError> {
        let block = (self.next..self.blocks)
            .chain(0..self.next)
            .find(|k| self.fits(self.base_of(*k)))
            .ok_or(UsernsError::Exhausted { start: self.start, blocks: self.blocks })?;
        let base = self.base_of(block);
        self.used.insert(base);
        self.next = (block + 1) % self.blocks;
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

    /// The pod of this block is gone: the block can be handed out again, in its turn.
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
    fn freed_blocks_are_reused_as_late_as_possible() {
        let base = |k: u32| (1 << 30) + k * POD_IDS;
        let mut r = IdRanges::new(1 << 30, 4 * POD_IDS).expect("valid");
        assert_eq!((r.allocate().expect("a"), r.allocate().expect("b")), (base(0), base(1)));
        // A freed block waits for every other block's turn.
        r.release(base(0));
        assert_eq!(r.allocate().expect("c"), base(2));
        r.release(base(1));
        assert_eq!(r.allocate().expect("d"), base(3));
        // Then the search wraps around, skipping blocks in use.
        r.release(base(3));
        assert_eq!(r.allocate().expect("wraps"), base(0));
        assert_eq!(r.allocate().expect("next"), base(1));
        assert_eq!(r.allocate().expect("skips c"), base(3));
        assert!(r.allocate().is_err());
        // The cursor survives an agent restart through the last block handed out.
        let mut r = IdRanges::new(1 << 30, 4 * POD_IDS).expect("valid");
        r.resume_after(base(2));
        assert_eq!(r.allocate().expect("after the persisted block"), base(3));
        assert_eq!(r.allocate().expect("wraps"), base(0));
        // A base from another range (the configuration changed) starts over.
        for outside in [5, base(9), base(4)] {
            let mut r = IdRanges::new(1 << 30, 4 * POD_IDS).expect("valid");
            r.resume_after(outside);
            assert_eq!(r.allocate().expect("first block"), base(0), "{outside}");
        }
    }

    #[test]
    fn the_default_range_keeps_clear_of_other_id_users() {
        let (start, size) = (u64::from(DEFAULT_RANGE_START), u64::from(DEFAULT_RANGE_SIZE));
        IdRanges::new(DEFAULT_RANGE_START, DEFAULT_RANGE_SIZE).expect("valid");
        assert_eq!(start % u64::from(POD_IDS), 0);
        assert!(start > 1_879_048_191, "systemd's container ids end at 1879048191");
        assert!(start > 2_000_200_000, "SSSD's default AD id mapping ends at 2000200000");
        assert_eq!(start + size, 2_147_352_576, "ends where systemd's foreign ids begin");
        assert!(start + size <= 1 << 31, "below 2^31");
        assert!(size / u64::from(POD_IDS) >= 2048, "room for {} pods", size / u64::from(POD_IDS));
    }

    #[test]
    fn subordinate_id_entries_that_overlap_are_found() {
        let text = "alice:100000:65536\n\nbroken line\nbob:x:65536\ncarol:300000:0\n1001:200000:65536\n";
        assert_eq!(subid_overlap(text, 165_536, 200_000 - 165_536), None, "between two entries");
        assert_eq!(subid_overlap(text, 300_000, POD_IDS), None, "an empty entry");
        assert_eq!(subid_overlap(text, 100_000 - POD_IDS, POD_IDS), None, "just below");
        assert_eq!(subid_overlap(text, 131_072, POD_IDS), Some((1, "alice:100000:65536".into())));
        assert_eq!(subid_overlap(text, 0, u32::MAX).map(|(l, _)| l), Some(1));
        assert_eq!(subid_overlap(text, 196_608, POD_IDS), Some((6, "1001:200000:65536".into())));
        let e = UsernsError::SubidOverlap {
            start: 196_608,
            size: POD_IDS,
            file: "/etc/subuid".into(),
            line: 6,
            entry: "1001:200000:65536".into(),
        };
        let msg = e.to_string();
        assert!(msg.contains("podIdRangeStart 196608") && msg.contains("/etc/subuid:6"), "{msg}");
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

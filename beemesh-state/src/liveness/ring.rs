//! The ring every host builds from the same member list: members ordered by a hash of their id
//! (sha256 of the id's postcard encoding, the same on every platform and Rust version), so
//! every host agrees who watches whom: a host's watchers are the first k members after it that
//! are not dead, and it watches the first k before it.

use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// Members in ring order. Immutable once built; a detector holds it behind an `Arc`, so many
/// detectors (the simulator's 10,000) can share one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring<P> {
    slots: Vec<(u64, P)>,
}

impl<P> Default for Ring<P> {
    fn default() -> Ring<P> {
        Ring { slots: Vec::new() }
    }
}

/// The ring position of a host id; `None` for an id that does not serialise (a PeerId or an
/// integer always does).
pub fn ring_hash<P: Serialize>(p: &P) -> Option<u64> {
    let bytes = postcard::to_stdvec(p).ok()?;
    let d = Sha256::digest(&bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    Some(u64::from_be_bytes(first))
}

impl<P: Ord + Clone + Serialize> Ring<P> {
    /// The ring of `members` (duplicates, and ids that do not serialise, dropped).
    pub fn new(members: &[P]) -> Ring<P> {
        let mut slots: Vec<(u64, P)> =
            members.iter().filter_map(|p| Some((ring_hash(p)?, p.clone()))).collect();
        slots.sort_unstable();
        slots.dedup();
        Ring { slots }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The member at ring index `i` (taken modulo the size).
    pub fn at(&self, i: usize) -> &P {
        &self.slots[i % self.slots.len()].1
    }

    /// The ring index of `p`, if it is a member.
    pub fn position(&self, p: &P) -> Option<usize> {
        let h = ring_hash(p)?;
        self.slots.binary_search_by(|(sh, sp)| (*sh, sp).cmp(&(h, p))).ok()
    }

    pub fn contains(&self, p: &P) -> bool {
        self.position(p).is_some()
    }

    pub fn members(&self) -> impl Iterator<Item = &P> {
        self.slots.iter().map(|(_, p)| p)
    }

    /// Up to `k` members after (`forward`) or before index `from`, skipping those for which
    /// `skip` holds and `from` itself; walks the ring at most once.
    pub fn walk(&self, from: usize, forward: bool, k: usize, skip: impl Fn(&P) -> bool) -> Vec<P> {
        let n = self.slots.len();
        let mut out = Vec::with_capacity(k);
        for step in 1..n {
            if out.len() == k {
                break;
            }
            let i = if forward { (from + step) % n } else { (from + n - step % n) % n };
            let p = &self.slots[i].1;
            if !skip(p) {
                out.push(p.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_the_same_whatever_the_input_order() {
        let a = Ring::new(&[5u32, 1, 9, 3, 3]);
        let b = Ring::new(&[9u32, 3, 5, 1]);
        assert_eq!(a, b);
        assert_eq!(a.len(), 4);
        for p in [1u32, 3, 5, 9] {
            let i = a.position(&p).expect("member");
            assert_eq!(*a.at(i), p);
        }
        assert_eq!(a.position(&7), None);
    }

    #[test]
    fn walks_skip_and_wrap() {
        let ring = Ring::new(&(0u32..10).collect::<Vec<_>>());
        let order: Vec<u32> = ring.members().copied().collect();
        let after = ring.walk(8, true, 3, |_| false);
        assert_eq!(after, vec![order[9], order[0], order[1]]);
        let before = ring.walk(1, false, 3, |p| *p == order[9]);
        assert_eq!(before, vec![order[0], order[8], order[7]]);
        // Fewer than k when the ring is small; never the start itself.
        assert_eq!(ring.walk(0, true, 20, |_| false).len(), 9);
    }
}

//! Rendezvous hashing: who owns a workload, and which hosts a slot's tender goes to
//! (`docs/scheduling.md`, *Roles* and *Messages*). Every host computes the same answers from the
//! same view; a host joining or leaving moves only what it wins or held.

/// A stable 64-bit hash of bytes (FNV-1a, then mixed): the same on every host and build.
pub fn hash_str(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
    mix(h)
}

/// splitmix64's finalizer.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The rendezvous score of `host` for `key` (both hashed).
pub fn score(key: u64, host: u64) -> u64 {
    mix(key ^ mix(host))
}

/// The owner of `key` among `hosts` (their hashes): the highest score, ties to the lower hash.
/// `None` when there are no hosts.
pub fn owner<'a, H>(key: u64, hosts: impl IntoIterator<Item = (&'a H, u64)>) -> Option<&'a H> {
    hosts
        .into_iter()
        .map(|(h, hh)| ((score(key, hh), std::cmp::Reverse(hh)), h))
        .max_by_key(|(s, _)| *s)
        .map(|(_, h)| h)
}

/// Weighted rendezvous: the `k` hosts of highest `w / -ln(u)` (u the score as a unit
/// fraction, w the host's weight in (0, 1]), best first. A host of weight twice another's is
/// chosen about twice as often, and the choice for one key moves little when hosts come and go.
pub fn top_k<H: Clone>(key: u64, hosts: impl IntoIterator<Item = (H, u64, f64)>, k: usize) -> Vec<H> {
    let mut ranked: Vec<(f64, u64, H)> = hosts
        .into_iter()
        .map(|(h, hh, w)| {
            // In (0, 1): never 0, whose logarithm is infinite.
            let u = ((score(key, hh) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            (w.max(1e-6) / -u.ln(), hh, h)
        })
        .collect();
    let by = |a: &(f64, u64, H), b: &(f64, u64, H)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    if ranked.len() > k {
        ranked.select_nth_unstable_by(k, by);
        ranked.truncate(k);
    }
    ranked.sort_by(by);
    // A new vector: collecting in place would keep the capacity of every host's entry (at
    // 10,000 hosts, 240 KB held by each open tender for its 16 candidates).
    let mut top = Vec::with_capacity(ranked.len());
    top.extend(ranked.into_iter().map(|(_, _, h)| h));
    top
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_is_the_same_from_any_order_and_moves_only_when_it_leaves() {
        let hosts: Vec<(String, u64)> =
            (0..50).map(|i| (format!("h{i}"), hash_str(&format!("h{i}")))).collect();
        let key = hash_str("default/web");
        let a = owner(key, hosts.iter().map(|(h, x)| (h, *x))).cloned();
        let b = owner(key, hosts.iter().rev().map(|(h, x)| (h, *x))).cloned();
        assert_eq!(a, b);
        // Another host leaving does not move it.
        let without: Vec<_> = hosts.iter().filter(|(h, _)| Some(h) != a.as_ref() && h != "h7").collect();
        let fewer: Vec<_> = hosts.iter().filter(|(h, _)| h != "h7" || Some(h) == a.as_ref()).collect();
        assert_eq!(owner(key, fewer.iter().map(|(h, x)| (h, *x))).cloned(), a);
        // Its leaving moves it to another host.
        assert_ne!(owner(key, without.iter().map(|(h, x)| (h, *x))).cloned(), a);
    }

    #[test]
    fn candidates_follow_the_weights_and_spread_over_hosts() {
        let hosts: Vec<(usize, u64, f64)> =
            (0..100).map(|i| (i, hash_str(&format!("h{i}")), if i < 50 { 1.0 } else { 0.5 })).collect();
        let mut heavy = 0;
        let mut seen = std::collections::BTreeSet::new();
        for slot in 0..2000 {
            let top = top_k(hash_str(&format!("slot-{slot}")), hosts.iter().copied(), 4);
            assert_eq!(top.len(), 4);
            heavy += top.iter().filter(|h| **h < 50).count();
            seen.extend(top);
        }
        // Twice the weight: about two thirds of the choices.
        assert!((4800..6000).contains(&heavy), "{heavy} of 8000");
        assert_eq!(seen.len(), 100, "every host is somebody's candidate");
        assert_eq!(top_k(1, hosts.iter().copied(), 500).len(), 100);
    }
}

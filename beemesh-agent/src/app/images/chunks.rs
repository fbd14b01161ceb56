//! Sans-IO choices of a pull: which image a tag means across the holder records, and which
//! chunk of a blob to ask which holder for next (BitTorrent-like: the blob in fixed chunks,
//! a bounded window per holder, new requests to the least loaded live holder, a failed
//! chunk back in the queue for another one, a holder that keeps failing dropped). The driver
//! (`app::images::pull`) does the requests and the writes.

use std::collections::BTreeMap;

use crate::image::HeldImage;

/// Bytes per chunk request (the mesh's responses carry at most 8 MiB).
pub const CHUNK: u64 = 4 * 1024 * 1024;
/// Chunk requests in flight to one holder at once.
pub const PER_HOLDER: usize = 4;
/// Failures in a row after which a holder is left out of the rest of a blob. After a failure
/// a holder gets one request at a time until one succeeds, so its failures come one by one.
pub const HOLDER_FAILURES: u32 = 6;

/// The image `tag` names across the records `(holder, images)`: the image id most holders
/// hold under it (ties: the smallest id), with those holders in order. `None` when nobody
/// holds the tag.
pub fn choose<'a, H: Clone + Ord>(
    tag: &str,
    records: impl IntoIterator<Item = (H, &'a [HeldImage])>,
) -> Option<(HeldImage, Vec<H>)> {
    let mut by_id: BTreeMap<String, (HeldImage, Vec<H>)> = BTreeMap::new();
    for (holder, images) in records {
        if let Some(image) = images.iter().find(|i| i.tag == tag) {
            by_id.entry(image.id.clone()).or_insert_with(|| (image.clone(), Vec::new())).1.push(holder);
        }
    }
    let best = by_id.values().map(|(_, h)| h.len()).max()?;
    let (image, mut holders) = by_id.into_values().find(|(_, h)| h.len() == best)?;
    holders.sort();
    holders.dedup();
    Some((image, holders))
}

/// One chunk to ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ask<H> {
    pub index: usize,
    pub offset: u64,
    pub len: u64,
    pub holder: H,
}

#[derive(Debug)]
struct Holder<H> {
    id: H,
    in_flight: usize,
    asked: u64,
    failures: u32,
}

/// The chunks of one blob: which are done, which are asked for and from whom.
#[derive(Debug)]
pub struct Fetch<H> {
    size: u64,
    chunk: u64,
    done: Vec<bool>,
    asked: Vec<bool>,
    holders: Vec<Holder<H>>,
    per_holder: usize,
}

/// Chunks of `chunk` bytes in a blob of `size`.
pub fn chunk_count(size: u64, chunk: u64) -> usize {
    size.div_ceil(chunk.max(1)) as usize
}

impl<H: Clone + PartialEq> Fetch<H> {
    /// A blob of `size` bytes in chunks of `chunk`, `done` the chunks already written (a
    /// resumed pull; ignored unless it has one entry per chunk), from `holders`.
    pub fn new(size: u64, chunk: u64, done: Vec<bool>, holders: Vec<H>, per_holder: usize) -> Self {
        let n = chunk_count(size, chunk);
        let done = if done.len() == n { done } else { vec![false; n] };
        Self {
            size,
            chunk: chunk.max(1),
            asked: vec![false; n],
            done,
            holders: holders
                .into_iter()
                .map(|id| Holder { id, in_flight: 0, asked: 0, failures: 0 })
                .collect(),
            per_holder: per_holder.max(1),
        }
    }

    pub fn done(&self) -> &[bool] {
        &self.done
    }

    /// Bytes of the chunks done.
    pub fn done_bytes(&self) -> u64 {
        (0..self.done.len()).filter(|i| self.done[*i]).map(|i| self.len_of(i)).sum()
    }

    fn len_of(&self, index: usize) -> u64 {
        let offset = index as u64 * self.chunk;
        self.chunk.min(self.size - offset)
    }

    /// Every chunk is done.
    pub fn finished(&self) -> bool {
        self.done.iter().all(|d| *d)
    }

    /// Nothing in flight, chunks left and no holder left to ask: the pull cannot finish.
    pub fn stuck(&self) -> bool {
        !self.finished()
            && self.holders.iter().all(|h| h.in_flight == 0)
            && !self.holders.iter().any(|h| h.failures < HOLDER_FAILURES)
    }

    /// The next chunk to ask for and whom, or `None` while the window is full (or nothing
    /// is left to ask).
    pub fn next(&mut self) -> Option<Ask<H>> {
        let index = (0..self.done.len()).find(|i| !self.done[*i] && !self.asked[*i])?;
        let per_holder = self.per_holder;
        let holder = self
            .holders
            .iter_mut()
            .filter(|h| {
                h.failures < HOLDER_FAILURES && h.in_flight < if h.failures > 0 { 1 } else { per_holder }
            })
            .min_by_key(|h| (h.in_flight, h.asked))?;
        holder.in_flight += 1;
        holder.asked += 1;
        let id = holder.id.clone();
        self.asked[index] = true;
        Some(Ask { index, offset: index as u64 * self.chunk, len: self.len_of(index), holder: id })
    }

    fn holder(&mut self, id: &H) -> Option<&mut Holder<H>> {
        self.holders.iter_mut().find(|h| h.id == *id)
    }

    /// `ask` was answered and written.
    pub fn completed(&mut self, ask: &Ask<H>) {
        if let Some(h) = self.holder(&ask.holder) {
            h.in_flight = h.in_flight.saturating_sub(1);
            h.failures = 0;
        }
        self.done[ask.index] = true;
        self.asked[ask.index] = false;
    }

    /// `ask` failed: the chunk goes back in the queue (another holder takes it when this one
    /// keeps failing).
    pub fn failed(&mut self, ask: &Ask<H>) {
        if let Some(h) = self.holder(&ask.holder) {
            h.in_flight = h.in_flight.saturating_sub(1);
            h.failures += 1;
        }
        self.asked[ask.index] = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::BlobRef;

    fn image(tag: &str, id: &str) -> HeldImage {
        HeldImage {
            tag: tag.into(),
            id: id.into(),
            config: BlobRef { digest: id.into(), size: 10 },
            layers: Vec::new(),
        }
    }

    #[test]
    fn a_tag_means_the_image_most_holders_hold() {
        let a = [image("web:1", "sha256:b"), image("db:1", "sha256:d")];
        let b = [image("web:1", "sha256:b")];
        let c = [image("web:1", "sha256:a")];
        let records = [("h1", &a[..]), ("h3", &c[..]), ("h2", &b[..])];
        let (img, holders) = choose("web:1", records).expect("held");
        assert_eq!((img.id.as_str(), holders), ("sha256:b", vec!["h1", "h2"]));
        assert!(choose("nope:1", records).is_none());
        // A tie: the smallest id.
        let (img, holders) = choose("web:1", [("h3", &c[..]), ("h2", &b[..])]).expect("held");
        assert_eq!((img.id.as_str(), holders), ("sha256:a", vec!["h3"]));
    }

    #[test]
    fn chunks_spread_over_holders_within_the_window() {
        let mut f = Fetch::new(10 * CHUNK + 5, CHUNK, Vec::new(), vec!["a", "b"], 2);
        let asks: Vec<Ask<&str>> = std::iter::from_fn(|| f.next()).collect();
        assert_eq!(asks.len(), 4, "two per holder in flight");
        assert_eq!(asks.iter().filter(|a| a.holder == "a").count(), 2);
        assert_eq!(asks.iter().filter(|a| a.holder == "b").count(), 2);
        assert_eq!(asks.iter().map(|a| a.index).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        for a in &asks {
            f.completed(a);
        }
        let mut all = asks;
        while let Some(a) = f.next() {
            f.completed(&a);
            all.push(a);
        }
        assert!(f.finished());
        let last = all.iter().find(|a| a.index == 10).expect("last chunk");
        assert_eq!((last.offset, last.len), (10 * CHUNK, 5));
        assert_eq!(f.done_bytes(), 10 * CHUNK + 5);
        let from_a = all.iter().filter(|a| a.holder == "a").count();
        assert!((5..=6).contains(&from_a), "{from_a} of 11 from a");
    }

    #[test]
    fn a_holder_that_failed_gets_one_request_at_a_time_until_it_succeeds() {
        let mut f = Fetch::new(8 * CHUNK, CHUNK, Vec::new(), vec!["a"], 4);
        let first: Vec<Ask<&str>> = std::iter::from_fn(|| f.next()).collect();
        assert_eq!(first.len(), 4);
        for a in &first {
            f.failed(a);
        }
        let probe = f.next().expect("one probe");
        assert!(f.next().is_none(), "one at a time after failures");
        f.completed(&probe);
        assert_eq!(std::iter::from_fn(|| f.next()).count(), 4, "the window reopens after a success");
    }

    #[test]
    fn a_failing_holders_chunks_go_to_another() {
        let mut f = Fetch::new(4 * CHUNK, CHUNK, Vec::new(), vec!["bad", "good"], 4);
        for _ in 0..60 {
            let Some(a) = f.next() else { break };
            if a.holder == "bad" {
                f.failed(&a);
            } else {
                f.completed(&a);
            }
            if f.finished() {
                break;
            }
        }
        assert!(f.finished(), "{:?}", f.done());
        assert!(!f.stuck());
    }

    #[test]
    fn nobody_left_to_ask_is_stuck_and_a_resumed_fetch_skips_done_chunks() {
        let mut f = Fetch::new(3 * CHUNK, CHUNK, Vec::new(), vec!["x"], 1);
        for _ in 0..HOLDER_FAILURES {
            let a = f.next().expect("asks");
            f.failed(&a);
        }
        assert!(f.next().is_none());
        assert!(f.stuck());

        let mut f = Fetch::new(3 * CHUNK, CHUNK, vec![true, false, true], vec!["x"], 4);
        assert_eq!(f.done_bytes(), 2 * CHUNK);
        let a = f.next().expect("the missing chunk");
        assert_eq!(a.index, 1);
        assert!(f.next().is_none());
        f.completed(&a);
        assert!(f.finished());
        // A record of another shape is ignored.
        let f = Fetch::new(3 * CHUNK, CHUNK, vec![true], vec!["x"], 4);
        assert_eq!(f.done_bytes(), 0);
    }
}

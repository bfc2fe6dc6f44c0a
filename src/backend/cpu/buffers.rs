//! A process-wide pool of large host buffers. A CPU tensor's buffer goes back here when the
//! tensor is dropped, and the next op's output of a similar size reuses it: in steady state a
//! forward or training pass allocates (and page-faults, and zeroes) nothing, where a fresh
//! `vec![0.0; n]` of a few MiB would be a new `mmap` per layer.
//!
//! A taken buffer holds stale values from its last use: only outputs that are written in full
//! before being read take one, so results never depend on the pool.

use std::sync::Mutex;

/// Buffers smaller than this (floats) are left to the allocator, which reuses them cheaply.
const MIN_POOLED: usize = 1 << 14;
/// Floats the pool holds at most (256 MiB): bounds what an idle process keeps.
const MAX_HELD: usize = 1 << 26;
/// A buffer is reused only for requests of at least this fraction of its capacity (so a big
/// buffer is not tied up by a small tensor).
const MIN_FILL_DIV: usize = 2;

/// A set of idle buffers; the process uses one (`take` / `give` below).
struct Pool(Mutex<Vec<Vec<f32>>>);

static POOL: Pool = Pool(Mutex::new(Vec::new()));

/// A buffer of `len` floats with unspecified (stale, finite or not) contents: the caller must
/// write every element before reading it.
pub fn take(len: usize) -> Vec<f32> {
    POOL.take(len)
}

/// Hands a buffer back (called when a CPU tensor is dropped). Small buffers are freed; when the
/// pool would exceed its cap, its smallest buffers are freed first.
pub fn give(v: Vec<f32>) {
    POOL.give(v)
}

impl Pool {
    fn take(&self, len: usize) -> Vec<f32> {
        if len >= MIN_POOLED {
            let found = self.0.lock().ok().and_then(|mut pool| {
                let fits = |v: &Vec<f32>| v.capacity() >= len && v.capacity() / MIN_FILL_DIV <= len;
                let best = (0..pool.len()).filter(|&i| fits(&pool[i])).min_by_key(|&i| pool[i].capacity());
                best.map(|i| pool.swap_remove(i))
            });
            if let Some(mut v) = found {
                // Already `capacity >= len` floats long or longer: truncating or growing within
                // the capacity touches no allocator.
                if v.len() >= len {
                    v.truncate(len);
                } else {
                    v.resize(len, 0.0);
                }
                return v;
            }
        }
        vec![0.0; len]
    }

    fn give(&self, v: Vec<f32>) {
        if v.capacity() < MIN_POOLED || v.capacity() > MAX_HELD {
            return;
        }
        let Ok(mut pool) = self.0.lock() else { return };
        pool.push(v);
        let mut held: usize = pool.iter().map(|b| b.capacity()).sum();
        while held > MAX_HELD {
            let smallest = (0..pool.len()).min_by_key(|&i| pool[i].capacity()).expect("non-empty");
            held -= pool.swap_remove(smallest).capacity();
        }
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.0.lock().map(|p| p.iter().map(|b| b.capacity()).sum()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Pool {
        Pool(Mutex::new(Vec::new()))
    }

    #[test]
    fn reuses_a_returned_buffer_of_similar_size_only() {
        let p = pool();
        let big = 4 * MIN_POOLED;
        let v = p.take(big);
        assert_eq!(v.len(), big);
        let ptr = v.as_ptr();
        p.give(v);
        // A request of at least half its capacity gets the same buffer back.
        let w = p.take(big - 7);
        assert_eq!((w.len(), w.as_ptr()), (big - 7, ptr));
        p.give(w);
        // A much smaller one does not tie it up.
        let small = p.take(MIN_POOLED);
        assert_ne!(small.as_ptr(), ptr);
        assert_eq!(p.held(), big);
    }

    #[test]
    fn small_buffers_are_not_kept_and_the_cap_holds() {
        let p = pool();
        p.give(vec![0.0; MIN_POOLED - 1]);
        assert_eq!(p.held(), 0);
        for _ in 0..6 {
            p.give(Vec::with_capacity(MAX_HELD / 4));
        }
        assert!(p.held() <= MAX_HELD);
        assert!(p.held() >= MAX_HELD / 2);
    }
}

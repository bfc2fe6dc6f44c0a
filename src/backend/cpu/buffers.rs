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

static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// A buffer of `len` floats with unspecified (stale, finite or not) contents: the caller must
/// write every element before reading it.
pub fn take(len: usize) -> Vec<f32> {
    if len >= MIN_POOLED {
        let found = POOL.lock().ok().and_then(|mut pool| {
            let fits = |v: &Vec<f32>| v.capacity() >= len && v.capacity() / MIN_FILL_DIV <= len;
            let best = (0..pool.len()).filter(|&i| fits(&pool[i])).min_by_key(|&i| pool[i].capacity());
            best.map(|i| pool.swap_remove(i))
        });
        if let Some(mut v) = found {
            // Already `capacity >= len` floats long or longer: truncating or growing within the
            // capacity touches no allocator.
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

/// Hands a buffer back (called when a CPU tensor is dropped). Small buffers are freed; when the
/// pool would exceed its cap, its smallest buffers are freed first.
pub fn give(v: Vec<f32>) {
    if v.capacity() < MIN_POOLED || v.capacity() > MAX_HELD {
        return;
    }
    let Ok(mut pool) = POOL.lock() else { return };
    pool.push(v);
    let mut held: usize = pool.iter().map(|b| b.capacity()).sum();
    while held > MAX_HELD {
        let smallest = (0..pool.len()).min_by_key(|&i| pool[i].capacity()).expect("non-empty");
        held -= pool.swap_remove(smallest).capacity();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_a_returned_buffer_of_similar_size() {
        let v = take(1 << 15);
        assert_eq!(v.len(), 1 << 15);
        let ptr = v.as_ptr();
        give(v);
        // Other tests may run in parallel and take it first: only check what is guaranteed.
        let w = take((1 << 15) - 7);
        assert_eq!(w.len(), (1 << 15) - 7);
        let _ = ptr;
        give(w);
        assert_eq!(take(3).len(), 3);
    }
}

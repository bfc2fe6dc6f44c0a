//! A process-wide pool of large host buffers. A CPU tensor's buffer goes back here when the
//! tensor is dropped, and the next op's output of a similar size reuses it: in steady state a
//! forward or training pass allocates (and page-faults, and zeroes) nothing, where a fresh
//! `vec![0.0; n]` of a few MiB would be a new `mmap` per layer.
//!
//! A taken buffer holds stale values from its last use: only outputs that are written in full
//! before being read take one (or clear it first), so results never depend on the pool.
//!
//! Buffers are allocated in size classes (eight per power of two, at most 12.5% slack) and a
//! request is served only from its own class: a training step asks for the same sizes in the
//! same order every time, so from the second step on every request finds its buffer. (A
//! best-fit pool let small requests take larger buffers, the larger requests then missed, and
//! the process kept faulting in fresh pages for a dozen steps.)

use std::sync::Mutex;

/// Buffers smaller than this (floats) are left to the allocator, which reuses them cheaply.
const MIN_POOLED: usize = 1 << 14;
/// Floats the pool holds at most (1 GiB): bounds what an idle process keeps, and holds the
/// buffers of a ResNet-56 training step at batch 128.
const MAX_HELD: usize = 1 << 28;

/// The capacity requests of `len` floats are allocated with: `len` rounded up to an eighth of
/// its power of two.
fn size_class(len: usize) -> usize {
    if len < MIN_POOLED {
        return len;
    }
    let step = 1usize << (usize::BITS - 1 - len.leading_zeros()).saturating_sub(3);
    len.next_multiple_of(step)
}

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
                let class = size_class(len);
                let fits = |v: &Vec<f32>| v.capacity() >= len && v.capacity() <= class;
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
        let mut v = Vec::with_capacity(size_class(len));
        v.resize(len, 0.0);
        v
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
    fn reuses_a_returned_buffer_of_its_size_class_only() {
        let p = pool();
        let big = 4 * MIN_POOLED + 5;
        let v = p.take(big);
        assert_eq!((v.len(), v.capacity()), (big, size_class(big)));
        let ptr = v.as_ptr();
        p.give(v);
        // A request of the same class gets the same buffer back.
        let w = p.take(big - 3);
        assert_eq!((w.len(), w.as_ptr()), (big - 3, ptr));
        p.give(w);
        // A smaller one (another class) does not tie it up, nor does a larger one.
        let small = p.take(4 * MIN_POOLED - 1);
        assert_ne!(small.as_ptr(), ptr);
        let large = p.take(size_class(big) + 1);
        assert_ne!(large.as_ptr(), ptr);
        assert_eq!(p.held(), size_class(big));
    }

    #[test]
    fn size_classes_waste_at_most_an_eighth() {
        for len in [MIN_POOLED, MIN_POOLED + 1, 3 * MIN_POOLED + 17, (1 << 20) - 1, 1 << 20, (1 << 20) + 1] {
            let class = size_class(len);
            assert!(class >= len && class - len <= len / 8, "{len} -> {class}");
            assert_eq!(size_class(class), class, "a class is its own class");
        }
        assert_eq!(size_class(100), 100, "small requests are left alone");
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

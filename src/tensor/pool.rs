//! A process-wide pool of large host buffers. A CPU tensor's buffer goes back here when the
//! tensor is dropped, and the next op's output of a similar size reuses it (the CPU backend takes
//! its outputs from here; the pool itself knows no backend): in steady state a forward or
//! training pass allocates (and page-faults, and zeroes) nothing, where a fresh
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

use std::collections::HashMap;
use std::sync::Mutex;

/// Buffers smaller than this (floats) are left to the allocator: below it, zeroing a fresh one
/// costs about as much as finding one here.
const MIN_POOLED: usize = 1 << 10;
/// Floats the pool holds at most in buffers below `LARGE` (1 GiB): bounds what an idle process
/// keeps, and holds the buffers of a ResNet-56 training step at batch 128. Raising it for them
/// made things worse: the search's candidates come in many sizes, and buffers of sizes no longer
/// asked for were kept where the allocator would have reused their pages (`lfgcl demo` 35 -> 52
/// s, 0.9 -> 2.9 million page faults, with a 6 GiB cap).
const MAX_HELD_SMALL: usize = 1 << 28;
/// Buffers of at least this many floats (32 MiB) are `LARGE`: the allocator maps each afresh and
/// unmaps it when freed, so one the pool lets go is faulted in again on its next use.
const LARGE: usize = 1 << 23;
/// Floats the large buffers' cap takes at least and at most (1 and 8 GiB).
const HELD_FLOOR: usize = 1 << 28;
const HELD_CEILING: usize = 1 << 31;

/// Floats the pool holds at most in `LARGE` buffers: a quarter of the machine's memory, within 1
/// to 8 GiB. A ResNet-50 training step at batch 32 at 224x224 keeps 5-6 GB resident, mostly in
/// such buffers; with them capped at 1 GiB every step mapped and faulted in again what the cap
/// had freed (on a 2-vCPU Xeon VM 6.4-6.5 s a step, against 5.0 s with them kept: 4.5 against
/// 1.8 million page faults in 7 steps).
fn max_held_large() -> usize {
    static CAP: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| {
        let total_bytes = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
            let kib = m.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?;
            kib.parse::<usize>().ok()?.checked_mul(1024)
        });
        total_bytes.map_or(HELD_FLOOR, |b| (b / 4 / std::mem::size_of::<f32>()).clamp(HELD_FLOOR, HELD_CEILING))
    })
}

/// The capacity requests of `len` floats are allocated with: `len` rounded up to an eighth of
/// its power of two.
fn size_class(len: usize) -> usize {
    if len < MIN_POOLED {
        return len;
    }
    let step = 1usize << (usize::BITS - 1 - len.leading_zeros()).saturating_sub(3);
    len.next_multiple_of(step)
}

/// The largest class a buffer of capacity `cap` can serve: every request of that class fits.
fn class_below(cap: usize) -> usize {
    let class = size_class(cap);
    if class == cap {
        return cap;
    }
    // The class below `class`: one step of `cap`'s power of two down.
    let step = 1usize << (usize::BITS - 1 - cap.leading_zeros()).saturating_sub(3);
    class - step
}

/// Idle buffers by size class, and the floats they hold below and from `LARGE` (each under its
/// own cap).
#[derive(Default)]
struct Held {
    by_class: HashMap<usize, Vec<Vec<f32>>>,
    floats: usize,
    large_floats: usize,
}

/// A set of idle buffers; the process uses one (`take` / `give` below).
struct Pool(Mutex<Option<Held>>);

static POOL: Pool = Pool(Mutex::new(None));

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

impl Held {
    /// The floats held on the side (below or from `LARGE`) a buffer belongs to.
    fn kept(&mut self, large: bool) -> &mut usize {
        if large {
            &mut self.large_floats
        } else {
            &mut self.floats
        }
    }

    /// Accounts for a buffer of capacity `cap` leaving the pool.
    fn remove(&mut self, cap: usize) {
        *self.kept(cap >= LARGE) -= cap;
    }
}

impl Pool {
    fn take(&self, len: usize) -> Vec<f32> {
        if len >= MIN_POOLED {
            let class = size_class(len);
            let found = self.0.lock().ok().and_then(|mut held| {
                let held = held.as_mut()?;
                let v = held.by_class.get_mut(&class)?.pop()?;
                held.remove(v.capacity());
                Some(v)
            });
            if let Some(mut v) = found {
                // Within the capacity: no allocator call. Growing clears only the floats past
                // the buffer's last length (a request of the same size, the usual case, none).
                if v.len() >= len {
                    v.truncate(len);
                } else {
                    v.resize(len, 0.0);
                }
                return v;
            }
            let mut v = Vec::with_capacity(class);
            v.resize(len, 0.0);
            return v;
        }
        vec![0.0f32; len]
    }

    fn give(&self, v: Vec<f32>) {
        let cap = v.capacity();
        let large = cap >= LARGE;
        let max_held = if large { max_held_large() } else { MAX_HELD_SMALL };
        if !(MIN_POOLED..=max_held).contains(&cap) {
            return;
        }
        let Ok(mut guard) = self.0.lock() else { return };
        let held = guard.get_or_insert_with(Held::default);
        *held.kept(large) += cap;
        held.by_class.entry(class_below(cap)).or_default().push(v);
        // Over its cap, a side frees its smallest buffers first.
        while *held.kept(large) > max_held {
            let smallest =
                held.by_class.iter().filter(|(&c, b)| !b.is_empty() && (c >= LARGE) == large).map(|(&c, _)| c).min();
            let Some(b) = smallest.and_then(|c| held.by_class.get_mut(&c)).and_then(|b| b.pop()) else { break };
            held.remove(b.capacity());
        }
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.0.lock().map(|p| p.as_ref().map_or(0, |h| h.floats + h.large_floats)).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Pool {
        Pool(Mutex::new(None))
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
    fn a_buffer_from_outside_serves_the_class_below_its_capacity() {
        let p = pool();
        let class = size_class(5 * MIN_POOLED + 1);
        let v: Vec<f32> = Vec::with_capacity(class + 3);
        let (ptr, cap) = (v.as_ptr(), v.capacity());
        assert!(size_class(cap) != cap && class_below(cap) == class);
        p.give(v);
        // Every request of that class fits in it; the class above would not.
        let w = p.take(class);
        assert_eq!((w.as_ptr(), w.len()), (ptr, class));
        assert!(w.iter().all(|&x| x == 0.0), "floats never written before are cleared");
        p.give(w);
        let larger = p.take(size_class(class + 1));
        assert_ne!(larger.as_ptr(), ptr);
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
        // Reserved, never touched: no memory is used. Buffers below `LARGE` under their cap:
        for _ in 0..6 * (MAX_HELD_SMALL / LARGE) {
            p.give(Vec::with_capacity(LARGE / 2));
        }
        let small = p.held();
        assert!((MAX_HELD_SMALL / 2..=MAX_HELD_SMALL).contains(&small), "{small}");
        // and large ones under theirs, which leaves the small ones alone.
        let cap = max_held_large();
        assert!((HELD_FLOOR..=HELD_CEILING).contains(&cap), "cap {cap}");
        for _ in 0..6 {
            p.give(Vec::with_capacity(cap / 4));
        }
        let large = p.held() - small;
        assert!((cap / 2..=cap).contains(&large), "{large} of {cap}");
    }
}

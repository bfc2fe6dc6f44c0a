//! A fork-join team for short parallel regions: the convolutions of a batch-1 forward, where
//! each region lasts a few microseconds and there are about forty per image.
//!
//! rayon hands a region's second half to an idle worker that sleeps between yields
//! (`sched_yield`, then a futex), so a region costs microseconds of hand-off, and a batch-1
//! ResNet-20 on 2 cores spent about a fifth of its samples waiting. Here the helpers spin on
//! one counter for a while after each region (then park), the caller publishes a job by
//! bumping it, and everyone claims task indices from an atomic counter: a hand-off costs a
//! cache-line transfer.
//!
//! Tasks must write disjoint outputs: which thread runs a task changes no arithmetic, so the
//! results are those of a serial loop, whatever the thread count. One region runs at a time;
//! a region started while the team is busy (a nested or concurrent call) runs serially on its
//! caller, which can never deadlock. A panic in a task is raised again on the caller after
//! every task has finished.
//!
//! The team grows on demand to `rayon::current_num_threads() - 1` helpers of the calling pool,
//! so `--threads` bounds it too. Callers send only short regions here (`for_each_on`): on long
//! ones, such as a training step's, a spinning helper would compete with rayon's workers for
//! the cores (measured: no gain at batch 64 and 128, while batch 1 gains 2-5%).

use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle helper spins before it parks: longer than the gap between two regions of
/// a forward pass, short enough not to hold a core through other work.
const SPIN: Duration = Duration::from_micros(200);

/// One region: `f(i)` for `i < n`.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    n: usize,
    /// Helpers with an id below this take part (the caller's pool may be smaller than the team).
    helpers: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

impl Job<'_> {
    /// Claims and runs tasks until none are left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, SeqCst);
            if i >= self.n {
                return;
            }
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| (self.f)(i))) {
                self.panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(p);
            }
            self.done.fetch_add(1, SeqCst);
        }
    }
}

struct Team {
    /// A region holds the team (one at a time).
    busy: AtomicBool,
    /// Odd while a job is published in `job`.
    epoch: AtomicUsize,
    job: AtomicPtr<Job<'static>>,
    /// Helpers between seeing an odd epoch and leaving its job: the caller waits for zero
    /// before its job (on its stack) goes away.
    active: AtomicUsize,
    /// Helpers spawned so far.
    helpers: Mutex<usize>,
    /// Parked helpers, and where they wait.
    parked: AtomicUsize,
    park_lock: Mutex<()>,
    wake: Condvar,
}

thread_local! {
    /// Set on the team's own threads: a region started from a task runs serially.
    static IS_HELPER: Cell<bool> = const { Cell::new(false) };
}

fn team() -> &'static Team {
    static TEAM: OnceLock<Team> = OnceLock::new();
    TEAM.get_or_init(|| Team {
        busy: AtomicBool::new(false),
        epoch: AtomicUsize::new(0),
        job: AtomicPtr::new(std::ptr::null_mut()),
        active: AtomicUsize::new(0),
        helpers: Mutex::new(0),
        parked: AtomicUsize::new(0),
        park_lock: Mutex::new(()),
        wake: Condvar::new(),
    })
}

impl Team {
    /// Spawns helpers up to `want` (a helper that cannot be spawned is simply not there).
    fn grow(&'static self, want: usize) -> usize {
        let mut have = self.helpers.lock().unwrap_or_else(|e| e.into_inner());
        while *have < want {
            let id = *have;
            let spawned = std::thread::Builder::new()
                .name(format!("lfgcl-team-{id}"))
                .stack_size(8 << 20)
                .spawn(move || self.helper(id));
            if spawned.is_err() {
                break;
            }
            *have += 1;
        }
        *have
    }

    fn helper(&'static self, id: usize) {
        IS_HELPER.with(|h| h.set(true));
        let mut seen = self.epoch.load(SeqCst);
        loop {
            seen = self.next_epoch(seen);
            if seen.is_multiple_of(2) {
                continue;
            }
            self.active.fetch_add(1, SeqCst);
            // The caller retires its job by making the epoch even, then waits for `active` to
            // drop to zero: a job seen here after that check is never read.
            if self.epoch.load(SeqCst) == seen {
                // SAFETY: the epoch is still the one the job was published under, and the
                // caller keeps the job alive until `active` is back to zero.
                let job = unsafe { &*self.job.load(SeqCst) };
                if id < job.helpers {
                    job.work();
                }
            }
            self.active.fetch_sub(1, SeqCst);
        }
    }

    /// Waits for the epoch to move past `seen`: spins for `SPIN`, then parks.
    fn next_epoch(&self, seen: usize) -> usize {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let e = self.epoch.load(SeqCst);
            if e != seen {
                return e;
            }
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) && start.elapsed() > SPIN {
                break;
            }
        }
        let mut guard = self.park_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.parked.fetch_add(1, SeqCst);
        while self.epoch.load(SeqCst) == seen {
            guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
        self.parked.fetch_sub(1, SeqCst);
        self.epoch.load(SeqCst)
    }
}

/// Runs `f(i)` for every `i < n`, spread over the calling pool's threads (see the module
/// documentation); returns when all have run.
pub fn for_each<F: Fn(usize) + Sync>(n: usize, f: F) {
    let threads = rayon::current_num_threads();
    if n <= 1 || threads <= 1 || IS_HELPER.with(|h| h.get()) {
        return (0..n).for_each(f);
    }
    let team = team();
    if team.busy.compare_exchange(false, true, SeqCst, SeqCst).is_err() {
        return (0..n).for_each(f);
    }
    let helpers = team.grow(threads - 1).min(threads - 1);
    let job = Job { f: &f, n, helpers, next: AtomicUsize::new(0), done: AtomicUsize::new(0), panic: Mutex::new(None) };
    // The pointer's lifetime is erased: helpers only read the job between the two epoch bumps
    // below, and this function returns only after the second one and `active == 0`.
    team.job.store(&job as *const Job as *mut Job<'static>, SeqCst);
    team.epoch.fetch_add(1, SeqCst);
    if team.parked.load(SeqCst) > 0 {
        drop(team.park_lock.lock().unwrap_or_else(|e| e.into_inner()));
        team.wake.notify_all();
    }
    job.work();
    while job.done.load(SeqCst) < n {
        std::hint::spin_loop();
    }
    team.epoch.fetch_add(1, SeqCst);
    while team.active.load(SeqCst) != 0 {
        std::hint::spin_loop();
    }
    team.job.store(std::ptr::null_mut(), SeqCst);
    team.busy.store(false, SeqCst);
    if let Some(p) = job.panic.into_inner().unwrap_or_else(|e| e.into_inner()) {
        resume_unwind(p);
    }
}

/// Below this many images a convolution's regions are short enough for the team.
pub const SHORT_BATCH: usize = 2;

/// `f(i)` for every `i < n`: on the team when `short`, else on rayon's pool. Either way each
/// index runs once, so the results are the same.
pub fn for_each_on<F: Fn(usize) + Sync>(short: bool, n: usize, f: F) {
    if short {
        for_each(n, f)
    } else {
        use rayon::prelude::*;
        (0..n).into_par_iter().for_each(&f)
    }
}

/// `f(i, chunk)` for the `i`-th `size`-float chunk of `v` (the last may be shorter), as
/// `for_each_on`.
pub fn for_each_chunk_mut<F: Fn(usize, &mut [f32]) + Sync>(short: bool, v: &mut [f32], size: usize, f: F) {
    assert!(size > 0, "team: chunk size 0");
    let (ptr, len) = (SendPtr(v.as_mut_ptr()), v.len());
    for_each_on(short, len.div_ceil(size), |i| {
        let start = i * size;
        let end = (start + size).min(len);
        // SAFETY: `for_each` runs each index once, so the chunks handed out are disjoint and
        // inside `v`, which is borrowed mutably for the whole call.
        let chunk = unsafe { std::slice::from_raw_parts_mut(ptr.at(start), end - start) };
        f(i, chunk)
    });
}

/// A buffer's base pointer, shared by tasks that touch disjoint parts of it.
pub(super) struct SendPtr<T = f32>(pub(super) *mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: only used by tasks that write disjoint parts of the buffer (`for_each_chunk_mut`'s
// chunks, `conv::gemm_image`'s pixel ranges, `norm`'s channels).
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer `offset` elements in (a method, so closures capture the whole `Sync` wrapper).
    pub(super) fn at(self, offset: usize) -> *mut T {
        self.0.wrapping_add(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_runs_once_on_any_pool() {
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                for n in [0, 1, 2, 7, 100] {
                    let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                    for_each(n, |i| {
                        hits[i].fetch_add(1, SeqCst);
                        // A nested region runs serially on this thread.
                        for_each(3, |_| {});
                    });
                    assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "{threads} threads, n {n}");
                }
            });
        }
    }

    #[test]
    fn chunks_cover_the_buffer_once() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        pool.install(|| {
            let mut v = vec![0.0f32; 103];
            for_each_chunk_mut(true, &mut v, 10, |i, c| c.iter_mut().for_each(|x| *x += i as f32 + 1.0));
            assert!(v.iter().enumerate().all(|(j, &x)| x == (j / 10) as f32 + 1.0));
        });
    }

    #[test]
    fn a_panicking_task_is_raised_on_the_caller_and_the_team_recovers() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        pool.install(|| {
            let r = catch_unwind(|| for_each(16, |i| assert!(i != 5, "task five")));
            assert!(r.is_err());
            let count = AtomicUsize::new(0);
            for_each(16, |_| {
                count.fetch_add(1, SeqCst);
            });
            assert_eq!(count.load(SeqCst), 16);
        });
    }
}

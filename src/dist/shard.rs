//! Sharded scoring for the search: rank 0 runs the agent and the files; each step it sends the
//! kept-channel vectors of the step's new candidates to every rank, each rank scores a contiguous
//! share, and the rewards come back to rank 0 in candidate order. A candidate's reward does not
//! depend on which rank scores it, so the search is the same for any number of ranks.
//!
//! Bytes per step: rank 0 broadcasts `8 x groups x candidates` (plus JSON framing) and receives
//! about 30 bytes per candidate; see docs/scale.md.

use super::{world, Comm};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// What rank 0 asks of the other ranks.
#[derive(Serialize, Deserialize)]
enum Task {
    /// Score these candidates (kept channels per group); each rank takes its share.
    Score(Vec<Vec<usize>>),
    /// The search is over (finished, failed or interrupted): return.
    Stop,
}

/// One rank's answer: its share's results, or why it could not score them.
type Answer<T> = std::result::Result<Vec<T>, String>;

/// The candidates `[start, end)` rank `rank` of `size` scores out of `n`.
pub fn share(n: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    (rank * n / size)..((rank + 1) * n / size)
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Invalid(format!("sharded search: cannot encode a message: {e}")))
}

fn decode<T: for<'de> Deserialize<'de>>(b: &[u8], from: usize) -> Result<T> {
    serde_json::from_slice(b)
        .map_err(|e| Error::Invalid(format!("sharded search: unreadable message from rank {from}: {e}")))
}

/// On rank 0: scores `items` over all ranks with `local` (which scores a slice) and returns the
/// results in order. With one process it is `local(items)`.
pub fn score<T>(items: &[Vec<usize>], local: impl Fn(&[Vec<usize>]) -> Result<Vec<T>>) -> Result<Vec<T>>
where
    T: Serialize + for<'de> Deserialize<'de>,
{
    let w = world();
    if w.size() == 1 {
        return local(items);
    }
    if !w.is_root() {
        return Err(Error::Invalid("sharded search: only rank 0 hands out candidates".into()));
    }
    w.broadcast_bytes(encode(&Task::Score(items.to_vec()))?)?;
    answer(w, items, &local)
}

/// Scores this rank's share of `items` and sends it to rank 0; on rank 0, returns every share.
fn answer<T>(w: &dyn Comm, items: &[Vec<usize>], local: &impl Fn(&[Vec<usize>]) -> Result<Vec<T>>) -> Result<Vec<T>>
where
    T: Serialize + for<'de> Deserialize<'de>,
{
    let mine = &items[share(items.len(), w.rank(), w.size())];
    let result: Answer<T> = local(mine).map_err(|e| e.to_string());
    let local_err = result.as_ref().err().cloned();
    let parts = w.gather_bytes(&encode(&result)?)?;
    let Some(parts) = parts else {
        // A rank that failed says so (rank 0 reports it too) and keeps serving until told to stop.
        return match local_err {
            Some(e) => Err(Error::Invalid(e)),
            None => Ok(Vec::new()),
        };
    };
    let mut all = Vec::with_capacity(items.len());
    for (r, p) in parts.iter().enumerate() {
        match decode::<Answer<T>>(p, r)? {
            Ok(v) if v.len() == share(items.len(), r, w.size()).len() => all.extend(v),
            Ok(v) => {
                return Err(Error::Invalid(format!(
                    "sharded search: rank {r} returned {} results for {} candidates",
                    v.len(),
                    share(items.len(), r, w.size()).len()
                )))
            }
            Err(e) => return Err(Error::Invalid(format!("rank {r} could not score its candidates: {e}"))),
        }
    }
    Ok(all)
}

/// On ranks other than 0: scores what rank 0 sends until it says stop. A share that fails is
/// reported to rank 0, which stops the search.
pub fn serve<T>(local: impl Fn(&[Vec<usize>]) -> Result<Vec<T>>) -> Result<()>
where
    T: Serialize + for<'de> Deserialize<'de>,
{
    let w = world();
    if w.is_root() {
        return Err(Error::Invalid("sharded search: rank 0 runs the search, it does not serve".into()));
    }
    let mut failed = None;
    loop {
        let msg = w.broadcast_bytes(Vec::new())?;
        match decode::<Task>(&msg, 0)? {
            Task::Stop => return failed.map_or(Ok(()), Err),
            Task::Score(items) => {
                if let Err(e) = answer(w, &items, &local) {
                    failed.get_or_insert(e);
                }
            }
        }
    }
}

/// Held by rank 0 while it searches: when dropped (the search finished, failed or was
/// interrupted) it tells the scoring ranks to return.
pub struct StopWorkersOnDrop(());

impl StopWorkersOnDrop {
    pub fn new() -> StopWorkersOnDrop {
        StopWorkersOnDrop(())
    }
}

impl Default for StopWorkersOnDrop {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for StopWorkersOnDrop {
    fn drop(&mut self) {
        let w = world();
        if w.size() > 1 && w.is_root() {
            if let Ok(b) = encode(&Task::Stop) {
                let _ = w.broadcast_bytes(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn shares_cover_every_candidate_once_in_order() {
        for n in 0..20 {
            for size in 1..6 {
                let all: Vec<usize> = (0..size).flat_map(|r| share(n, r, size)).collect();
                assert_eq!(all, (0..n).collect::<Vec<_>>(), "n {n} size {size}");
            }
        }
        assert_eq!(share(8, 1, 2), 4..8);
    }
}

//! Weights in a kernel's own layout, kept between calls by the weight tensor's content stamp:
//! inference and candidate scoring run the same weights again and again, and rearranging them
//! on every call cost as much as a tenth of a batch-1 forward (Winograd's filter transforms, the
//! 1x1 kernel's panels). A stamp changes whenever the tensor may have been written, so an entry
//! can never be stale.

use std::sync::{Arc, Mutex};

/// A bounded cache, most recently used last; each kernel has its own (its key says which
/// layout and sizes an entry holds beside the stamp).
pub(super) struct WeightCache<K> {
    entries: Mutex<Vec<(K, Arc<Vec<f32>>)>>,
    max_floats: usize,
    max_entries: usize,
}

impl<K: PartialEq> WeightCache<K> {
    pub(super) const fn new(max_floats: usize, max_entries: usize) -> Self {
        WeightCache { entries: Mutex::new(Vec::new()), max_floats, max_entries }
    }

    /// The entry for `key` when there is one, else `make()`'s, cached when `key` is given (no
    /// stamp: computed and not kept).
    pub(super) fn get_or_make(&self, key: Option<K>, make: impl FnOnce() -> Vec<f32>) -> Arc<Vec<f32>> {
        if let Some(found) = key.as_ref().and_then(|k| self.get(k)) {
            return found;
        }
        let made = Arc::new(make());
        if let Some(key) = key {
            self.put(key, made.clone());
        }
        made
    }

    /// Whether an entry's key satisfies `test` (for tests of what a kernel keeps).
    pub(super) fn any(&self, test: impl Fn(&K) -> bool) -> bool {
        self.entries.lock().is_ok_and(|entries| entries.iter().any(|(k, _)| test(k)))
    }

    fn get(&self, key: &K) -> Option<Arc<Vec<f32>>> {
        let mut entries = self.entries.lock().ok()?;
        let at = entries.iter().position(|(k, _)| k == key)?;
        let entry = entries.remove(at);
        let value = entry.1.clone();
        entries.push(entry);
        Some(value)
    }

    fn put(&self, key: K, value: Arc<Vec<f32>>) {
        if value.len() > self.max_floats {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else { return };
        entries.retain(|(k, _)| *k != key);
        entries.push((key, value));
        let mut held: usize = entries.iter().map(|(_, v)| v.len()).sum();
        while held > self.max_floats || entries.len() > self.max_entries {
            held -= entries.remove(0).1.len();
        }
    }
}

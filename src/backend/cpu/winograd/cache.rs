//! What is kept between calls: filter transforms by weight stamp, and packed inputs handed from
//! one call to a later one that packs the same contents.

use super::*;

/// Filter transforms of recent weights, keyed by the weight tensor's content stamp: inference
/// and candidate scoring run the same weights again and again, and at batch 1 transforming them
/// costs as much as a tenth of the forward pass. A stamp changes whenever the tensor may have
/// been written, so an entry can never be stale.
mod filter_cache {
    use std::sync::{Arc, Mutex};

    /// `(weight stamp, tile size a, K, C, Kp)`.
    pub type Key = (u64, usize, usize, usize, usize);

    /// Floats held at most (32 MiB), and entries.
    const MAX_FLOATS: usize = 1 << 23;
    const MAX_ENTRIES: usize = 256;

    static CACHE: Mutex<Vec<(Key, Arc<Vec<f32>>)>> = Mutex::new(Vec::new());

    pub fn get(key: &Key) -> Option<Arc<Vec<f32>>> {
        let mut cache = CACHE.lock().ok()?;
        let at = cache.iter().position(|(k, _)| k == key)?;
        // Most recently used last.
        let entry = cache.remove(at);
        let u = entry.1.clone();
        cache.push(entry);
        Some(u)
    }

    pub fn put(key: Key, u: Arc<Vec<f32>>) {
        if u.len() > MAX_FLOATS {
            return;
        }
        let Ok(mut cache) = CACHE.lock() else { return };
        cache.retain(|(k, _)| *k != key);
        cache.push((key, u));
        let mut held: usize = cache.iter().map(|(_, u)| u.len()).sum();
        while held > MAX_FLOATS || cache.len() > MAX_ENTRIES {
            held -= cache.remove(0).1.len();
        }
    }
}

/// `U` for these weights: from the cache when `stamp` (the weight tensor's content stamp) has
/// been transformed before, else computed (and cached when a stamp is given).
pub(super) fn transformed_filters<const A: usize>(
    g: &FilterTransform<A>,
    w: &[f32],
    k: usize,
    c: usize,
    kp: usize,
    stamp: Option<u64>,
) -> std::sync::Arc<Vec<f32>> {
    let key = stamp.map(|st| (st, A, k, c, kp));
    if let Some(u) = key.as_ref().and_then(filter_cache::get) {
        return u;
    }
    let u = std::sync::Arc::new(filter_transform(g, w, k, c, kp));
    if let Some(key) = key {
        filter_cache::put(key, u.clone());
    }
    u
}

/// Packed tensors handed from one call to a later one that packs the same contents into the
/// same layout (same tiles and border whenever the map is a whole number of F(4x4) tiles, as in
/// every CIFAR ResNet): a training forward's packed input to its layer's backward-weight, and
/// backward-weight's packed output gradient to backward-data. An entry is taken (removed) by
/// the first matching request; entries nobody takes are dropped oldest first past a cap.
pub(super) mod packed_store {
    use std::sync::Mutex;

    /// `(content stamp, images, channels, packed height, packed width, padded channels)`.
    pub type Key = (u64, usize, usize, usize, usize, usize, usize);

    /// Floats held at most (1 GiB): the packed inputs of a ResNet-110 training step at batch 128.
    const MAX_FLOATS: usize = 1 << 28;

    static STORE: Mutex<Vec<(Key, Vec<f32>)>> = Mutex::new(Vec::new());

    pub fn put(key: Key, packed: Vec<f32>) {
        let mut dropped = Vec::new();
        if let Ok(mut store) = STORE.lock() {
            store.retain(|(k, _)| *k != key);
            store.push((key, packed));
            let mut held: usize = store.iter().map(|(_, v)| v.len()).sum();
            while held > MAX_FLOATS {
                let (_, old) = store.remove(0);
                held -= old.len();
                dropped.push(old);
            }
        } else {
            dropped.push(packed);
        }
        dropped.into_iter().for_each(crate::tensor::pool::give);
    }

    pub fn take(key: &Key) -> Option<Vec<f32>> {
        let mut store = STORE.lock().ok()?;
        let at = store.iter().rposition(|(k, _)| k == key)?;
        Some(store.remove(at).1)
    }
}

/// The store's key for `x` (content stamp `stamp`) packed for `tiling`.
pub(super) fn packed_key(stamp: u64, s: &ConvShape, tiling: &Tiling) -> packed_store::Key {
    (stamp, s.n, s.c_in, tiling.hp, tiling.wp, tiling.cp, tiling.width)
}

//! What is kept between calls: filter transforms by weight stamp, and packed inputs handed from
//! one call to a later one that packs the same contents.

use super::*;
use crate::backend::cpu::weight_cache::WeightCache;

/// Filter transforms of recent weights (`weight_cache`), keyed by
/// `(weight stamp, tile size a, K, C, Kp)`: at most 32 MiB and 256 entries.
static FILTERS: WeightCache<(u64, usize, usize, usize, usize)> = WeightCache::new(1 << 23, 256);

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
    FILTERS.get_or_make(stamp.map(|st| (st, A, k, c, kp)), || filter_transform(g, w, k, c, kp))
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

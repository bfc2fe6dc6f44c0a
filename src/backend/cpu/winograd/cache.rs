//! What is kept between calls: filter transforms by weight stamp, and packed inputs handed from
//! one call to a later one that packs the same contents.

use super::*;
use crate::backend::cpu::weight_cache::WeightCache;

/// Filter transforms of recent weights (`weight_cache`), keyed by
/// `(weight stamp, tile size a, K, C, Kp)`: at most 256 MiB and 256 entries. A net whose
/// transforms exceed the cap misses on every layer (a forward visits them in the same cycle,
/// least recently used first): at 32 MiB ResNet-101 and -152 at 224 (their 23 and 36 F(2x2)
/// layers of 256 channels hold 4.2 MB each) transformed every filter on every image, 146-169
/// and 213-225 ms at batch 1 on 2 AVX-512 cores, against 81-92 and 113-126 ms within the cap.
/// ResNet-50's fit in 30 MB.
static FILTERS: WeightCache<(u64, usize, usize, usize, usize)> = WeightCache::new(1 << 26, 256);

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

/// Whether a filter transform of the weights with content stamp `stamp` is kept.
pub(super) fn holds_transform_of(stamp: u64) -> bool {
    FILTERS.any(|key| key.0 == stamp)
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

//! `lfgcl bench data`: how fast an image folder is decoded and transformed, per core and through
//! the streaming loader, next to the training step it has to feed.

use crate::backend::Device;
use crate::data::decode::{self, JpegDecoder};
use crate::data::transforms::{self, AugmentKind};
use crate::data::{Augment, Loader, OpenOptions, Split};
use crate::error::{Error, Result};
use crate::models::{Arch, Model};
use crate::train::Sgd;
use rand::SeedableRng;
use serde::Serialize;
use std::time::Instant;

/// What `bench data` measures.
#[derive(Clone, Debug)]
pub struct DataBenchOptions {
    pub data: String,
    pub image_size: usize,
    pub augment: AugmentKind,
    pub grayscale: bool,
    /// The model whose training step the loader must feed.
    pub model: String,
    pub batch: usize,
    /// Timed training steps.
    pub reps: usize,
    /// Files decoded one by one on one thread for the per-core rates.
    pub sample: usize,
    /// Images pulled through the loader (rounded up to whole batches).
    pub loader_images: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct DataBenchReport {
    pub data: String,
    pub files: usize,
    pub image_size: usize,
    pub augment: String,
    pub threads: usize,
    pub sample: usize,
    pub mean_source_pixels: f64,
    /// Images/s on one thread: JPEG/PNG decode through zune-jpeg, and through `image`.
    pub decode_zune_per_core: f64,
    pub decode_image_per_core: f64,
    /// Images/s on one thread: the training transform (crop, resize, flip) alone.
    pub transform_per_core: f64,
    /// Images/s on one thread: decode plus transform, what one decoding thread sustains.
    pub prepare_per_core: f64,
    pub loader_workers: usize,
    pub loader_images_per_sec: f64,
    pub train_model: String,
    pub train_batch: usize,
    pub train_images_per_sec: f64,
    /// Training steps fed by the loader, both running at once on the same cores (after one
    /// warm-up step): what training at this size would see.
    pub fed_steps: usize,
    pub fed_images_per_sec: f64,
}

impl DataBenchReport {
    pub fn table(&self) -> String {
        let faster = if self.decode_zune_per_core >= self.decode_image_per_core { "zune-jpeg" } else { "image" };
        let ratio = self.loader_images_per_sec / self.train_images_per_sec.max(1e-9);
        format!(
            "bench data: {} ({} files), {}x{}, {} transforms, {} threads\n\
             decode, 1 thread, {} files of {:.0} kpixels on average:  zune-jpeg {:.1} img/s  image {:.1} img/s  (faster: {faster})\n\
             training transform alone, 1 thread:             {:.1} img/s\n\
             decode + transform, 1 thread:                   {:.1} img/s per core\n\
             loader ({} decoding threads, batches of {}):     {:.1} img/s\n\
             training step {} at {}x{}, batch {}:        {:.1} img/s\n\
             loader / training step: {ratio:.2}x: {}\n\
             training steps fed by the loader, both at once: {:.1} img/s ({:.0}% of the step alone, {} steps)",
            self.data,
            self.files,
            self.image_size,
            self.image_size,
            self.augment,
            self.threads,
            self.sample,
            self.mean_source_pixels / 1e3,
            self.decode_zune_per_core,
            self.decode_image_per_core,
            self.transform_per_core,
            self.prepare_per_core,
            self.loader_workers,
            self.train_batch,
            self.loader_images_per_sec,
            self.train_model,
            self.image_size,
            self.image_size,
            self.train_batch,
            self.train_images_per_sec,
            if ratio >= 1.0 {
                "the loader keeps the step fed"
            } else {
                "the step would wait for the loader"
            },
            self.fed_images_per_sec,
            100.0 * self.fed_images_per_sec / self.train_images_per_sec.max(1e-9),
            self.fed_steps
        )
    }
}

pub fn data_bench(dev: &Device, o: &DataBenchOptions) -> Result<DataBenchReport> {
    if !crate::data::is_folder_spec(&o.data) {
        return Err(Error::Invalid(format!("bench data needs an image folder (--data folder:DIR), got '{}'", o.data)));
    }
    // cache 0: always the streaming path, which is what an ImageNet-sized folder uses.
    let open = OpenOptions {
        image_size: Some(o.image_size),
        limit: None,
        grayscale: o.grayscale,
        augment: o.augment,
        cache_bytes: 0,
    };
    let ds = crate::data::open(&o.data, Split::Train, &open)?;
    let files = ds.stream_files().ok_or_else(|| Error::Invalid("expected a streamed folder".into()))?;
    let n = files.len();
    if n == 0 {
        return Err(Error::Invalid(format!("{}: no images", o.data)));
    }
    let k = o.sample.clamp(1, n);
    let paths: Vec<_> = (0..k).map(|i| files.paths[i * n / k].clone()).collect();
    let bytes: Vec<Vec<u8>> =
        paths.iter().map(|p| crate::limits::read_bounded(p, decode::MAX_IMAGE_FILE_BYTES)).collect::<Result<_>>()?;
    let time_decode = |which: JpegDecoder| -> Result<(f64, Vec<transforms::Image>)> {
        let t = Instant::now();
        let imgs = paths
            .iter()
            .zip(&bytes)
            .map(|(p, b)| decode::decode_bytes(p, b, o.grayscale, which))
            .collect::<Result<Vec<_>>>()?;
        Ok((k as f64 / t.elapsed().as_secs_f64().max(1e-9), imgs))
    };
    // Alternate, twice each, keeping the better rate (less disturbed by other processes).
    let (mut zune, mut image) = (0f64, 0f64);
    let mut decoded = Vec::new();
    for _ in 0..2 {
        let (r, imgs) = time_decode(JpegDecoder::Zune)?;
        zune = zune.max(r);
        decoded = imgs;
        image = image.max(time_decode(JpegDecoder::Image)?.0);
    }
    let mean_pixels = decoded.iter().map(|i| (i.width * i.height) as f64).sum::<f64>() / k as f64;
    let t = Instant::now();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    for img in &decoded {
        let out = match o.augment {
            AugmentKind::Imagenet => transforms::train_transform(img, o.image_size, true, &mut rng).0,
            _ => transforms::resize(img, o.image_size, o.image_size),
        };
        std::hint::black_box(out);
    }
    let transform = k as f64 / t.elapsed().as_secs_f64().max(1e-9);
    let prepare = 1.0 / (1.0 / zune.max(image) + 1.0 / transform);

    let norm = ds.channel_stats();
    let loader = Loader::try_new(&ds, o.batch, &norm)?.shuffle(0).augment(Augment::standard(), 1);
    let want = o.loader_images.div_ceil(o.batch).clamp(1, loader.num_batches().max(1));
    let t = Instant::now();
    let mut seen = 0;
    for b in loader.batches(0).take(want) {
        seen += b?.len();
    }
    let loader_rate = seen as f64 / t.elapsed().as_secs_f64().max(1e-9);

    let c = ds.channels;
    let mut m = Model::new(Arch::new(&o.model, c, o.image_size, ds.num_classes.max(10))?, dev, 0)?;
    let size = o.image_size;
    let host: Vec<f32> = (0..o.batch * c * size * size).map(|i| ((i % 251) as f32 / 251.0) - 0.5).collect();
    let x = dev.from_host(&[o.batch, c, size, size], &host)?;
    let labels: Vec<u32> = (0..o.batch).map(|i| (i % 10) as u32).collect();
    let mut opt = Sgd::new(0.9, 5e-4, false)?;
    let mut step = |m: &mut Model, x: &crate::tensor::Tensor, labels: &[u32]| -> Result<()> {
        let trace = m.graph.forward_train(dev, dev.copy(x)?)?;
        let ce = dev.softmax_cross_entropy(trace.output(), labels)?;
        m.graph.zero_grad();
        m.graph.backward(dev, trace, ce.dlogits)?;
        opt.step(dev, &mut m.graph, 0.01)
    };
    let timing = super::timing::time_on(dev, 1, o.reps.max(1), || step(&mut m, &x, &labels))?;
    // The same steps fed by the loader while it decodes the next batches.
    let fed = Loader::try_new(&ds, o.batch, &norm)?.shuffle(1).augment(Augment::standard(), 2).drop_last(true);
    let fed_steps = o.reps.max(1).min(fed.num_batches().saturating_sub(1));
    let (mut t, mut fed_seen) = (Instant::now(), 0);
    for (k, b) in fed.batches(0).take(fed_steps + 1).enumerate() {
        let b = b?;
        let x = dev.from_host(&b.dims, &b.images)?;
        step(&mut m, &x, &labels[..b.len()])?;
        dev.synchronize()?;
        if k == 0 {
            t = Instant::now();
        } else {
            fed_seen += b.len();
        }
    }
    let fed_rate = fed_seen as f64 / t.elapsed().as_secs_f64().max(1e-9);
    Ok(DataBenchReport {
        data: o.data.clone(),
        files: n,
        image_size: o.image_size,
        augment: o.augment.as_str().into(),
        threads: rayon::current_num_threads(),
        sample: k,
        mean_source_pixels: mean_pixels,
        decode_zune_per_core: zune,
        decode_image_per_core: image,
        transform_per_core: transform,
        prepare_per_core: prepare,
        loader_workers: crate::data::stream::Files::workers(rayon::current_num_threads()),
        loader_images_per_sec: loader_rate,
        train_model: o.model.clone(),
        train_batch: o.batch,
        train_images_per_sec: o.batch as f64 / timing.median_s,
        fed_steps,
        fed_images_per_sec: fed_rate,
    })
}

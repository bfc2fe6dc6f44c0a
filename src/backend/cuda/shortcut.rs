//! [`ShortcutOps`] on `kernels/shortcut.cu`: the option-A shortcut of the CIFAR ResNets.

use super::kernels::Launch;
use super::{fits_i32, CudaBackend};
use crate::backend::shape::ShortcutShape;
use crate::backend::ShortcutOps;
use crate::error::Result;
use crate::tensor::{fmt_dims, Tensor};
use cudarc::driver::DeviceRepr;

const FILE: &str = "shortcut.cu";

/// Mirror of `ShortcutParams` in shortcut.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct ShortcutParams {
    x: u64,
    dy: u64,
    out: u64,
    map: u64,
    n: i32,
    c_in: i32,
    h: i32,
    w: i32,
    c_out: i32,
    oh: i32,
    ow: i32,
    stride: i32,
}
// SAFETY: plain-old-data, `#[repr(C)]`, layout asserted equal to the kernel's struct.
unsafe impl DeviceRepr for ShortcutParams {}
assert_layout!(ShortcutParams, size 64, x @ 0, dy @ 8, out @ 16, map @ 24, n @ 32, c_in @ 36, h @ 40, w @ 44, c_out @ 48, oh @ 52, ow @ 56, stride @ 60);

impl ShortcutParams {
    /// The kernels' parameters for a checked shape (forward: `dy` 0; backward: `x` 0).
    fn new(s: &ShortcutShape, x: u64, dy: u64, out: u64, map: u64) -> ShortcutParams {
        ShortcutParams {
            x,
            dy,
            out,
            map,
            n: s.n as i32,
            c_in: s.c_in as i32,
            h: s.h as i32,
            w: s.w as i32,
            c_out: s.c_out as i32,
            oh: s.out_h as i32,
            ow: s.out_w as i32,
            stride: s.stride as i32,
        }
    }
}

fn inverse_map(src: &[i32], c_in: usize) -> Vec<i32> {
    let mut counts = vec![0i32; c_in + 1];
    for &s in src {
        if s >= 0 {
            counts[s as usize + 1] += 1;
        }
    }
    for i in 0..c_in {
        counts[i + 1] += counts[i];
    }
    let mut fill = counts.clone();
    let mut list = vec![0i32; counts[c_in] as usize];
    for (o, &s) in src.iter().enumerate() {
        if s >= 0 {
            let slot = &mut fill[s as usize];
            list[*slot as usize] = o as i32;
            *slot += 1;
        }
    }
    counts.extend(list);
    counts
}

impl ShortcutOps for CudaBackend {
    fn shortcut_forward(&self, x: &Tensor, src: &[i32], stride: usize) -> Result<Tensor> {
        let s = ShortcutShape::new("shortcut_forward", x.dims(), src, stride)?;
        let ShortcutShape { n, c_out, out_h: oh, out_w: ow, .. } = s;
        let total = n * c_out * oh * ow;
        fits_i32(total.max(x.numel()), "shortcut_forward")?;
        let map = self.upload(src, "shortcut_forward channel map")?;
        let mut y = self.alloc::<f32>(total)?;
        let px = self.ptr(self.dev(x, "shortcut_forward")?);
        let p = ShortcutParams::new(&s, px, 0, self.ptr_mut(&mut y), self.ptr(&map));
        let xd = x.dims().to_vec();
        Launch::linear(FILE, "shortcut_fwd", total, 256, 256)?.run(&self.kernels, &self.stream, &p, &|| {
            format!("shortcut_forward {} -> {c_out} channels stride {stride}", fmt_dims(&xd))
        })?;
        self.tensor(&[n, c_out, oh, ow], y)
    }

    fn shortcut_backward(&self, dy: &Tensor, src: &[i32], stride: usize, x_dims: &[usize]) -> Result<Tensor> {
        let s = ShortcutShape::backward(dy, src, stride, x_dims)?;
        let ShortcutShape { n, c_in, h, w, .. } = s;
        let total = n * c_in * h * w;
        fits_i32(total.max(dy.numel()), "shortcut_backward")?;
        let map = self.upload(&inverse_map(src, c_in), "shortcut_backward channel map")?;
        let mut dx = self.alloc::<f32>(total)?;
        let pdy = self.ptr(self.dev(dy, "shortcut_backward")?);
        let p = ShortcutParams::new(&s, 0, pdy, self.ptr_mut(&mut dx), self.ptr(&map));
        Launch::linear(FILE, "shortcut_bwd", total, 256, 256)?.run(&self.kernels, &self.stream, &p, &|| {
            format!("shortcut_backward -> {} stride {stride}", fmt_dims(&[n, c_in, h, w]))
        })?;
        self.tensor(x_dims, dx)
    }
}

#[cfg(test)]
mod tests {
    use super::inverse_map;

    #[test]
    fn inverse_map_groups_outputs_by_source_in_order() {
        // Option A, 2 -> 4 channels with one zero channel on each side, plus a duplicate.
        let src = [-1, 0, 1, 0, -1];
        let m = inverse_map(&src, 2);
        assert_eq!(&m[..3], &[0, 2, 3]);
        assert_eq!(&m[3..], &[1, 3, 2]);
    }
}

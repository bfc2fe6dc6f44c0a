//! Launch helpers for `kernels/shortcut.cu`: the option-A shortcut of the CIFAR ResNets.

use super::kernels::Launch;
use super::{fits_i32, CudaBackend};
use crate::error::{Error, Result};
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
const _: () = assert!(std::mem::size_of::<ShortcutParams>() == 64);

fn check_map(src: &[i32], c_in: usize, stride: usize, what: &str) -> Result<()> {
    if stride == 0 {
        return Err(Error::Invalid(format!("{what}: stride must be at least 1")));
    }
    for (o, &s) in src.iter().enumerate() {
        if s >= 0 && s as usize >= c_in {
            return Err(Error::Invalid(format!(
                "{what}: output channel {o} maps to input channel {s} but the input has {c_in}"
            )));
        }
    }
    Ok(())
}

/// CSR inverse of the channel map: offsets[c_in + 1] followed by the output channels of each
/// input channel in increasing order (the order in which the backward pass adds them).
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

impl CudaBackend {
    pub(crate) fn shortcut_fwd(&self, x: &Tensor, src: &[i32], stride: usize) -> Result<Tensor> {
        x.expect_rank(4, "shortcut_forward")?;
        let (n, c_in, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
        check_map(src, c_in, stride, "shortcut_forward")?;
        let (c_out, oh, ow) = (src.len(), h.div_ceil(stride), w.div_ceil(stride));
        let total = n * c_out * oh * ow;
        fits_i32(total.max(x.numel()), "shortcut_forward")?;
        let map = self.upload(src, "shortcut_forward channel map")?;
        let mut y = self.alloc::<f32>(total)?;
        let p = ShortcutParams {
            x: self.ptr(self.dev(x, "shortcut_forward")?),
            dy: 0,
            out: self.ptr_mut(&mut y),
            map: self.ptr(&map),
            n: n as i32,
            c_in: c_in as i32,
            h: h as i32,
            w: w as i32,
            c_out: c_out as i32,
            oh: oh as i32,
            ow: ow as i32,
            stride: stride as i32,
        };
        let xd = x.dims().to_vec();
        Launch::linear(FILE, "shortcut_fwd", total, 256, 256)?.run(&self.kernels, &self.stream, &p, &|| {
            format!("shortcut_forward {} -> {c_out} channels stride {stride}", fmt_dims(&xd))
        })?;
        self.tensor(&[n, c_out, oh, ow], y)
    }

    pub(crate) fn shortcut_bwd(&self, dy: &Tensor, src: &[i32], stride: usize, x_dims: &[usize]) -> Result<Tensor> {
        let [n, c_in, h, w] = match x_dims {
            [a, b, c, d] => [*a, *b, *c, *d],
            _ => {
                return Err(Error::Shape(format!("shortcut_backward: x_dims must be rank 4, got {}", fmt_dims(x_dims))))
            }
        };
        check_map(src, c_in, stride, "shortcut_backward")?;
        let (c_out, oh, ow) = (src.len(), h.div_ceil(stride), w.div_ceil(stride));
        dy.expect_dims(&[n, c_out, oh, ow], "shortcut_backward dy")?;
        let total = n * c_in * h * w;
        fits_i32(total.max(dy.numel()), "shortcut_backward")?;
        let map = self.upload(&inverse_map(src, c_in), "shortcut_backward channel map")?;
        let mut dx = self.alloc::<f32>(total)?;
        let p = ShortcutParams {
            x: 0,
            dy: self.ptr(self.dev(dy, "shortcut_backward")?),
            out: self.ptr_mut(&mut dx),
            map: self.ptr(&map),
            n: n as i32,
            c_in: c_in as i32,
            h: h as i32,
            w: w as i32,
            c_out: c_out as i32,
            oh: oh as i32,
            ow: ow as i32,
            stride: stride as i32,
        };
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

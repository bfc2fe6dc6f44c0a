//! Shape checks every backend makes before touching data, so both give the same errors.

use crate::error::{Error, Result};
use crate::tensor::{fmt_dims, Tensor};

/// Errors unless `a` and `b` have the same dims.
pub(crate) fn same_dims(a: &Tensor, b: &Tensor, what: &str) -> Result<()> {
    if a.dims() != b.dims() {
        return Err(Error::Shape(format!("{what}: {} and {} differ", fmt_dims(a.dims()), fmt_dims(b.dims()))));
    }
    Ok(())
}

/// Splits a batch-norm input into `(n, c, hw)`; accepts `[N,C,H,W]` and `[N,C]`.
pub(crate) fn bn_layout(x: &Tensor, what: &str) -> Result<(usize, usize, usize)> {
    match *x.dims() {
        [n, c, h, w] => Ok((n, c, h * w)),
        [n, c] => Ok((n, c, 1)),
        _ => Err(Error::Shape(format!("{what}: expected [N,C,H,W] or [N,C], got {}", fmt_dims(x.dims())))),
    }
}

//! How a kernel's results reach its output ([`Store`]): overwriting it, added to it, or
//! finished on the way by inference's fused epilogue ([`Epilogue`]): BatchNorm's affine
//! transform, the residual addition and the ReLU, `y = relu(y·scale + shift + residual)`,
//! applied while the values are still in registers or cache.
//!
//! One type for every kernel and for both sides of the backend boundary: `T` is how a
//! buffer is held, a host slice in the kernels, a `device::View` in the layers
//! (`device::Epilogue`), as `conv::InputGrad` is for the input gradient.

/// `y = relu(y·scale + shift + residual)`, one scale and shift per output channel.
#[derive(Clone, Copy)]
pub struct Epilogue<T> {
    pub scale: T,
    pub shift: T,
    pub residual: Residual<T>,
    pub relu: bool,
}

/// The residual an [`Epilogue`] adds after the affine transform.
#[derive(Clone, Copy)]
pub enum Residual<T> {
    None,
    /// Its own buffer, NHWC like the output.
    Separate(T),
    /// The output buffer holds it on entry: each value is read just before its result
    /// replaces it. An inference block writes its output over its shortcut this way, so
    /// the output needs no buffer of its own, and the lines read for the residual are
    /// in cache when the result is stored; a separate output's lines are fetched as well.
    /// The panel product of ResNet-50's 64→256 layer at batch 16 ran 22% faster alone,
    /// the whole inference 1.5–3.5% (BENCHMARKS.md).
    InOutput,
}

/// How a kernel stores each value it computes. One enum rather than an "add" flag beside
/// an optional epilogue, because an epilogue applies to a fresh output only.
#[derive(Clone, Copy, Default)]
pub enum Store<T> {
    /// Replaces what the output holds.
    #[default]
    Overwrite,
    /// Adds to it: an input gradient summed over branches, a product's later k-blocks.
    Accumulate,
    /// Replaces it with the epilogue of the value.
    Finish(Epilogue<T>),
}

impl<T> Residual<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Residual<U> {
        match self {
            Residual::None => Residual::None,
            Residual::Separate(r) => Residual::Separate(f(r)),
            Residual::InOutput => Residual::InOutput,
        }
    }
}

impl<T> Epilogue<T> {
    /// The same epilogue with its buffers handed over by `f` (a view to its host slice).
    pub fn map<U>(self, f: impl Fn(T) -> U) -> Epilogue<U> {
        let residual = self.residual.map(&f);
        Epilogue { scale: f(self.scale), shift: f(self.shift), residual, relu: self.relu }
    }
}

impl<T: Copy> Store<T> {
    /// [`Store::Accumulate`] if `add`, else [`Store::Overwrite`].
    pub fn adding(add: bool) -> Self {
        if add { Store::Accumulate } else { Store::Overwrite }
    }

    pub fn accumulates(&self) -> bool {
        matches!(self, Store::Accumulate)
    }

    pub fn epilogue(&self) -> Option<Epilogue<T>> {
        match self {
            Store::Finish(e) => Some(*e),
            _ => None,
        }
    }

    pub fn map<U>(self, f: impl Fn(T) -> U) -> Store<U> {
        match self {
            Store::Overwrite => Store::Overwrite,
            Store::Accumulate => Store::Accumulate,
            Store::Finish(e) => Store::Finish(e.map(f)),
        }
    }
}

impl Store<&[f32]> {
    /// The same store for a block of the output, its epilogue cut by
    /// [`Epilogue::for_block`].
    pub fn for_block(self, pixel: usize, c_out: usize, cols: std::ops::Range<usize>) -> Self {
        match self {
            Store::Finish(e) => Store::Finish(e.for_block(pixel, c_out, cols)),
            other => other,
        }
    }
}

impl Residual<&[f32]> {
    /// The same residual from element `offset` on.
    fn at(self, offset: usize) -> Self {
        self.map(|r| &r[offset..])
    }

    /// Whether a separate residual (if any) holds at least `len` values.
    pub fn covers(self, len: usize) -> bool {
        !matches!(self, Residual::Separate(r) if r.len() < len)
    }
}

impl Epilogue<&[f32]> {
    /// The epilogue of a block of the output, as a GEMM kernel applies it to its tile of
    /// C: output pixels from `pixel` on (counted over the batch), channels `cols`, of a
    /// layer with `c_out` channels. Its scale and shift start at column `cols.start`, its
    /// residual at the block's first value.
    pub fn for_block(&self, pixel: usize, c_out: usize, cols: std::ops::Range<usize>) -> Self {
        Epilogue {
            scale: &self.scale[cols.clone()],
            shift: &self.shift[cols.clone()],
            residual: self.residual.at(pixel * c_out + cols.start),
            relu: self.relu,
        }
    }

    /// Applies to `out`, the channels `cols` of output pixel `pixel` (counted over the
    /// batch), of a layer with `c_out` channels, whose values `out` holds. Always inlined,
    /// so that a caller with a constant number of channels gets vector code. Not for a
    /// residual in the output, which `out` no longer holds (see [`Epilogue::apply_over`]).
    #[inline(always)]
    pub fn apply(&self, out: &mut [f32], pixel: usize, c_out: usize, cols: std::ops::Range<usize>) {
        // Every slice is cut to `out.len()`: when the caller's length is a constant the
        // loops below become straight vector code without bounds checks. One fused pass,
        // because this runs on each freshly computed tile while it is still in L1.
        let n = out.len();
        debug_assert_eq!(n, cols.len());
        let (scale, shift) = (&self.scale[cols.start..][..n], &self.shift[cols.start..][..n]);
        let relu = |v: f32| if self.relu { v.max(0.0) } else { v };
        match self.residual {
            Residual::Separate(res) => {
                let res = &res[pixel * c_out + cols.start..][..n];
                for i in 0..n {
                    out[i] = relu(out[i] * scale[i] + shift[i] + res[i]);
                }
            }
            Residual::None => {
                for i in 0..n {
                    out[i] = relu(out[i] * scale[i] + shift[i]);
                }
            }
            Residual::InOutput => panic!("Epilogue::apply: the residual in the output was overwritten"),
        }
    }

    /// `out = epilogue(values)`, as [`Epilogue::apply`] with the values apart, so that
    /// `out` may hold the residual.
    #[inline(always)]
    pub fn apply_over(
        &self,
        values: &[f32],
        out: &mut [f32],
        pixel: usize,
        c_out: usize,
        cols: std::ops::Range<usize>,
    ) {
        let n = out.len();
        debug_assert_eq!(n, cols.len());
        let (values, scale, shift) = (&values[..n], &self.scale[cols.start..][..n], &self.shift[cols.start..][..n]);
        let relu = |v: f32| if self.relu { v.max(0.0) } else { v };
        match self.residual {
            Residual::InOutput => {
                for i in 0..n {
                    out[i] = relu(values[i] * scale[i] + shift[i] + out[i]);
                }
            }
            Residual::Separate(_) | Residual::None => {
                out.copy_from_slice(values);
                self.apply(out, pixel, c_out, cols);
            }
        }
    }
}

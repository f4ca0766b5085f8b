//! [`Tensor`]: an f32 buffer on the GPU with a row-major shape.

use std::ops::Range;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::{Binding, Gpu, Step};
use crate::pool::Pooled;

/// A dense, row-major f32 tensor living in a GPU storage buffer.
///
/// ```no_run
/// # fn main() -> saobp::Result<()> {
/// use saobp::{Gpu, Tensor};
/// let gpu = Gpu::from_env_blocking()?;
/// let x = Tensor::from_slice(&gpu, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])?;
/// assert_eq!(x.shape(), &[2, 3]);
/// assert_eq!(x.to_vec_blocking(&gpu)?, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
/// # Ok(()) }
/// ```
///
/// Clones share the buffer. When the last handle drops, the buffer goes back
/// to the [`Gpu`]'s pool and a later tensor of the same size reuses it.
#[derive(Debug, Clone)]
pub struct Tensor {
    buffer: Arc<Pooled>,
    shape: Vec<usize>,
    /// The first NaN or ±Inf of the uploaded data, found on the host. Kernel
    /// outputs are finite whenever their inputs are, so only uploads need it.
    non_finite: Option<(usize, f32)>,
}

/// Number of elements of `shape`, or a shape error on overflow.
pub(crate) fn numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| {
            Error::shape(format!(
                "shape {shape:?} has more elements than fit in memory"
            ))
        })
}

/// Number of elements of `shape`, or a limit error past what the kernels'
/// 32-bit indices reach.
fn indexable(shape: &[usize]) -> Result<usize> {
    let len = numel(shape)?;
    if len > u32::MAX as usize {
        return Err(Error::Limit {
            what: format!("a tensor of shape {shape:?}"),
            needed: len as u64,
            limit_name: "elements per tensor (32-bit indexing)",
            limit: u64::from(u32::MAX),
        });
    }
    Ok(len)
}

/// What a new tensor's buffer starts with.
#[derive(Clone, Copy)]
enum Init<'a> {
    Data(&'a [f32]),
    Zeros,
    /// Anything: every element is written by a kernel before it is read.
    Scratch,
}

impl Tensor {
    fn alloc(gpu: &Gpu, shape: &[usize], init: Init) -> Result<Tensor> {
        let len = indexable(shape)?;
        let bytes = len as u64 * 4;
        gpu.check_buffer_size(&format!("a tensor of shape {shape:?}"), bytes)?;
        // wgpu cannot bind an empty buffer; keep one word so empty tensors stay usable.
        let size = bytes.max(4);
        // Created outside an error scope so that this stays synchronous on every
        // target; a failure reaches the uncaptured-error handler at once on
        // native and is reported here, or by the next call everywhere else.
        let (pooled, reused) = gpu.take_buffer(
            size,
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            "tensor",
        );
        let buffer = pooled.buffer();
        match init {
            Init::Data(data) if !data.is_empty() => {
                gpu.queue()
                    .write_buffer(buffer, 0, bytemuck::cast_slice(data));
            }
            Init::Data(_) => {}
            Init::Zeros => {
                // New buffers come zeroed; a reused one is cleared on the GPU.
                if reused {
                    let mut encoder = gpu
                        .device()
                        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
                    encoder.clear_buffer(buffer, 0, None);
                    gpu.queue().submit([encoder.finish()]);
                }
            }
            Init::Scratch => {
                // Test builds fill scratch with NaN, so a kernel that reads an
                // element it did not write fails the reference checks.
                if cfg!(debug_assertions) {
                    gpu.queue()
                        .write_buffer(buffer, 0, &vec![0xff; size as usize]);
                }
            }
        }
        gpu.check_health()?;
        let non_finite = match init {
            Init::Data(d) => d.iter().enumerate().find(|(_, x)| !x.is_finite()),
            _ => None,
        };
        Ok(Tensor {
            buffer: Arc::new(pooled),
            shape: shape.to_vec(),
            non_finite: non_finite.map(|(i, &x)| (i, x)),
        })
    }

    /// Uploads `data` (row-major) as a tensor of `shape`.
    ///
    /// Fails with [`Error::Shape`] when `data.len()` is not the product of
    /// `shape`, and with [`Error::Limit`] when the buffer exceeds the adapter's limits.
    pub fn from_slice(gpu: &Gpu, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        let len = numel(shape)?;
        if data.len() != len {
            return Err(Error::shape(format!(
                "shape {shape:?} holds {len} values but {} were given",
                data.len()
            )));
        }
        Tensor::alloc(gpu, shape, Init::Data(data))
    }

    /// Wraps a storage buffer the caller already has (e.g. one their own
    /// kernels wrote on a device shared through [`Gpu::from_device`]) as a
    /// tensor of `shape`, without a copy. The buffer holds f32 values,
    /// row-major, from offset 0; it may be larger than `shape` needs.
    /// [`Tensor::buffer`] hands a tensor's buffer the other way.
    ///
    /// The buffer must belong to `gpu`'s device (wgpu reports any other as a
    /// validation error when it is first used) and have `STORAGE` usage;
    /// reading it back ([`Tensor::to_vec`]) also needs `COPY_SRC`, and so do
    /// the softmax and chunked attention, which copy their input. With
    /// `COPY_SRC`, the matmul on software adapters copies it into a texture
    /// instead of packing it with a shader (faster); without, it packs. Its data is
    /// not checked for NaN or ±Inf on the host; the library's outputs are
    /// finite whenever their inputs are. When the last clone of the tensor
    /// drops, the buffer is the caller's again and never enters the pool.
    ///
    /// ```no_run
    /// # fn main() -> saobp::Result<()> {
    /// use saobp::{Gpu, Tensor};
    /// let gpu = Gpu::from_env_blocking()?;
    /// let buffer = gpu.device().create_buffer(&wgpu::BufferDescriptor {
    ///     label: Some("mine"),
    ///     size: 6 * 4,
    ///     usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC
    ///         | wgpu::BufferUsages::COPY_DST,
    ///     mapped_at_creation: false,
    /// });
    /// gpu.queue().write_buffer(&buffer, 0, bytemuck::cast_slice(&[1.0f32; 6]));
    /// let x = Tensor::from_buffer(&gpu, buffer, &[2, 3])?;
    /// assert_eq!(x.to_vec_blocking(&gpu)?, vec![1.0; 6]);
    /// # Ok(()) }
    /// ```
    ///
    /// Fails with [`Error::Shape`] when the buffer is smaller than `shape`
    /// needs, [`Error::InvalidArgument`] when it lacks `STORAGE` usage, and
    /// [`Error::Limit`] when `shape` has more elements than 32-bit indexing
    /// reaches.
    pub fn from_buffer(gpu: &Gpu, buffer: wgpu::Buffer, shape: &[usize]) -> Result<Tensor> {
        let len = indexable(shape)?;
        if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::invalid(format!(
                "a buffer with usage {:?} cannot be a tensor: it needs STORAGE",
                buffer.usage()
            )));
        }
        let bytes = len as u64 * 4;
        if buffer.size() < bytes {
            return Err(Error::shape(format!(
                "shape {shape:?} needs {bytes} bytes but the buffer has {}",
                buffer.size()
            )));
        }
        gpu.check_health()?;
        Ok(Tensor {
            buffer: Arc::new(Pooled::foreign(buffer)),
            shape: shape.to_vec(),
            non_finite: None,
        })
    }

    /// A tensor of `shape` filled with zeros.
    pub fn zeros(gpu: &Gpu, shape: &[usize]) -> Result<Tensor> {
        Tensor::alloc(gpu, shape, Init::Zeros)
    }

    /// A tensor of `shape` whose contents are unspecified, for outputs whose
    /// every element a kernel writes. Cheaper than [`Tensor::zeros`] when the
    /// buffer is reused.
    pub(crate) fn scratch(gpu: &Gpu, shape: &[usize]) -> Result<Tensor> {
        Tensor::alloc(gpu, shape, Init::Scratch)
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the tensor holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The index and value of the first NaN or ±Inf uploaded into this tensor,
    /// if any. Kernels refuse such inputs with [`Error::NonFinite`]. (Data
    /// written straight into [`Tensor::buffer`] is not checked.)
    pub fn first_non_finite(&self) -> Option<(usize, f32)> {
        self.non_finite
    }

    /// [`Error::NonFinite`] naming this tensor `name` when it holds NaN or ±Inf.
    pub(crate) fn check_finite(&self, name: &str) -> Result<()> {
        match self.non_finite {
            None => Ok(()),
            Some((index, value)) => Err(Error::NonFinite {
                tensor: name.to_string(),
                index,
                value,
            }),
        }
    }

    /// The storage buffer, for callers who bind it in their own kernels
    /// while the tensor lives. When the last clone of the tensor drops, the
    /// buffer goes back to the pool and a later tensor may reuse it; to keep
    /// it, take it with [`Tensor::into_buffer`].
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buffer.buffer()
    }

    /// The storage buffer, handed over for good: unlike [`Tensor::buffer`]'s
    /// borrow, it never returns to the [`Gpu`]'s pool, so no later tensor
    /// reuses it while the caller holds it. Gives the tensor back while other
    /// clones share the buffer.
    pub fn into_buffer(self) -> std::result::Result<wgpu::Buffer, Tensor> {
        let Tensor {
            buffer,
            shape,
            non_finite,
        } = self;
        Arc::try_unwrap(buffer)
            .map(Pooled::into_foreign)
            .map_err(|buffer| Tensor {
                buffer,
                shape,
                non_finite,
            })
    }

    /// The same data seen with another shape of the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape)? != self.len() {
            return Err(Error::shape(format!(
                "cannot reshape {:?} ({} values) to {shape:?}",
                self.shape,
                self.len()
            )));
        }
        Ok(Tensor {
            buffer: self.buffer.clone(),
            shape: shape.to_vec(),
            non_finite: self.non_finite,
        })
    }

    /// A step copying `len` values from element `from` of `self` to element `to`
    /// of `dst`. The caller keeps both ranges in bounds.
    pub(crate) fn copy_to<'a>(
        &'a self,
        from: usize,
        dst: &'a Tensor,
        to: usize,
        len: usize,
    ) -> Step<'a> {
        Step::Copy {
            src: self.buffer(),
            src_offset: from as u64 * 4,
            dst: dst.buffer(),
            dst_offset: to as u64 * 4,
            bytes: len as u64 * 4,
        }
    }

    /// Downloads the values (row-major), waiting for all queued work first.
    pub async fn to_vec(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        gpu.read_f32(self.buffer(), self.len()).await
    }

    /// Blocking form of [`Tensor::to_vec`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn to_vec_blocking(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        pollster::block_on(self.to_vec(gpu))
    }

    /// Downloads the elements `range` of the row-major data (e.g. one head's
    /// `N×N` block of an attention map), waiting for all queued work first.
    /// Only those elements are copied off the GPU.
    ///
    /// Fails with [`Error::InvalidArgument`] when the range is reversed or
    /// reaches past the tensor's end. An empty range gives an empty vector.
    ///
    /// ```no_run
    /// # fn main() -> saobp::Result<()> {
    /// use saobp::{Gpu, Tensor};
    /// let gpu = Gpu::from_env_blocking()?;
    /// let x = Tensor::from_slice(&gpu, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])?;
    /// assert_eq!(x.to_vec_range_blocking(&gpu, 3..6)?, vec![4.0, 5.0, 6.0]);
    /// # Ok(()) }
    /// ```
    pub async fn to_vec_range(&self, gpu: &Gpu, range: Range<usize>) -> Result<Vec<f32>> {
        if range.start > range.end || range.end > self.len() {
            return Err(Error::invalid(format!(
                "range {range:?} is outside a tensor of shape {:?} ({} values)",
                self.shape,
                self.len()
            )));
        }
        gpu.read_f32_at(self.buffer(), range.start, range.len())
            .await
    }

    /// Blocking form of [`Tensor::to_vec_range`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn to_vec_range_blocking(&self, gpu: &Gpu, range: Range<usize>) -> Result<Vec<f32>> {
        pollster::block_on(self.to_vec_range(gpu, range))
    }
}

impl<'a> From<&'a Tensor> for Binding<'a> {
    fn from(t: &'a Tensor) -> Self {
        Binding::Buffer(t.buffer())
    }
}

//! Buffer and texture reuse: a tensor hands its storage buffer back to its
//! [`Gpu`]'s pool when its last handle drops, and the next buffer of the same
//! byte size and usage is taken from there; the scratch textures of the
//! texture matmul go back the same way once their steps are dropped.
//! Repeated calls of the same shapes therefore create no new GPU buffers or
//! textures (see [`Gpu::allocations`]).
//!
//! Written here because wgpu has no buffer pool of its own, and the pools in
//! other crates belong to render-graph or frame-arena designs that do not fit
//! tensors whose lifetime the caller decides.
//!
//! Reuse is safe without waiting for the GPU: every command goes through one
//! queue, so work recorded with a recycled buffer runs after the work of its
//! previous owner.
//!
//! [`Gpu`]: crate::Gpu
//! [`Gpu::allocations`]: crate::Gpu::allocations

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

/// Free buffers above this many bytes in total are released instead of kept.
const MAX_FREE_BYTES: u64 = 1 << 30;

/// Free buffers by (size, usage bits), free textures by (width, height, layers).
#[derive(Default)]
struct Free {
    buffers: HashMap<(u64, u32), Vec<wgpu::Buffer>>,
    textures: HashMap<(u32, u32, u32), Vec<wgpu::TextureView>>,
    bytes: u64,
}

/// Bytes of an `rgba32float` texture.
fn texture_bytes((width, height, layers): (u32, u32, u32)) -> u64 {
    u64::from(width) * u64::from(height) * u64::from(layers) * 16
}

/// The buffers a [`crate::Gpu`] has made and may hand out again.
#[derive(Default)]
pub(crate) struct Pool {
    free: Mutex<Free>,
    created: AtomicU64,
}

impl Pool {
    /// A buffer of exactly `size` bytes and `usage`: a free one if there is
    /// one (its contents are whatever its last owner left), else a new one
    /// (zeroed by wgpu). The second value says whether it was reused.
    pub fn take(
        self: &Arc<Self>,
        device: &wgpu::Device,
        size: u64,
        usage: wgpu::BufferUsages,
        label: &'static str,
    ) -> (Pooled, bool) {
        let reused = self.reuse(|f| &mut f.buffers, &(size, usage.bits()), size);
        let was_reused = reused.is_some();
        let buffer = reused.unwrap_or_else(|| {
            self.created.fetch_add(1, Ordering::Relaxed);
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: false,
            })
        });
        (
            Pooled {
                buffer,
                pool: Arc::downgrade(self),
            },
            was_reused,
        )
    }

    /// An `rgba32float` 2D-array storage texture, viewed as an array: a free
    /// one if there is one, else a new one.
    pub fn take_texture(
        self: &Arc<Self>,
        device: &wgpu::Device,
        width: u32,
        height: u32,
        layers: u32,
    ) -> PooledTexture {
        let key = (width, height, layers);
        let reused = self.reuse(|f| &mut f.textures, &key, texture_bytes(key));
        let view = reused.unwrap_or_else(|| {
            self.created.fetch_add(1, Ordering::Relaxed);
            let texture = device.create_texture(&wgpu::TextureDescriptor {
                label: Some("panels"),
                size: wgpu::Extent3d {
                    width,
                    height,
                    depth_or_array_layers: layers,
                },
                mip_level_count: 1,
                sample_count: 1,
                dimension: wgpu::TextureDimension::D2,
                format: wgpu::TextureFormat::Rgba32Float,
                usage: wgpu::TextureUsages::STORAGE_BINDING,
                view_formats: &[],
            });
            texture.create_view(&wgpu::TextureViewDescriptor {
                dimension: Some(wgpu::TextureViewDimension::D2Array),
                ..Default::default()
            })
        });
        PooledTexture {
            view,
            key,
            pool: Arc::downgrade(self),
        }
    }

    /// A free item of `key` from the list `pick` selects, its `bytes`
    /// counted out of the free total.
    fn reuse<K: Hash + Eq, V>(
        &self,
        pick: impl FnOnce(&mut Free) -> &mut HashMap<K, Vec<V>>,
        key: &K,
        bytes: u64,
    ) -> Option<V> {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        let found = pick(&mut free).get_mut(key).and_then(Vec::pop);
        if found.is_some() {
            free.bytes -= bytes;
        }
        found
    }

    /// Keeps `item` of `bytes` under `key` in the list `pick` selects, unless
    /// that would hold more than [`MAX_FREE_BYTES`]; then it is dropped, and
    /// wgpu frees it once the GPU is done with it.
    fn keep<K: Hash + Eq, V>(
        &self,
        pick: impl FnOnce(&mut Free) -> &mut HashMap<K, Vec<V>>,
        key: K,
        bytes: u64,
        item: V,
    ) {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        if free.bytes + bytes > MAX_FREE_BYTES {
            return;
        }
        free.bytes += bytes;
        pick(&mut free).entry(key).or_default().push(item);
    }

    /// Releases every free buffer and texture.
    pub fn trim(&self) {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        *free = Free::default();
    }

    /// Buffers and textures created so far (reuses not counted).
    pub fn created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }

    /// Bytes held in free buffers and textures.
    pub fn free_bytes(&self) -> u64 {
        self.free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bytes
    }
}

/// A buffer that goes back to its pool when dropped (unless the pool is gone,
/// or is told to forget it).
pub(crate) struct Pooled {
    buffer: wgpu::Buffer,
    pool: Weak<Pool>,
}

impl Pooled {
    /// A buffer the pool does not own (a caller's): dropping it returns
    /// nothing to any pool.
    pub fn foreign(buffer: wgpu::Buffer) -> Pooled {
        Pooled {
            buffer,
            pool: Weak::new(),
        }
    }

    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// The buffer, taken out of the pool's reach for good.
    pub fn into_foreign(mut self) -> wgpu::Buffer {
        self.pool = Weak::new();
        self.buffer.clone()
    }

    /// Drops the buffer instead of returning it, e.g. after a failed map that
    /// may leave it in a state the next owner cannot use.
    pub fn discard(mut self) {
        self.pool = Weak::new();
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            let (size, usage) = (self.buffer.size(), self.buffer.usage().bits());
            pool.keep(|f| &mut f.buffers, (size, usage), size, self.buffer.clone());
        }
    }
}

impl fmt::Debug for Pooled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pooled")
            .field("size", &self.buffer.size())
            .finish()
    }
}

/// A scratch texture that goes back to its pool when the last step binding
/// it is dropped.
pub(crate) struct PooledTexture {
    view: wgpu::TextureView,
    key: (u32, u32, u32),
    pool: Weak<Pool>,
}

impl PooledTexture {
    pub fn view(&self) -> &wgpu::TextureView {
        &self.view
    }
}

impl Drop for PooledTexture {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            let bytes = texture_bytes(self.key);
            pool.keep(|f| &mut f.textures, self.key, bytes, self.view.clone());
        }
    }
}

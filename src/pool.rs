//! Buffer and texture reuse: a tensor hands its storage buffer back to its
//! [`Gpu`]'s pool when its last handle drops, and the next buffer of the same
//! byte size and usage is taken from there. Repeated calls of the same shapes
//! therefore create no new GPU buffers or textures (see
//! [`Gpu::allocations`]).
//!
//! Scratch textures (the texture matmul's panels) are reused within a
//! submission as well: steps bind a [`TextureSlot`], a size only, and the
//! run gives each slot a texture from its first step to its last
//! ([`ScratchTextures`]), then hands that texture to the next slot of the
//! same size. A training step records a hundred-odd products; had each kept
//! its own panels until the submission ended, they would hold more memory
//! than the activations.
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

use crate::gpu::Binding;

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
                usage: wgpu::TextureUsages::STORAGE_BINDING | wgpu::TextureUsages::COPY_DST,
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

/// A scratch `rgba32float` 2D-array texture as steps bind it: its size
/// only. Which texture it is, is decided when the steps run
/// ([`ScratchTextures`]); what a step writes into it lasts until the last step
/// of that run binding the same slot.
#[derive(Debug)]
pub(crate) struct TextureSlot {
    key: (u32, u32, u32),
}

impl TextureSlot {
    /// A slot of `width` × `height` texels × `layers`.
    pub fn new(width: u32, height: u32, layers: u32) -> TextureSlot {
        TextureSlot {
            key: (width, height, layers),
        }
    }
}

/// The textures behind the [`TextureSlot`]s of one run of steps: a slot gets
/// one at the first step binding it (a texture of its size freed by an
/// earlier slot of the run, else one from the pool) and gives it back after
/// the last. At the end of the run every texture returns to the pool.
///
/// Handing a texture on within a submission is safe because every step is
/// its own compute pass: wgpu orders the next slot's writes after the last
/// reads of the previous one, as it orders any two uses of a resource.
pub(crate) struct ScratchTextures {
    /// The index of the last step binding each slot, by the slot's address
    /// (as an integer, so that a future holding this stays `Send`).
    last: HashMap<usize, usize>,
    bound: HashMap<usize, PooledTexture>,
    free: HashMap<(u32, u32, u32), Vec<PooledTexture>>,
}

impl ScratchTextures {
    /// Plans the slots of the steps whose texture bindings `uses` lists, as
    /// (step index, slot), in step order.
    pub fn new<'s>(uses: impl IntoIterator<Item = (usize, &'s Arc<TextureSlot>)>) -> Self {
        let mut last = HashMap::new();
        for (i, slot) in uses {
            last.insert(address(slot), i);
        }
        ScratchTextures {
            last,
            bound: HashMap::new(),
            free: HashMap::new(),
        }
    }

    /// The texture of `slot`: the one it has, else a texture of its size
    /// freed by an earlier slot, else one from `pool`. (A slot the plan does
    /// not know keeps its texture to the end of the run.)
    pub fn bind(
        &mut self,
        pool: &Arc<Pool>,
        device: &wgpu::Device,
        slot: &Arc<TextureSlot>,
    ) -> wgpu::TextureView {
        let texture = self.bound.entry(address(slot)).or_insert_with(|| {
            let (width, height, layers) = slot.key;
            self.free
                .get_mut(&slot.key)
                .and_then(Vec::pop)
                .unwrap_or_else(|| pool.take_texture(device, width, height, layers))
        });
        texture.view.clone()
    }

    /// Frees, for later slots, the textures of the slots among `bindings`
    /// (step `i`'s) whose last step is `i`.
    pub fn release_after(&mut self, i: usize, bindings: &[&Binding<'_>]) {
        for b in bindings {
            let Binding::Texture(slot) = b else { continue };
            let key = address(slot);
            if self.last.get(&key) == Some(&i) {
                if let Some(texture) = self.bound.remove(&key) {
                    self.free.entry(slot.key).or_default().push(texture);
                }
            }
        }
    }
}

/// A slot's identity while its steps run: the slots are alive then, so no
/// two share an address.
fn address(slot: &Arc<TextureSlot>) -> usize {
    Arc::as_ptr(slot) as usize
}

/// A scratch texture that goes back to its pool when dropped.
pub(crate) struct PooledTexture {
    view: wgpu::TextureView,
    key: (u32, u32, u32),
    pool: Weak<Pool>,
}

impl Drop for PooledTexture {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            let bytes = texture_bytes(self.key);
            pool.keep(|f| &mut f.textures, self.key, bytes, self.view.clone());
        }
    }
}

//! Memory for the packed weight matrices ([`crate::matmul::PackedMatrix`]), in 2 MiB pages
//! where the OS gives them.
//!
//! A decode token streams every weight byte once, 250 MB for a small model. In 4 KiB pages that
//! is a TLB miss (a page walk) every 4 KiB, about 60,000 per token, and the hardware
//! prefetchers stop at each page boundary. On Linux anonymous memory gets transparent huge
//! pages only where `madvise(MADV_HUGEPAGE)` asks for them (the usual `madvise` setting of
//! `/sys/kernel/mm/transparent_hugepage/enabled`), so the packed matrices are carved out of
//! large mappings so advised: chunks of [`CHUNK_BYTES`] shared by the small matrices (a model's
//! layer matrices of 0.1-2 MB each, which would each waste most of a 2 MiB page on their
//! own), and a mapping of its own for a matrix larger than a chunk. Measured on the 2-vCPU
//! EPYC dev VM: a decode token of Gemma 3 270M 10-28% faster (docs/PERFORMANCE.md).
//!
//! Elsewhere (other OSes, a failed `mmap`) the memory is an ordinary zeroed heap allocation.
//! `ENGINE_HUGE_PAGES=0` asks for that everywhere (for comparisons).

use std::sync::{Arc, Mutex};

/// Bytes of one shared chunk (a multiple of [`HUGE_PAGE`]).
pub const CHUNK_BYTES: usize = 32 << 20;

/// The transparent huge page size of x86-64 and most AArch64 kernels.
pub const HUGE_PAGE: usize = 2 << 20;

/// Zeroed bytes for one packed matrix, aligned to `align` (a power of two at most 4096).
pub struct PackedBytes {
    mem: Mem,
    len: usize,
}

enum Mem {
    /// `vec[off..off + len]`.
    Heap(Vec<u8>, usize),
    /// `len` bytes at `ptr`, inside `mapping` (kept alive here) and this allocation's alone.
    #[cfg(target_os = "linux")]
    Mapped { _mapping: Arc<Mapping>, ptr: *mut u8 },
}

// SAFETY: the mapped bytes belong to this allocation alone (chunks hand each range out once),
// so it is as sendable and shareable as a `Vec<u8>`; the mapping outlives it (the `Arc`).
unsafe impl Send for PackedBytes {}
// SAFETY: as above; shared access only reads.
unsafe impl Sync for PackedBytes {}

impl PackedBytes {
    /// `len` zero bytes aligned to `align`.
    pub fn zeroed(len: usize, align: usize) -> PackedBytes {
        debug_assert!(align.is_power_of_two() && align <= 4096);
        #[cfg(target_os = "linux")]
        if huge_pages_wanted() && len > 0 {
            if let Some(mem) = mapped(len, align) {
                return PackedBytes { mem, len };
            }
        }
        let v = vec![0u8; len + align - 1];
        let off = v.as_ptr().align_offset(align).min(align - 1);
        PackedBytes { mem: Mem::Heap(v, off), len }
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.mem {
            Mem::Heap(v, off) => &v[*off..][..self.len],
            // SAFETY: `len` bytes at `ptr` inside the live mapping, this allocation's alone.
            #[cfg(target_os = "linux")]
            Mem::Mapped { ptr, .. } => unsafe { std::slice::from_raw_parts(*ptr, self.len) },
        }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.mem {
            Mem::Heap(v, off) => &mut v[*off..][..self.len],
            // SAFETY: as in `bytes`, and `&mut self` makes the access exclusive.
            #[cfg(target_os = "linux")]
            Mem::Mapped { ptr, .. } => unsafe { std::slice::from_raw_parts_mut(*ptr, self.len) },
        }
    }

    /// Whether the bytes lie in memory advised for huge pages.
    pub fn in_huge_pages(&self) -> bool {
        #[cfg(target_os = "linux")]
        if matches!(self.mem, Mem::Mapped { .. }) {
            return true;
        }
        false
    }
}

/// Whether packed matrices go to huge-page mappings: unless `ENGINE_HUGE_PAGES=0`. Read once.
fn huge_pages_wanted() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !std::env::var("ENGINE_HUGE_PAGES").is_ok_and(|v| v == "0"))
}

/// An anonymous mapping advised for huge pages, unmapped when the last allocation in it goes.
#[cfg(target_os = "linux")]
struct Mapping {
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory; the allocations in it synchronize their own access.
#[cfg(target_os = "linux")]
unsafe impl Send for Mapping {}
// SAFETY: as above.
#[cfg(target_os = "linux")]
unsafe impl Sync for Mapping {}

#[cfg(target_os = "linux")]
impl Mapping {
    /// At least `len` zero bytes starting on a [`HUGE_PAGE`] boundary, advised for huge pages;
    /// returns the mapping and that start.
    fn new(len: usize) -> Option<(Mapping, *mut u8)> {
        let len = len.checked_next_multiple_of(HUGE_PAGE)?;
        let total = len.checked_add(HUGE_PAGE)?;
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let base = unsafe {
            libc::mmap(std::ptr::null_mut(), total, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let base = base.cast::<u8>();
        let start = base.wrapping_add(base.align_offset(HUGE_PAGE));
        // SAFETY: `start..start + len` lies in the mapping. A failed advice only loses the
        // huge pages.
        unsafe { libc::madvise(start.cast(), len, libc::MADV_HUGEPAGE) };
        Some((Mapping { base, len: total }, start))
    }
}

#[cfg(target_os = "linux")]
impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `Mapping::new` and nothing points into it any more
        // (every allocation in it held this `Arc`).
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// The chunk small allocations are carved from: the mapping, the address of its first
/// (huge-page aligned) byte, and the bytes handed out so far.
#[cfg(target_os = "linux")]
static CHUNK: Mutex<Option<(Arc<Mapping>, usize, usize)>> = Mutex::new(None);

/// `len` bytes aligned to `align` from the shared chunk (a new one when it is full), or a
/// mapping of their own when larger than half a chunk; `None` if the OS refused.
#[cfg(target_os = "linux")]
fn mapped(len: usize, align: usize) -> Option<Mem> {
    if len > CHUNK_BYTES / 2 {
        let (m, start) = Mapping::new(len)?;
        return Some(Mem::Mapped { _mapping: Arc::new(m), ptr: start });
    }
    let mut guard = CHUNK.lock().unwrap_or_else(|e| e.into_inner());
    let fits = |c: &(Arc<Mapping>, usize, usize)| c.2.next_multiple_of(align) + len <= CHUNK_BYTES;
    if !guard.as_ref().is_some_and(fits) {
        let (m, start) = Mapping::new(CHUNK_BYTES)?;
        *guard = Some((Arc::new(m), start as usize, 0));
    }
    let (m, start, used) = guard.as_mut()?;
    let at = used.next_multiple_of(align);
    *used = at + len;
    // The range `at..at + len` of the chunk is handed out once, to this allocation.
    let ptr = m.base.wrapping_add(*start - m.base as usize + at);
    Some(Mem::Mapped { _mapping: Arc::clone(m), ptr })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_zeroed_aligned_and_disjoint() {
        let mut all: Vec<PackedBytes> = [100usize, 5000, 1 << 20, 3 << 20, 7, CHUNK_BYTES, 64].iter().map(|&n| PackedBytes::zeroed(n, 64)).collect();
        for (i, p) in all.iter_mut().enumerate() {
            assert!(p.bytes().iter().all(|&b| b == 0));
            assert_eq!(p.bytes().as_ptr() as usize % 64, 0);
            p.bytes_mut().iter_mut().for_each(|b| *b = i as u8 + 1);
        }
        // Writing one did not touch another.
        for (i, p) in all.iter().enumerate() {
            assert!(p.bytes().iter().all(|&b| b == i as u8 + 1), "allocation {i}");
        }
        #[cfg(target_os = "linux")]
        if huge_pages_wanted() {
            assert!(all.iter().all(PackedBytes::in_huge_pages));
        }
    }
}

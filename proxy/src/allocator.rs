//! The process's allocator: mimalloc, not glibc's malloc. A request's small
//! allocations come from a per-thread free list without glibc's bin sorting
//! and consolidation.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gives the pages freed so far back to the system now. mimalloc keeps freed
/// pages a while for reuse; after a credential store is parsed (a million
/// records: hundreds of megabytes of JSON and records, dropped once the
/// compact set is built) that would leave `serve` resident at up to twice
/// what glibc leaves until later allocations purge them.
pub fn release_freed_memory() {
    // SAFETY: mi_collect takes no arguments but a flag; it only returns this
    // process's free pages to the system.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

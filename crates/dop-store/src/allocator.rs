//! Keeps sled's large zeroed blocks out of the C allocator's heap in a long-running process.
//!
//! Every open of a sled database allocates its page table zeroed: a 4 MiB and a 2 MiB block.
//! glibc serves blocks that large with their own `mmap`, whose pages stay untouched (and not
//! resident) until written. But glibc's mmap threshold is dynamic: freeing such a block (a
//! database closed) raises the threshold to the block's size, and from then on the same
//! allocations come from the heap, where zeroing writes every page and freed pages rarely go
//! back to the system. In `cargo xtask bench soak` (2 minutes) the server's memory grew steadily,
//! 112 → 229 MiB; with the threshold fixed at 1 MiB it levelled off, 95 → 142 MiB, at the same
//! pace (docs/benchmarks.md). A fixed threshold also turns the dynamic adjustment off.

/// Blocks of this size and larger are mapped on their own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MAPPED_FROM: libc::c_int = 1024 * 1024;

/// Fixes glibc's mmap threshold at [`MAPPED_FROM`], unless `MALLOC_MMAP_THRESHOLD_` in the
/// environment already sets it (the operator's word wins). Process-wide: called when a process
/// says it holds its databases (a server), never by the command-line tools.
pub(crate) fn map_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only sets an allocator tunable, which glibc reads under its own lock.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MAPPED_FROM);
        }
    }
}

//! The C allocator set up for a long-running process: sled's large zeroed blocks kept out of
//! its heap, and memory freed inside its arenas given back.
//!
//! Every open of a sled database allocates its page table zeroed: a 4 MiB and a 2 MiB block.
//! glibc serves blocks that large with their own `mmap`, whose pages stay untouched (and not
//! resident) until written. But glibc's mmap threshold is dynamic: freeing such a block (a
//! database closed) raises the threshold to the block's size, and from then on the same
//! allocations come from the heap, where zeroing writes every page and freed pages rarely go
//! back to the system. In `cargo xtask bench soak` (2 minutes) the server's memory grew steadily,
//! 112 → 229 MiB; with the threshold fixed at 1 MiB it levelled off, 95 → 142 MiB, at the same
//! pace (docs/benchmarks.md). A fixed threshold also turns the dynamic adjustment off.
//!
//! Over ten minutes the server's memory still grew (123 → 228 MiB) while what it had allocated
//! stayed flat (heaptrack: 254 MiB live at the end of a 40 s soak, 256 MiB after 150 s, most of
//! it page tables never touched): the growth was memory freed inside glibc's arenas (one per
//! busy thread, up to 8 per core) that glibc gives back only from the top of each heap. So a
//! server also hands the free pages inside its arenas back every [`TRIM_EVERY`]
//! (`malloc_trim`, a few milliseconds for a heap this size).

use std::time::Duration;

/// How often a server gives the free memory inside the allocator's arenas back.
pub(crate) const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Sets the allocator up for a long-running process: large blocks mapped on their own, free
/// memory given back regularly (once per process; a second call does nothing).
pub(crate) fn for_a_server() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        map_large_blocks();
        give_back_free_memory();
    });
}

/// Blocks of this size and larger are mapped on their own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MAPPED_FROM: libc::c_int = 1024 * 1024;

/// Fixes glibc's mmap threshold at [`MAPPED_FROM`], unless `MALLOC_MMAP_THRESHOLD_` in the
/// environment already sets it (the operator's word wins). Process-wide: called when a process
/// says it holds its databases (a server), never by the command-line tools.
fn map_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only sets an allocator tunable, which glibc reads under its own lock.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MAPPED_FROM);
        }
    }
}

/// Starts a thread that gives the free pages inside the allocator's arenas back to the system
/// every [`TRIM_EVERY`], for the life of the process.
fn give_back_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // Without the thread (none can be started) memory grows as it did before; the server
        // works on.
        let _ = std::thread::Builder::new()
            .name("dop-store-trim".into())
            .spawn(|| loop {
                std::thread::sleep(TRIM_EVERY);
                // SAFETY: malloc_trim only returns free memory; it takes the arenas' locks.
                unsafe {
                    libc::malloc_trim(0);
                }
            });
    }
}

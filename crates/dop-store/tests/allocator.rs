//! A store that holds its databases keeps large blocks mapped on their own and gives memory
//! freed inside the heap back (see the store's `allocator` module). Its own test binary: the
//! allocator's settings are process-wide.

/// A store in a temporary directory that holds its databases, as a server's does.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn holding_store() -> (tempfile::TempDir, dop_store::Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = dop_store::Store::open(dir.path()).unwrap();
    store.hold_databases();
    (dir, store)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_store_that_holds_its_databases_maps_large_blocks_even_after_one_was_freed() {
    use std::hint::black_box;
    let _store = holding_store();
    // Freeing a mapped block raises glibc's dynamic threshold to its size (as closing a sled
    // database does with its page table) ...
    drop(black_box(vec![0u8; 8 << 20]));
    let mapped = || unsafe { libc::mallinfo2() }.hblks;
    let before = mapped();
    // ... after which a zeroed 2 MiB block (a page table's) would come from the heap.
    let table = black_box(vec![0u8; 2 << 20]);
    let after = mapped();
    drop(table);
    assert_eq!(
        after,
        before + 1,
        "a zeroed 2 MiB block is mapped on its own, not taken from the heap"
    );
}

/// Memory freed in the middle of an arena (below a block still in use) goes back to the
/// system within the server's trim period; glibc alone keeps it resident.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_store_that_holds_its_databases_gives_memory_freed_inside_the_heap_back() {
    use dop_testbed::process::rss_kib;
    use std::hint::black_box;
    let rss_kib = || rss_kib(std::process::id());
    let _store = holding_store();
    const BLOCKS: usize = 12 * 1024; // 48 MiB of 4 KiB blocks, written so they are resident
    let mut blocks: Vec<Vec<u8>> = (0..BLOCKS).map(|i| vec![i as u8 | 1; 4096]).collect();
    // The last block stays: the freed ones lie below it, where glibc does not trim by itself.
    let last = blocks.pop().unwrap();
    drop(black_box(blocks));
    let freed = rss_kib();
    // The trim runs every 10 s: wait for it, boundedly.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    while freed.saturating_sub(rss_kib()) < 32 * 1024 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let now = rss_kib();
    drop(black_box(last));
    assert!(
        freed.saturating_sub(now) >= 32 * 1024,
        "the 48 MiB freed inside the heap went back to the system (resident {freed} KiB after \
         the free, {now} KiB after waiting)"
    );
}

//! A store that holds its databases keeps large blocks mapped on their own (see the store's
//! `allocator` module). Its own test binary: the allocator's settings are process-wide.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_store_that_holds_its_databases_maps_large_blocks_even_after_one_was_freed() {
    use std::hint::black_box;
    let dir = tempfile::tempdir().unwrap();
    let store = dop_store::Store::open(dir.path()).unwrap();
    store.hold_databases();
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

//! End-to-end tests of remote clones whose guest RAM maps their host's
//! cache of pushed pages (`SNOWFLOCK_MAP_HOST_CACHE=1` in every daemon's
//! environment): they read exactly their parent's memory, two families
//! each read their own parent state, pages they allocate read back what
//! they wrote, and a nested local clone still gets fresh zero pages for the
//! hinted ones (its RAM maps the same cache: dropping its copy of a page
//! there would read the cache back, or add zeros to it for every clone of
//! the host).

mod common;
use common::families::{by_pushes, scan_two_families, PAGES};
use common::hintnest::hinted_zero_pages;
use common::hosts::Hosts;
use common::workloads::{scan_four_clones, AVOID_ALLOC};
use sf_vmm::clone::host::MAP_HOST_CACHE_ENV;

fn mapping_hosts(k: usize) -> Hosts {
    Hosts::start_with_env(k, &[], |_| vec![(MAP_HOST_CACHE_ENV, "1")])
}

#[test]
fn clones_over_the_host_cache_read_their_parents_memory() {
    let h = mapping_hosts(3);
    // Four clones, two on each clone host, read the same 16 MiB.
    let stats = scan_four_clones(&h);
    eprintln!("{stats:#?}");
    for s in &stats {
        assert!(
            s.maps_host_cache,
            "the clone mapped its host's cache: {s:?}"
        );
        // Every page of the scan came over TCP or from the cache, and is
        // counted (a page read straight from the cache is counted when the
        // handler looks, at the latest before the clone's last counters).
        assert!(
            s.pages_fetched + s.multicast_pages >= PAGES,
            "every page of the scan counted: {s:?}"
        );
    }
    let pushed: u64 = stats.iter().map(|s| s.multicast_pages).sum();
    assert!(
        pushed > 2 * PAGES,
        "most pages came from the hosts' caches: {stats:?}"
    );
}

#[test]
fn two_families_over_the_host_cache_each_read_their_own_parent_state() {
    let h = mapping_hosts(3);
    // The parent changes every page between the families: a page of the
    // first family's cache in the second family's clone makes its sum
    // wrong (each group has a cache of its own).
    let (pushed, other) = by_pushes(scan_two_families(&h, &[], true));
    eprintln!("{pushed:#?}\n{other:#?}");
    assert!(pushed.maps_host_cache && other.maps_host_cache);
    assert!(pushed.multicast_pages > 0, "{pushed:?}");
}

#[test]
fn clones_over_the_host_cache_that_allocate_and_fill_check_their_memory() {
    let h = mapping_hosts(3);
    let r = h.run(1, AVOID_ALLOC);
    h.assert_forktest_ok(&r, "avoid");
    for i in [2, 3] {
        let stats = h.clone_stats(i);
        assert!(
            stats.iter().all(|s| s.maps_host_cache),
            "host {i}: {stats:?}"
        );
    }
}

/// The nested path over the cache. Its hinted pages get anonymous memory
/// mapped over them. (Dropped with MADV_DONTNEED they would read as zeros
/// too, but from pages added to the shared cache: with the discard left
/// out, this test found 0 zero pages.)
#[test]
fn a_remote_clones_own_clones_over_the_host_cache_honour_hints() {
    let h = mapping_hosts(2);
    let (zero, total) = hinted_zero_pages(&h, false);
    assert_eq!(
        zero, total,
        "hinted pages are fresh zero pages: {zero} of {total}"
    );
    let stats = h.clone_stats(2);
    assert!(stats.iter().all(|s| s.maps_host_cache), "{stats:?}");
}

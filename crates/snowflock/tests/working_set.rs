//! End-to-end tests of the recorded working set: the memory holder of a
//! VM's first clone family records the pages its clone asks for, and the
//! holder of the next family, cloned from the same parent, pushes them to
//! the group's multicast before that family's clone faults. Three
//! namespace hosts; each family is one clone, on host 2, scanning 16 MiB.

mod common;
use common::families::{by_pushes, scan_two_families, PAGES};
use common::hosts::Hosts;

#[test]
fn a_working_set_recorded_by_one_family_is_pushed_to_the_next_ahead_of_its_faults() {
    let stats = scan_two_families(&Hosts::start(3), &[], false);
    let (second, first) = by_pushes(stats);
    eprintln!("first family's clone: {first:#?}\nsecond family's clone: {second:#?}");
    // A lone clone gets nothing pushed: the first family records.
    assert_eq!(first.multicast_pages, 0, "{first:?}");
    assert!(first.pages_fetched >= PAGES, "{first:?}");
    // Most of the next family's pages arrive before it touches them, and
    // it faults on fewer pages than the first family's clone.
    assert!(
        second.multicast_pages >= PAGES / 2,
        "the recorded set arrived ahead of the second family's faults: {second:?}"
    );
    assert!(
        second.misses < first.misses && second.pages_fetched < first.pages_fetched / 2,
        "the second family faulted less: first {first:?}, second {second:?}"
    );
}

#[test]
fn without_the_working_set_the_next_family_faults_like_the_first() {
    let stats = scan_two_families(&Hosts::start(3), &["--no-working-set"], false);
    let (a, b) = by_pushes(stats);
    eprintln!("clones: {a:#?}\n{b:#?}");
    for s in [&a, &b] {
        assert_eq!(s.multicast_pages, 0, "nothing pushed ahead: {s:?}");
        assert!(s.pages_fetched >= PAGES, "every page fetched: {s:?}");
    }
}

#[test]
fn a_stale_working_set_never_yields_the_older_familys_memory() {
    // The parent changes every page the clones read between the families:
    // the pushed set names the right pages, but only the second holder's
    // own snapshot has their content. The guest checks both families' sums
    // against the parent's memory at each fork (see `scan_two_families`).
    let stats = scan_two_families(&Hosts::start(3), &[], true);
    let (second, _) = by_pushes(stats);
    assert!(second.multicast_pages > 0, "pushed ahead: {second:?}");
}

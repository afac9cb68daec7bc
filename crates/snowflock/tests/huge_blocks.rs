//! End-to-end test of whole-block installs: a remote clone that receives
//! whole 2 MiB blocks of pushed pages before touching them installs each
//! as one huge page (UFFDIO_MOVE), and still reads exactly its parent's
//! memory. Three namespace hosts; two families of one clone each, on host
//! 2, scanning 16 MiB; the second family's holder pushes the first's
//! recorded working set ahead of its clone's faults.

mod common;
use common::families::{by_pushes, scan_two_families};
use common::hosts::Hosts;

#[test]
fn pushed_whole_blocks_come_in_as_huge_pages_and_read_back_right() {
    // Off by default: asked for in every host's daemon environment.
    let h = Hosts::start_with_env(3, &[], |_| vec![("SNOWFLOCK_HUGE_BLOCKS", "1")]);
    // The parent changes every page between the families: a block holding
    // a page of the wrong family, or a page at the wrong place, makes the
    // guest's sum wrong.
    let (pushed, other) = by_pushes(scan_two_families(&h, &[], true));
    eprintln!("{pushed:#?}\n{other:#?}");
    assert!(
        pushed.huge_blocks > 0,
        "the clone that got pages pushed ahead installed whole blocks as huge pages: {pushed:?}"
    );
    assert!(
        pushed.huge_blocks * 512 <= pushed.multicast_pages,
        "huge blocks are pushed pages: {pushed:?}"
    );
    assert_eq!(pushed.huge_fallbacks, 0, "every move succeeded: {pushed:?}");
}

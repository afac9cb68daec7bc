//! End-to-end test of whole-block installs: a remote clone that receives
//! whole 2 MiB blocks of pushed pages before touching them installs each
//! as one huge page (UFFDIO_MOVE), and still reads exactly its parent's
//! memory. Three namespace hosts; two families of one clone each, on host
//! 2, scanning 16 MiB; the second family's holder pushes the first's
//! recorded working set ahead of its clone's faults.

mod common;
use common::hosts::Hosts;

#[test]
fn pushed_whole_blocks_come_in_as_huge_pages_and_read_back_right() {
    // Off by default: asked for in every host's daemon environment.
    let h = Hosts::start_with_env(3, &[], |_| vec![("SNOWFLOCK_HUGE_BLOCKS", "1")]);
    let r = h.run(
        1,
        &[
            "--placement",
            "remote",
            "forktest",
            "--",
            "scan",
            "n=1",
            "mib=16",
            // The clone computes between touches (300 ms for the pass),
            // so the holder's push gets ahead of it.
            "ms=300",
            "families=2",
            // The parent changes every page between the families: a block
            // holding a page of the wrong family, or a page at the wrong
            // place, makes the guest's sum wrong.
            "mutate=1",
        ],
    );
    assert!(
        r.code == Some(0) && r.stdout.contains("forktest scan: ok"),
        "both families' clones read the parent's memory as at their fork:\n{}\n{}",
        r.describe(),
        h.describe()
    );
    let stats = h.clone_stats(2);
    eprintln!("{stats:#?}");
    assert_eq!(stats.len(), 2, "one clone per family on host 2: {stats:?}");
    let pushed = stats.iter().max_by_key(|s| s.multicast_pages).unwrap();
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

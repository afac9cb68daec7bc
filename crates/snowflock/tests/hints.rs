//! End-to-end tests of the guest's free-page hints across hosts: a guest
//! that corrupts its hint structure in every way it can (wild header GPA,
//! bitmap outside RAM or wrapping, misaligned, every page hinted) and clones
//! to another host across each; the clones see their parent's bytes or
//! zeros, nothing else, and no VMM or daemon falls over. Hints on and off
//! give the same answers.

mod common;
use common::hosts::Hosts;

#[test]
fn a_corrupt_hint_structure_costs_only_the_guests_own_contents() {
    let h = Hosts::start(2);
    for extra in [&[][..], &["--no-hints"][..]] {
        let mut args = vec!["--timeout", "60s", "--placement", "remote"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["hostile", "--", "hints"]);
        let r = h.run(1, &args);
        h.assert_printed(&r, "hostile hints: 0 failed", &format!("{extra:?}"));
        r.assert_no_host_panic();
        // Every case cloned to host 2, which is still serving.
        assert!(r.stdout.matches("hints case").count() == 8, "{}", r.stdout);
    }
    // Host 2 ran every clone (8 cases x 2 clones, twice) and still serves.
    let m: sf_api::Metrics = h.client(2).get("/v1/metrics").unwrap();
    assert_eq!(m.clones_received, 32, "{m:?}\n{}", h.describe());
}

/// Local clones drop their copy of hinted pages (fresh zero pages instead
/// of copies of the parent's garbage): the same checksums with hints on and
/// off, and the parent's freed memory never shows through.
#[test]
fn a_local_clone_filling_freed_memory_gets_the_same_answer_with_hints_on_and_off() {
    for extra in [&[][..], &["--no-hints"][..]] {
        let mut args = vec!["run", "--timeout", "60s"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["forktest", "--", "reuse", "mib=32", "n=2"]);
        let r = common::snowflock(&args);
        r.assert_code(0)
            .assert_stdout_has("forktest reuse: ok")
            .assert_stdout_has("reuse: clone 2 fill")
            .assert_no_host_panic();
    }
}

/// The same corrupt structures with local clones, which drop their copy of
/// hinted pages: every case ends, and only "every page hinted" may cost the
/// clones their own heap and stack.
#[test]
fn a_corrupt_hint_structure_cannot_hurt_a_local_clones_host() {
    for extra in [&[][..], &["--no-hints"][..]] {
        let mut args = vec!["run", "--timeout", "60s"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["hostile", "--", "hints"]);
        let r = common::snowflock(&args);
        r.assert_code(0)
            .assert_stdout_has("hostile hints: 0 failed")
            .assert_no_host_panic();
        assert_eq!(r.stdout.matches("hints case").count(), 8, "{}", r.stdout);
        if !extra.is_empty() {
            // Without hints nothing is dropped: every clone exits cleanly.
            r.assert_stdout_has("hints case every page hinted: Some([(Exited, 0), (Exited, 0)])");
        }
    }
}

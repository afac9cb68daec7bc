//! A remote clone's own local clones and the guest's hints: the freed
//! pages a nested clone sees (`forktest hintnest`), which must be fresh
//! zero pages with hints on and the parent's garbage with `--no-hints`.

use super::hosts::Hosts;

/// Runs `forktest hintnest` from host 1 on a remote clone (with
/// `--no-hints` if asked) and returns, of the freed pages its own local
/// clone read, how many were zero pages and how many there were.
pub fn hinted_zero_pages(h: &Hosts, no_hints: bool) -> (u64, u64) {
    let mut args = vec!["--mem", "256M", "--placement", "remote"];
    if no_hints {
        args.push("--no-hints");
    }
    args.extend_from_slice(&["forktest", "--", "hintnest", "mib=16", "zeroed=4"]);
    let r = h.run(1, &args);
    h.assert_printed(&r, "forktest hintnest: ok", &format!("no_hints={no_hints}"));
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("hintnest: zero_pages="))
        .expect("the counts line");
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let (zero, total) = (nums[0], nums[1]);
    assert!(total > 4000, "{line}");
    (zero, total)
}

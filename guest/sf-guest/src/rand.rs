//! A fast non-cryptographic random-number source (xoshiro256**) seeded from
//! host entropy in the boot information block.

use core::cell::Cell;

struct State(Cell<[u64; 4]>);
// SAFETY: the guest runs one thread.
unsafe impl Sync for State {}

static STATE: State = State(Cell::new([0x9e37_79b9_7f4a_7c15, 1, 2, 3]));

pub(crate) fn seed(s: [u64; 4]) {
    if s != [0; 4] {
        STATE.0.set(s);
    }
}

/// A small generator an application can own, e.g. one per work slice:
/// the same stream the host uses to check guests' answers.
pub use sf_abi::rand::Xoshiro256;

/// The next value of the VM's own random stream.
pub fn next_u64() -> u64 {
    let mut g = Xoshiro256::from_state(STATE.0.get());
    let v = g.next_u64();
    STATE.0.set(g.state());
    v
}

//! The in-memory host of the virtual-clock tests lives in the library
//! (`slirpnet::fuzzing::sim_host`), where the `flows` fuzz target uses it too.

pub use slirpnet::fuzzing::sim_host::SimHost;
use slirpnet::stack::Stack;
use std::time::Instant;

use super::guest::TestHost;

impl TestHost for SimHost {
    fn dispatch(stack: &mut Stack<Self>, now: Instant) {
        SimHost::dispatch(stack, now);
    }

    fn has_ready(&self) -> bool {
        SimHost::has_ready(self)
    }
}

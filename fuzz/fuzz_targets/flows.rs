//! One guest TCP connection to a simulated host peer that accepts it, with the guest's
//! segments, the passing of time and the peer's reads chosen by the input
//! (see `slirpnet::fuzzing::flows`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    slirpnet::fuzzing::flows::drive_flows(data);
});

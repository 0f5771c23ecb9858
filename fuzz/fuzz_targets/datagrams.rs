//! A guest's UDP flow to a simulated host peer, with both sides' datagrams, port unreachables
//! and the passing of time chosen by the input (see `slirpnet::fuzzing::datagrams`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    slirpnet::fuzzing::datagrams::drive_datagrams(data);
});

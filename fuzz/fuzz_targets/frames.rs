//! Arbitrary guest frames into the stack, over a host that refuses every socket.
//! Input: records of `[time step: u8][length: u16 BE][frame]` (see `slirpnet::fuzzing`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    slirpnet::fuzzing::drive_frames(data);
});

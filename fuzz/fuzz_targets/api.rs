//! Arbitrary bytes into the API request parser, with IPv6 off and on.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    slirpnet::fuzzing::drive_api(data);
});

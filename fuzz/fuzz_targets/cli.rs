//! Arbitrary command lines (NUL-separated arguments) into the CLI parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    slirpnet::fuzzing::drive_cli(data);
});

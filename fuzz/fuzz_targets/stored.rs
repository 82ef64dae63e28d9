//! See `flowgate::fuzzing::stored`: it must return normally for any input.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| flowgate::fuzzing::stored(data));

//! See `flowgate::fuzzing::fast_head`: it must return normally for any input.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| flowgate::fuzzing::fast_head(data));

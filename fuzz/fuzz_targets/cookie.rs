//! The sticky-cookie decoder must never panic and accept only its own encodings.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| flowgate::fuzzing::cookie(data));

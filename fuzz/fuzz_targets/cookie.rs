//! The sticky-cookie check must never panic and accept only the cookie it issued.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| flowgate::fuzzing::cookie(data));

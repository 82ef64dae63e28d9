//! The config loader must never panic: any text gets a config or a clear error.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| flowgate::fuzzing::config(data));

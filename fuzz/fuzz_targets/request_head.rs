//! The HTTP/1 request-head parser and the admission step: any bytes, never a panic, and
//! every head sent on (to an upstream or to Pingora) well formed and canonical.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenantgate_proxy::service::http1::fuzzing::HeadFuzzer;

thread_local! {
    static FUZZER: HeadFuzzer = HeadFuzzer::default();
}

fuzz_target!(|data: &[u8]| {
    FUZZER.with(|f| f.run(data));
});

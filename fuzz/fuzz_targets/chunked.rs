//! The chunked-body tracker: any bytes, split anywhere, give the same body end.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&split, rest)) = data.split_first() {
        tenantgate_proxy::service::http1::fuzzing::chunked(rest, usize::from(split));
    }
});

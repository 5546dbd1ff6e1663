//! Fuzzes `faxgate_ipp::message::parse`, the request parser the IPP front
//! relies on: any bytes must give a request or a refusal, never a panic,
//! and what it accepts must hold together.

#![no_main]

use faxgate_ipp::message::{self, Attrs as _};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match message::parse(data) {
        Ok((req, offset)) => {
            assert!(offset <= data.len());
            assert_eq!(data[offset - 1], 0x03, "the IPP part ends with the end tag");
            assert!(req.header().request_id > 0);
            // The document part never changes how the attributes parse.
            let (again, offset2) = message::parse(&data[..offset]).expect("the IPP part alone");
            assert_eq!(offset2, offset);
            assert_eq!(again.header().request_id, req.header().request_id);
        }
        Err(refusal) => {
            assert!(refusal.status >= 0x0400, "{refusal}");
            assert!(!refusal.message.is_empty());
        }
    }
});

//! Any bytes as a stored record: `record::decode` never panics; what it
//! loads is written back (`record::encode`) and loads again unchanged; the
//! cache can encode it and GET can try to print it.
//!
//! Random bytes almost never pass the checksum, so each input is also tried
//! as the payload of a well-formed record (magic, SHA-256, payload): that
//! reaches the decoding and the consistency checks behind the checksum.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use sxds::{
    bundle,
    store::record::{self, Decoded},
};

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut record = b"SXD2".to_vec();
    record.extend_from_slice(&Sha256::digest(data));
    record.extend_from_slice(data);
    check(&record);
});

fn check(record: &[u8]) {
    let Ok(decoded) = record::decode(record) else { return };
    let (Decoded::Current(loaded) | Decoded::Legacy(loaded)) = decoded;
    match record::decode(&record::encode(&loaded)) {
        Ok(Decoded::Current(again)) => assert_eq!(again, loaded, "a record written back loads unchanged"),
        other => panic!("a record written back does not load as current: {other:?}"),
    }
    let _ = bundle::to_json(&loaded);
    let loaded = Arc::new(loaded);
    sxds_fuzz::check_snapshots(loaded.clone(), loaded);
}

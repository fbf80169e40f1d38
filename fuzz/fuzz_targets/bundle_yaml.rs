//! Any body through the YAML bundle parser: it never panics, and what it
//! accepts prints (GET, as JSON) and parses back to the same content.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sxds::bundle::Format;

fuzz_target!(|data: &[u8]| sxds_fuzz::check_accepted_bundle(data, Format::Yaml));

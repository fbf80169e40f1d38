//! One bundle, two spellings: a JSON body that is accepted, rewritten as
//! YAML, is accepted too, with the same content hash, version and resources.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sxds::bundle::{self, Format};

fuzz_target!(|data: &[u8]| {
    let Ok(json) = bundle::accept(data, Format::Json) else { return };
    let value: serde_json::Value = serde_json::from_slice(data).expect("an accepted body is JSON");
    let yaml = serde_yaml_ng::to_string(&value).expect("JSON values print as YAML");
    let from_yaml = bundle::accept(yaml.as_bytes(), Format::Yaml).unwrap_or_else(|e| panic!("the YAML spelling is refused: {e:?}\n{yaml}"));
    assert_eq!(from_yaml.content_hash, json.content_hash, "JSON and YAML differ:\n{yaml}");
    assert_eq!(from_yaml.version, json.version);
    assert_eq!(sxds_fuzz::listing(&from_yaml), sxds_fuzz::listing(&json));
});

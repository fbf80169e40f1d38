//! sxds's own protobuf schema (`proto/sxds/v1`) and the descriptor pool that
//! holds it beside every Envoy type, so canonical JSON with any `@type` can be
//! parsed and printed.

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, MessageDescriptor};

/// Messages generated from `proto/sxds/v1/bundle.proto`.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/sxds.v1.rs"));
}

pub use v1::{Bundle, StoredBundle};

const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// The pool of every Envoy message plus sxds's. Built once (about 65 ms) on
/// first use and immutable after that, so one process-wide copy is shared.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(DESCRIPTORS).expect("descriptor set compiled in by build.rs is valid"))
}

/// The descriptor of `sxds.v1.Bundle`.
pub fn bundle_descriptor() -> MessageDescriptor {
    pool().get_message_by_name("sxds.v1.Bundle").expect("sxds.v1.Bundle is in the compiled descriptor set")
}

impl StoredBundle {
    /// The bundle itself. A message field is optional in proto3, but every
    /// stored bundle has one; a missing one reads as empty.
    pub fn contents(&self) -> &Bundle {
        static EMPTY: Bundle =
            Bundle { version: String::new(), listeners: Vec::new(), clusters: Vec::new(), routes: Vec::new(), endpoints: Vec::new() };
        self.bundle.as_ref().unwrap_or(&EMPTY)
    }
}

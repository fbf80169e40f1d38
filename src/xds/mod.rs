//! xDS over gRPC: the codec that writes pre-encoded responses, the limits
//! on what a client may send, the state machines (state of the world in
//! [`stream`], delta in [`delta`], VHDS's on-demand names in [`vhds`]), the
//! services, and the status of every connected Envoy; gRPC health and
//! reflection. And REST polling ([`rest`]) on the same port.

pub mod codec;
pub mod delta;
pub mod introspection;
pub mod limits;
mod names;
pub mod request;
pub mod rest;
pub mod server;
pub mod status;
pub mod stream;
pub mod vhds;

pub use server::XdsServer;

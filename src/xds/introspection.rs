//! gRPC health checking (`grpc.health.v1.Health`) and server reflection
//! (`grpc.reflection.v1` and `v1alpha`) on the xDS port, for load balancer
//! health checks and `grpcurl list` / `describe`.
//!
//! Health answers SERVING for the server as a whole (`""`) and for each
//! discovery service while sxds serves, NOT_SERVING once shutdown starts.
//! Reflection describes only the discovery services, health and itself:
//! build.rs cuts their files (and what they import) out of envoy-types'
//! descriptors.
//!
//! Health watches and reflection streams are long-lived; each ends at
//! shutdown (status UNAVAILABLE) so it does not hold the drain open.

use std::{
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use axum::{body::Body, Router};
use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Status;
use tonic_health::ServingStatus;
use tower::ServiceExt;

/// The Envoy descriptors reflection serves (see build.rs).
const DISCOVERY_DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/reflection.bin"));

const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
const REFLECTION_SERVICES: [&str; 2] = ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// Routes for health and reflection, beside the discovery services named in
/// `discovery` (full gRPC service names). Health turns NOT_SERVING when
/// `shutdown` is cancelled; a task waits for that.
pub async fn router(discovery: &[&str], shutdown: CancellationToken) -> Router {
    let (reporter, health) = tonic_health::server::health_reporter();
    for service in discovery {
        reporter.set_service_status(service, ServingStatus::Serving).await;
    }
    // Streams end once the statuses have turned, so a watcher sees NOT_SERVING first.
    let ended = CancellationToken::new();
    let services: Vec<String> = discovery.iter().map(|s| (*s).to_owned()).collect();
    tokio::spawn({
        let ended = ended.clone();
        async move {
            shutdown.cancelled().await;
            for service in std::iter::once("").chain(services.iter().map(String::as_str)) {
                reporter.set_service_status(service, ServingStatus::NotServing).await;
            }
            ended.cancel();
        }
    });

    let reflection = || {
        let builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(DISCOVERY_DESCRIPTORS)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        let names = discovery.iter().copied().chain([HEALTH_SERVICE]).chain(REFLECTION_SERVICES);
        names.fold(builder, |builder, name| builder.with_service_name(name))
    };
    // The descriptors are built into the binary; a unit test decodes them.
    let v1 = reflection().build_v1().expect("built-in descriptors are valid");
    let v1alpha = reflection().build_v1alpha().expect("built-in descriptors are valid");

    Router::new()
        .route_service(&format!("/{HEALTH_SERVICE}/{{*method}}"), until(health, &ended))
        .route_service(&format!("/{}/{{*method}}", REFLECTION_SERVICES[0]), until(v1, &ended))
        .route_service(&format!("/{}/{{*method}}", REFLECTION_SERVICES[1]), until(v1alpha, &ended))
}

/// `service` with each response body ended when `ended` is cancelled.
fn until<S>(
    service: S,
    ended: &CancellationToken,
) -> impl tower::Service<
    http::Request<Body>,
    Response = http::Response<Body>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<http::Response<Body>, std::convert::Infallible>> + Send,
> + Clone
       + Send
       + Sync
       + 'static
where
    S: tower::Service<http::Request<Body>, Response = http::Response<tonic::body::Body>, Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let ended = ended.clone();
    service.map_response(move |response| {
        let ended = Box::pin(ended.clone().cancelled_owned());
        response.map(|body| Body::new(UntilShutdown { body, ended: Some(ended) }))
    })
}

/// A gRPC response body that ends with UNAVAILABLE at shutdown.
struct UntilShutdown {
    body: tonic::body::Body,
    /// `None` once the trailers went out.
    ended: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl http_body::Body for UntilShutdown {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let Some(ended) = this.ended.as_mut() else { return Poll::Ready(None) };
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        ready!(ended.as_mut().poll(cx));
        this.ended = None;
        let mut trailers = HeaderMap::new();
        Status::unavailable("sxds is shutting down").add_header(&mut trailers)?;
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended.is_none() || self.body.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflection_descriptors_hold_the_discovery_services_and_their_imports() {
        use prost::Message;
        let set = prost_reflect::prost_types::FileDescriptorSet::decode(DISCOVERY_DESCRIPTORS).unwrap();
        let names: Vec<&str> = set.file.iter().map(|f| f.name()).collect();
        for file in ["envoy/service/discovery/v3/ads.proto", "envoy/service/discovery/v3/discovery.proto", "google/protobuf/any.proto"] {
            assert!(names.contains(&file), "{file} missing from {names:?}");
        }
        // Only what is needed: not every Envoy API.
        assert!(!names.iter().any(|n| n.contains("ratelimit")), "{names:?}");
        // Every import resolves, so a client can build the full descriptor.
        let pool = prost_reflect::DescriptorPool::from_file_descriptor_set(set).unwrap();
        assert!(pool.get_service_by_name("envoy.service.discovery.v3.AggregatedDiscoveryService").is_some());
    }
}

//! The Cloud Map test support on moto (tests/support/cloud_map.rs): what the
//! product's Cloud Map tests build on. Registered instances are discovered with
//! their attributes; a deregister removes one and moves the revision; custom
//! health filters HEALTHY; the emulator restarts on the same port, empty, and
//! the admin puts its state back.

mod support;

use std::collections::HashMap;

use aws_sdk_servicediscovery::{operation::discover_instances_revision::DiscoverInstancesRevisionError, types::HealthStatusFilter};
use support::cloud_map::{Admin, Emulator, AVAILABILITY_ZONE, IPV4, PORT, REGION};

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[tokio::test]
async fn registered_instances_are_discovered_with_their_attributes() {
    let Some(emulator) = Emulator::start().await else { return };
    let admin = Admin::new(&emulator).await;
    let backend = admin.create_service("sxds-test", "backend").await;
    assert_eq!(backend.revision().await.expect("revision"), 0, "a new service is empty");

    let one = [(IPV4, "10.0.0.1"), (PORT, "8080"), (AVAILABILITY_ZONE, "us-east-1a"), (REGION, "us-east-1"), ("version", "blue")];
    let two = [(IPV4, "10.0.0.2"), (PORT, "8081"), (AVAILABILITY_ZONE, "us-east-1b")];
    backend.register("i-1", &one).await;
    backend.register("i-2", &two).await;

    let answer = backend.discover(HealthStatusFilter::All).await.expect("DiscoverInstances");
    let mut found: Vec<_> = answer.instances().iter().map(|i| (i.instance_id().unwrap_or_default(), i.attributes().cloned().unwrap_or_default())).collect();
    found.sort_by(|a, b| a.0.cmp(b.0));
    assert_eq!(found, vec![("i-1", map(&one)), ("i-2", map(&two))]);
    for instance in answer.instances() {
        assert_eq!((instance.namespace_name(), instance.service_name()), (Some("sxds-test"), Some("backend")));
    }
}

#[tokio::test]
async fn deregister_removes_the_instance_and_moves_the_revision() {
    let Some(emulator) = Emulator::start().await else { return };
    let admin = Admin::new(&emulator).await;
    let backend = admin.create_service("sxds-test", "backend").await;
    backend.register("i-1", &[(IPV4, "10.0.0.1"), (PORT, "8080")]).await;
    backend.register("i-2", &[(IPV4, "10.0.0.2"), (PORT, "8080")]).await;
    let before = backend.revision().await.expect("revision");

    backend.deregister("i-2").await;

    assert_eq!(backend.discover_ids(HealthStatusFilter::All).await, ["i-1"]);
    assert_ne!(backend.revision().await.expect("revision"), before, "a deregister moves the revision");
}

#[tokio::test]
async fn custom_health_filters_healthy_without_moving_the_revision() {
    let Some(emulator) = Emulator::start().await else { return };
    let admin = Admin::new(&emulator).await;
    let backend = admin.create_service("sxds-test", "backend").await;
    backend.register("i-1", &[(IPV4, "10.0.0.1"), (PORT, "8080")]).await;
    backend.register("i-2", &[(IPV4, "10.0.0.2"), (PORT, "8080")]).await;
    let before = backend.revision().await.expect("revision");

    backend.set_healthy("i-2", false).await;

    assert_eq!(backend.discover_ids(HealthStatusFilter::Healthy).await, ["i-1"]);
    assert_eq!(backend.discover_ids(HealthStatusFilter::Unhealthy).await, ["i-2"]);
    assert_eq!(backend.discover_ids(HealthStatusFilter::All).await, ["i-1", "i-2"]);
    assert_eq!(backend.revision().await.expect("revision"), before, "health is not in the revision (as on AWS)");
    backend.set_healthy("i-2", true).await;
    assert_eq!(backend.discover_ids(HealthStatusFilter::Healthy).await, ["i-1", "i-2"]);
}

#[tokio::test]
async fn a_restarted_emulator_is_empty_on_the_same_port_until_recreated() {
    let Some(mut emulator) = Emulator::start().await else { return };
    let endpoint = emulator.endpoint_url();
    let admin = Admin::new(&emulator).await;
    let backend = admin.create_service("sxds-test", "backend").await;
    backend.register("i-1", &[(IPV4, "10.0.0.1"), (PORT, "8080")]).await;
    backend.register("i-2", &[(IPV4, "10.0.0.2"), (PORT, "8080")]).await;
    backend.set_healthy("i-2", false).await;

    emulator.stop();
    let stopped = backend.revision().await.expect_err("no emulator");
    assert!(matches!(stopped, aws_sdk_servicediscovery::error::SdkError::DispatchFailure(_)), "{stopped:?}");

    emulator.restart().await;
    assert_eq!(emulator.endpoint_url(), endpoint);
    let empty = backend.revision().await.expect_err("a restarted moto is empty").into_service_error();
    assert!(matches!(empty, DiscoverInstancesRevisionError::NamespaceNotFound(_)), "{empty:?}");

    admin.recreate().await;
    assert_eq!(backend.discover_ids(HealthStatusFilter::All).await, ["i-1", "i-2"]);
    assert_eq!(backend.discover_ids(HealthStatusFilter::Healthy).await, ["i-1"], "health is put back too");
}

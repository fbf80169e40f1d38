//! Compiles `proto/` against the Envoy descriptors shipped inside the
//! envoy-types package, so Envoy's messages are reused from the crate rather
//! than copied; and cuts from those descriptors the files that gRPC
//! reflection serves (the discovery services and what they import).

use std::{collections::BTreeSet, env, error::Error, fs, path::PathBuf, process::Command};

use prost::Message;
use protox::file::{ChainFileResolver, DescriptorSetFileResolver, GoogleFileResolver, IncludeFileResolver};

const OWN_PROTOS: &[&str] = &["sxds/v1/bundle.proto"];

/// The files of the services sxds serves; reflection describes these.
const SERVED_PROTOS: &[&str] = &[
    "envoy/service/discovery/v3/ads.proto",
    "envoy/service/listener/v3/lds.proto",
    "envoy/service/cluster/v3/cds.proto",
    "envoy/service/route/v3/rds.proto",
    "envoy/service/endpoint/v3/eds.proto",
];

/// A `FileDescriptorSet` with each file left as its encoded bytes, so that
/// custom options prost does not know survive the cut.
#[derive(Clone, PartialEq, prost::Message)]
struct EncodedFileSet {
    #[prost(bytes = "vec", repeated, tag = "1")]
    file: Vec<Vec<u8>>,
}

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let envoy_set_bytes = fs::read(envoy_types_dir()?.join("src/generated/types.bin"))?;
    let mut envoy_set = prost_types::FileDescriptorSet::decode(envoy_set_bytes.as_slice())?;
    fs::write(out_dir.join("reflection.bin"), served_closure(&envoy_set_bytes)?)?;

    let mut resolver = ChainFileResolver::new();
    resolver.add(IncludeFileResolver::new("proto".into()));
    resolver.add(DescriptorSetFileResolver::decode(envoy_set_bytes.as_slice())?);
    resolver.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(false);
    compiler.open_files(OWN_PROTOS)?;
    let own_set = compiler.file_descriptor_set();

    // Runtime pool: every Envoy type (any `@type` may appear in typed_config) plus ours.
    envoy_set.file.extend(own_set.file.iter().cloned());
    fs::write(out_dir.join("descriptors.bin"), envoy_set.encode_to_vec())?;

    prost_build::Config::new()
        .extern_path(".envoy", "::envoy_types::pb::envoy")
        // Stored resources are slices of the record they were loaded from.
        .bytes([".sxds.v1.StoredResource.value"])
        .compile_fds(own_set)?;

    Ok(())
}

/// The encoded set of [`SERVED_PROTOS`] and every file they import,
/// transitively, dependencies first.
fn served_closure(envoy_set_bytes: &[u8]) -> Result<Vec<u8>, Box<dyn Error>> {
    let encoded = EncodedFileSet::decode(envoy_set_bytes)?;
    let mut files = Vec::new();
    for raw in &encoded.file {
        files.push((prost_types::FileDescriptorProto::decode(raw.as_slice())?, raw));
    }
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    let mut pending: Vec<String> = SERVED_PROTOS.iter().map(|p| (*p).to_owned()).collect();
    while let Some(name) = pending.pop() {
        if !wanted.insert(name.clone()) {
            continue;
        }
        let (file, _) = files.iter().find(|(f, _)| f.name() == name).ok_or_else(|| format!("{name} is not in envoy-types' descriptors"))?;
        pending.extend(file.dependency.iter().cloned());
    }
    // types.bin lists dependencies before their dependents; keep its order.
    let file = files.iter().filter(|(f, _)| wanted.contains(f.name())).map(|(_, raw)| (*raw).clone()).collect();
    Ok(EncodedFileSet { file }.encode_to_vec())
}

/// The envoy-types package directory, found through `cargo metadata`
/// (offline first; online only if a dependency is not downloaded yet).
fn envoy_types_dir() -> Result<PathBuf, Box<dyn Error>> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = env::var("TARGET")?;
    let manifest_dir = env::var("CARGO_MANIFEST_DIR")?;
    let metadata = |offline: bool| {
        let mut command = Command::new(&cargo);
        command.args(["metadata", "--format-version", "1", "--filter-platform", &target]);
        if offline {
            command.arg("--offline");
        }
        command.current_dir(&manifest_dir).output()
    };
    let mut output = metadata(true)?;
    if !output.status.success() {
        output = metadata(false)?;
    }
    if !output.status.success() {
        return Err(format!("cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let manifest = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "envoy-types")
        .and_then(|p| p["manifest_path"].as_str())
        .ok_or("envoy-types not found in cargo metadata")?;
    Ok(PathBuf::from(manifest).parent().ok_or("bad manifest path")?.to_path_buf())
}

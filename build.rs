//! Compiles `proto/` against the Envoy descriptors shipped inside the
//! envoy-types package, so Envoy's messages are reused from the crate rather
//! than copied; adds the CNCF `xds.*` and `udpa.*` files that set lacks,
//! compiled from the .proto files in the data-plane-api package; and cuts
//! from the Envoy descriptors the files that gRPC reflection serves (the
//! discovery services and what they import).

use std::{
    collections::{BTreeMap, BTreeSet},
    env,
    error::Error,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use prost::Message;
use protox::file::{ChainFileResolver, DescriptorSetFileResolver, GoogleFileResolver, IncludeFileResolver};

const OWN_PROTOS: &[&str] = &["sxds/v1/bundle.proto"];

/// The package with Envoy's descriptor set (`src/generated/types.bin`).
const ENVOY_TYPES: &str = "envoy-types";
/// The package with cncf/xds's .proto files, under `xds/`.
const CNCF_PROTOS: &str = "data-plane-api";
/// The cncf/xds trees whose types Envoy accepts in an `Any`:
/// `xds.type.v3.TypedStruct`, `udpa.type.v1.TypedStruct`, `xds.type.matcher.v3`, ...
const CNCF_TREES: &[&str] = &["xds", "udpa"];

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
    let packages = package_dirs(&[ENVOY_TYPES, CNCF_PROTOS])?;

    let envoy_set_bytes = fs::read(packages[ENVOY_TYPES].join("src/generated/types.bin"))?;
    let envoy_set = prost_types::FileDescriptorSet::decode(envoy_set_bytes.as_slice())?;
    fs::write(out_dir.join("reflection.bin"), served_closure(&envoy_set_bytes)?)?;
    let cncf_files = cncf_files(&packages[CNCF_PROTOS].join("xds"), &envoy_set_bytes, &envoy_set)?;

    let mut resolver = ChainFileResolver::new();
    resolver.add(IncludeFileResolver::new("proto".into()));
    resolver.add(DescriptorSetFileResolver::decode(envoy_set_bytes.as_slice())?);
    resolver.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(false);
    compiler.open_files(OWN_PROTOS)?;
    let own_set = compiler.file_descriptor_set();

    // Runtime pool: every Envoy and CNCF type (any `@type` may appear in
    // typed_config) plus ours. Envoy's files stay as encoded: their custom
    // options (`udpa.annotations.sensitive` marks key material) survive.
    let mut runtime_set = EncodedFileSet::decode(envoy_set_bytes.as_slice())?;
    runtime_set.file.extend(cncf_files.iter().chain(&own_set.file).map(Message::encode_to_vec));
    fs::write(out_dir.join("descriptors.bin"), runtime_set.encode_to_vec())?;

    prost_build::Config::new()
        .extern_path(".envoy", "::envoy_types::pb::envoy")
        // Stored resources are slices of the record they were loaded from.
        .bytes([".sxds.v1.StoredResource.value"])
        .compile_fds(own_set)?;

    Ok(())
}

/// The files of [`CNCF_TREES`] under `root` that envoy-types' set does not
/// have, compiled against that set. A file both have is envoy-types' (the pool
/// refuses a file name twice), and the new files import it from there.
fn cncf_files(
    root: &Path,
    envoy_set_bytes: &[u8],
    envoy_set: &prost_types::FileDescriptorSet,
) -> Result<Vec<prost_types::FileDescriptorProto>, Box<dyn Error>> {
    let known: BTreeSet<&str> = envoy_set.file.iter().map(|f| f.name()).collect();
    let mut names = Vec::new();
    for tree in CNCF_TREES {
        proto_names(root, tree, &mut names)?;
    }
    names.retain(|name| !known.contains(name.as_str()));
    if names.is_empty() {
        return Err(format!("no cncf/xds .proto files under {}", root.display()).into());
    }

    let mut resolver = ChainFileResolver::new();
    resolver.add(DescriptorSetFileResolver::decode(envoy_set_bytes)?);
    resolver.add(IncludeFileResolver::new(root.to_path_buf()));
    resolver.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(false);
    compiler.open_files(&names)?;
    Ok(compiler.file_descriptor_set().file)
}

/// The .proto files under `root/dir`, named relative to `root` with `/`, sorted.
fn proto_names(root: &Path, dir: &str, names: &mut Vec<String>) -> Result<(), Box<dyn Error>> {
    let mut entries: Vec<_> = fs::read_dir(root.join(dir))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = format!("{dir}/{}", entry.file_name().to_str().ok_or("non-UTF-8 file name")?);
        if entry.file_type()?.is_dir() {
            proto_names(root, &name, names)?;
        } else if name.ends_with(".proto") {
            names.push(name);
        }
    }
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

/// The package directories of `wanted`, found through `cargo metadata`
/// (offline first; online only if a package is not downloaded yet). Not
/// filtered by platform: data-plane-api is a dependency on no platform, so
/// that cargo downloads it for build.rs to read but never compiles it.
fn package_dirs(wanted: &[&'static str]) -> Result<BTreeMap<&'static str, PathBuf>, Box<dyn Error>> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest_dir = env::var("CARGO_MANIFEST_DIR")?;
    let metadata = |offline: bool| {
        let mut command = Command::new(&cargo);
        command.args(["metadata", "--format-version", "1"]);
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
    let packages = metadata["packages"].as_array().ok_or("cargo metadata lists no packages")?;
    let mut dirs = BTreeMap::new();
    for name in wanted {
        let manifest = packages
            .iter()
            .find(|p| p["name"] == *name)
            .and_then(|p| p["manifest_path"].as_str())
            .ok_or_else(|| format!("{name} not found in cargo metadata"))?;
        dirs.insert(*name, PathBuf::from(manifest).parent().ok_or("bad manifest path")?.to_path_buf());
    }
    Ok(dirs)
}

//! Compiles `proto/` against the Envoy descriptors shipped inside the
//! envoy-types package, so Envoy's messages are reused from the crate rather
//! than copied.

use std::{env, error::Error, fs, path::PathBuf, process::Command};

use prost::Message;
use protox::file::{ChainFileResolver, DescriptorSetFileResolver, GoogleFileResolver, IncludeFileResolver};

const OWN_PROTOS: &[&str] = &["sxds/v1/bundle.proto"];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let envoy_set_bytes = fs::read(envoy_types_dir()?.join("src/generated/types.bin"))?;
    let mut envoy_set = prost_types::FileDescriptorSet::decode(envoy_set_bytes.as_slice())?;

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

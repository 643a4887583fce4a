//! Compiles `strata/v1/*.proto` with protox (pure Rust, no system `protoc`), generates the prost
//! messages and the tonic client and server stubs, and writes the encoded descriptor set (with
//! imports and source info, i.e. comments) to `OUT_DIR` for `FILE_DESCRIPTOR_SET`.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::{env, fs};

/// Name of the descriptor-set file in `OUT_DIR`; `src/lib.rs` includes it.
const DESCRIPTOR_FILE: &str = "strata_v1_descriptor.bin";

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_dir = manifest_dir.join("strata").join("v1");
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    println!("cargo:rerun-if-changed=build.rs");

    let files = proto_files(&proto_dir)?;
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let mut compiler = protox::Compiler::new([&manifest_dir])?;
    // Source info carries the comments: prost turns them into rustdoc, and the contract tests
    // (and gRPC reflection clients) read them from the descriptor set.
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(&files)?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join(DESCRIPTOR_FILE),
        compiler.encode_file_descriptor_set(),
    )?;

    let mut config = tonic_prost_build::Config::new();
    // `impl prost::Name` for every message: full names for the Kafka `strata-type` header and
    // type URLs for `google.protobuf.Any` error details.
    config
        .enable_type_names()
        .type_name_domain(["."], "type.googleapis.com")
        // A Ready's signature covers the SHA-256 of its encoded `ObjectDefinition`, which the
        // agent encodes again after decoding: its attributes must encode in one order (by key).
        .btree_map([".strata.v1.ObjectDefinition.attributes"]);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds_with_config(compiler.file_descriptor_set(), config)?;
    Ok(())
}

/// The `.proto` files of the package, sorted so generation is deterministic.
fn proto_files(dir: &Path) -> Result<Vec<PathBuf>, Box<dyn Error>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "proto") {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(format!("no .proto file in {}", dir.display()).into());
    }
    Ok(files)
}

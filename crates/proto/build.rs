//! Compiles every `.proto` under the repository's `proto/` folder.
//!
//! `protoc` comes from `PROTOC` when set, else from the vendored binary, so the
//! build works offline on a machine without a system protoc.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let protos = [
        "unilink/auth/v1/auth.proto",
        "unilink/profile/v1/profile.proto",
        "unilink/signaling/v1/signaling.proto",
        "unilink/notification/v1/notification.proto",
    ]
    .map(|p| root.join(p));
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .codec_path("crate::codec::CompactCodec")
        .compile_with_config(config, &protos, &[root])?;
    Ok(())
}

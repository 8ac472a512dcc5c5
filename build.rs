//! Generates the gRPC front's messages and service (`src/grpc/`) from `proto/kserve/`
//! with protox (a protobuf compiler in Rust: no system `protoc`) and tonic-prost-build,
//! and writes the encoded descriptor set that gRPC server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/kserve/grpc_service.proto"];
    let includes = ["proto/kserve"];
    println!("cargo:rerun-if-changed=proto/kserve");
    let fds = protox::compile(files, includes)?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("kserve_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(false)
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .compile_fds(fds)?;
    Ok(())
}

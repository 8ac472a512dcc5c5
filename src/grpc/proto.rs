//! The messages and service trait generated from `proto/kserve/` (see build.rs), and
//! the encoded descriptor set that server reflection serves.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("inference");

/// Every file of the service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kserve_descriptor.bin"));

//! vigil: a low-latency ONNX inference server (KServe V2 protocol) that watches what it
//! serves. The modules follow the path of a request: `http` decodes it, `serving` picks
//! the model version and queues it, a `backend` engine runs it; `tensor`, `config` and
//! `metrics` are shared by all.

pub mod accept;
#[cfg(test)]
mod alloc_count;
pub mod backend;
pub mod cli;
pub mod config;
pub mod console;
pub mod cputime;
pub mod duration;
pub mod fsutil;
pub mod grpc;
pub mod http;
pub mod memtrim;
pub mod metrics;
pub mod monitor;
pub mod payload;
pub mod registry;
pub mod repository;
pub mod retrain;
pub mod rng;
pub mod serving;
pub mod supervise;
pub mod tensor;

//! Settings: the command line (every flag also a `VIGIL_*` environment variable) and each
//! model's optional `config.toml`. Both are parsed and validated once, here; the rest of
//! the code receives typed values.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::backend::BackendChoice;

/// vigil: a low-latency ONNX inference server (KServe V2 protocol) that watches what it serves.
#[derive(Debug, Parser)]
#[command(name = "vigil", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve every model in the repository over HTTP (KServe V2 / Open Inference Protocol).
    Serve(ServeArgs),
    /// Load every model in the repository, print what was loaded, exit non-zero on any failure.
    Check(CheckArgs),
}

/// Where models come from and which engine runs them (shared by `serve` and `check`).
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Model repository: <DIR>/<model>/<version>/model.onnx, optional <DIR>/<model>/config.toml.
    #[arg(long, env = "VIGIL_REPOSITORY", default_value = "models")]
    pub repository: PathBuf,

    /// Inference engine: `auto` uses ONNX Runtime when its library loads, else tract.
    /// A model's own `backend` in its config.toml takes precedence.
    #[arg(long, env = "VIGIL_BACKEND", value_enum, default_value = "auto")]
    pub backend: BackendChoice,

    /// Path to libonnxruntime.so (default: $ORT_DYLIB_PATH, then libonnxruntime.so* next to the binary).
    #[arg(long, env = "VIGIL_ORT_LIBRARY")]
    pub ort_library: Option<PathBuf>,

    /// Inference worker threads (default: one per CPU core).
    #[arg(long, env = "VIGIL_WORKERS")]
    pub workers: Option<usize>,
}

impl EngineArgs {
    pub fn worker_count(&self) -> usize {
        self.workers
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub engine: EngineArgs,

    /// Address to listen on for HTTP (port 0 picks a free port; the log says which).
    #[arg(long, env = "VIGIL_HTTP_ADDR", default_value = "0.0.0.0:8000")]
    pub http_addr: SocketAddr,

    /// Largest request body accepted, in bytes; larger bodies get 413.
    #[arg(long, env = "VIGIL_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Requests waiting for a worker before new ones are refused with 503.
    #[arg(long, env = "VIGIL_QUEUE_SIZE", default_value_t = 1024)]
    pub queue_size: usize,

    /// On SIGTERM/Ctrl-C, how long in-flight requests may take to finish, in seconds.
    #[arg(long, env = "VIGIL_SHUTDOWN_TIMEOUT", default_value_t = 30)]
    pub shutdown_timeout: u64,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// A model's `config.toml`. Every key is optional; unknown keys are errors.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Engine for this model (`auto`, `tract` or `ort`); default: the server's `--backend`.
    pub backend: Option<BackendChoice>,
}

/// A `config.toml` that cannot be used, with the file named.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct ConfigError {
    pub path: PathBuf,
    pub message: String,
}

impl ModelConfig {
    /// Reads `<model dir>/config.toml`; a missing file means all defaults.
    pub fn load(model_dir: &Path) -> Result<ModelConfig, ConfigError> {
        let path = model_dir.join("config.toml");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ModelConfig::default()),
            Err(e) => {
                return Err(ConfigError {
                    path,
                    message: e.to_string(),
                })
            }
        };
        toml::from_str(&text).map_err(|e| ConfigError {
            path,
            message: e.to_string().trim_end().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_file_and_key() {
        let dir = std::env::temp_dir().join(format!("vigil-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.toml"),
            "backend = \"ort\"\nbatch_size = 4\n",
        )
        .unwrap();
        let err = ModelConfig::load(&dir).unwrap_err().to_string();
        assert!(err.contains("config.toml"), "{err}");
        assert!(err.contains("batch_size"), "{err}");
        std::fs::write(dir.join("config.toml"), "backend = \"tract\"\n").unwrap();
        assert_eq!(
            ModelConfig::load(&dir).unwrap().backend,
            Some(BackendChoice::Tract)
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(ModelConfig::load(&dir).unwrap(), ModelConfig::default());
    }

    #[test]
    fn cli_parses_every_flag() {
        let cli = Cli::try_parse_from([
            "vigil",
            "serve",
            "--repository",
            "/tmp/r",
            "--http-addr",
            "127.0.0.1:0",
            "--backend",
            "tract",
            "--workers",
            "3",
            "--max-body-bytes",
            "10",
        ])
        .unwrap();
        let Command::Serve(s) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(s.engine.backend, BackendChoice::Tract);
        assert_eq!(s.engine.worker_count(), 3);
        assert_eq!(s.max_body_bytes, 10);
        assert_eq!(s.http_addr.port(), 0);
    }
}

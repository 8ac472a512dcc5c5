//! The HTTP front: KServe V2 REST endpoints with Triton's binary-tensor, model-configuration
//! and statistics extensions, `/metrics`, and graceful shutdown.
//!
//! Handlers only translate: bytes to tensors ([`v2`]), tensors to `serving`, results and
//! errors ([`error`]) back to bytes. No model compute happens on these async tasks.
//!
//! Rooms, from the top: [`router`] (route tables) and `listen` (sockets, accept loop,
//! shutdown) over the `auth` gate and the handler rooms — `infer`, `meta`, `admin`,
//! `retrain`, `console` — over `state` (shared handler state and helpers), `body`,
//! [`v2`] (the codec), `schema` and [`error`]. [`openapi`] gathers the handlers' paths.
//! Handler rooms never import each other or the router; nothing here imports upwards.

mod admin;
mod auth;
mod body;
mod console;
pub mod error;
mod feedback;
mod infer;
mod listen;
mod meta;
pub mod openapi;
mod retrain;
mod router;
mod schema;
mod state;
pub mod v2;

pub use error::ApiError;
pub use infer::HEADER_LEN;
pub use listen::{serve, Listeners};
pub use meta::EXTENSIONS;
pub use router::router;
pub use state::{HttpOptions, Surface};

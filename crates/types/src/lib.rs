//! Shared vocabulary of chunkvault: chunk and file identifiers, byte ranges, and the JSON shapes of
//! the HTTP API. Nothing here does I/O, so every other crate can depend on it.

mod api;
mod digest;
mod id;
mod range;

pub use api::*;
pub use digest::*;
pub use id::*;
pub use range::*;

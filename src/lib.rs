//! fnroute: an edge function router. Clients reach stateless functions by
//! name; a DNS front door sends them to the nearest healthy edge, whose
//! HTTP/3 and HTTPS front doors run them or forward them.
//!
//! The map of the code, its data flow and its invariants are in
//! `docs/ARCHITECTURE.md`, which also lists the public API (everything
//! else is `pub(crate)`) and why each part of it is public.

pub mod admin;
pub mod cache;
pub mod cli;
pub mod config;
pub(crate) mod control;
pub(crate) mod dispatch;
pub mod dns;
pub mod exec;
pub(crate) mod frontdoor;
pub mod geo;
pub(crate) mod headers;
pub mod mesh;
pub mod metrics;
pub mod node;
pub mod pipeline;
pub mod placement;
pub mod route;
pub(crate) mod shutdown;
pub mod tls;

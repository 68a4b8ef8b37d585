//! One integration-test binary (faster builds); each area is a module.

mod config;
mod frontdoor;
mod geo;
mod harness;

//! One integration-test binary (faster builds); each area is a module.
//! Test helpers may unwrap: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod admin;
mod browser;
mod cache;
mod cli;
mod config;
mod container;
mod control;
mod dns;
mod edgecache;
mod exec;
mod frontdoor;
mod geo;
mod harness;
mod mesh;
mod qpack;
mod reload;
mod routing;
mod stream;
mod topo;
mod wasm;
mod web;

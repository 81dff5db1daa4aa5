//! rpcpin: an endpoint-mapper-aware MS-RPC proxy.
#![forbid(unsafe_code)]

pub mod config;
pub mod interfaces;
pub mod wire;

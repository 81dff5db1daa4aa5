//! rpcpin: an endpoint-mapper-aware MS-RPC proxy.
//!
//! [`wire`] is the sans-IO DCE/RPC layer, [`rewrite`] patches endpoint-mapper answers,
//! [`proxy`] owns sockets, tasks and timeouts, and [`config`] is the operator's contract.
#![forbid(unsafe_code)]

mod admin;
pub mod cli;
pub mod config;
pub mod interfaces;
pub mod metrics;
pub mod proxy;
pub mod proxy_protocol;
pub mod rewrite;
pub mod wire;

//! rpcpin: an endpoint-mapper-aware MS-RPC proxy.
//!
//! The modules, from the bytes up:
//! - [`wire`] is the sans-IO DCE/RPC layer; [`interfaces`] names the interfaces an operator
//!   can pin; [`epm_rewrite`] rewrites endpoint-mapper answers; [`proxy_protocol`] reads
//!   HAProxy's PROXY header;
//! - [`config`] is the operator's contract; [`metrics`] counts; [`log_writer`] writes the
//!   log off the relay's thread;
//! - [`pdu_stream`] reads whole PDUs from a socket; [`backend`] connects to the RPC server
//!   and asks its endpoint mapper;
//! - [`proxy`] owns listeners, connections, timeouts and reloads; [`admin`] serves metrics
//!   and health checks beside it; [`privileges`] drops root; [`daemon`] puts those together,
//!   and [`cli`] is the command line.
//!
//! Each module uses only those listed before it (or in the same line), never the other way.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod backend;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod epm_cache;
pub mod epm_rewrite;
pub mod interfaces;
pub mod log_writer;
pub mod metrics;
pub mod pdu_stream;
pub mod privileges;
pub mod proxy;
pub mod proxy_protocol;
pub mod wire;

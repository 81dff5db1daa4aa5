//! The listeners' policies over random interleavings of a client's binds, alter_contexts and
//! requests (whole and in fragments) with a conforming backend's answers: no request reaches
//! the backend on a context it did not accept, no refused interface or operation reaches it,
//! and the client gets every answer, in call order. The check and its input are
//! `rpcpin::proxy::sequence`'s.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rpcpin::proxy::sequence::check(data));

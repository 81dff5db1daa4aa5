//! The endpoint mapper's calls (C706 appendix O, `ept_*`; DCE `ept.idl`), both sides.
//!
//! - [`answer`]: walkers that find the towers inside ept_map and ept_lookup answers, and the
//!   encoder of such an answer.
//! - [`request`]: the requests a client sends (ept_map, ept_map_auth, ept_lookup,
//!   ept_lookup_handle_free) as checked views, their encoders, and the
//!   ept_lookup_handle_free answer.
//! - [`key`]: what a map tower asks for, as a hashable key, and the tower an answer
//!   returns for it.
//!
//! Every function takes a whole (reassembled) stub with the byte order of its PDU's drep and
//! the transfer syntax of its presentation context; in NDR64 (MS-RPCE 2.2.5) conformance
//! counts, offsets and referent ids are 8 bytes, 8-aligned.

pub mod answer;
pub mod key;
pub mod request;

use ::uuid::uuid;

use super::SyntaxId;

pub use answer::{
    encode_answer, walk_lookup_response, walk_map_response, Answer, Entry, EntryRef, Walk,
};
pub use key::{answer_tower, TowerKey};
pub use request::{
    encode_handle_free_answer, encode_lookup_request, encode_map_query, encode_map_request,
    HandleFreeRequest, LookupQuery, LookupRequest, MapQuery, MapRequest,
};

/// The endpoint mapper interface, `ept` v3.0.
pub const EPM: SyntaxId = SyntaxId::new(uuid!("e1af8308-5d1f-11c9-91a4-08002b14a0fa"), 3, 0);

/// Operation numbers of the `ept` interface.
pub mod opnum {
    /// Registers endpoints (management).
    pub const INSERT: u16 = 0;
    /// Removes endpoints (management).
    pub const DELETE: u16 = 1;
    /// Enumerates the map.
    pub const LOOKUP: u16 = 2;
    /// Finds the towers of an interface.
    pub const MAP: u16 = 3;
    /// Frees an enumeration handle.
    pub const LOOKUP_HANDLE_FREE: u16 = 4;
    /// Asks for the object of an endpoint.
    pub const INQ_OBJECT: u16 = 5;
    /// Removes an endpoint by tower (management).
    pub const MGMT_DELETE: u16 = 6;
    /// ept_map with an authorisation check.
    pub const MAP_AUTH: u16 = 7;
}

/// `ept_s_not_registered`: no endpoint for the interface (C706 appendix N).
pub const EPT_S_NOT_REGISTERED: u32 = 0x16c9_a0d6;

/// Length of a context handle (`ept_lookup_handle_t`): attributes u32 and a UUID.
pub const HANDLE_LEN: usize = 20;
/// The largest annotation an `ept_entry_t` holds (`ept_max_annotation_size`).
const MAX_ANNOTATION: usize = 64;

#[cfg(test)]
mod tests;

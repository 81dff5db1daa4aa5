//! The endpoint mapper's answers in answer mode: ept_map from the cache of the servers'
//! answers (a miss asks the pin's server), ept_lookup from the entries of the pinned
//! interfaces gathered from each server, paged with entry handles of rpcpin's own.
//!
//! Each returns the answer's stub, or the status of the fault that answers the call instead:
//! `nca_s_fault_ndr` for a stub that does not parse, `nca_s_fault_context_mismatch` for an
//! entry handle rpcpin does not hold, as Windows' and Samba's runtimes answer them.

use std::net::Ipv4Addr;
use std::sync::Arc;

use tracing::warn;

use super::{count, Association};
use crate::backend::LookupEntry;
use crate::epm_cache::Source;
use crate::interfaces::alias_of;
use crate::metrics::metrics;
use crate::wire::call::status::{NCA_S_FAULT_CONTEXT_MISMATCH, NCA_S_FAULT_NDR};
use crate::wire::epm::request::{inquiry, vers_option};
use crate::wire::epm::{
    answer_tower, encode_answer, encode_handle_free_answer, Answer, EntryRef, HandleFreeRequest,
    LookupRequest, MapRequest, TowerKey, EPT_S_NOT_REGISTERED, HANDLE_LEN,
};
use crate::wire::ndr::Syntax;
use crate::wire::tower::{encode_tcp_tower_over, Tower};
use crate::wire::{uuid, Endian, SyntaxId, Uuid};

/// Why an interface no pin carries is answered `ept_s_not_registered`.
const UNPINNED: &str = "interface no pin carries: answered ept_s_not_registered";
/// The most ept_lookup handles one association keeps open.
const MAX_CURSORS: usize = 8;

/// One ept_lookup entry as rpcpin answers it: its tower already points at its pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Found {
    object: Uuid,
    annotation: Vec<u8>,
    tower: Vec<u8>,
    interface: SyntaxId,
}

/// The ept_lookup handles of one association: where each client's walk through the
/// entries stands.
#[derive(Debug, Default)]
pub(super) struct Cursors {
    open: Vec<([u8; HANDLE_LEN], Arc<Vec<Found>>, usize)>,
    issued: u64,
}

impl Cursors {
    /// A new handle for `entries` from `next` on; the oldest handle goes beyond
    /// `MAX_CURSORS`.
    fn open(&mut self, entries: Arc<Vec<Found>>, next: usize) -> [u8; HANDLE_LEN] {
        if self.open.len() >= MAX_CURSORS {
            self.open.remove(0);
        }
        self.issued += 1;
        // A context handle: 4 bytes of attributes (0), then a UUID of rpcpin's.
        let mut handle = [0; HANDLE_LEN];
        let unique = ::uuid::Uuid::from_u64_pair(std::process::id().into(), self.issued);
        handle[4..].copy_from_slice(unique.as_bytes());
        handle[4] |= 0x80;
        self.open.push((handle, entries, next));
        handle
    }

    fn take(&mut self, handle: &[u8; HANDLE_LEN]) -> Option<(Arc<Vec<Found>>, usize)> {
        let i = self.open.iter().position(|(h, ..)| h == handle)?;
        let (_, entries, next) = self.open.remove(i);
        Some((entries, next))
    }
}

impl Association {
    /// The answer stub to an ept_map or ept_map_auth request: the client's own tower
    /// pointing at the interface's pin, when the interface is pinned, the tower is
    /// ncacn_ip_tcp and the pin's server has the interface; otherwise ept_s_not_registered.
    pub(super) async fn map(
        &mut self,
        stub: &[u8],
        endian: Endian,
        syntax: Syntax,
        op: u16,
    ) -> Result<Vec<u8>, u32> {
        let req = MapRequest::parse(stub, endian, syntax, op).map_err(|_| NCA_S_FAULT_NDR)?;
        let tower = match TowerKey::of(req.tower()) {
            Ok(key) if key.is_ncacn_ip_tcp() && req.max_towers() > 0 => {
                self.map_tower(&req, key).await
            }
            _ => None,
        };
        let entries: Vec<EntryRef<'_>> = tower
            .iter()
            .map(|t| EntryRef {
                object: &[],
                annotation: &[],
                tower: Some(t),
            })
            .collect();
        let mut out = Vec::with_capacity(96 + req.tower().as_bytes().len());
        let answer = Answer {
            lookup: false,
            handle: &[0; HANDLE_LEN],
            max_count: req.max_towers() as usize,
            entries: &entries,
            status: if entries.is_empty() {
                EPT_S_NOT_REGISTERED
            } else {
                0
            },
        };
        encode_answer(&mut out, endian, syntax, &answer);
        Ok(out)
    }

    /// The tower answering `req`, whose tower asks for `key`.
    async fn map_tower(&mut self, req: &MapRequest<'_>, key: TowerKey) -> Option<Vec<u8>> {
        let interface = key.interface;
        let Some((port, pin)) =
            (self.generation.table.target(&interface)).map(|t| (t.port, t.pin.clone()))
        else {
            refuse_unpinned(interface);
            return None;
        };
        let resolver = self.generation.resolver_of_pin_named(&pin).clone();
        // The server gets rpcpin's own question, written from what the client asked.
        let object = req.object().unwrap_or_default();
        let mut query = Vec::with_capacity(75);
        let any = Ipv4Addr::UNSPECIFIED;
        encode_tcp_tower_over(&mut query, interface, key.transfer_syntax, 0, any);
        let lookup = {
            let resolver = resolver.clone();
            move || async move {
                count_lookup(resolver.name());
                resolver.map(Some(object), &query, interface).await
            }
        };
        let cache = self.generation.epm_answers().maps.clone();
        let (outcome, source) = cache.get(&(object, key), lookup).await;
        self.counted(source);
        match outcome {
            Ok(endpoints) => {
                let endpoint = endpoints.first()?;
                if source == Source::Server {
                    resolver.learned(interface, endpoint.port);
                }
                answer_tower(req.tower(), port, self.advertise).ok()
            }
            Err(e) => {
                warn!(
                    event = "epm_lookup_failed",
                    interface = %interface.uuid,
                    alias = alias_of(&interface.uuid).unwrap_or("-"),
                    backend = resolver.name(),
                    error = %format!("{e:#}"),
                );
                None
            }
        }
    }

    /// The answer stub to an ept_lookup request: a page of the pinned interfaces' entries
    /// that match it, with a handle to the next page when there is one.
    pub(super) async fn lookup(
        &mut self,
        stub: &[u8],
        endian: Endian,
        syntax: Syntax,
    ) -> Result<Vec<u8>, u32> {
        let req = LookupRequest::parse(stub, endian, syntax).map_err(|_| NCA_S_FAULT_NDR)?;
        let handle = req.entry_handle();
        let (entries, start) = if *handle == [0; HANDLE_LEN] {
            let all = self.gather().await;
            let matching = all.iter().filter(|f| matches(&req, f)).cloned().collect();
            (Arc::new(matching), 0)
        } else {
            // A handle of rpcpin's continues its walk.
            self.cursors
                .take(handle)
                .ok_or(NCA_S_FAULT_CONTEXT_MISMATCH)?
        };
        let max = (req.max_ents() as usize).max(1);
        let end = entries.len().min(start + max);
        let page = &entries[start.min(end)..end];
        let handle = if end < entries.len() {
            self.cursors.open(entries.clone(), end)
        } else {
            [0; HANDLE_LEN]
        };
        let objects: Vec<Vec<u8>> = page
            .iter()
            .map(|f| {
                let mut b = Vec::with_capacity(16);
                uuid::write(&mut b, &f.object, endian);
                b
            })
            .collect();
        let refs: Vec<EntryRef<'_>> = page
            .iter()
            .zip(&objects)
            .map(|(f, object)| EntryRef {
                object,
                annotation: &f.annotation,
                tower: Some(&f.tower),
            })
            .collect();
        let mut out =
            Vec::with_capacity(64 + page.iter().map(|f| 64 + f.tower.len()).sum::<usize>());
        let answer = Answer {
            lookup: true,
            handle: &handle,
            max_count: max,
            entries: &refs,
            status: if refs.is_empty() {
                EPT_S_NOT_REGISTERED
            } else {
                0
            },
        };
        encode_answer(&mut out, endian, syntax, &answer);
        Ok(out)
    }

    /// The answer stub to ept_lookup_handle_free: the handle is closed (zeros).
    pub(super) fn handle_free(
        &mut self,
        stub: &[u8],
        endian: Endian,
        syntax: Syntax,
    ) -> Result<Vec<u8>, u32> {
        let req = HandleFreeRequest::parse(stub, endian, syntax).map_err(|_| NCA_S_FAULT_NDR)?;
        let handle = req.entry_handle();
        if *handle != [0; HANDLE_LEN] && self.cursors.take(handle).is_none() {
            return Err(NCA_S_FAULT_CONTEXT_MISMATCH);
        }
        let mut out = Vec::with_capacity(24);
        encode_handle_free_answer(&mut out, endian, syntax, &[0; HANDLE_LEN], 0);
        Ok(out)
    }

    /// The entries of the pinned interfaces at every server: each pin's interfaces as its
    /// own server registered them, ncacn_ip_tcp towers only, pointing at the pin.
    async fn gather(&mut self) -> Vec<Found> {
        let mut found = Vec::new();
        let mut source = Source::Cache;
        for resolver in self.generation.backends().all().to_vec() {
            let name = resolver.name().to_string();
            let lookup = {
                let resolver = resolver.clone();
                move || async move {
                    count_lookup(resolver.name());
                    resolver.lookup_all().await
                }
            };
            let cache = self.generation.epm_answers().lookups.clone();
            let (outcome, from) = cache.get(&name, lookup).await;
            if from == Source::Server {
                source = Source::Server;
            }
            let entries = match outcome {
                Ok(entries) => entries,
                Err(e) => {
                    warn!(event = "epm_lookup_failed", backend = %name, error = %format!("{e:#}"));
                    continue;
                }
            };
            for e in entries.iter() {
                if let Some(f) = self.pinned(e, &name) {
                    if !found.contains(&f) {
                        found.push(f);
                    }
                }
            }
        }
        self.counted(source);
        found
    }

    /// `entry` of server `server` as rpcpin answers it, when its interface is pinned to a pin
    /// of that server and its tower is ncacn_ip_tcp.
    fn pinned(&self, entry: &LookupEntry, server: &str) -> Option<Found> {
        let mut tower = entry.tower.clone();
        let mut t = Tower::new_checked(&mut tower[..]).ok()?;
        let interface = t.interface()?;
        let target = self.generation.table.target(&interface)?;
        let ours = self.generation.resolver_of_pin_named(&target.pin).name() == server;
        let pointed = ours
            && t.is_ncacn_ip_tcp()
            && t.set_tcp_port(target.port)
            && t.set_ipv4(self.advertise);
        if !pointed {
            return None;
        }
        Some(Found {
            object: entry.object,
            annotation: entry.annotation.clone(),
            tower,
            interface,
        })
    }

    fn counted(&mut self, source: Source) {
        count(source);
        match source {
            Source::Cache => self.from_cache += 1,
            Source::Server => self.from_server += 1,
        }
    }
}

/// Whether `found` answers `req`'s inquiry (C706 appendix O, `ept_lookup`).
fn matches(req: &LookupRequest<'_>, found: &Found) -> bool {
    let by_object = || req.object().unwrap_or_default() == found.object;
    let by_interface = || {
        let Some(want) = req.interface() else {
            return true;
        };
        let have = found.interface;
        want.uuid == have.uuid
            && match req.vers_option() {
                vers_option::COMPATIBLE => have.major == want.major && have.minor >= want.minor,
                vers_option::EXACT => (have.major, have.minor) == (want.major, want.minor),
                vers_option::MAJOR_ONLY => have.major == want.major,
                vers_option::UPTO => (have.major, have.minor) <= (want.major, want.minor),
                _ => true,
            }
    };
    match req.inquiry_type() {
        inquiry::MATCH_BY_IF => by_interface(),
        inquiry::MATCH_BY_OBJ => by_object(),
        inquiry::MATCH_BY_BOTH => by_interface() && by_object(),
        _ => true,
    }
}

/// Logs and counts an ept_map for an interface no pin carries.
fn refuse_unpinned(interface: SyntaxId) {
    warn!(
        event = "refused",
        policy = "hide_unpinned",
        interface = %interface.uuid,
        alias = alias_of(&interface.uuid).unwrap_or("-"),
        version = %format_args!("{}.{}", interface.major, interface.minor),
        reason = UNPINNED,
    );
    metrics().refused("hide_unpinned", UNPINNED);
}

/// Counts a lookup rpcpin makes at server `backend`.
fn count_lookup(backend: &str) {
    metrics()
        .epm_server_lookups
        .get_or_create(&crate::metrics::BackendLabels {
            backend: backend.to_string(),
        })
        .inc();
}

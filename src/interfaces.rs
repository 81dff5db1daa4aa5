//! Interface names an operator can write in a pin's `interfaces`, and how a configured
//! interface matches what a client proposes or a tower carries.

use core::fmt;

use uuid::uuid;

use crate::wire::{SyntaxId, Uuid};

/// A well-known interface: the alias, its UUID and version, and what it is.
#[derive(Debug, Clone, Copy)]
pub struct Known {
    /// The name used in configuration and logs.
    pub alias: &'static str,
    /// Interface UUID and version.
    pub syntax: SyntaxId,
    /// One line for `rpcpin check` and the docs.
    pub description: &'static str,
}

const fn known(
    alias: &'static str,
    uuid: Uuid,
    major: u16,
    minor: u16,
    description: &'static str,
) -> Known {
    Known {
        alias,
        syntax: SyntaxId::new(uuid, major, minor),
        description,
    }
}

/// Every alias rpcpin understands: the UUID and version of each come from the interface's
/// specification (Microsoft's open specifications, named in the description where the alias
/// alone does not say it); `tests/interop/check_aliases.py` compares them with impacket's and
/// Samba's constants. An alias may name several UUIDs (efsrpc has two).
#[rustfmt::skip]
pub const KNOWN: &[Known] = &[
    known("epm",               uuid!("e1af8308-5d1f-11c9-91a4-08002b14a0fa"),  3,  0, "DCE endpoint mapper"),
    known("emsmdb",            uuid!("a4f1db00-ca47-1067-b31f-00dd010662da"),  0, 81, "Exchange store (MAPI)"),
    known("async_emsmdb",      uuid!("5261574a-4572-206e-b268-6b199213b4e4"),  0,  1, "Exchange asynchronous notifications"),
    known("nspi",              uuid!("f5cc5a18-4264-101a-8c59-08002b2f8426"), 56,  0, "Exchange address book (NSPI)"),
    known("rfr",               uuid!("1544f5e0-613c-11d1-93df-00c04fd7bd09"),  1,  0, "Exchange referral (RFR)"),
    known("lsarpc",            uuid!("12345778-1234-abcd-ef00-0123456789ab"),  0,  0, "Local Security Authority"),
    known("samr",              uuid!("12345778-1234-abcd-ef00-0123456789ac"),  1,  0, "Security Account Manager"),
    known("dssetup",           uuid!("3919286a-b10c-11d0-9ba8-00c04fd92ef5"),  0,  0, "Directory services setup"),
    known("netlogon",          uuid!("12345678-1234-abcd-ef00-01234567cffb"),  1,  0, "Netlogon"),
    known("drsuapi",           uuid!("e3514235-4b06-11d1-ab04-00c04fc2dcd2"),  4,  0, "Directory replication"),
    known("frsrpc",            uuid!("f5cc59b4-4264-101a-8c59-08002b2f8426"),  1,  1, "File Replication Service (MS-FRS1)"),
    known("dfsr",              uuid!("897e2e5f-93f3-4376-9c9c-fd2277495c27"),  1,  0, "DFS Replication (MS-FRS2 FrsTransport)"),
    known("backupkey",         uuid!("3dde7c30-165d-11d1-ab8f-00805f14db40"),  1,  0, "DPAPI backup keys (MS-BKRP)"),
    known("icpr",              uuid!("91ae6020-9e3c-11cf-8d7c-00aa00c091be"),  0,  0, "Certificate enrolment (MS-ICPR ICertPassage)"),
    known("srvsvc",            uuid!("4b324fc8-1670-01d3-1278-5a47bf6ee188"),  3,  0, "Server service"),
    known("wkssvc",            uuid!("6bffd098-a112-3610-9833-46c3f87e345a"),  1,  0, "Workstation service"),
    known("winreg",            uuid!("338cd001-2244-31f1-aaaa-900038001003"),  1,  0, "Remote registry"),
    known("svcctl",            uuid!("367abb81-9844-35f1-ad32-98f038001003"),  2,  0, "Service control manager"),
    known("spoolss",           uuid!("12345678-1234-abcd-ef00-0123456789ab"),  1,  0, "Print spooler"),
    known("efsrpc",            uuid!("c681d488-d850-11d0-8c52-00c04fd90f7e"),  1,  0, "Encrypting file system (over lsarpc pipe)"),
    known("efsrpc",            uuid!("df1941c5-fe89-4e79-bf10-463657acf44d"),  1,  0, "Encrypting file system"),
    known("isystemactivator",  uuid!("000001a0-0000-0000-c000-000000000046"),  0,  0, "DCOM activation"),
    known("iremoteactivation", uuid!("4d9f4ab8-7d1c-11cf-861e-0020af6e7c57"),  0,  0, "DCOM remote activation"),
    known("ioxidresolver",     uuid!("99fcfec4-5260-101b-bbcb-00aa0021347a"),  0,  0, "DCOM OXID resolver"),
    known("dnsserver",         uuid!("50abc2a4-574d-40b3-9d66-ee4fd5fba076"),  5,  0, "DNS server management (MS-DNSP)"),
    known("eventlog",          uuid!("82273fdc-e32a-18c3-3f78-827929dc23ea"),  0,  0, "Event log (MS-EVEN)"),
    known("eventlog6",         uuid!("f6beaff7-1e19-4fbb-9f8f-b89e2018337c"),  1,  0, "Event log, Vista and later (MS-EVEN6)"),
    known("tasksched",         uuid!("86d35949-83c9-4044-b424-db363231fd0c"),  1,  0, "Task scheduler (MS-TSCH ITaskSchedulerService)"),
    known("atsvc",             uuid!("1ff70682-0a51-30e8-076d-740be8cee98b"),  1,  0, "Task scheduler, at command (MS-TSCH ATSvc)"),
];

/// The alias of a UUID, for logs; `None` when rpcpin has no name for it.
pub fn alias_of(uuid: &Uuid) -> Option<&'static str> {
    KNOWN
        .iter()
        .find(|k| k.syntax.uuid == *uuid)
        .map(|k| k.alias)
}

/// Why an entry of a pin's `interfaces` (or a key of its `opnums`) names no interface. The
/// messages reach the operator as the reason of a configuration error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterfaceError {
    /// Neither an alias nor a UUID.
    #[error(
        "{text:?} is neither a known alias nor a UUID ({why}); aliases: {}",
        alias_list()
    )]
    Unknown {
        /// The entry as written.
        text: String,
        /// What is wrong with it as a UUID.
        why: UuidTextError,
    },
    /// The version after `@` is not `major.minor`.
    #[error("version {0:?} is not major.minor with numbers up to 65535")]
    Version(String),
}

/// The configuration keeps reasons as text.
impl From<InterfaceError> for String {
    fn from(e: InterfaceError) -> String {
        e.to_string()
    }
}

/// What is wrong with a UUID written in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UuidTextError {
    /// Not 36 characters with dashes at 8, 13, 18 and 23.
    #[error("expected the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx")]
    Form,
    /// Something other than a hexadecimal digit between the dashes.
    #[error("a UUID holds only hexadecimal digits and dashes")]
    Digits,
}

/// One interface a pin carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interface {
    /// The UUID.
    pub uuid: Uuid,
    /// `Some((major, minor))` when the operator wrote `uuid@major.minor`: then only that
    /// major version, at that minor version or below, matches. Aliases match any version.
    pub version: Option<(u16, u16)>,
    /// The alias the operator wrote, if any.
    pub alias: Option<&'static str>,
}

impl Interface {
    /// Parses one entry of `interfaces`: an alias (possibly naming several UUIDs), a bare
    /// UUID, or `uuid@major.minor`.
    pub fn parse(text: &str) -> Result<Vec<Interface>, InterfaceError> {
        let lower = text.trim().to_ascii_lowercase();
        let by_alias: Vec<Interface> = KNOWN
            .iter()
            .filter(|k| k.alias == lower)
            .map(|k| Interface {
                uuid: k.syntax.uuid,
                version: None,
                alias: Some(k.alias),
            })
            .collect();
        if !by_alias.is_empty() {
            return Ok(by_alias);
        }
        let (uuid, version) = match lower.split_once('@') {
            Some((u, v)) => (u, Some(parse_version(v)?)),
            None => (lower.as_str(), None),
        };
        let uuid = parse_uuid(uuid).map_err(|why| InterfaceError::Unknown {
            text: text.to_string(),
            why,
        })?;
        Ok(vec![Interface {
            uuid,
            version,
            alias: alias_of(&uuid),
        }])
    }

    /// Whether a proposed or advertised interface is this one.
    pub fn matches(&self, s: &SyntaxId) -> bool {
        self.uuid == s.uuid
            && self
                .version
                .is_none_or(|(major, minor)| s.major == major && s.minor <= minor)
    }

    /// The syntax to ask the backend's endpoint mapper for.
    pub fn query_syntax(&self) -> SyntaxId {
        let (major, minor) = self.version.unwrap_or_else(|| {
            KNOWN
                .iter()
                .find(|k| k.syntax.uuid == self.uuid)
                .map_or((0, 0), |k| (k.syntax.major, k.syntax.minor))
        });
        SyntaxId {
            uuid: self.uuid,
            major,
            minor,
        }
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.alias, self.version) {
            (Some(a), None) => write!(f, "{a} ({})", self.uuid),
            (_, Some((major, minor))) => write!(f, "{}@{major}.{minor}", self.uuid),
            (None, None) => write!(f, "{}", self.uuid),
        }
    }
}

fn parse_version(v: &str) -> Result<(u16, u16), InterfaceError> {
    let (major, minor) = v.split_once('.').unwrap_or((v, "0"));
    match (major.parse(), minor.parse()) {
        (Ok(major), Ok(minor)) => Ok((major, minor)),
        _ => Err(InterfaceError::Version(v.to_string())),
    }
}

/// A UUID in its hyphenated form only (`uuid` would also take the simple, braced and URN
/// forms): what an operator writes in a pin's `interfaces`.
fn parse_uuid(text: &str) -> Result<Uuid, UuidTextError> {
    let b = text.as_bytes();
    let dashes = [8, 13, 18, 23];
    if b.len() != 36 || dashes.iter().any(|&d| b[d] != b'-') {
        return Err(UuidTextError::Form);
    }
    if !b
        .iter()
        .enumerate()
        .all(|(i, c)| dashes.contains(&i) || c.is_ascii_hexdigit())
    {
        return Err(UuidTextError::Digits);
    }
    Uuid::try_parse(text).map_err(|_| UuidTextError::Digits)
}

fn alias_list() -> String {
    let mut names: Vec<&str> = KNOWN.iter().map(|k| k.alias).collect();
    names.dedup();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_alias_the_design_names_exists() {
        for alias in [
            "epm",
            "emsmdb",
            "async_emsmdb",
            "nspi",
            "rfr",
            "lsarpc",
            "samr",
            "dssetup",
            "netlogon",
            "drsuapi",
            "srvsvc",
            "wkssvc",
            "winreg",
            "svcctl",
            "spoolss",
            "efsrpc",
            "isystemactivator",
            "iremoteactivation",
            "ioxidresolver",
            "frsrpc",
            "dfsr",
            "backupkey",
            "icpr",
            "dnsserver",
            "eventlog",
            "eventlog6",
            "tasksched",
            "atsvc",
        ] {
            assert!(Interface::parse(alias).is_ok(), "{alias}");
        }
        assert_eq!(Interface::parse("efsrpc").unwrap().len(), 2);
        assert_eq!(
            Interface::parse("NSPI").unwrap()[0].uuid.to_string(),
            "f5cc5a18-4264-101a-8c59-08002b2f8426"
        );
    }

    #[test]
    fn each_uuid_has_one_alias_and_an_alias_one_run_of_entries() {
        // alias_of names a UUID by its first entry, and alias_list drops only adjacent
        // repeats: a UUID under two aliases, or an alias split in two runs, would mislead both.
        for (i, k) in KNOWN.iter().enumerate() {
            for later in &KNOWN[i + 1..] {
                assert_ne!(
                    k.syntax.uuid, later.syntax.uuid,
                    "{} and {}",
                    k.alias, later.alias
                );
            }
            let runs = KNOWN
                .windows(2)
                .filter(|w| w[1].alias == k.alias && w[0].alias != k.alias);
            let first = usize::from(KNOWN[0].alias == k.alias);
            assert_eq!(runs.count() + first, 1, "{} in two places", k.alias);
        }
    }

    #[test]
    fn versions_restrict_matching() {
        let any = &Interface::parse("a4f1db00-ca47-1067-b31f-00dd010662da").unwrap()[0];
        assert_eq!(any.alias, Some("emsmdb"));
        let exact = &Interface::parse("a4f1db00-ca47-1067-b31f-00dd010662da@0.81").unwrap()[0];
        let proposed = SyntaxId::new(uuid!("a4f1db00-ca47-1067-b31f-00dd010662da"), 0, 81);
        assert!(any.matches(&proposed) && exact.matches(&proposed));
        let newer = SyntaxId {
            minor: 82,
            ..proposed
        };
        assert!(any.matches(&newer) && !exact.matches(&newer));
        let other_major = SyntaxId {
            major: 1,
            ..proposed
        };
        assert!(!exact.matches(&other_major));
    }

    #[test]
    fn uuids_are_hyphenated_hex_digits_only() {
        let u = parse_uuid("E1AF8308-5D1F-11C9-91A4-08002B14A0FA").unwrap();
        assert_eq!(u.to_string(), "e1af8308-5d1f-11c9-91a4-08002b14a0fa");
        let (form, digits) = (Err(UuidTextError::Form), Err(UuidTextError::Digits));
        assert_eq!(parse_uuid("e1af8308-5d1f-11c9-91a4-08002b14a0f"), form);
        assert_eq!(parse_uuid("e1af8308x5d1f-11c9-91a4-08002b14a0fa"), form);
        assert_eq!(parse_uuid("g1af8308-5d1f-11c9-91a4-08002b14a0fa"), digits);
        // Forms the uuid crate reads but the configuration never took.
        assert_eq!(parse_uuid("e1af83085d1f11c991a408002b14a0fa"), form);
        assert_eq!(parse_uuid("{e1af8308-5d1f-11c9-91a4-08002b14a0fa}"), form);
        assert_eq!(
            parse_uuid("urn:uuid:e1af8308-5d1f-11c9-91a4-08002b14a0fa"),
            form
        );
    }

    #[test]
    fn bad_entries_say_why() {
        let err = Interface::parse("nspy").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "\"nspy\" is neither a known alias nor a UUID (expected the form \
                 xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx); aliases: {}",
                alias_list()
            )
        );
        assert!(alias_list().starts_with("epm, emsmdb, async_emsmdb, nspi, rfr"));
        let err = Interface::parse("g5cc5a18-4264-101a-8c59-08002b2f8426").unwrap_err();
        assert!(
            err.to_string()
                .contains("(a UUID holds only hexadecimal digits and dashes); aliases: epm,"),
            "{err}"
        );
        let err = Interface::parse("f5cc5a18-4264-101a-8c59-08002b2f8426@x.1").unwrap_err();
        assert_eq!(
            String::from(err),
            "version \"x.1\" is not major.minor with numbers up to 65535"
        );
    }
}

//! Configurations as operators write them, and the errors they get.

use super::*;
use crate::wire::SyntaxId;
use toml::{Table, Value};

mod backends;

const MINIMAL: &str = r#"
[backend]
host = "10.0.0.5"
[epm]
listen = "0.0.0.0:135"
[[pin]]
name = "directory"
listen = "0.0.0.0:6004"
interfaces = ["nspi", "rfr"]
[[pin]]
name = "store"
listen = "0.0.0.0:6001"
interfaces = ["emsmdb", "async_emsmdb"]
"#;

fn minimal() -> Table {
    MINIMAL.parse().expect("MINIMAL is TOML")
}

/// The value at `path`, table keys and array indices (`"pin.1.listen"`). Panics when it
/// is missing: a variant that changed nothing would test MINIMAL instead.
fn at<'a>(doc: &'a mut Table, path: &str) -> &'a mut Value {
    let mut steps = path.split('.');
    let mut value = steps.next().and_then(|first| doc.get_mut(first));
    for step in steps {
        value = match value {
            Some(Value::Table(t)) => t.get_mut(step),
            Some(Value::Array(a)) => step.parse().ok().and_then(|i: usize| a.get_mut(i)),
            _ => None,
        };
    }
    value.unwrap_or_else(|| panic!("{path} is not in the document"))
}

/// The table at `path`; `""` is the document itself.
fn section<'a>(doc: &'a mut Table, path: &str) -> &'a mut Table {
    if path.is_empty() {
        return doc;
    }
    at(doc, path)
        .as_table_mut()
        .unwrap_or_else(|| panic!("{path} is not a table"))
}

/// Replaces the value at `path`, which must be there.
fn set(doc: &mut Table, path: &str, value: impl Into<Value>) {
    *at(doc, path) = value.into();
}

/// Adds `key` to the table at `path`, which must be there without it.
fn add(doc: &mut Table, path: &str, key: &str, value: impl Into<Value>) {
    let old = section(doc, path).insert(key.to_string(), value.into());
    assert!(old.is_none(), "{path}.{key} was already set");
}

/// Removes the value at `path`, which must be there.
fn remove(doc: &mut Table, path: &str) {
    let (parent, key) = path.rsplit_once('.').unwrap_or(("", path));
    let old = section(doc, parent).remove(key);
    assert!(old.is_some(), "{path} is not in the document");
}

fn table(entries: &[(&str, Value)]) -> Table {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// A change to MINIMAL, for tables of cases.
type Edit = fn(&mut Table);

fn parse(doc: &Table) -> Result<Config, ConfigError> {
    Config::parse(&toml::to_string(doc).expect("a table serializes"))
}

#[test]
fn minimal_config_takes_the_defaults() {
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.backend.epm_port, 135);
    assert_eq!(c.epm.advertise, None);
    assert_eq!(c.pins.len(), 2);
    assert_eq!(c.pins[0].interfaces.len(), 2);
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.limits.handshake_timeout, Duration::from_secs(10));
    // A 500-user office behind one NAT address fits (docs/security.md, "Limits").
    assert_eq!(
        (c.limits.max_connections_per_ip, c.limits.max_connections),
        (4000, 10_000)
    );
}

/// Every error rpcpin words itself, with its whole text: keys and reasons are part of the
/// configuration contract (README.md, "Configuration").
#[test]
fn errors_name_the_key_and_keep_their_text() {
    let cases: &[(Edit, &str, &str)] = &[
        (
            |d| set(d, "backend.host", ""),
            "backend.host",
            "must name the RPC server (IP address or DNS name)",
        ),
        (
            |d| add(d, "backend", "epm_port", 0),
            "backend.epm_port",
            "must be a port number from 1 to 65535",
        ),
        (
            |d| set(d, "backend.host", "127.0.0.1"),
            "backend.host",
            "127.0.0.1:135 is rpcpin's own epm.listen: connections would loop",
        ),
        (
            |d| set(d, "backend.host", "[10.0.0.5]"),
            "backend.host",
            r#""[10.0.0.5]": brackets hold an IPv6 address only, as in "[fd00::2]""#,
        ),
        (
            |d| set(d, "backend.host", "[fd00::5]:135"),
            "backend.host",
            r#""[fd00::5]:135" has a port: write the host alone (fd00::5) and the port in epm_port"#,
        ),
        (
            |d| set(d, "backend.host", "dc1 example"),
            "backend.host",
            r#""dc1 example" is not an IP address (IPv6 with or without brackets) or a DNS name"#,
        ),
        (
            |d| {
                set(d, "epm.listen", "[::]:135");
                set(d, "backend.host", "[::1]");
            },
            "backend.host",
            "[::1]:135 is rpcpin's own epm.listen: connections would loop",
        ),
        (
            |d| set(d, "epm.listen", "0.0.0.0"),
            "epm.listen",
            r#""0.0.0.0" is not an address:port such as "0.0.0.0:135""#,
        ),
        (
            |d| add(d, "epm", "advertise", "::1"),
            "epm.advertise",
            r#""::1" is not an IPv4 address"#,
        ),
        (
            |d| remove(d, "pin"),
            "pin",
            "at least one [[pin]] is needed",
        ),
        (
            |d| set(d, "pin.0.name", " "),
            "pin[0].name",
            "must not be empty",
        ),
        (
            |d| set(d, "pin.1.name", "directory"),
            "pin[1].name",
            r#""directory" is used by another pin"#,
        ),
        (
            |d| set(d, "pin.0.listen", "6004"),
            "pin[0].listen",
            r#""6004" is not an address:port such as "0.0.0.0:135""#,
        ),
        (
            |d| set(d, "pin.0.listen", "0.0.0.0:135"),
            "pin[0].listen",
            "is the same address as epm.listen",
        ),
        (
            |d| set(d, "pin.1.listen", "0.0.0.0:6004"),
            "pin[1].listen",
            "0.0.0.0:6004 is used by another pin",
        ),
        (
            |d| set(d, "pin.0.interfaces", Value::Array(Vec::new())),
            "pin[0].interfaces",
            "must name at least one interface",
        ),
        (
            |d| set(d, "pin.0.interfaces.1", "epm"),
            "pin[0].interfaces[1]",
            "the endpoint mapper is served on epm.listen, not on a pin",
        ),
        (
            |d| add(d, "pin.0", "advertise_port", 0),
            "pin[0].advertise_port",
            "must be a port number from 1 to 65535",
        ),
        (
            |d| add(d, "pin.1", "backend_port", 0),
            "pin[1].backend_port",
            "must be a port number from 1 to 65535",
        ),
        (
            |d| add(d, "", "admin", table(&[("listen", "0.0.0.0:6001".into())])),
            "admin.listen",
            "0.0.0.0:6001 is used by another listener",
        ),
        (
            |d| {
                add(
                    d,
                    "",
                    "admin",
                    table(&[("listen", "localhost:9090".into())]),
                )
            },
            "admin.listen",
            r#""localhost:9090" is not an address:port such as "0.0.0.0:135""#,
        ),
        (
            |d| add(d, "", "admin", table(&[("ready_window", "0s".into())])),
            "admin.ready_window",
            "must be longer than zero",
        ),
        (
            |d| add(d, "", "limits", table(&[("max_fragment", 1023.into())])),
            "limits.max_fragment",
            "must be from 1024 to 65535 bytes",
        ),
        (
            |d| add(d, "", "limits", table(&[("max_reassembly", 65534.into())])),
            "limits.max_reassembly",
            "must be at least limits.max_fragment and at most 64 MiB",
        ),
        (
            |d| add(d, "", "limits", table(&[("max_connections", 0.into())])),
            "limits.max_connections",
            "must be at least 1",
        ),
        (
            |d| {
                add(
                    d,
                    "",
                    "limits",
                    table(&[("max_connections_per_ip", 0.into())]),
                )
            },
            "limits.max_connections_per_ip",
            "must be at least 1",
        ),
        (
            |d| add(d, "", "limits", table(&[("idle_timeout", "10".into())])),
            "limits.idle_timeout",
            r#""10" needs a unit: ms, s, m or h"#,
        ),
        (
            |d| add(d, "", "limits", table(&[("keepalive", "ten s".into())])),
            "limits.keepalive",
            r#""ten s" is not a duration such as "10s""#,
        ),
        (
            |d| add(d, "", "process", table(&[("user", " ".into())])),
            "process.user",
            "must not be empty",
        ),
    ];
    for (edit, key, reason) in cases {
        let mut doc = minimal();
        edit(&mut doc);
        let e = parse(&doc).unwrap_err();
        assert_eq!(e.to_string(), format!("{key}: {reason}"));
    }
}

/// Errors whose reason another module or the TOML parser words: only the key is ours.
#[test]
fn errors_name_the_key() {
    let cases: &[(Edit, &str, &str)] = &[
        (
            |d| set(d, "pin.0.interfaces.0", "nspy"),
            "pin[0].interfaces[0]",
            "",
        ),
        (
            |d| set(d, "pin.1.interfaces.0", "nspi"),
            "pin[1].interfaces[0]",
            r#"is already carried by pin "directory": a tower can only point at one port"#,
        ),
    ];
    for (edit, key, reason) in cases {
        let mut doc = minimal();
        edit(&mut doc);
        let e = parse(&doc).unwrap_err();
        assert_eq!(e.key, *key, "{e}");
        assert!(e.reason.contains(reason), "{e}");
    }
}

/// Errors the TOML parser finds carry no path: the key is the line they point at.
#[test]
fn parse_errors_name_the_line() {
    let cases: &[(Edit, &str, &str)] = &[
        (
            |d| add(d, "", "epm2", Table::new()),
            "[epm2]",
            "unknown field `epm2`",
        ),
        (
            |d| add(d, "", "log", table(&[("format", "xml".into())])),
            r#"format = "xml""#,
            "unknown variant",
        ),
    ];
    for (edit, line_text, reason) in cases {
        let mut doc = minimal();
        edit(&mut doc);
        let text = toml::to_string(&doc).unwrap();
        let line = text.lines().position(|l| l == *line_text).expect("written") + 1;
        let e = Config::parse(&text).unwrap_err();
        assert_eq!(e.key, format!("line {line} ({line_text})"), "{text}");
        assert!(e.reason.contains(reason), "{e}");
    }
}

#[test]
fn opnum_lists_name_interfaces_of_their_pin() {
    let c = Config::parse(MINIMAL).unwrap();
    assert!(c.pins[0].opnums.is_empty());
    let mut doc = minimal();
    let opnums = table(&[
        ("nspi", vec![0, 1].into()),
        ("1544f5e0-613c-11d1-93df-00c04fd7bd09", vec![0].into()),
    ]);
    add(&mut doc, "pin.0", "opnums", opnums);
    let c = parse(&doc).unwrap();
    let nspi = SyntaxId::new(::uuid::uuid!("f5cc5a18-4264-101a-8c59-08002b2f8426"), 56, 0);
    let rfr = SyntaxId::new(::uuid::uuid!("1544f5e0-613c-11d1-93df-00c04fd7bd09"), 1, 0);
    assert!(c.pins[0].allows_opnum(&nspi, 1) && !c.pins[0].allows_opnum(&nspi, 2));
    assert!(c.pins[0].allows_opnum(&rfr, 0) && !c.pins[0].allows_opnum(&rfr, 1));
    assert!(
        c.pins[1].allows_opnum(&SyntaxId { major: 0, ..nspi }, 99),
        "no list: all"
    );
    remove(&mut doc, "pin.0.opnums.nspi");
    add(&mut doc, "pin.0.opnums", "emsmdb", vec![0]);
    let e = parse(&doc).unwrap_err();
    assert_eq!(e.key, "pin[0].opnums.emsmdb");
    assert_eq!(e.reason, "names an interface this pin does not carry");
}

#[test]
fn unknown_keys_are_refused() {
    let mut doc = minimal();
    add(&mut doc, "backend", "port", 1);
    let e = parse(&doc).unwrap_err();
    assert!(e.reason.contains("unknown field `port`"), "{e}");
}

/// Operators write "never" as a huge number; it must be refused, not overflow the
/// multiplication (a panic in debug builds) or the clock it is later added to.
#[test]
fn durations_too_long_are_refused() {
    for text in [
        "99999999999999999h",
        "9999999999999999999m",
        "18446744073709551615s",
        "99999999999999999999s",
        "8760001h",
        "31536000000001ms",
    ] {
        let mut doc = minimal();
        add(
            &mut doc,
            "",
            "limits",
            table(&[("idle_timeout", text.into())]),
        );
        let e = parse(&doc).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("limits.idle_timeout: {text:?} is too long: at most 8760000h (1000 years)")
        );
    }
}

#[test]
fn other_towers_is_hide_keep_or_an_error() {
    assert_eq!(
        parse(&minimal()).unwrap().epm.other_towers,
        OtherTowers::Hide
    );
    let mut doc = minimal();
    add(&mut doc, "epm", "other_towers", "keep");
    assert_eq!(parse(&doc).unwrap().epm.other_towers, OtherTowers::Keep);
    set(&mut doc, "epm.other_towers", "drop");
    let text = toml::to_string(&doc).unwrap();
    let e = Config::parse(&text).unwrap_err();
    assert!(e.key.contains(r#"other_towers = "drop""#), "{e}");
    assert!(e.reason.contains("unknown variant"), "{e}");
}

//! Several servers (`[backends.NAME]`, `pin.backend`) and `epm.mode`: the defaults, and
//! every error with its whole text.

use super::*;

/// MINIMAL in relay mode with `[backends.b]` at `host`, and `pin[1]` (store) sent there.
fn with_b(host: &str) -> Table {
    let mut doc = minimal();
    let b = table(&[("host", host.into())]);
    add(&mut doc, "", "backends", table(&[("b", b.into())]));
    add(&mut doc, "pin.1", "backend", "b");
    add(&mut doc, "epm", "mode", "relay");
    doc
}

/// `with_b` in answer mode.
fn answering_with_b(host: &str) -> Table {
    let mut doc = with_b(host);
    set(&mut doc, "epm.mode", "answer");
    doc
}

#[test]
fn one_server_and_answer_mode_by_default() {
    let c = parse(&minimal()).unwrap();
    assert_eq!(c.epm.mode, EpmMode::Answer);
    assert!(c.backends.is_empty());
    assert_eq!(c.pins[0].backend, None);
    assert_eq!(c.backend_of(&c.pins[0]), (DEFAULT_BACKEND, &c.backend));
    let servers: Vec<String> = c
        .servers()
        .iter()
        .map(|(n, b)| format!("{n} {b}"))
        .collect();
    assert_eq!(servers, ["default 10.0.0.5:135"]);
}

#[test]
fn a_pin_names_its_server_in_answer_mode() {
    let mut doc = answering_with_b("10.0.0.6");
    add(
        &mut doc,
        "backends",
        "unused",
        table(&[("host", "10.0.0.7".into()), ("epm_port", 1135.into())]),
    );
    let c = parse(&doc).unwrap();
    assert_eq!(c.epm.mode, EpmMode::Answer);
    assert_eq!(c.pins[1].backend.as_deref(), Some("b"));
    let b = &c.backends["b"];
    assert_eq!(
        (b.host.to_string(), b.epm_port),
        ("10.0.0.6".to_string(), 135)
    );
    assert_eq!(c.backend_of(&c.pins[1]), ("b", b));
    assert_eq!(c.backend_of(&c.pins[0]), ("default", &c.backend));
    let servers: Vec<String> = c
        .servers()
        .iter()
        .map(|(n, b)| format!("{n} {b}"))
        .collect();
    assert_eq!(
        servers,
        ["default 10.0.0.5:135", "b 10.0.0.6:135"],
        "unused is not in use"
    );
}

#[test]
fn relay_mode_takes_a_named_backend_that_is_the_same_server() {
    let c = parse(&with_b("10.0.0.5")).unwrap();
    assert_eq!(c.epm.mode, EpmMode::Relay);
    assert_eq!(c.backend_of(&c.pins[1]).0, "b");
    let mut doc = with_b("10.0.0.5");
    add(&mut doc, "backends.b", "epm_port", 136);
    let e = parse(&doc).unwrap_err();
    assert_eq!(e.key, "pin[1].backend", "{e}");
}

#[test]
fn backend_errors_name_the_key_and_keep_their_text() {
    let cases: &[(Edit, &str, &str)] = &[
        (
            |d| add(d, "epm", "mode", "proxy"),
            "epm.mode",
            r#""proxy" is not "relay" or "answer""#,
        ),
        (
            |d| add(d, "epm", "hide_unpinned", false),
            "epm.hide_unpinned",
            "cannot be false in answer mode (epm.mode = \"answer\"): rpcpin answers \
             ept_s_not_registered for every interface no pin carries",
        ),
        (
            |d| *d = with_b("10.0.0.6"),
            "pin[1].backend",
            "relay mode allows one server only: backends.b (10.0.0.6:135) is not [backend] \
             (10.0.0.5:135); several servers need epm.mode = \"answer\"",
        ),
        (
            |d| {
                *d = answering_with_b("10.0.0.6");
                set(d, "pin.1.backend", "c");
            },
            "pin[1].backend",
            r#""c" names no server: there is no [backends.c]"#,
        ),
        (
            |d| add(d, "pin.0", "backend", "b"),
            "pin[0].backend",
            r#""b" names no server: there is no [backends.b]"#,
        ),
        (
            |d| {
                *d = answering_with_b("10.0.0.6");
                set(d, "pin.1.backend", "");
            },
            "pin[1].backend",
            "must not be empty",
        ),
        (
            |d| {
                *d = answering_with_b("10.0.0.6");
                set(d, "pin.1.backend", "b c");
            },
            "pin[1].backend",
            r#""b c" is not a plain name: letters, digits, '-' and '_' only"#,
        ),
        (
            |d| {
                let b = table(&[("host", "10.0.0.6".into())]);
                add(d, "", "backends", table(&[("b.c", b.into())]));
            },
            r#"backends."b.c""#,
            r#""b.c" is not a plain name: letters, digits, '-' and '_' only"#,
        ),
        (
            |d| {
                let b = table(&[("host", "10.0.0.6".into())]);
                add(d, "", "backends", table(&[("", b.into())]));
            },
            r#"backends."""#,
            "must not be empty",
        ),
        (
            |d| {
                let b = table(&[("host", "10.0.0.6".into())]);
                add(d, "", "backends", table(&[("default", b.into())]));
            },
            "backends.default",
            r#""default" is the name of [backend]: choose another"#,
        ),
        (
            |d| {
                *d = answering_with_b("10.0.0.6");
                set(d, "backends.b.host", " ");
            },
            "backends.b.host",
            "must name the RPC server (IP address or DNS name)",
        ),
        (
            |d| {
                *d = answering_with_b("10.0.0.6");
                add(d, "backends.b", "epm_port", 0);
            },
            "backends.b.epm_port",
            "must be a port number from 1 to 65535",
        ),
        (
            |d| {
                *d = answering_with_b("10.0.0.6");
                set(d, "backends.b.host", "127.0.0.1");
            },
            "backends.b.host",
            "127.0.0.1:135 is rpcpin's own epm.listen: connections would loop",
        ),
    ];
    for (edit, key, reason) in cases {
        let mut doc = minimal();
        edit(&mut doc);
        let e = parse(&doc).unwrap_err();
        assert_eq!(e.to_string(), format!("{key}: {reason}"));
    }
}

#[test]
fn a_named_backend_takes_host_and_epm_port_only() {
    let mut doc = answering_with_b("10.0.0.6");
    add(&mut doc, "backends.b", "resolve_cache", "10s");
    let e = parse(&doc).unwrap_err();
    assert!(e.reason.contains("unknown field `resolve_cache`"), "{e}");
    let mut doc = answering_with_b("10.0.0.6");
    remove(&mut doc, "backends.b.host");
    let e = parse(&doc).unwrap_err();
    assert!(e.reason.contains("missing field `host`"), "{e}");
}

#[test]
fn an_interface_still_lives_in_one_pin_whatever_its_server() {
    let mut doc = answering_with_b("10.0.0.6");
    set(&mut doc, "pin.1.interfaces.0", "nspi");
    let e = parse(&doc).unwrap_err();
    assert_eq!(e.key, "pin[1].interfaces[0]", "{e}");
}

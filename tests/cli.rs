//! The command line as an operator uses it: the bundled configurations are valid, and a bad
//! one is refused with its key named before anything listens.

use std::process::{Command, Output};

fn rpcpin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rpcpin"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("rpcpin runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn bundled_configurations_are_valid() {
    for path in ["config/exchange.toml", "config/rpcpin.toml"] {
        let out = rpcpin(&["check", "--config", path]);
        assert!(out.status.success(), "{path}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("valid"));
    }
    let out = rpcpin(&["check", "--config", "config/exchange.toml"]);
    let stdout = text(&out.stdout);
    for want in [
        "nspi",
        "rfr",
        "emsmdb",
        "async_emsmdb",
        "0.0.0.0:6004",
        "0.0.0.0:6001",
    ] {
        assert!(stdout.contains(want), "{want} missing from:\n{stdout}");
    }
}

#[test]
fn check_names_the_bad_key() {
    let dir = std::env::temp_dir().join(format!("rpcpin-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/exchange.toml"))
            .unwrap();
    for (bad, key) in [
        (good.replace("\"rfr\"", "\"rfx\""), "pin[0].interfaces[1]"),
        (
            good.replace("0.0.0.0:6001", "0.0.0.0:6004"),
            "pin[1].listen",
        ),
        (
            good.replace("[log]", "[log]\ncolour = true"),
            "unknown field `colour`",
        ),
    ] {
        let path = dir.join("bad.toml");
        std::fs::write(&path, bad).unwrap();
        let p = path.to_str().unwrap();
        for cmd in ["check", "run"] {
            let out = rpcpin(&[cmd, "--config", p]);
            assert!(!out.status.success());
            let err = text(&out.stderr);
            assert!(err.contains(key), "{cmd}: {key} missing from: {err}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_file_is_reported() {
    let out = rpcpin(&["check", "--config", "no/such/file.toml"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("cannot read configuration no/such/file.toml"));
}

#[test]
fn prints_its_version() {
    let out = rpcpin(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("rpcpin {}", env!("CARGO_PKG_VERSION"))
    );
}

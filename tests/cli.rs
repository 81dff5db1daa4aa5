//! The command line as an operator uses it: the bundled configurations are valid, and a bad
//! one is refused with its key named before anything listens.

mod common;

use std::process::{Command, Output};

use common::TestConfig;

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
    let good = TestConfig::from_toml(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/exchange.toml"))
            .unwrap(),
    );
    assert_eq!(good.get("pin[0].interfaces[1]").as_str(), Some("rfr"));
    let first_listen = good.get("pin[0].listen").clone();
    for (bad, key) in [
        (
            good.clone().set("pin[0].interfaces[1]", "rfx"),
            "pin[0].interfaces[1]",
        ),
        (
            good.clone().set("pin[1].listen", first_listen),
            "pin[1].listen",
        ),
        (
            good.clone().set("log.colour", true),
            "unknown field `colour`",
        ),
    ] {
        let path = dir.join("bad.toml");
        std::fs::write(&path, bad.text()).unwrap();
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

/// The real uid of a process, from /proc.
fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn run_switches_to_process_user_after_binding() {
    let dir = std::env::temp_dir().join(format!("rpcpin-user-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("user.toml");
    std::fs::write(
        &path,
        "[backend]\nhost = \"127.0.0.1\"\nepm_port = 1\n[epm]\nlisten = \"127.0.0.1:0\"\n\
         [[pin]]\nname = \"p\"\nlisten = \"127.0.0.1:0\"\ninterfaces = [\"nspi\"]\n\
         [process]\nuser = \"nobody\"\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rpcpin"))
        .args(["run", "--config", path.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let root = uid_of(std::process::id()) == Some(0);
    let nobody = 65534;
    let mut seen = None;
    for _ in 0..100 {
        seen = uid_of(child.id());
        if seen == Some(nobody) || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    if root {
        assert_eq!(seen, Some(nobody), "{}", text(&out.stderr));
    } else {
        // Not root: rpcpin refuses to start rather than run with privileges it cannot drop.
        assert!(
            text(&out.stderr).contains("not root"),
            "{}",
            text(&out.stderr)
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `rpcpin run` as a process: SIGHUP with a broken file keeps the running configuration
/// and logs why, SIGHUP with a good one reloads (and changes the log level), SIGTERM
/// drains and exits 0.
#[test]
fn signals_reload_and_stop_the_process() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};

    let dir = std::env::temp_dir().join(format!("rpcpin-signals-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rpcpin.toml");
    let good = "[backend]\nhost = \"127.0.0.1\"\nepm_port = 1\n[epm]\nlisten = \"127.0.0.1:0\"\n\
                [[pin]]\nname = \"p\"\nlisten = \"127.0.0.1:0\"\ninterfaces = [\"nspi\"]\n\
                [log]\nformat = \"json\"\n";
    std::fs::write(&path, good).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rpcpin"))
        .args(["run", "--config", path.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("rpcpin runs");
    let pid = child.id().to_string();
    let (tx, lines) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |event: &str| -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if line.contains(&format!("\"event\":\"{event}\"")) {
                return line;
            }
        }
        panic!("no {event} event");
    };
    let kill = |signal: &str| {
        let ok = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(ok.success());
    };
    wait_for("listening");

    std::fs::write(&path, good.replace("nspi", "no-such-interface")).unwrap();
    kill("-HUP");
    let failed = wait_for("reload_failed");
    assert!(failed.contains("pin[0].interfaces[0]"), "{failed}");

    std::fs::write(
        &path,
        good.replace("format = \"json\"", "format = \"json\"\nlevel = \"debug\""),
    )
    .unwrap();
    kill("-HUP");
    wait_for("reloaded");

    kill("-TERM");
    wait_for("draining");
    wait_for("shutdown");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// The tests' configuration builder fails on a key whose section is not there, rather than
/// setting nothing.
#[test]
#[should_panic(expected = "no limits in the test configuration (limits.idle_timeout)")]
fn test_configurations_refuse_a_key_outside_their_sections() {
    let backend = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
    TestConfig::new(backend).set("limits.idle_timeout", "1s");
}

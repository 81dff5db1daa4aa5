//! The command line as an operator uses it: the bundled configurations are valid, and a bad
//! one is refused with its key named before anything listens.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use common::{TestConfig, WAIT};

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
fn configurations_shown_in_the_docs_are_valid() {
    // Every ```toml block of the README and docs/ is a whole configuration an operator may
    // copy (fragments are shown in plain ``` blocks).
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut docs = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        docs.push(entry.unwrap().path());
    }
    let mut checked = 0;
    for doc in docs
        .iter()
        .filter(|d| d.extension().is_some_and(|e| e == "md"))
    {
        let text = std::fs::read_to_string(doc).unwrap();
        for block in text.split("```toml\n").skip(1) {
            let toml = block.split("```").next().unwrap();
            if let Err(e) = rpcpin::config::Config::parse(toml) {
                panic!("{}: {e} in\n{toml}", doc.display());
            }
            checked += 1;
        }
    }
    assert!(checked > 0, "no ```toml block in the docs");
}

#[test]
fn bundled_configurations_are_valid() {
    let mut paths: Vec<_> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 4, "{paths:?}");
    for path in &paths {
        let out = rpcpin(&["check", "--config", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            text(&out.stderr)
        );
        assert!(text(&out.stdout).contains("valid"));
    }
    // The domain controller's example: three pins, the CA's on a server of its own.
    let out = rpcpin(&["check", "--config", "config/active-directory.toml"]);
    let stdout = text(&out.stdout);
    for want in [
        "backends.ca  10.0.0.20:135\n",
        "pin \"dc\"  listen 0.0.0.0:6100",
        "pin \"dfsr\"  listen 0.0.0.0:6101",
        "server ca (10.0.0.20:135)\n    icpr ",
        "    backupkey ",
        "    dfsr ",
    ] {
        assert!(stdout.contains(want), "{want:?} missing from:\n{stdout}");
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
fn interfaces_lists_every_alias_with_its_uuid_and_version() {
    let out = rpcpin(&["interfaces"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    assert!(lines.next().unwrap().starts_with("ALIAS "));
    let listed: Vec<(String, String, String)> = lines
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols[0].into(), cols[1].into(), cols[2].into())
        })
        .collect();
    let known: Vec<(String, String, String)> = rpcpin::interfaces::KNOWN
        .iter()
        .map(|k| {
            let s = k.syntax;
            (
                k.alias.into(),
                s.uuid.to_string(),
                format!("{}.{}", s.major, s.minor),
            )
        })
        .collect();
    assert_eq!(listed, known);
    assert!(stdout.contains("\nicpr               91ae6020-9e3c-11cf-8d7c-00aa00c091be 0.0 "));
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

/// `rpcpin run` as a child process, its log lines (JSON) read as they come.
struct Run {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    /// Every line read so far, for failure messages.
    seen: Vec<String>,
}

impl Run {
    fn start(config: &Path) -> Run {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rpcpin"))
            .args(["run", "--config", config.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .spawn()
            .expect("rpcpin runs");
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Run {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next `event` rpcpin logs, within [`WAIT`]; `None` when rpcpin closed its
    /// stderr first (it exited).
    fn next(&mut self, event: &str) -> Option<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(&format!("\"event\":\"{event}\"")) {
                        return Some(line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("no {event} within {WAIT:?}:\n{}", self.seen.join("\n"))
                }
            }
        }
    }

    /// As [`Run::next`], where rpcpin exiting first is a failure.
    fn expect(&mut self, event: &str) -> String {
        self.next(event)
            .unwrap_or_else(|| panic!("rpcpin exited before {event}:\n{}", self.seen.join("\n")))
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(ok.success());
    }
}

/// A configuration with one pin whose backend is never asked; logs in JSON.
fn minimal() -> TestConfig {
    TestConfig::new(SocketAddr::from(([127, 0, 0, 1], 1)))
        .pin("p", ["nspi"])
        .section("log")
        .set("log.format", "json")
}

#[test]
fn run_switches_to_process_user_after_binding() {
    let dir = std::env::temp_dir().join(format!("rpcpin-user-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("user.toml");
    let config = minimal().section("process").set("process.user", "nobody");
    std::fs::write(&path, config.text()).unwrap();
    let mut run = Run::start(&path);
    let root = uid_of(std::process::id()) == Some(0);
    let nobody = 65534;
    if root {
        // Listening means bound, and the user is switched before rpcpin serves.
        run.expect("listening");
        assert_eq!(
            uid_of(run.child.id()),
            Some(nobody),
            "{}",
            run.seen.join("\n")
        );
        run.child.kill().unwrap();
        run.child.wait().unwrap();
    } else {
        // Not root: rpcpin refuses to start rather than run with privileges it cannot drop.
        assert_eq!(run.next("listening"), None, "{}", run.seen.join("\n"));
        assert!(!run.child.wait().unwrap().success());
        let stderr = run.seen.join("\n");
        assert!(stderr.contains("not root"), "{stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `rpcpin run` as a process: SIGHUP with a broken file keeps the running configuration
/// and logs why, SIGHUP with a good one reloads (and changes the log level), SIGTERM
/// drains and exits 0.
#[test]
fn signals_reload_and_stop_the_process() {
    let dir = std::env::temp_dir().join(format!("rpcpin-signals-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rpcpin.toml");
    let good = minimal();
    std::fs::write(&path, good.text()).unwrap();
    let mut run = Run::start(&path);
    run.expect("listening");

    let broken = good
        .clone()
        .set("pin[0].interfaces[0]", "no-such-interface");
    std::fs::write(&path, broken.text()).unwrap();
    run.signal("-HUP");
    let failed = run.expect("reload_failed");
    assert!(failed.contains("pin[0].interfaces[0]"), "{failed}");

    std::fs::write(&path, good.set("log.level", "debug").text()).unwrap();
    run.signal("-HUP");
    run.expect("reloaded");

    run.signal("-TERM");
    run.expect("draining");
    run.expect("shutdown");
    let status = run.child.wait().unwrap();
    assert!(status.success(), "{status}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The tests' configuration builder fails on a key whose section is not there, rather than
/// setting nothing.
#[test]
#[should_panic(expected = "no limits in the test configuration (limits.idle_timeout)")]
fn test_configurations_refuse_a_key_outside_their_sections() {
    minimal().set("limits.idle_timeout", "1s");
}

/// `minimal()` with a second pin on `[backends.b]` (10.0.0.6:1135), in `mode`.
fn two_servers(mode: &str) -> TestConfig {
    let mut b = toml::Table::new();
    b.insert("host".into(), "10.0.0.6".into());
    b.insert("epm_port".into(), 1135.into());
    minimal()
        .set("epm.mode", mode)
        .section("backends")
        .set("backends.b", b)
        .pin("q", ["rfr"])
        .set("pin[1].backend", "b")
}

/// Writes `config` to a file of its own and runs `rpcpin check` on it.
fn check(config: &TestConfig, name: &str) -> Output {
    let path = std::env::temp_dir().join(format!("rpcpin-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, config.text()).unwrap();
    let out = rpcpin(&["check", "--config", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    out
}

#[test]
fn check_prints_each_pins_server() {
    let out = check(&two_servers("answer"), "servers");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for want in [
        "backend  127.0.0.1:1\n",
        "backends.b  10.0.0.6:1135\n",
        "  mode answer\n",
        "  server default (127.0.0.1:1)\n",
        "  server b (10.0.0.6:1135)\n",
    ] {
        assert!(stdout.contains(want), "{want:?} missing from:\n{stdout}");
    }
    let pin_q = stdout.lines().find(|l| l.starts_with("pin \"q\"")).unwrap();
    assert!(pin_q.ends_with("server b (10.0.0.6:1135)"), "{pin_q}");
}

#[test]
fn check_refuses_a_second_server_in_relay_mode() {
    let out = check(&two_servers("relay"), "relay");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    for want in [
        "pin[1].backend: relay mode allows one server only",
        "epm.mode = \"answer\"",
    ] {
        assert!(err.contains(want), "{want} missing from: {err}");
    }
}

#[test]
fn check_prints_ipv6_hosts_in_brackets_with_or_without_them_in_the_file() {
    let config = two_servers("answer")
        .set("backend.host", "[fd00:135::2]")
        .set("backends.b.host", "fd00:135::3")
        .set("epm.listen", "[::]:135");
    let out = check(&config, "ipv6");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for want in [
        "backend  [fd00:135::2]:1\n",
        "backends.b  [fd00:135::3]:1135\n",
        "epm      listen [::]:135  ",
        "  server default ([fd00:135::2]:1)\n",
        "  server b ([fd00:135::3]:1135)\n",
    ] {
        assert!(stdout.contains(want), "{want:?} missing from:\n{stdout}");
    }
}

//! Test configurations built as a TOML table, key by key, and rendered to the text rpcpin
//! parses: a key set on a section that is not there fails the test instead of doing nothing.

use std::net::SocketAddr;

use toml::{Table, Value};

/// A configuration for a test.
#[derive(Debug, Clone)]
pub struct TestConfig {
    table: Table,
}

impl TestConfig {
    /// The backend's endpoint mapper at `backend`, rpcpin's on 127.0.0.1:0 relaying to it
    /// (`epm.mode = "relay"`: most end-to-end tests watch what the backend's endpoint mapper
    /// receives and answers; tests/epm_answer.rs sets answer mode, the default), no pins yet.
    pub fn new(backend: SocketAddr) -> TestConfig {
        let mut table = Table::new();
        table.insert("backend".into(), Table::new().into());
        table.insert("epm".into(), Table::new().into());
        TestConfig { table }
            .set("backend.host", backend.ip().to_string())
            .set("backend.epm_port", u32::from(backend.port()))
            .set("epm.listen", "127.0.0.1:0")
            .set("epm.mode", "relay")
    }

    /// A configuration file's text, as it is.
    pub fn from_toml(text: &str) -> TestConfig {
        TestConfig {
            table: text.parse().expect("the configuration is TOML"),
        }
    }

    /// Adds a `[[pin]]` on 127.0.0.1:0 carrying `interfaces`.
    pub fn pin<'a>(self, name: &str, interfaces: impl IntoIterator<Item = &'a str>) -> TestConfig {
        self.pin_at(name, "127.0.0.1:0".parse().unwrap(), interfaces)
    }

    /// Adds a `[[pin]]` on `listen` carrying `interfaces`.
    pub fn pin_at<'a>(
        mut self,
        name: &str,
        listen: SocketAddr,
        interfaces: impl IntoIterator<Item = &'a str>,
    ) -> TestConfig {
        let mut pin = Table::new();
        pin.insert("name".into(), name.into());
        pin.insert("listen".into(), listen.to_string().into());
        let interfaces: Vec<&str> = interfaces.into_iter().collect();
        pin.insert("interfaces".into(), interfaces.into());
        let pins = self
            .table
            .entry("pin")
            .or_insert_with(|| Value::Array(Vec::new()));
        pins.as_array_mut()
            .expect("pin is an array of tables")
            .push(pin.into());
        self
    }

    /// Adds the section `name` (`limits`, `admin`), empty, unless it is there already.
    pub fn section(mut self, name: &str) -> TestConfig {
        let section = self
            .table
            .entry(name)
            .or_insert_with(|| Table::new().into());
        assert!(section.is_table(), "{name} is not a section");
        self
    }

    /// Sets `key`, a dotted path such as `epm.hide_unpinned`, `pin[1].backend_port` or
    /// `pin[0].interfaces[1]`: every part of it but the last must be there already (and an
    /// indexed last part too).
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> TestConfig {
        let (path, last) = key.rsplit_once('.').expect("a key inside a section");
        let mut table = &mut self.table;
        for part in path.split('.') {
            table = match step(table, part, key) {
                Value::Table(t) => t,
                other => panic!("{part} in {key} is not a table: {other}"),
            };
        }
        match last.split_once('[') {
            Some(_) => *step(table, last, key) = value.into(),
            None => {
                table.insert(last.to_string(), value.into());
            }
        }
        self
    }

    /// The value at `key`, which must be there.
    pub fn get(&self, key: &str) -> &Value {
        let mut parts = key.split('.');
        let mut value = step_ref(&self.table, parts.next().unwrap(), key);
        for part in parts {
            let table = value
                .as_table()
                .unwrap_or_else(|| panic!("{key}: {value} is not a table"));
            value = step_ref(table, part, key);
        }
        value
    }

    /// The configuration file's text.
    pub fn text(&self) -> String {
        toml::to_string(&self.table).expect("a TOML table renders")
    }
}

/// A path's part: `name`, or `name[i]` for an array's element.
fn parse_part(part: &str) -> (&str, Option<usize>) {
    match part.split_once('[') {
        Some((name, i)) => {
            let i = i.strip_suffix(']').and_then(|i| i.parse().ok());
            (
                name,
                Some(i.unwrap_or_else(|| panic!("{part}: not name[index]"))),
            )
        }
        None => (part, None),
    }
}

/// `part` of `table`, which must be there.
fn step<'t>(table: &'t mut Table, part: &str, key: &str) -> &'t mut Value {
    let (name, index) = parse_part(part);
    let value = table
        .get_mut(name)
        .unwrap_or_else(|| panic!("no {name} in the test configuration ({key})"));
    match index {
        Some(i) => value
            .as_array_mut()
            .and_then(|a| a.get_mut(i))
            .unwrap_or_else(|| panic!("no {name}[{i}] in the test configuration ({key})")),
        None => value,
    }
}

/// `part` of `table`, which must be there.
fn step_ref<'t>(table: &'t Table, part: &str, key: &str) -> &'t Value {
    let (name, index) = parse_part(part);
    let value = table
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in the test configuration ({key})"));
    match index {
        Some(i) => value
            .as_array()
            .and_then(|a| a.get(i))
            .unwrap_or_else(|| panic!("no {name}[{i}] in the test configuration ({key})")),
        None => value,
    }
}

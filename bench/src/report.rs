//! Medians, ratios against the goals, and the tables a run prints.

use std::fmt::Write as _;

use crate::harness::Path;

/// The median of some samples (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// The `q`-quantile (0..=1) of sorted samples, nearest rank.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// One row of a table: a measured quantity per path, one sample per round.
#[derive(Debug, Clone)]
pub struct Row {
    pub case: String,
    /// By round, by path.
    rounds: Vec<[Option<f64>; Path::COUNT]>,
}

impl Row {
    pub fn new(case: impl Into<String>) -> Row {
        Row {
            case: case.into(),
            rounds: Vec::new(),
        }
    }

    pub fn add(&mut self, round: usize, path: Path, value: f64) {
        if self.rounds.len() <= round {
            self.rounds.resize(round + 1, [None; Path::COUNT]);
        }
        self.rounds[round][path.index()] = Some(value);
    }

    fn values(&self, path: Path) -> Vec<f64> {
        self.rounds.iter().filter_map(|r| r[path.index()]).collect()
    }

    pub fn median(&self, path: Path) -> Option<f64> {
        median(&self.values(path))
    }

    /// The median over rounds of `num / den` within each round. A round runs every path
    /// back to back, so this cancels what the machine's neighbours did between rounds.
    pub fn ratio(&self, num: Path, den: Path) -> Option<f64> {
        let ratios: Vec<f64> = self
            .rounds
            .iter()
            .filter_map(|r| Some(r[num.index()]? / r[den.index()]?))
            .collect();
        median(&ratios)
    }

    /// The widest spread of any path's rounds, relative to its median (noise indicator).
    pub fn spread(&self) -> Option<f64> {
        Path::EPTMAP
            .iter()
            .filter_map(|&p| {
                let v = self.values(p);
                let lo = v.iter().copied().reduce(f64::min)?;
                let hi = v.iter().copied().reduce(f64::max)?;
                Some((hi - lo) / self.median(p)?)
            })
            .max_by(f64::total_cmp)
    }
}

/// Which way a goal points.
#[derive(Debug, Clone, Copy)]
pub enum Cmp {
    /// The ratio must be at least the target.
    AtLeast,
    /// The ratio must be at most the target.
    AtMost,
}

/// A goal from the issue: rpcpin's median over another path's, against a target.
#[derive(Debug, Clone)]
pub struct Goal {
    pub what: String,
    /// The path judged: rpcpin unless `of` says otherwise.
    pub num: Path,
    pub den: Path,
    pub cmp: Cmp,
    pub target: f64,
    pub stretch: bool,
    /// The measured ratio, once known.
    pub ratio: Option<f64>,
}

impl Goal {
    pub fn new(what: impl Into<String>, den: Path, cmp: Cmp, target: f64) -> Goal {
        Goal {
            what: what.into(),
            num: Path::Rpcpin,
            den,
            cmp,
            target,
            stretch: false,
            ratio: None,
        }
    }

    /// The goal judges `path` (rpcpin in answer mode) rather than rpcpin.
    pub fn of(mut self, path: Path) -> Goal {
        self.num = path;
        self
    }

    pub fn stretch(mut self) -> Goal {
        self.stretch = true;
        self
    }

    /// This goal, judged on `row`.
    pub fn on(mut self, row: &Row) -> Goal {
        self.ratio = row.ratio(self.num, self.den);
        self
    }

    pub fn met(&self) -> Option<bool> {
        let r = self.ratio?;
        Some(match self.cmp {
            Cmp::AtLeast => r >= self.target,
            Cmp::AtMost => r <= self.target,
        })
    }

    pub fn verdict(&self) -> &'static str {
        match self.met() {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "n/a",
        }
    }

    pub fn line(&self) -> String {
        let op = match self.cmp {
            Cmp::AtLeast => "≥",
            Cmp::AtMost => "≤",
        };
        let ratio = self.ratio.map_or("n/a".into(), |r| format!("{r:.2}"));
        format!(
            "{:<4} {}: {}/{} = {ratio} (goal {op} {:.2}{})",
            self.verdict(),
            self.what,
            self.num,
            self.den,
            self.target,
            if self.stretch { ", stretch" } else { "" }
        )
    }
}

/// A load's results: a titled table of rows, and the goals judged on them.
#[derive(Debug, Clone)]
pub struct Section {
    pub title: String,
    pub unit: String,
    /// How the numbers were obtained: rounds, durations, pinning.
    pub notes: Vec<String>,
    pub paths: Vec<Path>,
    pub rows: Vec<Row>,
    pub goals: Vec<Goal>,
    /// Goals that are not ratios: a statement and whether it held.
    pub checks: Vec<(String, bool)>,
    /// Value formatting: decimals.
    pub decimals: usize,
}

impl Section {
    pub fn new(title: &str, unit: &str, paths: &[Path], decimals: usize) -> Section {
        Section {
            title: title.into(),
            unit: unit.into(),
            notes: Vec::new(),
            paths: paths.to_vec(),
            rows: Vec::new(),
            goals: Vec::new(),
            checks: Vec::new(),
            decimals,
        }
    }

    /// The section as Markdown: notes, then a table with medians and ratios.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "### {}\n", self.title);
        for n in &self.notes {
            let _ = writeln!(s, "- {n}");
        }
        let ratios = self.ratio_columns();
        let mut head = format!("| case ({}) |", self.unit);
        for p in &self.paths {
            let _ = write!(head, " {p} |");
        }
        for (num, den) in &ratios {
            let _ = write!(head, " {num}/{den} |");
        }
        head.push_str(" spread |");
        let cols = head.matches('|').count() - 1;
        let _ = writeln!(s, "\n{head}\n|{}", "---|".repeat(cols));
        for row in &self.rows {
            let mut line = format!("| {} |", row.case);
            for &p in &self.paths {
                let v = row
                    .median(p)
                    .map_or("n/a".into(), |v| format!("{v:.*}", self.decimals));
                let _ = write!(line, " {v} |");
            }
            for &(num, den) in &ratios {
                let r = row
                    .ratio(num, den)
                    .map_or("n/a".into(), |r| format!("{r:.2}"));
                let _ = write!(line, " {r} |");
            }
            let spread = row
                .spread()
                .map_or("n/a".into(), |x| format!("{:.0}%", x * 100.0));
            let _ = write!(line, " {spread} |");
            let _ = writeln!(s, "{line}");
        }
        if !self.goals.is_empty() || !self.checks.is_empty() {
            let _ = writeln!(s);
        }
        for g in &self.goals {
            let _ = writeln!(s, "    {}", g.line());
        }
        for (what, held) in &self.checks {
            let _ = writeln!(s, "    {:<4} {what}", if *held { "PASS" } else { "MISS" });
        }
        s
    }

    /// The ratio columns: each rpcpin over HAProxy; rpcpin and rpcpin-answer over direct;
    /// HAProxy over direct; rpcpin-answer over rpcpin.
    fn ratio_columns(&self) -> Vec<(Path, Path)> {
        let has = |p| self.paths.contains(&p);
        let mut v = Vec::new();
        for (num, den) in [
            (Path::Rpcpin, Path::Haproxy),
            (Path::RpcpinWarn, Path::Haproxy),
            (Path::RpcpinAnswer, Path::Haproxy),
            (Path::Rpcpin, Path::Direct),
            (Path::RpcpinAnswer, Path::Direct),
            (Path::Haproxy, Path::Direct),
            (Path::RpcpinAnswer, Path::Rpcpin),
        ] {
            if has(num) && has(den) {
                v.push((num, den));
            }
        }
        v
    }
}

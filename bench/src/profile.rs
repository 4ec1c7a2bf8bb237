//! `--perf DIR`: each tickflow service run is sampled with `perf record` (its own process, from
//! its `/readyz` to the end of the measured interval), and its top functions by self time are
//! written to `DIR/<name>.txt` and printed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// Where profiles go; unset: nothing is profiled.
pub static DIR: OnceLock<PathBuf> = OnceLock::new();

/// Functions printed per profile.
const TOP: usize = 15;

/// A `perf record` attached to one process.
pub struct Profile {
    perf: Child,
    data: PathBuf,
    name: String,
}

/// Starts sampling process `pid` under `name` (`None` without `--perf`, or if perf cannot
/// start: said in the log, the run goes on).
pub fn start(name: &str, pid: u32) -> Option<Profile> {
    let dir = DIR.get()?;
    let data = dir.join(format!("{name}.perf.data"));
    let started = Command::new("perf")
        .args(["record", "-F", "499", "-q", "-p", &pid.to_string(), "-o"])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match started {
        Ok(perf) => Some(Profile {
            perf,
            data,
            name: name.to_string(),
        }),
        Err(e) => {
            crate::log(format!(
                "perf record could not start ({e}); {name} not profiled"
            ));
            None
        }
    }
}

impl Profile {
    /// Stops sampling and reports the top functions by self time.
    pub fn finish(mut self) {
        // perf writes its data on SIGINT; it is our child, stopped by its own pid.
        let _ = Command::new("kill")
            .args(["-INT", &self.perf.id().to_string()])
            .status();
        let _ = self.perf.wait();
        let report = Command::new("perf")
            .args([
                "report",
                "--no-children",
                "--sort",
                "symbol",
                "--stdio",
                "--percent-limit",
                "0.5",
                "-i",
            ])
            .arg(&self.data)
            .output();
        let text = match report {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
            Ok(out) => {
                crate::log(format!(
                    "perf report failed for {}: {}",
                    self.name,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                return;
            }
            Err(e) => {
                crate::log(format!("perf report could not run for {}: {e}", self.name));
                return;
            }
        };
        let path = self.data.with_extension("txt");
        if let Err(e) = std::fs::write(&path, &text) {
            crate::log(format!("cannot write {}: {e}", path.display()));
        }
        // perf pads each line to a width of its own and ends it with two empty columns ("-"):
        // both are dropped.
        let top: Vec<&str> = text
            .lines()
            .map(|l| l.trim_end_matches([' ', '-']))
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .take(TOP)
            .collect();
        crate::log(format!(
            "profile of {} (self time; all of it in {}):\n{}",
            self.name,
            path.display(),
            top.join("\n")
        ));
    }
}

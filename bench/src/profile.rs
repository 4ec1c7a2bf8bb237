//! `--perf DIR`: each tickflow service run is sampled with `perf record` (its own process, from
//! its `/readyz` to the end of the measured interval), and its top functions by self time are
//! written to `DIR/<name>.txt` and printed, with its share per thread (the operator's task
//! against librdkafka's own threads). With `--perf-callers` the samples carry their call stacks
//! (DWARF unwinding: costs more CPU while sampled) and `DIR/<name>.callers.txt` gives each
//! function's time with everything it calls.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// Where profiles go; unset: nothing is profiled.
pub static DIR: OnceLock<PathBuf> = OnceLock::new();

/// Whether samples carry call stacks (`--perf-callers`).
pub static CALLERS: OnceLock<bool> = OnceLock::new();

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
    let mut record = Command::new("perf");
    record.args(["record", "-F", "499", "-q", "-p", &pid.to_string()]);
    if CALLERS.get().copied().unwrap_or(false) {
        record.args(["--call-graph", "dwarf,16384"]);
    }
    let started = record
        .arg("-o")
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
    /// Stops sampling and reports the top functions by self time, the share per thread and,
    /// with `--perf-callers`, each function's time with its callees.
    pub fn finish(mut self) {
        // perf writes its data on SIGINT; it is our child, stopped by its own pid.
        let _ = Command::new("kill")
            .args(["-INT", &self.perf.id().to_string()])
            .status();
        let _ = self.perf.wait();
        let Some(text) = self.report(
            "txt",
            &[
                "--no-children",
                "-g",
                "none",
                "--sort",
                "symbol",
                "--percent-limit",
                "0.5",
            ],
        ) else {
            return;
        };
        let threads = self
            .report(
                "threads.txt",
                &["--no-children", "-g", "none", "--sort", "comm"],
            )
            .unwrap_or_default();
        if CALLERS.get().copied().unwrap_or(false) {
            let _ = self.report(
                "callers.txt",
                &[
                    "--children",
                    "-g",
                    "caller,0.5,callee,function,percent",
                    "--sort",
                    "symbol",
                    "--percent-limit",
                    "2",
                ],
            );
        }
        crate::log(format!(
            "profile of {} (self time; all of it in {}):\n{}\nper thread:\n{}",
            self.name,
            self.data.with_extension("txt").display(),
            top(&text, TOP),
            top(&threads, TOP)
        ));
    }

    /// Runs `perf report` with `options` on the samples and writes its output beside them with
    /// extension `extension`.
    fn report(&self, extension: &str, options: &[&str]) -> Option<String> {
        let report = Command::new("perf")
            .arg("report")
            .args(options)
            .args(["--stdio", "-i"])
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
                return None;
            }
            Err(e) => {
                crate::log(format!("perf report could not run for {}: {e}", self.name));
                return None;
            }
        };
        let path = self.data.with_extension(extension);
        if let Err(e) = std::fs::write(&path, &text) {
            crate::log(format!("cannot write {}: {e}", path.display()));
        }
        Some(text)
    }
}

/// The first `n` rows of a `perf report`. perf pads each line to a width of its own and ends it
/// with two empty columns ("-"): both are dropped.
fn top(text: &str, n: usize) -> String {
    text.lines()
        .map(|l| l.trim_end_matches([' ', '-']))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .take(n)
        .collect::<Vec<_>>()
        .join("\n")
}

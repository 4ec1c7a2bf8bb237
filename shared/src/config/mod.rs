//! Layered configuration: built-in defaults (serde defaults of each struct), then a TOML file
//! (`--config path`), then environment variables `TICKFLOW_<SECTION>__<KEY>` (double underscore
//! between levels, e.g. `TICKFLOW_KAFKA__BOOTSTRAP_SERVERS`).
//!
//! Unknown and ill-typed keys are refused with a message that names the key and where it was set
//! (the file, or the environment variable). Only variables with a `__` after the prefix are read,
//! so `TICKFLOW_STACK_HOME` and the like, used by scripts, never reach a service's config.

mod sections;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use sections::*;

use crate::error::{Error, Result};

/// Prefix of the environment variables that override configuration.
pub const ENV_PREFIX: &str = "TICKFLOW_";
/// Separator between levels in those variables.
pub const ENV_SEPARATOR: &str = "__";

/// Loads `T` from the file (if any) and the process environment.
pub fn load<T: DeserializeOwned>(file: Option<&Path>) -> Result<T> {
    load_from(file, std::env::vars())
}

/// Loads `T` from the file (if any) and the given environment (for tests).
pub fn load_from<T: DeserializeOwned>(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T> {
    let overrides = env_overrides(env);
    let mut builder = config::Config::builder();
    if let Some(path) = file {
        if !path.is_file() {
            return Err(Error::ConfigFile {
                path: path.to_path_buf(),
                message: "no such file".into(),
            });
        }
        builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
    }
    let env_map: config::Map<String, String> = overrides
        .iter()
        .map(|o| (o.variable.clone(), o.value.clone()))
        .collect();
    builder = builder.add_source(
        config::Environment::with_prefix(ENV_PREFIX.trim_end_matches('_'))
            .prefix_separator("_")
            .separator(ENV_SEPARATOR)
            .try_parsing(true)
            .source(Some(env_map)),
    );
    let layered = builder.build().map_err(|e| match file {
        Some(path) => Error::ConfigFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        },
        None => Error::Config(e.to_string()),
    })?;
    serde_path_to_error::deserialize::<_, T>(layered).map_err(|e| explain(e, file, &overrides))
}

/// One `TICKFLOW_A__B` variable and the dotted key it sets.
#[derive(Debug, Clone)]
struct EnvOverride {
    variable: String,
    key: String,
    value: String,
}

fn env_overrides(env: impl IntoIterator<Item = (String, String)>) -> Vec<EnvOverride> {
    env.into_iter()
        .filter_map(|(variable, value)| {
            let rest = variable.strip_prefix(ENV_PREFIX)?;
            if !rest.contains(ENV_SEPARATOR) {
                return None;
            }
            let key = rest.to_lowercase().replace(ENV_SEPARATOR, ".");
            Some(EnvOverride {
                variable,
                key,
                value,
            })
        })
        .collect()
}

/// Turns a deserialization error into one that names the full key and where it was set.
fn explain(
    error: serde_path_to_error::Error<config::ConfigError>,
    file: Option<&Path>,
    overrides: &[EnvOverride],
) -> Error {
    let path = error.path().to_string();
    let inner = error.into_inner().to_string();
    // For an unknown field the path may stop at the parent; the key then ends with the field.
    let key = match inner
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
    {
        Some(field) if path == "." || path.is_empty() => field.to_string(),
        Some(field) if path != field && !path.ends_with(&format!(".{field}")) => {
            format!("{path}.{field}")
        }
        _ => path,
    };
    let origin = match overrides.iter().find(|o| {
        o.key == key
            || key.starts_with(&format!("{}.", o.key))
            || o.key.starts_with(&format!("{key}."))
    }) {
        Some(o) => format!("environment variable {}", o.variable),
        None => match file {
            Some(path) => format!("file {}", path.display()),
            None => "built-in defaults".to_string(),
        },
    };
    Error::Config(format!("key `{key}` (set in {origin}): {inner}"))
}

/// Collects what is wrong with a configuration, each problem naming its key.
#[derive(Debug, Default)]
pub struct Problems(Vec<String>);

impl Problems {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a problem with `key` when `ok` is false.
    pub fn check(&mut self, ok: bool, key: &str, message: impl std::fmt::Display) {
        if !ok {
            self.0.push(format!("`{key}`: {message}"));
        }
    }

    pub fn push(&mut self, key: &str, message: impl std::fmt::Display) {
        self.0.push(format!("`{key}`: {message}"));
    }

    /// `Ok` when there is no problem, else one error listing them all.
    pub fn into_result(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "invalid configuration:\n  - {}",
                self.0.join("\n  - ")
            )))
        }
    }
}

/// Implemented by every service's configuration root.
pub trait Validate {
    fn validate(&self, problems: &mut Problems);

    fn validated(self) -> Result<Self>
    where
        Self: Sized,
    {
        let mut problems = Problems::new();
        self.validate(&mut problems);
        problems.into_result().map(|()| self)
    }
}

/// Where a service's config came from, for its start-up log line.
pub fn describe_sources(file: Option<&Path>) -> BTreeMap<&'static str, String> {
    let mut sources = BTreeMap::new();
    sources.insert(
        "file",
        file.map(|p| p.display().to_string())
            .unwrap_or_else(|| "(none)".into()),
    );
    let vars: Vec<String> = env_overrides(std::env::vars())
        .into_iter()
        .map(|o| o.variable)
        .collect();
    sources.insert("env", vars.join(","));
    sources
}

/// A path given on the command line or by `TICKFLOW_CONFIG`.
pub fn config_path_from_env() -> Option<PathBuf> {
    std::env::var_os("TICKFLOW_CONFIG").map(PathBuf::from)
}

#[cfg(test)]
mod tests;

//! Errors from loading configuration.

use std::path::{Path, PathBuf};

/// Why a configuration could not be loaded. Each variant names where the
/// problem is, so an operator can fix the file without guessing.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The file that was read.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The TOML did not parse or did not match the schema.
    #[error("invalid config in {origin}: {message}")]
    Parse {
        /// File name or `<string>`.
        origin: String,
        /// What toml/serde said, with line and column.
        message: String,
    },
    /// The TOML parsed but a value is out of range or inconsistent.
    #[error("invalid config value `{field}`{location}: {reason}", location = match .file {
        Some(path) => format!(" in {}", path.display()),
        None => String::new(),
    })]
    Invalid {
        /// Full TOML path of the offending field, e.g.
        /// `relay.hold_interval` (`relay.server` in an appliance, `server`
        /// in a relay-client file).
        field: String,
        /// What is wrong and what would be right.
        reason: String,
        /// The file the value came from, when it was loaded from one.
        file: Option<PathBuf>,
    },
}

impl ConfigError {
    /// Names `path` as the file an [`ConfigError::Invalid`] value came
    /// from (unless one is already named); other variants name their
    /// origin already and are returned as they are.
    #[must_use]
    pub fn in_file(self, path: &Path) -> Self {
        match self {
            ConfigError::Invalid {
                field,
                reason,
                file: None,
            } => ConfigError::Invalid {
                field,
                reason,
                file: Some(path.to_owned()),
            },
            other => other,
        }
    }
}

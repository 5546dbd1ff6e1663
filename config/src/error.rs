//! Errors from loading configuration.

use std::path::PathBuf;

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
    #[error("invalid config value `{field}`: {reason}")]
    Invalid {
        /// Dotted path of the offending field, e.g. `relay.hold_interval`.
        field: &'static str,
        /// What is wrong and what would be right.
        reason: String,
    },
}

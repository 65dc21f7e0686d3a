use std::fmt;
use std::path::PathBuf;

/// Where in a config file something was found: `file:line:col`, 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// Converts a byte offset in `text` to a line and column (columns count
    /// characters, not bytes).
    pub fn from_offset(file: &str, text: &str, offset: usize) -> Location {
        let offset = offset.min(text.len());
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = text[line_start..offset].chars().count() + 1;
        Location {
            file: file.to_string(),
            line,
            column,
        }
    }

    pub(crate) fn file_only(file: &str) -> Location {
        Location {
            file: file.to_string(),
            line: 1,
            column: 1,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{}: cannot read config file: {source} (check the path given with -c)", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid switchyard configuration.
    #[error("{location}: {message}")]
    Invalid { location: Location, message: String },
}

impl ConfigError {
    /// The location of the error, when it has one.
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfigError::Invalid { location, .. } => Some(location),
            ConfigError::Read { .. } => None,
        }
    }
}

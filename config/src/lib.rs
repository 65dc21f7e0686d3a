//! switchyard-config owns the TOML configuration of switchyard: the schema with its
//! defaults, `${ENV}` interpolation of string values, and validation. Every error
//! names `file:line:col`, what was wrong and what was expected. It reads the
//! config file and the environment, and does no other I/O: checking that a
//! certificate file can be opened is the listener's job.
#![forbid(unsafe_code)]

mod check;
mod error;
mod interpolate;
mod schema;
mod values;

pub use error::{ConfigError, Location};
pub use interpolate::interpolate;
pub use schema::*;
pub use values::{format_duration, parse_duration, percent_to_basis_points};

use std::path::{Path, PathBuf};

impl Config {
    /// Reads and validates the config file at `path`.
    ///
    /// Relative paths inside the file (TLS certificates, state file, migrations)
    /// are resolved against the directory that holds the config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::parse(&text, &path.display().to_string())?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        config.resolve_paths(&base);
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates config text. `origin` names the text in errors
    /// (usually the file path). Paths are left as written.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| check::error_of(text, origin, &e))?;
        match check::clashes(&config, text, origin).into_iter().next() {
            Some(e) => Err(e),
            None => Ok(config),
        }
    }

    /// Reads and validates the file at `path`, reporting every error it
    /// holds (each with its `file:line:col`), not only the first, and the
    /// mistakes that would only show at run time (two listeners on one
    /// address).
    pub fn load_all(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            vec![ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }]
        })?;
        let origin = path.display().to_string();
        let mut config = Config::parse_all(&text, &origin)?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        config.resolve_paths(&base);
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// [`Config::parse`], reporting every error (see [`Config::load_all`]).
    pub fn parse_all(text: &str, origin: &str) -> Result<Config, Vec<ConfigError>> {
        match toml::from_str::<Config>(text).map_err(|e| check::error_of(text, origin, &e)) {
            Ok(c) => {
                let clashes = check::clashes(&c, text, origin);
                if clashes.is_empty() {
                    Ok(c)
                } else {
                    Err(clashes)
                }
            }
            Err(first) => {
                let mut all = check::every_error(text, origin);
                if all.is_empty() {
                    all.push(first);
                }
                Err(all)
            }
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !base.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        if let Some(tls) = self.proxy.tls.as_mut() {
            fix(&mut tls.cert);
            fix(&mut tls.key);
        }
        if let Some(tls) = self.admin.tls.as_mut() {
            fix(&mut tls.cert);
            fix(&mut tls.key);
        }
        fix(&mut self.state.path);
        if let Some(db) = self.database.as_mut() {
            fix(&mut db.migrations);
        }
        if let Some(ca) = self.webhooks.ca_file.as_mut() {
            fix(ca);
        }
        for pool in [&mut self.pools.blue, &mut self.pools.green] {
            if let Some(tls) = pool.tls.as_mut() {
                fix(&mut tls.ca);
            }
        }
    }
}

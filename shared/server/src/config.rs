//! A server's configuration in layers: its defaults, then a TOML file, then environment variables and flags.
//!
//! A server declares its settings once, as a `Config` struct with `#[serde(default, deny_unknown_fields)]`, and its
//! flags once, as a clap struct whose fields are `Option`s (or `bool` switches) with the setting's name or a
//! `#[serde(rename)]`, skipped when not given. [`layered`] serialises the flags given, lays them over the file's
//! keys and reads the result as the `Config`: no field is copied by hand, and a flag that names no setting is
//! refused like a wrong key in the file.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has a key or value the server does not take.
    #[error("the configuration file {path} is not valid: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: toml::de::Error,
    },
    /// The flags and environment variables, laid over the file, do not make a configuration.
    #[error("the settings given are not valid: {source}")]
    Flags {
        /// Why.
        #[source]
        source: toml::de::Error,
    },
    /// The flags could not be read as settings (a server's bug, not the user's).
    #[error("the flags cannot be read as settings: {0}")]
    Overrides(#[source] toml::ser::Error),
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    text.parse::<toml::Table>()
        .map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })
}

/// The defaults of `C`, then the file's keys, then `overrides` (the flags and environment variables given).
pub fn layered<C: DeserializeOwned>(
    file: Option<&Path>,
    overrides: &impl Serialize,
) -> Result<C, ConfigError> {
    let mut table = match file {
        Some(p) => {
            let table = read_table(p)?;
            // The file alone must be valid, so that its own mistakes are named as the file's.
            table
                .clone()
                .try_into::<C>()
                .map_err(|source| ConfigError::Parse {
                    path: p.into(),
                    source,
                })?;
            table
        }
        None => toml::Table::new(),
    };
    let given = toml::Table::try_from(overrides).map_err(ConfigError::Overrides)?;
    table.extend(given);
    table
        .try_into()
        .map_err(|source| ConfigError::Flags { source })
}

/// A configuration that checks its own ranges.
pub trait Validate {
    /// Checks ranges and combinations.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// [`layered`], then [`Validate::validate`]: a server's configuration from its file and flags, ready to use.
pub fn load<C: DeserializeOwned + Validate>(
    file: Option<&Path>,
    overrides: &impl Serialize,
) -> Result<C, ConfigError> {
    let c: C = layered(file, overrides)?;
    c.validate()?;
    Ok(c)
}

/// For `#[serde(skip_serializing_if)]` on a switch: a switch not given is not an override.
pub fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Config {
        port: u16,
        name: String,
        dht: bool,
        seeds: Vec<String>,
    }

    impl Default for Config {
        fn default() -> Self {
            Self {
                port: 1,
                name: "default".into(),
                dht: true,
                seeds: vec!["a".into()],
            }
        }
    }

    #[derive(Default, Serialize)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        #[serde(rename = "dht", skip_serializing_if = "Option::is_none")]
        no_dht: Option<bool>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        seeds: Vec<String>,
    }

    #[test]
    fn defaults_then_file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "port = 2\nname = \"file\"\n").unwrap();
        let none: Config = layered(None, &Flags::default()).unwrap();
        assert_eq!(none, Config::default());
        let from_file: Config = layered(Some(&file), &Flags::default()).unwrap();
        assert_eq!((from_file.port, from_file.name.as_str()), (2, "file"));
        let flags = Flags {
            port: Some(3),
            no_dht: Some(false),
            seeds: vec!["b".into()],
        };
        let all: Config = layered(Some(&file), &flags).unwrap();
        assert_eq!(
            all,
            Config {
                port: 3,
                name: "file".into(),
                dht: false,
                seeds: vec!["b".into()]
            }
        );
    }

    #[test]
    fn mistakes_name_their_layer() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "prot = 2\n").unwrap();
        let e = layered::<Config>(Some(&file), &Flags::default()).unwrap_err();
        assert!(
            matches!(e, ConfigError::Parse { .. }) && e.to_string().contains("c.toml"),
            "{e}"
        );
        let e =
            layered::<Config>(Some(&dir.path().join("none.toml")), &Flags::default()).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
        #[derive(Serialize)]
        struct Wrong {
            colour: &'static str,
        }
        let e = layered::<Config>(None, &Wrong { colour: "red" }).unwrap_err();
        assert!(
            matches!(e, ConfigError::Flags { .. }) && e.to_string().contains("colour"),
            "{e}"
        );
    }
}

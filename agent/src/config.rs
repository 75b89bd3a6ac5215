//! The agent's TOML configuration.
//!
//! This first version reads the `[db]` section the store needs; the other
//! sections of the reference (`[gossip]`, `[api]`, `[admin]`, `[telemetry]`,
//! `[log]`, `[consul]`) are accepted so the reference's config files load,
//! and are given meaning by the agent, cluster and discovery work that
//! follows. Unknown sections and unknown `[db]` keys are errors naming the
//! file and the key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the agent looks when `-c` is not given.
pub(crate) const DEFAULT_CONFIG_PATH: &str = "/etc/corrosion/config.toml";

/// The embedded default used when no config file exists: data under
/// `./corrosion-data`, schema files from `./corrosion-data/schema`.
pub(crate) const EMBEDDED_DEFAULT: &str = r#"
[db]
path = "./corrosion-data/state.db"
schema_paths = ["./corrosion-data/schema"]

[gossip]
addr = "127.0.0.1:8787"
plaintext = true

[api]
addr = "127.0.0.1:8080"

[admin]
path = "./corrosion-data/admin.sock"
"#;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[expect(
    dead_code,
    reason = "sections other than [db] are accepted now and used by later features"
)]
pub(crate) struct Config {
    pub db: DbConfig,
    pub gossip: Option<toml::Table>,
    pub api: Option<toml::Table>,
    pub admin: Option<toml::Table>,
    pub telemetry: Option<toml::Table>,
    pub log: Option<toml::Table>,
    pub consul: Option<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DbConfig {
    /// Path of the SQLite database.
    pub path: PathBuf,
    /// Schema files or directories of `.sql` files.
    #[serde(default)]
    pub schema_paths: Vec<PathBuf>,
}

/// Where a loaded config came from.
pub(crate) enum Source {
    File(PathBuf),
    Embedded,
}

impl Config {
    /// Parses `text`; errors name `origin` and the offending key.
    pub(crate) fn parse(text: &str, origin: &str) -> anyhow::Result<Config> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))
    }

    /// Loads `path`; when it is the default path and does not exist, falls
    /// back to the embedded default.
    pub(crate) fn load(path: &Path, explicit: bool) -> anyhow::Result<(Config, Source)> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok((
                Config::parse(&text, &path.display().to_string())?,
                Source::File(path.to_path_buf()),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok((
                Config::parse(EMBEDDED_DEFAULT, "embedded default config")?,
                Source::Embedded,
            )),
            Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses() {
        let c = Config::parse(EMBEDDED_DEFAULT, "embedded").unwrap();
        assert_eq!(c.db.path, PathBuf::from("./corrosion-data/state.db"));
    }

    #[test]
    fn reference_quick_start_config_parses() {
        let c = Config::parse(
            r#"
[db]
path = "/var/lib/corrosion/state.db"
schema_paths = ["/etc/corrosion/schema"]
[gossip]
addr = "[::]:8787" # the address we bind to
external_addr = "[::1]:8787" # the address we advertise as
plaintext = true
[api]
addr = "127.0.0.1:8080"
[admin]
path = "/var/run/corrosion/admin.sock"
"#,
            "quick start",
        )
        .unwrap();
        assert_eq!(c.db.schema_paths, [PathBuf::from("/etc/corrosion/schema")]);
    }

    #[test]
    fn unknown_keys_name_file_and_key() {
        let e = Config::parse("[db]\npath = 'x'\nschema_path = []\n", "my.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("my.toml") && e.contains("schema_path"), "{e}");
        let e = Config::parse("[db]\npath = 'x'\n[gosip]\n", "my.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("gosip"), "{e}");
        let e = Config::parse("[gossip]\n", "my.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("db"), "{e}");
    }
}

//! The daemon's configuration file (`$XDG_CONFIG_HOME/sqlrs/config.yaml`):
//! every key is optional, a missing file means all defaults.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub snapshot: SnapshotConfig,
    pub runtime: RuntimeConfig,
    pub dbms: DbmsConfig,
    pub jobs: JobsConfig,
    pub liquibase: LiquibaseConfig,
    pub pool: PoolConfig,
    pub instances: InstancesConfig,
    pub builds: BuildsConfig,
    pub cache: CacheConfig,
}

impl Config {
    /// The Docker image for requests that name none: `dbms.image` (the
    /// reference tool's key) wins over `runtime.docker.image`.
    pub fn docker_image(&self) -> &str {
        self.dbms
            .image
            .as_deref()
            .unwrap_or(&self.runtime.docker.image)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DbmsConfig {
    pub image: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    /// `auto` | `btrfs` | `reflink` | `copy`.
    pub backend: String,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            backend: "auto".into(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Which runtime serves requests that name no image.
    pub kind: RuntimeKind,
    pub native: NativeSection,
    pub docker: DockerSection,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Docker when a Docker daemon answers and the image is there, else native.
    #[default]
    Auto,
    Native,
    Docker,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerSection {
    /// Docker endpoint; else `DOCKER_HOST`, else the default socket.
    pub host: Option<String>,
    /// Image for requests that name none.
    pub image: String,
    /// `host` (default: the server listens on 127.0.0.1 in the host's
    /// network) or `bridge` (its port published on 127.0.0.1).
    pub network: crate::runtime::docker::Network,
}

impl Default for DockerSection {
    fn default() -> Self {
        Self {
            host: None,
            image: "postgres:17".into(),
            network: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LiquibaseConfig {
    /// The Liquibase launcher; `SQLRS_LIQUIBASE` wins over it, `PATH` is
    /// searched when neither is set.
    pub exec: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NativeSection {
    /// Directory holding `initdb`, `postgres` and `psql`.
    pub bin_dir: Option<PathBuf>,
    /// Account the servers run as when the daemon runs as root.
    pub server_user: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Finished jobs kept in the index; older ones are dropped.
    pub keep: usize,
    /// Events kept per job.
    pub max_events: usize,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            keep: 200,
            max_events: 2000,
        }
    }
}

/// A duration written the human way (`90s`, `10m`, `2h`, `1h 30m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub std::time::Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "{text:?} is not a duration ({e}); write e.g. 90s, 10m or 2h"
                ))
            })
    }
}

/// The warm pool: pre-started instances of hot states.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Warm instances kept per hot state; 0 turns the pool off.
    pub per_state: u32,
    /// Memory the warm instances' servers may use together, in MiB.
    pub memory_budget_mib: u64,
    /// A state not handed out for this long is no longer hot (the head of a
    /// watched alias stays hot while it is watched).
    pub idle: HumanDuration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            per_state: 1,
            memory_budget_mib: 1024,
            idle: HumanDuration(std::time::Duration::from_secs(600)),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstancesConfig {
    /// Time to live of instances whose prepare names none; absent: forever.
    pub ttl: Option<HumanDuration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuildsConfig {
    /// Builds that run at once; more wait (interactive prepares first).
    pub max_concurrent: usize,
}

impl Default for BuildsConfig {
    fn default() -> Self {
        Self { max_concurrent: 2 }
    }
}

/// A size written the human way (`20GiB`, `500 MB`, `1073741824`): KB, MB,
/// GB are powers of 1000, KiB, MiB, GiB powers of 1024.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanBytes(pub u64);

impl<'de> Deserialize<'de> for HumanBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(HumanBytes(n)),
            Raw::Text(text) => text
                .trim()
                .parse::<bytesize::ByteSize>()
                .map(|b| HumanBytes(b.as_u64()))
                .map_err(|e| {
                    serde::de::Error::custom(format!(
                        "{text:?} is not a size ({e}); write e.g. 20GiB, 500MB or a number of bytes"
                    ))
                }),
        }
    }
}

/// How much the state cache may hold and how it is trimmed (docs/user-guide.md, "Cache limits").
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// The most the states and stored inputs may take together, counted
    /// with blocks shared through copy-on-write once; absent: no limit but
    /// the free-space reserve.
    pub max_bytes: Option<HumanBytes>,
    /// Free space kept on the store's filesystem.
    pub reserve_bytes: HumanBytes,
    /// Eviction starts above this share of `max_bytes`
    pub high_watermark: f64,
    /// and stops at this share.
    pub low_watermark: f64,
    /// States younger than this are never evicted.
    pub min_age: HumanDuration,
    /// How often the cache is checked besides before each build step and
    /// after each snapshot.
    pub check_interval: HumanDuration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_bytes: None,
            reserve_bytes: HumanBytes(1 << 30),
            high_watermark: 0.9,
            low_watermark: 0.8,
            min_age: HumanDuration(std::time::Duration::from_secs(600)),
            check_interval: HumanDuration(std::time::Duration::from_secs(60)),
        }
    }
}

impl CacheConfig {
    fn check(&self) -> Result<(), String> {
        let (low, high) = (self.low_watermark, self.high_watermark);
        if !(0.0 < low && low < high && high <= 1.0) {
            return Err(format!(
                "cache.low_watermark ({low}) and cache.high_watermark ({high}) must satisfy 0 < low < high <= 1, e.g. 0.8 and 0.9"
            ));
        }
        if self.max_bytes.is_some_and(|m| m.0 == 0) {
            return Err(
                "cache.max_bytes is 0: give a size such as 20GiB, or remove the key for no limit"
                    .into(),
            );
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {message}; fix the file or remove the key to use the default", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// Loads `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let config = Self::parse(&text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.to_string(),
            }
        })?;
        config
            .cache
            .check()
            .map_err(|message| ConfigError::Invalid {
                path: path.to_owned(),
                message,
            })?;
        Ok(config)
    }

    fn parse(text: &str) -> Result<Self, serde_norway::Error> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_norway::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("", Ok("auto")),
            ("snapshot:\n  backend: copy\n", Ok("copy")),
            (
                "runtime:\n  native:\n    bin_dir: /usr/lib/postgresql/15/bin\n",
                Ok("auto"),
            ),
            ("snapshot:\n  backnd: copy\n", Err("unknown field `backnd`")),
            (
                "runtime:\n  kind: podman\n",
                Err("unknown variant `podman`"),
            ),
            (
                "runtime:\n  kind: docker\n  docker:\n    image: sqlrs/postgres:15\n",
                Ok("auto"),
            ),
            ("snapshot: [\n", Err("")),
            ("liquibase:\n  exec: /opt/liquibase/liquibase\n", Ok("auto")),
            ("liquibase:\n  path: /opt/lb\n", Err("unknown field `path`")),
            ("pool:\n  per_state: 2\n  idle: 5m\n", Ok("auto")),
            ("pool:\n  idle: soon\n", Err("write e.g. 90s")),
            ("instances:\n  ttl: 2h\n", Ok("auto")),
            ("builds:\n  max_concurrent: 4\n", Ok("auto")),
            (
                "cache:\n  max_bytes: 20GiB\n  reserve_bytes: 500 MB\n  min_age: 1m\n",
                Ok("auto"),
            ),
            ("cache:\n  max_bytes: 1048576\n", Ok("auto")),
            ("cache:\n  max_bytes: lots\n", Err("write e.g. 20GiB")),
        ];
        for (text, want) in cases {
            match (Config::parse(text), want) {
                (Ok(c), Ok(backend)) => assert_eq!(c.snapshot.backend, *backend, "{text}"),
                (Err(e), Err(frag)) => assert!(e.to_string().contains(frag), "{text}: {e}"),
                (got, _) => panic!("{text}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn cache_sizes_and_watermarks() {
        let c = Config::parse("cache:\n  max_bytes: 2GiB\n  reserve_bytes: 500MB\n").unwrap();
        assert_eq!(c.cache.max_bytes, Some(HumanBytes(2 << 30)));
        assert_eq!(c.cache.reserve_bytes, HumanBytes(500_000_000));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        for bad in [
            "cache:\n  low_watermark: 0.95\n",
            "cache:\n  high_watermark: 1.5\n",
            "cache:\n  max_bytes: 0\n",
        ] {
            std::fs::write(&path, bad).unwrap();
            let msg = Config::load(&path).unwrap_err().to_string();
            assert!(
                msg.contains("config.yaml") && msg.contains("cache."),
                "{bad}: {msg}"
            );
        }
    }

    #[test]
    fn docker_image_precedence() {
        let cases = [
            ("", "postgres:17"),
            ("runtime:\n  docker:\n    image: a:1\n", "a:1"),
            ("dbms:\n  image: b:2\n", "b:2"),
            (
                "dbms:\n  image: b:2\nruntime:\n  docker:\n    image: a:1\n",
                "b:2",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(Config::parse(text).unwrap().docker_image(), want, "{text}");
        }
    }

    #[test]
    fn parse_error_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "jobs:\n  keep: many\n").unwrap();
        let msg = Config::load(&path).unwrap_err().to_string();
        assert!(msg.contains("config.yaml:2:"), "{msg}");
        assert!(Config::load(&dir.path().join("absent.yaml")).is_ok());
    }
}

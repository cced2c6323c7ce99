//! `walvault.toml`: the daemon's configuration file, for running several databases in
//! one `replicate` process.
//!
//! Where it comes from, first found wins: `--config PATH`, the `WALVAULT_CONFIG`
//! environment variable, `./walvault.toml` in the working directory. A file named by the
//! first two must exist; the third is optional.
//!
//! ```toml
//! store = "s3://backups/prod"      # the default store of every database
//! metrics = "127.0.0.1:9090"       # Prometheus /metrics (optional)
//! log_level = "info"               # optional; also log_format = "json"
//! memory_budget = "64MiB"          # optional
//!
//! [[db]]
//! path = "app.db"                  # relative to this file's directory
//! max_lag = "500ms"                # any `replicate` option, by its flag's name
//! retain = "7d"
//!
//! [[db]]
//! path = "/var/lib/queue.db"
//! namespace = "queue"
//! store = "${QUEUE_STORE}"        # ${VAR} and ${VAR:-default} are expanded
//! ```
//!
//! Why these rules: relative paths are taken from the file's directory, so a config
//! means the same whatever directory the daemon starts in. Environment variables are
//! expanded line by line before parsing, so an error still names the line the user
//! wrote; an undefined variable without a default is an error, never an empty string
//! (an empty store URL would silently mean the default store). A bad file is one error
//! naming the file, the line and the field.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use walvault::{Error, InvalidInput, Result};

/// The default config file, looked for in the working directory.
pub const DEFAULT_FILE: &str = "walvault.toml";

/// A parsed and checked configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (for messages).
    pub file: PathBuf,
    /// The default store of every database (a URL or a directory, resolved).
    pub store: Option<String>,
    pub memory_budget: Option<usize>,
    /// Where to serve Prometheus metrics.
    pub metrics: Option<SocketAddr>,
    pub log_level: Option<String>,
    pub log_format: Option<LogFormat>,
    pub dbs: Vec<DbConfig>,
}

/// How log lines on stderr are formatted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// One `[[db]]` table.
#[derive(Debug, Clone, Default)]
pub struct DbConfig {
    pub path: PathBuf,
    pub namespace: Option<String>,
    pub store: Option<String>,
    pub options: DbOptions,
}

/// The per-database options of `replicate`; None where the file says nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DbOptions {
    pub max_lag: Option<Duration>,
    pub interval: Option<Duration>,
    pub seal_age: Option<Duration>,
    pub compact: Option<bool>,
    pub maintain_every: Option<Duration>,
    pub retain: Option<Duration>,
    pub grace: Option<Duration>,
    pub restore_if_missing: Option<bool>,
}

impl DbOptions {
    /// These options, with `over`'s where it has one.
    pub fn overridden_by(&self, over: &DbOptions) -> DbOptions {
        DbOptions {
            max_lag: over.max_lag.or(self.max_lag),
            interval: over.interval.or(self.interval),
            seal_age: over.seal_age.or(self.seal_age),
            compact: over.compact.or(self.compact),
            maintain_every: over.maintain_every.or(self.maintain_every),
            retain: over.retain.or(self.retain),
            grace: over.grace.or(self.grace),
            restore_if_missing: over.restore_if_missing.or(self.restore_if_missing),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    store: Option<String>,
    #[serde(default, deserialize_with = "size")]
    memory_budget: Option<usize>,
    #[serde(default, deserialize_with = "address")]
    metrics: Option<SocketAddr>,
    #[serde(default, deserialize_with = "log_level")]
    log_level: Option<String>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    db: Vec<RawDb>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDb {
    path: toml::Spanned<String>,
    namespace: Option<toml::Spanned<String>>,
    store: Option<String>,
    #[serde(default, deserialize_with = "lag")]
    max_lag: Option<Duration>,
    #[serde(default, deserialize_with = "lag")]
    interval: Option<Duration>,
    #[serde(default, deserialize_with = "lag")]
    seal_age: Option<Duration>,
    compact: Option<bool>,
    #[serde(default, deserialize_with = "lag")]
    maintain_every: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    retain: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    grace: Option<Duration>,
    restore_if_missing: Option<bool>,
}

/// Finds and reads the config file: `explicit` (`--config`), else `WALVAULT_CONFIG`,
/// else `./walvault.toml` if there is one. None when there is none.
pub fn load(explicit: Option<&Path>) -> Result<Option<Config>> {
    let env = std::env::var_os("WALVAULT_CONFIG").filter(|v| !v.is_empty());
    let named = explicit.map(Path::to_path_buf).or(env.map(PathBuf::from));
    let path = match named {
        Some(path) => path,
        None if Path::new(DEFAULT_FILE).is_file() => PathBuf::from(DEFAULT_FILE),
        None => return Ok(None),
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::io(format!("reading the config file {}", path.display()), e))?;
    parse(&path, &text, &|name| std::env::var(name).ok()).map(Some)
}

/// Parses `text`, the contents of `file`, expanding variables with `env`.
pub fn parse(file: &Path, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
    let expanded = expand(text, env).map_err(|(line, what)| bad(file, line, text, &what))?;
    let raw: RawConfig = toml::from_str(&expanded).map_err(|e| {
        let line = e.span().map_or(0, |s| line_of(&expanded, s.start));
        bad(file, line, &expanded, e.message())
    })?;
    let base = file.parent().unwrap_or(Path::new(""));
    if raw.store.as_deref().is_some_and(|s| s.trim().is_empty()) {
        // An empty store would quietly mean this file's directory.
        let line = expanded
            .lines()
            .position(|l| l.trim_start().starts_with("store"))
            .map_or(0, |i| i + 1);
        return Err(bad(
            file,
            line,
            &expanded,
            "store is empty (an unset variable?)",
        ));
    }
    let mut dbs = Vec::with_capacity(raw.db.len());
    let mut seen_paths = HashSet::new();
    let mut seen_names = HashSet::new();
    for db in raw.db {
        let line = line_of(&expanded, db.path.span().start);
        if db.path.get_ref().is_empty() {
            return Err(bad(file, line, &expanded, "db.path is empty"));
        }
        let path = relative_to(base, Path::new(db.path.get_ref()));
        if !seen_paths.insert(path.clone()) {
            let what = format!("db.path {} is listed twice", path.display());
            return Err(bad(file, line, &expanded, &what));
        }
        let namespace = match &db.namespace {
            Some(n) => {
                walvault::NamespaceName::new(n.get_ref()).map_err(|e| {
                    bad(
                        file,
                        line_of(&expanded, n.span().start),
                        &expanded,
                        &e.to_string(),
                    )
                })?;
                Some(n.get_ref().clone())
            }
            None => None,
        };
        if db.store.as_deref().is_some_and(|s| s.trim().is_empty()) {
            return Err(bad(
                file,
                line,
                &expanded,
                "db.store is empty (an unset variable?)",
            ));
        }
        let store = db.store.map(|s| store_relative_to(base, &s));
        let key = (
            store
                .clone()
                .or(raw.store.as_deref().map(|s| store_relative_to(base, s))),
            namespace.clone().unwrap_or_else(|| stem_of(&path)),
        );
        if !seen_names.insert(key.clone()) {
            let what = format!(
                "two databases replicate into namespace {} of the same store; give one a \
                 namespace of its own",
                key.1
            );
            return Err(bad(file, line, &expanded, &what));
        }
        dbs.push(DbConfig {
            path,
            namespace,
            store,
            options: DbOptions {
                max_lag: db.max_lag,
                interval: db.interval,
                seal_age: db.seal_age,
                compact: db.compact,
                maintain_every: db.maintain_every,
                retain: db.retain,
                grace: db.grace,
                restore_if_missing: db.restore_if_missing,
            },
        });
    }
    Ok(Config {
        file: file.to_path_buf(),
        store: raw.store.map(|s| store_relative_to(base, &s)),
        memory_budget: raw.memory_budget,
        metrics: raw.metrics,
        log_level: raw.log_level,
        log_format: raw.log_format,
        dbs,
    })
}

impl Config {
    /// The store of the database replicating into `namespace`, else the file's default
    /// store: what `restore --namespace N` and the other commands use without `--store`.
    pub fn store_for(&self, namespace: Option<&str>) -> Option<String> {
        let db = namespace.and_then(|n| {
            self.dbs
                .iter()
                .find(|db| db.namespace.clone().unwrap_or_else(|| stem_of(&db.path)) == n)
        });
        db.and_then(|db| db.store.clone())
            .or_else(|| self.store.clone())
    }
}

/// The file stem, as the default namespace (checked again when the daemon starts).
fn stem_of(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn relative_to(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() || base.as_os_str().is_empty() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// A store named by a bare directory is taken from the file's directory; URLs as given.
fn store_relative_to(base: &Path, store: &str) -> String {
    if store.contains("://") {
        store.to_string()
    } else {
        relative_to(base, Path::new(store))
            .to_string_lossy()
            .into_owned()
    }
}

/// Expands `${VAR}` and `${VAR:-default}` on every line that is not a comment. Errors
/// carry the (1-based) line.
fn expand(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> std::result::Result<String, (usize, String)> {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| (i + 1, "an unclosed ${ (variables are ${NAME})".to_string()))?;
            let (name, default) = match after[..end].split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (&after[..end], None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err((
                    i + 1,
                    format!("${{{}}} is not a variable name", &after[..end]),
                ));
            }
            let value = env(name)
                .or(default.map(str::to_string))
                .ok_or_else(|| (i + 1, format!("environment variable {name} is not set")))?;
            if value.contains('\n') {
                return Err((
                    i + 1,
                    format!("environment variable {name} holds a line break"),
                ));
            }
            out.push_str(&value);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

/// The 1-based line of byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |before| before.matches('\n').count())
        + 1
}

/// One error naming the file, the line (and quoting it) and what is wrong.
fn bad(file: &Path, line: usize, text: &str, what: &str) -> Error {
    let quoted = text
        .lines()
        .nth(line.saturating_sub(1))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| format!(" (`{l}`)"))
        .unwrap_or_default();
    let what = what.trim().replace('\n', " ");
    Error::from(InvalidInput::Config(format!(
        "{}, line {line}{quoted}: {what}",
        file.display()
    )))
}

/// A duration as `humantime` reads it, or what is wrong with it.
fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like 1s, 1h30m or 7d: {e}"))
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A lag or interval: at least [`walvault::MIN_MAX_LAG`], since shorter would spin.
fn lag<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    let parsed = parse_duration(&text).map_err(serde::de::Error::custom)?;
    if parsed < walvault::MIN_MAX_LAG {
        return Err(serde::de::Error::custom(format!(
            "{text} is shorter than the shortest allowed, 10ms"
        )));
    }
    Ok(Some(parsed))
}

fn size<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<usize>, D::Error> {
    let text = String::deserialize(d)?;
    crate::args::budget_size(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn address<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not an address like 127.0.0.1:9090: {e}"
        ))
    })
}

fn log_level<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    let text = String::deserialize(d)?;
    crate::logging::parse_filter(&text)
        .map(|_| Some(text.clone()))
        .map_err(|e| serde::de::Error::custom(format!("log_level {text:?} {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse_ok(text: &str) -> Config {
        parse(Path::new("conf/walvault.toml"), text, &no_env).unwrap()
    }

    fn parse_err(text: &str) -> String {
        parse(Path::new("conf/walvault.toml"), text, &no_env)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn three_databases_with_defaults_and_overrides() {
        let config = parse_ok(
            r#"
store = "backups"
metrics = "127.0.0.1:9090"
log_format = "json"

[[db]]
path = "app.db"
max_lag = "1.5s"

[[db]]
path = "/var/lib/queue.db"
namespace = "jobs"
retain = "1h30m"
compact = false

[[db]]
path = "data/users.db"
store = "s3://bucket/users"
restore_if_missing = true
"#,
        );
        assert_eq!(config.store.as_deref(), Some("conf/backups"));
        assert_eq!(config.metrics, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(config.log_format, Some(LogFormat::Json));
        let paths: Vec<_> = config.dbs.iter().map(|d| d.path.clone()).collect();
        assert_eq!(
            paths,
            [
                PathBuf::from("conf/app.db"),
                PathBuf::from("/var/lib/queue.db"),
                PathBuf::from("conf/data/users.db")
            ]
        );
        assert_eq!(
            config.dbs[0].options.max_lag,
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            config.dbs[1].options.retain,
            Some(Duration::from_secs(5400))
        );
        assert_eq!(config.dbs[1].options.compact, Some(false));
        assert_eq!(config.dbs[2].store.as_deref(), Some("s3://bucket/users"));
        assert_eq!(
            config.store_for(Some("users")).as_deref(),
            Some("s3://bucket/users")
        );
        assert_eq!(
            config.store_for(Some("jobs")).as_deref(),
            Some("conf/backups")
        );
        assert_eq!(config.store_for(None).as_deref(), Some("conf/backups"));
    }

    #[test]
    fn variables_are_expanded_and_missing_ones_named() {
        let env = |name: &str| (name == "BUCKET").then(|| "prod".to_string());
        let text = "store = \"s3://${BUCKET}/x\"\n# ${UNSET} in a comment is left alone\n[[db]]\npath = \"${DB:-app.db}\"\n";
        let config = parse(Path::new("w.toml"), text, &env).unwrap();
        assert_eq!(config.store.as_deref(), Some("s3://prod/x"));
        assert_eq!(config.dbs[0].path, PathBuf::from("app.db"));

        let e = parse(
            Path::new("w.toml"),
            "\n[[db]]\npath = \"${HOME_DB}\"\n",
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("w.toml, line 3") && e.contains("HOME_DB is not set"),
            "{e}"
        );
        let e = parse(Path::new("w.toml"), "store = \"${oops\"\n", &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("unclosed"), "{e}");
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_field() {
        let e = parse_err("[[db]]\npath = \"a.db\"\nmax_lag = \"fast\"\n");
        assert!(e.contains("conf/walvault.toml, line 3"), "{e}");
        assert!(
            e.contains("max_lag = \"fast\"") && e.contains("not a duration"),
            "{e}"
        );

        let e = parse_err("[[db]]\npath = \"a.db\"\nmax_lagg = \"1s\"\n");
        assert!(e.contains("line 3") && e.contains("max_lagg"), "{e}");

        let e = parse_err("[[db]]\npath = \"a.db\"\ninterval = \"0s\"\n");
        assert!(e.contains("line 3") && e.contains("shortest"), "{e}");

        let e = parse_err("metrics = \"localhost\"\n");
        assert!(e.contains("line 1") && e.contains("metrics"), "{e}");

        let e = parse_err("[[db]]\nnamespace = \"x\"\n");
        assert!(e.contains("path"), "{e}");

        let e = parse_err("[[db]]\npath = \"a.db\"\n[[db]]\npath = \"other/a.db\"\n");
        assert!(e.contains("line 4") && e.contains("namespace a"), "{e}");

        let e = parse_err("[[db]]\npath = \"a.db\"\nnamespace = \"bad name!\"\n");
        assert!(e.contains("line 3"), "{e}");

        let e = parse_err("[[db]]\npath = \"a.db\"\n[[db]]\npath = \"a.db\"\nnamespace = \"b\"\n");
        assert!(e.contains("listed twice"), "{e}");

        let e = parse_err("log_level = \"loud=?\"\n");
        assert!(e.contains("line 1") && e.contains("not a level"), "{e}");
        let e = parse_err("log_level = \"loud\"\n");
        assert!(e.contains("line 1") && e.contains("not a level"), "{e}");

        let env = |_: &str| Some(String::new());
        let e = parse(Path::new("w.toml"), "store = \"${S}\"\n", &env).unwrap_err();
        assert!(e.to_string().contains("store is empty"), "{e}");

        // One store named two ways is one store.
        let e = parse_err(
            "store = \"s\"\n[[db]]\npath = \"a.db\"\n[[db]]\npath = \"x/a.db\"\nstore = \"s\"\n",
        );
        assert!(e.contains("namespace a"), "{e}");

        let e = parse_err("store = \n");
        assert!(e.contains("line 1"), "{e}");
    }
}

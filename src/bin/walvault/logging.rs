//! Log lines on stderr, through `tracing-subscriber`: the library's warnings (a store
//! outage and its recovery, a slow checkpoint) and, at `info` and below, what it does.
//!
//! Which events: `--log-level`, else `RUST_LOG`, else `WALVAULT_LOG` (the older name),
//! else the config file's `log_level`, else `warn`. Any of them takes a level (`info`)
//! or a filter (`walvault=debug,object_store=warn`). How they look: `--log-format`, else
//! the config file's `log_format`, else text; every line carries a UTC timestamp.
//! Command output (what was shipped, restored, listed) is not logging: it goes to
//! stdout whatever the level.

use tracing_subscriber::EnvFilter;
use walvault::{Error, InvalidInput, Result};

use crate::config::{Config, LogFormat};

/// Installs the subscriber. A filter from `--log-level` or the config file that does not
/// parse is an error naming where it came from; one from the environment is a warning.
pub fn init(level: Option<&str>, format: Option<LogFormat>, config: Option<&Config>) -> Result<()> {
    let (text, source) = choose_filter(level, config);
    let filter = match parse_filter(&text) {
        Ok(filter) => filter,
        // The environment may be the application's (under --exec, RUST_LOG often is):
        // a filter walvault cannot use there is not worth refusing to start.
        Err(e) if source.ends_with("LOG") => {
            eprintln!("walvault: warning: ignoring {source}={text:?}, which {e}; logging warnings");
            EnvFilter::new("warn")
        }
        Err(e) => {
            let what = format!("log level {text:?} ({source}) {e}");
            return Err(Error::from(InvalidInput::Config(what)));
        }
    };
    let format = format
        .or(config.and_then(|c| c.log_format))
        .unwrap_or(LogFormat::Text);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    // A subscriber set already (only in tests) is left as it is.
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    Ok(())
}

/// The levels a bare word may name. A bare word that is none of them would be taken by
/// `EnvFilter` as a target's name and silently log everything of that target: refused.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// `--log-level`: a level or a filter, checked when the arguments are parsed.
pub fn level_arg(text: &str) -> std::result::Result<String, String> {
    parse_filter(text).map(|_| text.to_string())
}

/// Parses a level or a filter (`walvault=debug,object_store=warn`); the error says what
/// is accepted.
pub fn parse_filter(text: &str) -> std::result::Result<EnvFilter, String> {
    let bare = !text.contains(['=', ',', '[', ':']);
    let accepted = "is not a level (error, warn, info, debug, trace, off) or a filter like \
                    walvault=debug";
    if bare && !LEVELS.contains(&text.trim().to_ascii_lowercase().as_str()) {
        return Err(accepted.to_string());
    }
    EnvFilter::try_new(text).map_err(|e| format!("{accepted}: {e}"))
}

/// The filter text and where it came from.
fn choose_filter(level: Option<&str>, config: Option<&Config>) -> (String, &'static str) {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if let Some(level) = level {
        return (level.to_string(), "--log-level");
    }
    if let Some(filter) = env("RUST_LOG") {
        return (filter, "RUST_LOG");
    }
    if let Some(filter) = env("WALVAULT_LOG") {
        return (filter, "WALVAULT_LOG");
    }
    if let Some(level) = config.and_then(|c| c.log_level.clone()) {
        return (level, "the config file's log_level");
    }
    ("warn".to_string(), "the default")
}

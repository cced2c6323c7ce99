//! `walvault`: the command line. Thin: parses arguments and calls the public library API.
//! Errors print one line (`walvault: error: ...`) and exit with status 1; bad arguments
//! exit with status 2. The library's warnings (a store outage and its recovery, a slow
//! checkpoint) go to stderr as timestamped log lines (`logging.rs`: `--log-level`,
//! `--log-format`, `RUST_LOG`).
//!
//! Results go to stdout through [`output::Output`] (lines, or JSON with the global
//! `--json`), which never panics when the reader of stdout went away.

mod args;
mod config;
mod demo;
mod history;
mod inspect;
mod logging;
mod maintain;
mod monitor;
mod output;
mod query;
mod replicate;
mod restore;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Durable WAL storage for SQLite: replicate, restore to any moment, follow.
#[derive(Debug, Parser)]
#[command(name = "walvault", version, about)]
struct Cli {
    /// Where segments are kept: a directory path, a file:// URL, or s3://bucket/prefix,
    /// gs://bucket/prefix, az://container/prefix (credentials from AWS_*, GOOGLE_*,
    /// AZURE_* environment variables). Default: the config file's store, else
    /// WALVAULT_STORE, else ./walvault-store. Only `replicate` creates a local store
    /// directory; other commands refuse one that does not exist.
    #[arg(long, global = true)]
    store: Option<String>,
    /// Print results as JSON (a stable, documented shape per command; fields are only
    /// ever added). Long-running commands print one JSON object per line per event.
    #[arg(long, global = true)]
    json: bool,
    /// The config file (default: WALVAULT_CONFIG, else ./walvault.toml if it exists).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<std::path::PathBuf>,
    /// What to log on stderr: error, warn (the default), info, debug, trace, or a
    /// filter such as `walvault=debug`. RUST_LOG is used when this is not given.
    #[arg(long, global = true, value_name = "LEVEL", value_parser = logging::level_arg)]
    log_level: Option<String>,
    /// How log lines look: text (the default) or json (one object per line).
    #[arg(long, global = true, value_name = "FORMAT")]
    log_format: Option<config::LogFormat>,
    /// Heap for the data buffers of any command (snapshot, shipping, restore, follow,
    /// compaction): 64MiB by default, at least 1MiB. Memory does not grow with the
    /// database beyond this and a few bytes per page.
    #[arg(long, global = true, value_name = "SIZE", value_parser = args::budget_size)]
    memory_budget: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Ship a SQLite database's committed transactions into the store.
    Replicate(replicate::Args),
    /// Restore a database as of the latest commit, a time or a frame number.
    Restore(restore::Args),
    /// List namespaces, or one namespace's segments.
    Ls(inspect::LsArgs),
    /// Summarize a namespace: durable frame number, segments, bytes, commit times.
    Info(inspect::InfoArgs),
    /// List a namespace's commits (frame, time, size, pages changed), oldest first.
    Log(history::LogArgs),
    /// Read and verify every segment of a namespace.
    Verify(inspect::VerifyArgs),
    /// Keep a local database file in step with a namespace.
    Follow(restore::FollowArgs),
    /// Merge runs of small segments so restores read few (see the compaction policy).
    Compact(maintain::CompactArgs),
    /// Drop history older than a retention window and delete unreferenced segments.
    Gc(maintain::GcArgs),
    /// Start a new namespace from another's history at a moment, sharing its segments.
    Fork(maintain::ForkArgs),
    /// Run SQL on a namespace as of the latest commit, a time or a frame, read straight
    /// from the store (no restore, no local copy).
    Query(query::Args),
    /// Replicate a demo database in phases, restore each phase by time and check it
    /// (under ./walvault-demo, its store there unless --store is given).
    Demo,
    /// What the running `replicate` daemons are doing for each database (exit status 3
    /// when one has none).
    Status(monitor::status::Args),
}

/// What every command needs besides its own arguments: the store flag and the config
/// file.
pub struct Context {
    pub store_flag: Option<String>,
    pub config: Option<config::Config>,
}

impl Context {
    /// The store to use (for `namespace`, when known): `--store`, else the config file's
    /// (the store of the database replicating into `namespace`, else its default store),
    /// else `WALVAULT_STORE`, else `./walvault-store` (see [`args::store_url`]).
    pub fn store_url(&self, namespace: Option<&str>) -> String {
        let named = self
            .store_flag
            .clone()
            .or_else(|| self.config.as_ref().and_then(|c| c.store_for(namespace)));
        args::store_url(named.as_deref())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match config::load(cli.config.as_deref()) {
        Ok(config) => config,
        // A command told its store needs nothing from the file: a file that does not
        // load (a variable set only for the daemon, say) is then a warning.
        Err(e) if cli.store.is_some() && cli.config.is_none() && cli.command.store_only() => {
            eprintln!("walvault: warning: not using the config file: {e}");
            None
        }
        Err(e) => return fail(&e.to_string()),
    };
    if let Err(e) = logging::init(cli.log_level.as_deref(), cli.log_format, config.as_ref()) {
        return fail(&e.to_string());
    }
    if let Command::Status(a) = &cli.command {
        // Asks local sockets: no store, no runtime.
        return monitor::status::run(a, config.as_ref(), output::Output::new(cli.json));
    }
    limit_malloc_arenas();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("starting the async runtime: {e}")),
    };
    let budget = cli
        .memory_budget
        .or(config.as_ref().and_then(|c| c.memory_budget));
    if let Some(bytes) = budget {
        if let Err(e) = walvault::set_memory_budget(bytes) {
            return fail(&e.to_string());
        }
    }
    let out = output::Output::new(cli.json);
    let context = Context {
        store_flag: cli.store,
        config,
    };
    let result = runtime.block_on(async {
        let command = match cli.command {
            Command::Demo => {
                return demo::run(context.store_flag.as_deref(), out)
                    .await
                    .map(|()| ExitCode::SUCCESS)
            }
            Command::Replicate(a) => return replicate::run(&context, a, out).await,
            Command::Query(a) => {
                let url = context.store_url(Some(&a.namespace));
                return query::run(&url, a, out).map(|()| ExitCode::SUCCESS);
            }
            command => command,
        };
        let url = context.store_url(command.namespace());
        // Only replicate creates a store; the others refuse a local one that is missing
        // (restore --if-replica-exists takes that as "no replica").
        let opened = match &command {
            Command::Restore(a) => match restore::without_store(a, &url, out) {
                Some(done) => return done.map(|()| ExitCode::SUCCESS),
                None => args::open_store_existing(&url)?,
            },
            _ => args::open_store_existing(&url)?,
        };
        match opened {
            args::Opened::Local(store) => run(store, command, out).await,
            args::Opened::Object(store) => run(store, command, out).await,
        }
        .map(|()| ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(e) => fail(&e.to_string()),
    }
}

async fn run<S: args::Store>(
    store: S,
    command: Command,
    out: output::Output,
) -> walvault::Result<()> {
    match command {
        Command::Restore(a) => restore::run(store, a, out).await,
        Command::Ls(a) => inspect::ls(store, a, out).await,
        Command::Info(a) => inspect::info(store, a, out).await,
        Command::Log(a) => history::log(store, a, out).await,
        Command::Verify(a) => inspect::verify(store, a, out).await,
        Command::Follow(a) => restore::follow(store, a, out).await,
        Command::Compact(a) => maintain::compact_cmd(store, a, out).await,
        Command::Gc(a) => maintain::gc_cmd(store, a, out).await,
        Command::Fork(a) => maintain::fork_cmd(store, a, out).await,
        Command::Replicate(_) | Command::Demo | Command::Status(_) | Command::Query(_) => {
            Err(walvault::Error::from(walvault::InvalidInput::Config(
                "this command does not open one store".into(),
            )))
        }
    }
}

impl Command {
    /// Whether the command needs nothing from the config file but a store (which
    /// `--store` may give instead).
    fn store_only(&self) -> bool {
        !matches!(self, Command::Replicate(_) | Command::Status(_))
    }

    /// The namespace the command works on, if it names one: its store may be the
    /// config file's store for that database.
    fn namespace(&self) -> Option<&str> {
        match self {
            Command::Restore(a) => Some(&a.namespace),
            Command::Ls(a) => a.namespace.as_deref(),
            Command::Info(a) => Some(&a.namespace),
            Command::Log(a) => Some(&a.namespace),
            Command::Verify(a) => Some(&a.namespace),
            Command::Follow(a) => Some(&a.namespace),
            Command::Compact(a) => Some(&a.namespace),
            Command::Gc(a) => Some(&a.namespace),
            Command::Fork(a) => Some(&a.namespace),
            Command::Query(a) => Some(&a.namespace),
            Command::Replicate(_) | Command::Demo | Command::Status(_) => None,
        }
    }
}

/// glibc gives each thread that allocates its own arena and keeps the memory freed in it,
/// so buffers freed on one worker thread and allocated on another add up in the
/// resident set although the heap stays within the budget. Two arenas serve the runtime's
/// two workers and the blocking threads without that. A `MALLOC_ARENA_MAX` the user set
/// wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes the allocator's tuning; called before the runtime
        // starts its threads.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

fn fail(message: &str) -> ExitCode {
    // One line, whatever the error says.
    eprintln!("walvault: error: {}", message.replace('\n', " "));
    ExitCode::FAILURE
}

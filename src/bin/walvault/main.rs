//! `walvault`: the command line. Thin: parses arguments and calls the public library API.
//! Errors print one line (`walvault: error: ...`) and exit with status 1; bad arguments
//! exit with status 2. The library's warnings (a store outage and its recovery, a slow
//! checkpoint) go to stderr as timestamped log lines (`logging.rs`: `--log-level`,
//! `--log-format`, `RUST_LOG`).

mod args;
mod config;
mod demo;
mod history;
mod inspect;
mod logging;
mod maintain;
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
    /// WALVAULT_STORE, else ./walvault-store.
    #[arg(long, global = true)]
    store: Option<String>,
    /// The config file (default: WALVAULT_CONFIG, else ./walvault.toml if it exists).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<std::path::PathBuf>,
    /// What to log on stderr: error, warn (the default), info, debug, trace, or a
    /// filter such as `walvault=debug`. RUST_LOG is used when this is not given.
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    /// How log lines look: text (the default) or json (one object per line).
    #[arg(long, global = true, value_name = "FORMAT")]
    log_format: Option<config::LogFormat>,
    /// Heap for the data buffers of any command (snapshot, shipping, restore, follow,
    /// compaction): 64MiB by default, at least 1MiB. Memory does not grow with the
    /// database beyond this and a few bytes per page.
    #[arg(long, global = true, value_name = "SIZE", value_parser = args::byte_size)]
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
    /// Replicate a demo database in phases, restore each phase by time and check it.
    Demo,
}

/// What every command needs besides its own arguments: the store flag and the config
/// file.
pub struct Context {
    pub store_flag: Option<String>,
    pub config: Option<config::Config>,
}

/// The store when nothing names one.
const DEFAULT_STORE: &str = "./walvault-store";

impl Context {
    /// The store to use (for `namespace`, when known): `--store`, else the config file's
    /// (the store of the database replicating into `namespace`, else its default store),
    /// else `WALVAULT_STORE`, else `./walvault-store`.
    pub fn store_url(&self, namespace: Option<&str>) -> String {
        let env = || {
            std::env::var("WALVAULT_STORE")
                .ok()
                .filter(|s| !s.is_empty())
        };
        self.store_flag
            .clone()
            .or_else(|| self.config.as_ref().and_then(|c| c.store_for(namespace)))
            .or_else(env)
            .unwrap_or_else(|| DEFAULT_STORE.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => return fail(&e.to_string()),
    };
    if let Err(e) = logging::init(cli.log_level.as_deref(), cli.log_format, config.as_ref()) {
        return fail(&e.to_string());
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
    let context = Context {
        store_flag: cli.store,
        config,
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo => demo::run().await.map(|()| ExitCode::SUCCESS),
            Command::Replicate(a) => replicate::run(&context, a).await,
            command => {
                let url = context.store_url(command.namespace());
                match args::open_store(&url)? {
                    args::Opened::Local(store) => run(store, command).await,
                    args::Opened::Object(store) => run(store, command).await,
                }
                .map(|()| ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => fail(&e.to_string()),
    }
}

async fn run<S: args::Store>(store: S, command: Command) -> walvault::Result<()> {
    match command {
        Command::Restore(a) => restore::run(store, a).await,
        Command::Ls(a) => inspect::ls(store, a).await,
        Command::Info(a) => inspect::info(store, a).await,
        Command::Log(a) => history::log(store, a).await,
        Command::Verify(a) => inspect::verify(store, a).await,
        Command::Follow(a) => restore::follow(store, a).await,
        Command::Compact(a) => maintain::compact_cmd(store, a).await,
        Command::Gc(a) => maintain::gc_cmd(store, a).await,
        Command::Fork(a) => maintain::fork_cmd(store, a).await,
        Command::Replicate(_) | Command::Demo => Err(walvault::Error::from(
            walvault::InvalidInput::Config("this command does not open one store".into()),
        )),
    }
}

impl Command {
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
            Command::Replicate(_) | Command::Demo => None,
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

//! `walvault`: the command line. Thin: parses arguments and calls the public library API.
//! Errors print one line (`walvault: error: ...`) and exit with status 1; bad arguments
//! exit with status 2. The library's warnings (a store outage and its recovery, a slow
//! checkpoint) go to stderr as timestamped lines; `WALVAULT_LOG` (a `tracing` filter such
//! as `info` or `walvault=debug`) shows more.

mod args;
mod demo;
mod history;
mod inspect;
mod maintain;
mod monitor;
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
    /// AZURE_* environment variables).
    #[arg(long, global = true, default_value = "./walvault-store")]
    store: String,
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
    /// What the running `replicate` daemons are doing for each database (exit status 3
    /// when one has none).
    Status(monitor::status::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Status(a) = &cli.command {
        return monitor::status::run(a); // asks local sockets: no store, no runtime
    }
    log_to_stderr();
    limit_malloc_arenas();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("starting the async runtime: {e}")),
    };
    if let Some(bytes) = cli.memory_budget {
        if let Err(e) = walvault::set_memory_budget(bytes) {
            return fail(&e.to_string());
        }
    }
    let result = runtime.block_on(async {
        if let Command::Demo = cli.command {
            return demo::run().await;
        }
        match args::open_store(&cli.store)? {
            args::Opened::Local(store) => run(store, cli.command, &cli.store).await,
            args::Opened::Object(store) => run(store, cli.command, &cli.store).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

async fn run<S: args::Store>(store: S, command: Command, url: &str) -> walvault::Result<()> {
    match command {
        Command::Replicate(a) => replicate::run(store, a, url).await,
        Command::Restore(a) => restore::run(store, a).await,
        Command::Ls(a) => inspect::ls(store, a).await,
        Command::Info(a) => inspect::info(store, a).await,
        Command::Log(a) => history::log(store, a).await,
        Command::Verify(a) => inspect::verify(store, a).await,
        Command::Follow(a) => restore::follow(store, a).await,
        Command::Compact(a) => maintain::compact_cmd(store, a).await,
        Command::Gc(a) => maintain::gc_cmd(store, a).await,
        Command::Fork(a) => maintain::fork_cmd(store, a).await,
        Command::Demo => demo::run().await,
        Command::Status(_) => Ok(()), // answered in main, before a store is opened
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

/// Prints `tracing` events at `WALVAULT_LOG`'s level (default: warnings) on stderr.
fn log_to_stderr() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("WALVAULT_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        .try_init();
}

fn fail(message: &str) -> ExitCode {
    // One line, whatever the error says.
    eprintln!("walvault: error: {}", message.replace('\n', " "));
    ExitCode::FAILURE
}

//! The `berth` binary: parse the command line, set up logging, hand over to the library.
//! Exit codes: 0 clean, 1 runtime failure, 2 `check-config` found an error, 78 (EX_CONFIG)
//! when `run` cannot load its config or finds before serving that a setting cannot work
//! (an AWS section without a region).

use berth::cli::{Cli, Command, LogFormat};
use clap::Parser;
use std::io::IsTerminal;
use std::process::ExitCode;

use berth::cli::EX_CONFIG;

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    // A level berth cannot read is an error, not a silent `info`.
    if let Some(l) = cli.log_level.as_deref() {
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(l) {
            eprintln!("berth: --log-level (or BERTH_LOG) {l:?} is not a level or a filter (e.g. \"info\", \"berth=debug,info\"): {e}");
            return ExitCode::from(2);
        }
    }
    let log = init_logging(cli.log_level.as_deref(), cli.log_format);
    match cli.command {
        Command::Version => {
            println!("berth {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::CheckConfig { config } => berth::cli::check_config(config.as_deref()),
        Command::Buffer { command: berth::cli::BufferCommand::Inspect { path, config, json } } => {
            berth::cli::inspect_command(path.as_deref(), config.as_deref(), json)
        }
        Command::Capacity { config, json } => {
            block_on(async move { berth::cli::capacity_command(config.as_deref(), json).await })
        }
        Command::Health { config } => {
            block_on(async move { berth::cli::health_command(config.as_deref()).await })
        }
        Command::Drain(args) => block_on(async move { berth::cli::drain_command(args).await }),
        Command::Run { config } => {
            let config_arg = config;
            let config = match berth::config::Config::load(config_arg.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("berth: {e}");
                    return ExitCode::from(EX_CONFIG);
                }
            };
            let reload = berth::app::Reload { path: config_arg.clone(), log: Some(log) };
            block_on(async move {
                match berth::app::run_with(config, reload).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) if e.is_config() => {
                        tracing::error!("{e}");
                        eprintln!("berth: {e}");
                        ExitCode::from(EX_CONFIG)
                    }
                    Err(e) => {
                        tracing::error!("{e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Cat(args) => block_on(async move {
            match berth::cat::run(args).await {
                Ok(summary) => {
                    eprintln!("berth cat: {summary}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("berth cat: {e}");
                    ExitCode::FAILURE
                }
            }
        }),
    }
}

/// glibc gives threads that allocate at the same time arenas of their own (up to eight per
/// core), and memory freed into one arena is not reused by the others: the Elasticsearch
/// sink's request buffers, built on whichever worker runs it, took peak RSS to 74–83 MiB
/// with the default against 57–64 MiB with one arena, at the same CPU per document
/// (docs/performance.md). One arena, unless `MALLOC_ARENA_MAX` says otherwise. Called
/// first in `main`, before any other thread exists.
///
/// glibc's mmap threshold is left as it is (it rises to the largest block freed, so large
/// blocks come back from the heap): fixed at 1 MiB, each Forward frame of 2 MB took fresh
/// pages from `mmap` and faulted them in, half again berth's CPU per record.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt changes an allocator setting; no other thread is running yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// How long the runtime waits, once `run` returned, for tasks it still has: an admin
/// connection cut at the end of the grace period, a blocking fsync of a stalled disk.
/// Dropping the runtime would wait for them for ever.
const RUNTIME_STOP: std::time::Duration = std::time::Duration::from_millis(500);

fn block_on<F: std::future::Future<Output = ExitCode>>(f: F) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => {
            let code = rt.block_on(f);
            rt.shutdown_timeout(RUNTIME_STOP);
            code
        }
        Err(e) => {
            eprintln!("berth: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr: stdout belongs to the stdout sink. The filter can be replaced later
/// (the config's `[log] level`, at start and on SIGHUP) unless the command line pinned it.
fn init_logging(level: Option<&str>, format: LogFormat) -> berth::app::LogControl {
    let filter = |l: &str| tracing_subscriber::EnvFilter::try_new(l).map_err(|e| e.to_string());
    let initial = filter(level.unwrap_or("info"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The same builder for both formats; `json()` changes its type, hence the macro.
    macro_rules! install {
        ($builder:expr) => {{
            let builder = $builder
                .with_env_filter(initial)
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            let set: berth::app::SetFilter =
                Box::new(move |l| handle.reload(filter(l)?).map_err(|e| e.to_string()));
            set
        }};
    }
    let set = match format {
        LogFormat::Text => install!(tracing_subscriber::fmt()),
        LogFormat::Json => install!(tracing_subscriber::fmt().json()),
    };
    berth::app::LogControl { set, pinned: level.is_some() }
}

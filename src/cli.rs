//! The command line: clap definitions, and `check-config`, which needs nothing but the
//! config module. `main` parses [`Cli`] and dispatches; everything that runs lives elsewhere.

use crate::config::Config;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Per-host log shipper for Amazon ECS container instances: receives container logs over
/// the Fluentd Forward protocol and delivers them to sinks.
#[derive(clap::Parser, Debug)]
#[command(name = "berth", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log filter: a level ("info", "debug") or a tracing filter ("berth=debug,info")
    /// [default: the config's `[log] level`, else "info"]. Given here, SIGHUP keeps it.
    #[arg(long, global = true, env = "BERTH_LOG")]
    pub log_level: Option<String>,

    /// Format of berth's own log lines on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "BERTH_LOG_FORMAT")]
    pub log_format: LogFormat,
}

/// How berth writes its own logs.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for CloudWatch Logs Insights and the like).
    Json,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Run the daemon.
    Run {
        /// Config file [default: $BERTH_CONFIG, else /etc/berth/berth.toml if it exists,
        /// else built-in defaults].
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the effective config (secrets redacted) or the error.
    CheckConfig {
        /// Config file [default: $BERTH_CONFIG, else /etc/berth/berth.toml if it exists,
        /// else built-in defaults].
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Send JSON lines from stdin as Forward events (like fluent-cat).
    Cat(crate::cat::CatArgs),
    /// Look at the durable buffer.
    Buffer {
        #[command(subcommand)]
        command: BufferCommand,
    },
    /// Print the running daemon's capacity report (from its admin endpoint).
    Capacity {
        /// Config file whose `[admin] listen` to ask, found as `run` finds it.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the report as JSON (as `GET /v1/capacity` gives it).
        #[arg(long)]
        json: bool,
    },
    /// Drain this host through the running daemon: set it DRAINING, wait for its tasks
    /// (heart-beating the lifecycle hook, if the group is terminating it), flush their
    /// logs, complete.
    Drain(DrainArgs),
    /// Ask the running daemon whether it is healthy (`GET /healthz`): exit 0 when it is,
    /// 1 when it is not or does not answer. The container image's health check.
    Health {
        /// Config file whose `[admin] listen` to ask, found as `run` finds it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the version.
    Version,
}

#[derive(clap::Subcommand, Debug)]
pub enum BufferCommand {
    /// Report the buffer's segments, sink cursors and lag, damage, and whether berth is
    /// running on it. Read-only: safe while berth runs; repairs nothing.
    Inspect {
        /// Buffer directory [default: the config's `[buffer] path`].
        #[arg(long, conflicts_with = "config")]
        path: Option<PathBuf>,
        /// Config file whose `[buffer] path` to inspect, found as `run` finds it
        /// [default: $BERTH_CONFIG, else /etc/berth/berth.toml if it exists, else built-in
        /// defaults: /var/lib/berth/buffer].
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Exit status when a command other than `check-config` cannot load its config (EX_CONFIG).
pub const EX_CONFIG: u8 = 78;

/// Exit status of `check-config` when the config is invalid (distinct from 1, "could not
/// even try", so scripts can tell a bad file from a broken pipe).
pub const CHECK_CONFIG_INVALID: u8 = 2;

/// `berth check-config`: load the config as `run` would (file, then environment
/// overrides), print it as TOML with secrets redacted and exit 0, or print the error to
/// stderr and exit 2.
pub fn check_config(path: Option<&Path>) -> ExitCode {
    check_config_to(path, &mut std::io::stdout().lock(), &mut std::io::stderr().lock())
}

/// [`check_config`] writing to the given streams.
pub fn check_config_to(path: Option<&Path>, out: &mut dyn Write, err: &mut dyn Write) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            match out.write_all(config.to_redacted_toml().as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Nowhere better to report it; if stderr fails too there is nothing left to do.
                    let _ = writeln!(err, "berth: cannot write to stdout: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            let _ = writeln!(err, "berth: {e}");
            ExitCode::from(CHECK_CONFIG_INVALID)
        }
    }
}

/// `berth buffer inspect`: report on the buffer at `path`, else at the `[buffer] path` of
/// the config loaded as `run` loads it. Exit 0 with the report on stdout; 1 when the buffer
/// cannot be read, 78 when the config cannot be loaded, with the error on stderr.
pub fn inspect_command(path: Option<&Path>, config: Option<&Path>, json: bool) -> ExitCode {
    inspect_command_to(
        path,
        config,
        json,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    )
}

/// [`inspect_command`] writing to the given streams.
pub fn inspect_command_to(
    path: Option<&Path>,
    config: Option<&Path>,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> ExitCode {
    let path = match path {
        Some(p) => p.to_owned(),
        // Only without --path: a broken config must not stop anyone looking at the buffer.
        None => match Config::load(config) {
            Ok(c) => c.buffer.path,
            Err(e) => {
                let _ = writeln!(err, "berth: {e}");
                return ExitCode::from(EX_CONFIG);
            }
        },
    };
    let report = match crate::buffer::inspect::inspect(&path) {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "berth: {e}");
            return ExitCode::FAILURE;
        }
    };
    let written = if json { report.write_json(out) } else { report.write_text(out) };
    match written.and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(err, "berth: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The running daemon's admin endpoint, found through its config.
struct AdminClient {
    client: reqwest::Client,
    base: String,
    addr: std::net::SocketAddr,
    source: String,
}

impl AdminClient {
    /// `Err(exit code)` with the message written to `err`: 78 for a config that cannot be
    /// loaded, 1 for an admin endpoint that is off.
    fn new(config: Option<&Path>, timeout: Duration, err: &mut Vec<u8>) -> Result<Self, ExitCode> {
        let config = match Config::load(config) {
            Ok(c) => c,
            Err(e) => {
                let _ = writeln!(err, "berth: {e}");
                return Err(ExitCode::from(EX_CONFIG));
            }
        };
        let Some(addr) = config.admin.listen else {
            let _ = writeln!(
                err,
                "berth: the admin endpoint is off in {} ([admin] listen = \"\"): nothing to ask",
                config.source
            );
            return Err(ExitCode::FAILURE);
        };
        match reqwest::Client::builder().no_proxy().timeout(timeout).build() {
            Ok(client) => Ok(AdminClient {
                client,
                base: format!("http://{addr}"),
                addr,
                source: config.source,
            }),
            Err(e) => {
                let _ = writeln!(err, "berth: cannot build an HTTP client: {e}");
                Err(ExitCode::FAILURE)
            }
        }
    }

    /// GET (or POST `body`) `path`: the body of a 2xx answer; else the message written to
    /// `err` (berth not running, the daemon's own error text).
    async fn call(
        &self,
        path: &str,
        body: Option<String>,
        err: &mut Vec<u8>,
    ) -> Result<bytes::Bytes, ExitCode> {
        let url = format!("{}{path}", self.base);
        let req = match body {
            Some(b) => self.client.post(&url).header("content-type", "application/json").body(b),
            None => self.client.get(&url),
        };
        let fail = |err: &mut Vec<u8>, m: String| {
            let _ = writeln!(err, "berth: {m}");
            Err(ExitCode::FAILURE)
        };
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() => {
                return fail(
                    err,
                    format!(
                        "berth is not running (nothing answers on its admin endpoint {}, from {})",
                        self.addr, self.source
                    ),
                )
            }
            Err(e) => return fail(err, format!("{url}: {}", crate::error::describe(&e))),
        };
        let status = resp.status();
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return fail(err, format!("{url}: {}", crate::error::describe(&e))),
        };
        if !status.is_success() {
            return fail(err, String::from_utf8_lossy(&body).trim().to_string());
        }
        Ok(body)
    }
}

/// `berth capacity`: ask the running daemon (its `[admin] listen`) for its capacity report
/// and print it. Exit 0 with the report; 1 when the daemon does not answer, capacity is off
/// or has no report yet; 78 when the config cannot be loaded. Messages go to stderr.
pub async fn capacity_command(config: Option<&Path>, json: bool) -> ExitCode {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = capacity_command_to(config, json, &mut out, &mut err).await;
    let _ = std::io::stdout().write_all(&out);
    let _ = std::io::stderr().write_all(&err);
    code
}

/// [`capacity_command`] writing to the given buffers.
pub async fn capacity_command_to(
    config: Option<&Path>,
    json: bool,
    out: &mut Vec<u8>,
    err: &mut Vec<u8>,
) -> ExitCode {
    let admin = match AdminClient::new(config, Duration::from_secs(5), err) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let body = match admin.call("/v1/capacity", None, err).await {
        Ok(b) => b,
        Err(code) => return code,
    };
    if json {
        out.extend_from_slice(&body);
        out.push(b'\n');
        return ExitCode::SUCCESS;
    }
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) => {
            out.extend_from_slice(crate::capacity::report::text(&v).as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(err, "berth: /v1/capacity: not a capacity report: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `berth health`: the daemon's `/healthz` — 0 when it answers 200, 1 otherwise (the
/// reason on stderr), 78 for a config that cannot be loaded. Quick (3 s at most): health
/// checks run it every few seconds.
pub async fn health_command(config: Option<&Path>) -> ExitCode {
    let mut err = Vec::new();
    let code = match AdminClient::new(config, Duration::from_secs(3), &mut err) {
        Ok(admin) => match admin.call("/healthz", None, &mut err).await {
            Ok(body) => {
                let _ = std::io::stdout().write_all(&body);
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Err(code) => code,
    };
    let _ = std::io::stderr().write_all(&err);
    code
}

/// What `berth drain` was asked.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DrainArgs {
    /// Config file whose `[admin] listen` to ask, found as `run` finds it.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The drain ends by then at the latest (e.g. "2h", "30m"); never beyond the hook's
    /// own limit or a Spot notice's time.
    #[arg(long, conflicts_with_all = ["abort", "status"])]
    pub deadline: Option<String>,
    /// Show the drain as it goes, until it ends: exit 0 when it completed, 1 when the
    /// deadline came first or it was aborted or rejected.
    #[arg(long, conflicts_with = "abort")]
    pub wait: bool,
    /// Abort the drain in progress (no more heartbeats; an operator's drain sets the
    /// instance ACTIVE again).
    #[arg(long)]
    pub abort: bool,
    /// Only show the drain in progress or the last one.
    #[arg(long, conflicts_with = "abort")]
    pub status: bool,
    /// Print the daemon's answers as JSON (one object per line with --wait).
    #[arg(long)]
    pub json: bool,
}

/// `berth drain`: start, watch or abort a drain of this host through the running daemon
/// (`POST`/`GET /v1/drain`). Exit 0 when done as asked; 1 when berth does not answer, the
/// drain is off, or (with `--wait`) the drain did not complete; 78 for a config error.
pub async fn drain_command(args: DrainArgs) -> ExitCode {
    let mut out = std::io::stdout();
    let mut err = Vec::new();
    let tty = std::io::IsTerminal::is_terminal(&out);
    let code = drain_command_to(args, &mut out, &mut err, Duration::from_secs(1), tty).await;
    let _ = std::io::stderr().write_all(&err);
    code
}

/// [`drain_command`] writing to the given sinks, polling every `every` with `--wait`;
/// `tty`: `out` is a terminal (one status line rewritten in place).
pub async fn drain_command_to(
    args: DrainArgs,
    out: &mut dyn Write,
    err: &mut Vec<u8>,
    every: Duration,
    tty: bool,
) -> ExitCode {
    // The daemon answers a request between two steps of its drain: one may be a slow AWS
    // call (30 s at most).
    let admin = match AdminClient::new(args.config.as_deref(), Duration::from_secs(60), err) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let body = if args.status {
        None
    } else if args.abort {
        Some(r#"{"abort": true}"#.to_string())
    } else {
        Some(match &args.deadline {
            Some(d) => serde_json::json!({ "deadline": d }).to_string(),
            None => "{}".to_string(),
        })
    };
    let started = body.is_some() && !args.abort;
    let first = match admin.call("/v1/drain", body, err).await {
        Ok(b) => b,
        Err(code) => return code,
    };
    let mut v: serde_json::Value = match serde_json::from_slice(&first) {
        Ok(v) => v,
        Err(e) => {
            let _ = writeln!(err, "berth: /v1/drain: not a drain view: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(note) = v.get("note").and_then(|n| n.as_str()) {
        let _ = writeln!(err, "berth: {note}");
    } else if started {
        let _ = writeln!(err, "berth: drain started");
    } else if args.abort {
        let _ = writeln!(err, "berth: drain aborted");
    }
    // On a terminal, --wait keeps one status line up to date; elsewhere (a log, a pipe)
    // it writes one line per change.
    let live = args.wait && !args.json && tty;
    let show = |out: &mut dyn Write, v: &serde_json::Value| {
        let _ = if args.json {
            writeln!(out, "{v}")
        } else if live {
            write!(out, "\r\x1b[2K{}", crate::drain::runner::line(v))
        } else {
            writeln!(out, "{}", crate::drain::runner::line(v))
        };
        let _ = out.flush();
    };
    show(out, &v);
    if !args.wait {
        return ExitCode::SUCCESS;
    }
    let mut last = crate::drain::runner::line(&v);
    while v.get("active").and_then(|a| a.as_bool()).unwrap_or(false) {
        tokio::time::sleep(every).await;
        let body = match admin.call("/v1/drain", None, err).await {
            Ok(b) => b,
            Err(code) => return code,
        };
        let Ok(next) = serde_json::from_slice::<serde_json::Value>(&body) else { continue };
        v = next;
        let line = crate::drain::runner::line(&v);
        if line != last {
            show(out, &v);
            last = line;
        }
    }
    if live {
        let _ = writeln!(out);
    }
    let outcome = v.pointer("/drain/outcome").and_then(|o| o.as_str()).unwrap_or("");
    if outcome == "drained" {
        ExitCode::SUCCESS
    } else {
        let _ = writeln!(
            err,
            "berth: the drain ended: {}",
            if outcome.is_empty() { "unknown" } else { outcome }
        );
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_subcommands_and_globals() {
        let cli = Cli::try_parse_from(["berth", "run", "--config", "/x.toml"]).unwrap();
        assert!(
            matches!(cli.command, Command::Run { config: Some(ref p) } if p == Path::new("/x.toml"))
        );
        assert_eq!(cli.log_format, LogFormat::Text);

        let cli =
            Cli::try_parse_from(["berth", "check-config", "-c", "/y.toml", "--log-format", "json"])
                .unwrap();
        assert!(matches!(cli.command, Command::CheckConfig { config: Some(_) }));
        assert_eq!(cli.log_format, LogFormat::Json);

        let cli = Cli::try_parse_from(["berth", "--log-level", "debug", "version"]).unwrap();
        assert!(matches!(cli.command, Command::Version));
        assert_eq!(cli.log_level.as_deref(), Some("debug"));

        let cli = Cli::try_parse_from(["berth", "run"]).unwrap();
        assert!(matches!(cli.command, Command::Run { config: None }));

        assert!(Cli::try_parse_from(["berth"]).is_err(), "a subcommand is required");
        assert!(Cli::try_parse_from(["berth", "run", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn check_config_exit_codes() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.toml");
        std::fs::write(&good, include_str!("../examples/quickstart.toml")).unwrap();
        let run = |p: &Path| {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let code = check_config_to(Some(p), &mut out, &mut err);
            (code, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
        };
        let (code, out, err) = run(&good);
        assert_eq!(code, ExitCode::SUCCESS);
        assert!(out.contains("[[sink]]") && err.is_empty(), "{out}{err}");

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[input.forward]\nlisen = 1\n").unwrap();
        let (code, out, err) = run(&bad);
        assert_eq!(code, ExitCode::from(CHECK_CONFIG_INVALID));
        assert!(out.is_empty());
        assert!(
            err.starts_with(&format!(
                "berth: {}: line 2: input.forward: unknown key \"lisen\"",
                bad.display()
            )),
            "{err}"
        );

        let (code, _, err) = run(&dir.path().join("missing.toml"));
        assert_eq!(code, ExitCode::from(CHECK_CONFIG_INVALID));
        assert!(err.contains("cannot read the config file"), "{err}");
    }

    #[test]
    fn parses_buffer_inspect() {
        let cli =
            Cli::try_parse_from(["berth", "buffer", "inspect", "--path", "/b", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Buffer { command: BufferCommand::Inspect { path: Some(ref p), config: None, json: true } }
                if p == Path::new("/b")
        ));
        let cli = Cli::try_parse_from(["berth", "buffer", "inspect", "-c", "/x.toml"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Buffer {
                command: BufferCommand::Inspect { path: None, config: Some(_), json: false }
            }
        ));
        assert!(Cli::try_parse_from(["berth", "buffer", "inspect", "--path", "/b", "-c", "/x"])
            .is_err());
        assert!(Cli::try_parse_from(["berth", "buffer"]).is_err());
    }

    #[test]
    fn inspect_finds_the_buffer_through_the_config_and_reports_errors() {
        let dir = tempfile::tempdir().unwrap();
        let buf = dir.path().join("buf");
        for d in ["segments", "cursors"] {
            std::fs::create_dir_all(buf.join(d)).unwrap();
        }
        let cfg = dir.path().join("berth.toml");
        let toml = include_str!("../examples/quickstart.toml").replace(
            "path = \"/tmp/berth-quickstart/buffer\"",
            &format!("path = {:?}", buf.display().to_string()),
        );
        std::fs::write(&cfg, toml).unwrap();
        let run = |path: Option<&Path>, config: Option<&Path>, json: bool| {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let code = inspect_command_to(path, config, json, &mut out, &mut err);
            (code, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
        };
        let (code, out, err) = run(None, Some(&cfg), false);
        assert_eq!(code, ExitCode::SUCCESS, "{err}");
        assert!(out.starts_with(&format!("buffer       {}\n", buf.display())), "{out}");
        assert!(err.is_empty(), "{err}");

        let (code, out, _) = run(Some(&buf), None, true);
        assert_eq!(code, ExitCode::SUCCESS);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["path"], buf.display().to_string());

        let missing = dir.path().join("missing");
        let (code, out, err) = run(Some(&missing), None, false);
        assert_eq!(code, ExitCode::FAILURE);
        assert!(out.is_empty());
        assert_eq!(
            err,
            format!(
                "berth: cannot read {}/segments: No such file or directory\n",
                missing.display()
            )
        );

        let (code, _, err) = run(None, Some(&dir.path().join("nope.toml")), false);
        assert_eq!(code, ExitCode::from(EX_CONFIG));
        assert!(err.contains("cannot read the config file"), "{err}");
    }
}

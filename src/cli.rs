//! The command line: clap definitions, and `check-config`, which needs nothing but the
//! config module. `main` parses [`Cli`] and dispatches; everything that runs lives elsewhere.

use crate::config::Config;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Per-host log shipper for Amazon ECS container instances: receives container logs over
/// the Fluentd Forward protocol and delivers them to sinks.
#[derive(clap::Parser, Debug)]
#[command(name = "berth", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log filter: a level ("info", "debug") or a tracing filter ("berth=debug,info").
    #[arg(long, global = true, env = "BERTH_LOG", default_value = "info")]
    pub log_level: String,

    /// Format of berth's own log lines on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
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
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "berth: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let Some(addr) = config.admin.listen else {
        let _ = writeln!(
            err,
            "berth: the admin endpoint is off in {} ([admin] listen = \"\"): nothing to ask",
            config.source
        );
        return ExitCode::FAILURE;
    };
    let url = format!("http://{addr}/v1/capacity");
    let client = match reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "berth: cannot build an HTTP client: {e}");
            return ExitCode::FAILURE;
        }
    };
    let resp = match client.get(&url).send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => {
            let _ = writeln!(
                err,
                "berth: berth is not running (nothing answers on its admin endpoint {addr}, from {})",
                config.source
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            let _ = writeln!(err, "berth: {url}: {}", crate::error::describe(&e));
            return ExitCode::FAILURE;
        }
    };
    let status = resp.status();
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => {
            let _ = writeln!(err, "berth: {url}: {}", crate::error::describe(&e));
            return ExitCode::FAILURE;
        }
    };
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        let _ = writeln!(err, "berth: {}", text.trim());
        return ExitCode::FAILURE;
    }
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
            let _ = writeln!(err, "berth: {url}: not a capacity report: {e}");
            ExitCode::FAILURE
        }
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
        assert_eq!(cli.log_level, "debug");

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

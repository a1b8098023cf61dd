//! TOML snippets that must load, ones that must fail with a given message (file, line and
//! key), environment overrides, redaction and defaults. No test reads the process
//! environment or /etc: the environment is always passed in.

use super::*;

const FILE: &str = "/etc/berth/berth.toml";
const NO_ENV: [(&str, &str); 0] = [];

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, FILE, NO_ENV)
}

fn load_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, FILE, env.iter().copied())
}

fn err(text: &str) -> String {
    match load(text) {
        Ok(c) => panic!("expected an error, loaded {c:?} from:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn env_err(text: &str, env: &[(&str, &str)]) -> String {
    match load_env(text, env) {
        Ok(c) => panic!("expected an error, loaded {c:?}"),
        Err(e) => e.to_string(),
    }
}

const SINK: &str = "[[sink]]\nname = \"console\"\ntype = \"stdout\"\n";

fn tcp(s: &str) -> ListenAddr {
    ListenAddr::Tcp(s.parse().unwrap())
}

#[test]
fn builtin_defaults() {
    let c = Config::from_toml_str(BUILTIN_DEFAULTS, BUILTIN_SOURCE, NO_ENV).unwrap();
    let f = &c.input.forward;
    assert_eq!(f.listen, [tcp("127.0.0.1:24224")]);
    assert_eq!(f.socket_mode, 0o660);
    assert_eq!(f.shared_key, "");
    assert!(!f.self_hostname.is_empty(), "resolved to the host name");
    assert_eq!(f.max_message_size, 16 << 20);
    assert_eq!(f.max_connections, 1024);
    assert_eq!(f.idle_timeout, Duration::from_secs(300));
    assert_eq!(f.memory_budget, 256 << 20);
    assert_eq!(f.handshake_timeout, Duration::from_secs(10));
    assert_eq!(f.frame_timeout, Duration::from_secs(60));
    assert!(f.users.is_empty());
    assert_eq!(c.admin.listen, Some("127.0.0.1:24220".parse().unwrap()));
    assert_eq!(c.shutdown.grace_period, Duration::from_secs(25));
    assert_eq!(c.sinks.len(), 1);
    assert_eq!(c.sinks[0].name, "console");
    assert_eq!(c.sinks[0].match_.as_str(), "**");
    assert!(matches!(c.sinks[0].kind, SinkKind::Stdout { format: Format::Json }));
    assert_eq!(c.source, BUILTIN_SOURCE);
    assert!(c.overrides.is_empty());
}

#[test]
fn omitted_keys_take_their_defaults() {
    let c = load(SINK).unwrap();
    let d = Config::from_toml_str(BUILTIN_DEFAULTS, BUILTIN_SOURCE, NO_ENV).unwrap();
    assert_eq!(c.input.forward.listen, d.input.forward.listen);
    assert_eq!(c.input.forward.max_message_size, d.input.forward.max_message_size);
    assert_eq!(c.admin.listen, d.admin.listen);
    assert_eq!(c.shutdown.grace_period, d.shutdown.grace_period);
    assert_eq!(c.sinks[0].match_.as_str(), "**", "match defaults to every tag");
    assert_eq!(c.source, FILE);
}

#[test]
fn example_files_load() {
    let q = Config::from_toml_str(
        include_str!("../../examples/quickstart.toml"),
        "quickstart.toml",
        NO_ENV,
    )
    .unwrap();
    assert_eq!(q.input.forward.listen, [tcp("127.0.0.1:24224")]);
    assert_eq!(q.admin.listen, Some("127.0.0.1:24220".parse().unwrap()));
    assert!(matches!(q.sinks[0].kind, SinkKind::Stdout { .. }));

    let b = Config::from_toml_str(include_str!("../../examples/berth.toml"), "berth.toml", NO_ENV)
        .unwrap();
    assert_eq!(
        b.input.forward.listen,
        [tcp("127.0.0.1:24224"), ListenAddr::Unix("/run/berth/forward.sock".into())]
    );
    let names: Vec<&str> = b.sinks.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["console", "archive", "discard", "search", "cw"]);
    assert!(matches!(b.sinks[4].kind, SinkKind::CloudWatchLogs(_)));
    match &b.sinks[1].kind {
        SinkKind::File { path, format } => {
            assert!(path.starts_with("/var/log/berth/"));
            assert_eq!(*format, Format::Json);
        }
        other => panic!("{other:?}"),
    }
    assert!(b.sinks[1].match_.matches("app.web") && b.sinks[1].match_.matches("web.1"));
    assert!(matches!(b.sinks[2].kind, SinkKind::Null));
    assert!(matches!(b.sinks[3].kind, SinkKind::Elasticsearch(_)));
}

#[test]
fn every_key_set() {
    let c = load(
        r#"
[input.forward]
listen = ["tcp://[::1]:24224", "tcp://localhost:24225", "unix:///run/berth/forward.sock"]
socket_mode = "0600"
shared_key = "k"
self_hostname = "ip-10-0-0-1"
max_message_size = "512KiB"
max_connections = 8
idle_timeout = "250ms"
memory_budget = "1MiB"
handshake_timeout = "2s"
frame_timeout = "30s"
[[input.forward.user]]
username = "a"
password = "b"
[[input.forward.user]]
username = "c"
password = ""

[admin]
listen = ""

[shutdown]
grace_period = "1h"

[[sink]]
name = "f"
type = "file"
match = "app.{web,db}.**"
path = "/var/log/berth/{tag}.ndjson"
format = "json"

[[sink]]
name = "n"
type = "null"
"#,
    )
    .unwrap();
    let f = &c.input.forward;
    assert_eq!(f.listen[0], tcp("[::1]:24224"));
    assert_eq!(f.listen[1], tcp("127.0.0.1:24225"));
    assert_eq!(f.socket_mode, 0o600);
    assert_eq!(f.self_hostname, "ip-10-0-0-1");
    assert_eq!(f.max_message_size, 512 * 1024);
    assert_eq!(f.max_connections, 8);
    assert_eq!(f.idle_timeout, Duration::from_millis(250));
    assert_eq!(f.memory_budget, 1 << 20);
    assert_eq!(f.handshake_timeout, Duration::from_secs(2));
    assert_eq!(f.frame_timeout, Duration::from_secs(30));
    assert_eq!(f.users.len(), 2);
    assert_eq!((f.users[0].username.as_str(), f.users[0].password.as_str()), ("a", "b"));
    assert_eq!(c.admin.listen, None);
    assert_eq!(c.shutdown.grace_period, Duration::from_secs(3600));
    assert!(c.sinks[0].match_.matches("app.db.x") && !c.sinks[0].match_.matches("app.x"));
    assert!(
        matches!(&c.sinks[0].kind, SinkKind::File { path, .. } if path == "/var/log/berth/{tag}.ndjson")
    );
}

/// The default budget never forbids the largest requests max_message_size allows.
#[test]
fn default_memory_budget_fits_twice_max_message_size() {
    let c = load(&format!("[input.forward]\nmax_message_size = \"1GiB\"\n{SINK}")).unwrap();
    assert_eq!(c.input.forward.memory_budget, 2 << 30);
    let c = load(&format!("[input.forward]\nmax_message_size = \"1MiB\"\n{SINK}")).unwrap();
    assert_eq!(c.input.forward.memory_budget, 256 << 20);
}

#[test]
fn sizes_may_be_integers_and_decimal_units() {
    let c = load(&format!("[input.forward]\nmax_message_size = 2048\n{SINK}")).unwrap();
    assert_eq!(c.input.forward.max_message_size, 2048);
    let c = load(&format!("[input.forward]\nmax_message_size = \"16MB\"\n{SINK}")).unwrap();
    assert_eq!(c.input.forward.max_message_size, 16_000_000);
}

/// (file text, expected message). Each message names the file, the line and the key.
const MUST_FAIL: &[(&str, &str)] = &[
    (
        "[input.forward]\nmax_message_size = \"16XB\"\n",
        "/etc/berth/berth.toml: line 2: input.forward.max_message_size: invalid size \"16XB\" (expected a number with a unit such as \"16MiB\")",
    ),
    (
        "\n\n[input.forward]\nlisen = [\"tcp://127.0.0.1:1\"]\n",
        "/etc/berth/berth.toml: line 4: input.forward: unknown key \"lisen\" (expected one of",
    ),
    ("bogus = 1\n", "/etc/berth/berth.toml: line 1: unknown key \"bogus\" (expected one of \"input\""),
    ("[input.forward]\nmax_message_size = \"512B\"\n", "line 2: input.forward.max_message_size: 512 is out of range (from 1KiB to 1GiB)"),
    ("[input.forward]\nmax_message_size = \"2GiB\"\n", "line 2: input.forward.max_message_size: 2GiB is out of range"),
    ("[input.forward]\nmax_message_size = -1\n", "line 2: input.forward.max_message_size: invalid size -1"),
    ("[input.forward]\nmax_connections = 0\n", "line 2: input.forward.max_connections: must be at least 1"),
    ("[input.forward]\nidle_timeout = \"0s\"\n", "line 2: input.forward.idle_timeout: must be longer than 0s"),
    ("[input.forward]\nhandshake_timeout = \"0s\"\n", "line 2: input.forward.handshake_timeout: must be longer than 0s"),
    ("[input.forward]\nframe_timeout = \"0ms\"\n", "line 2: input.forward.frame_timeout: must be longer than 0s"),
    ("[input.forward]\nmemory_budget = \"16MiB\"\n", "line 2: input.forward.memory_budget: 16MiB is less than twice max_message_size (32MiB): a whole request and its inflated payload must fit"),
    ("[input.forward]\nmax_message_size = \"8MiB\"\n\nmemory_budget = \"8MiB\"\n", "line 4: input.forward.memory_budget: 8MiB is less than twice max_message_size (16MiB)"),
    ("[input.forward]\nmemory_budget = \"lots\"\n", "line 2: input.forward.memory_budget: invalid size \"lots\""),
    ("[buffer]\nsync = \"sometimes\"\n", "line 2: buffer.sync: unknown sync mode \"sometimes\""),
    ("[buffer]\nwhen_full = \"drop_oldest\"\n", "line 2: buffer.when_full: unknown when_full \"drop_oldest\""),
    ("[buffer]\nmax_size = \"1GiB\"\nsegment_size = \"600MiB\"\n", "line 3: buffer.segment_size: buffer.segment_size (600MiB) must be more than 0 and at most half of buffer.max_size (1GiB)"),
    ("[buffer]\nmax_size = \"100MiB\"\n", "line 2: buffer.max_size: buffer.segment_size (64MiB) must be more than 0"),
    ("[buffer]\nsync_interval = \"0ms\"\n", "line 2: buffer.sync_interval: must be more than 0s"),
    ("[buffer]\npth = \"/x\"\n", "line 2: buffer: unknown key \"pth\""),
    ("[input.forward]\nidle_timeout = \"5\"\n", "line 2: input.forward.idle_timeout: invalid duration \"5\""),
    ("[input.forward]\nidle_timeout = 5\n", "line 2: input.forward.idle_timeout: invalid type: integer \"5\", expected a string"),
    ("[input.forward]\nsocket_mode = \"0999\"\n", "line 2: input.forward.socket_mode: invalid socket mode \"0999\" (expected an octal string"),
    ("[input.forward]\nsocket_mode = \"1777\"\n", "line 2: input.forward.socket_mode: invalid socket mode \"1777\" (at most \"0777\""),
    ("[input.forward]\nlisten = []\n", "line 2: input.forward.listen: at least one listen address is needed"),
    ("[input.forward]\nlisten = [\"udp://x:1\"]\n", "line 2: input.forward.listen[0]: invalid listen address \"udp://x:1\""),
    (
        "[input.forward]\nlisten = [\n  \"tcp://127.0.0.1:1\",\n  \"unix://relative.sock\",\n]\n",
        "line 4: input.forward.listen[1]: invalid listen address \"unix://relative.sock\": the socket path must be absolute",
    ),
    (
        "[input.forward]\nlisten = [\"tcp://127.0.0.1:1\", \"tcp://127.0.0.1:1\"]\n",
        "line 2: input.forward.listen: listen address \"tcp://127.0.0.1:1\" appears twice",
    ),
    ("[input.forward]\nlisten = \"tcp://127.0.0.1:1\"\n", "line 2: input.forward.listen: invalid type: string \"tcp://127.0.0.1:1\", expected a sequence"),
    ("[admin]\nlisten = \"127.0.0.1\"\n", "line 2: admin.listen: invalid address \"127.0.0.1\": missing \":PORT\""),
    ("[shutdown]\ngrace_period = \"soon\"\n", "line 2: shutdown.grace_period: invalid duration \"soon\""),
    ("[input\n", "/etc/berth/berth.toml: line 1: unclosed table, expected \"]\""),
    ("a = \"x\nb = 1\n", "/etc/berth/berth.toml: line 1: "),
    ("", "/etc/berth/berth.toml: sink: no sink configured (add a [[sink]] table)"),
    ("[[sink]]\ntype = \"stdout\"\n", "line 1: sink[0]: missing key \"name\""),
    ("[[sink]]\nname = \"a\"\n", "line 1: sink[0]: missing key \"type\""),
    ("[[sink]]\nname = \"\"\ntype = \"stdout\"\n", "line 2: sink[0].name: must not be empty"),
    ("[[sink]]\nname = \"my sink/x\"\ntype = \"stdout\"\n", "line 2: sink[0].name: \"my sink/x\": use letters, digits, '_', '-' and '.'"),
    ("[buffer]\npath = \"\"\n", "line 2: buffer.path: must not be empty"),
    ("[[sink]]\nname = \"a\"\ntype = \"kafka\"\n", "line 3: sink[0].type: unknown sink type \"kafka\" (expected \"stdout\", \"file\", \"null\", \"elasticsearch\" or \"cloudwatch_logs\")"),
    ("[[sink]]\nname = \"a\"\ntype = \"stdout\"\nformat = \"xml\"\n", "line 4: sink[0].format: unknown format \"xml\" (expected \"json\")"),
    ("[[sink]]\nname = \"a\"\ntype = \"stdout\"\nmatch = \"a.{b\"\n", "line 4: sink[0].match: invalid tag pattern \"a.{b\": unbalanced brace"),
    ("[[sink]]\nname = \"a\"\ntype = \"stdout\"\nmatch = \"\"\n", "line 4: sink[0].match: invalid tag pattern \"\": empty pattern"),
    ("[[sink]]\nname = \"a\"\ntype = \"stdout\"\ncolor = true\n", "line 4: sink[0]: unknown key \"color\""),
    (
        "[[sink]]\nname = \"a\"\ntype = \"stdout\"\n\n[[sink]]\nname = \"a\"\ntype = \"null\"\n",
        "line 6: sink[1].name: duplicate sink name \"a\" (first used on line 2)",
    ),
    ("[[sink]]\nname = \"a\"\ntype = \"file\"\n", "line 1: sink[0]: missing key \"path\" (sinks of type \"file\" need one)"),
    ("[[sink]]\nname = \"a\"\ntype = \"file\"\npath = \"\"\n", "line 4: sink[0].path: must not be empty"),
    ("[[sink]]\nname = \"a\"\ntype = \"stdout\"\npath = \"/x\"\n", "line 4: sink[0].path: only sinks of type \"file\" have a path (this one is \"stdout\")"),
    ("[[sink]]\nname = \"a\"\ntype = \"null\"\nformat = \"json\"\n", "line 4: sink[0].format: sinks of type \"null\" have no format"),
    (
        "[[input.forward.user]]\nusername = \"a\"\npassword = \"b\"\n",
        "line 1: input.forward.user: user authentication needs a shared_key",
    ),
    (
        "[input.forward]\nshared_key = \"k\"\n[[input.forward.user]]\nusername = \"\"\npassword = \"b\"\n",
        "line 4: input.forward.user[0].username: must not be empty",
    ),
    (
        "[input.forward]\nshared_key = \"k\"\n[[input.forward.user]]\nusername = \"a\"\npassword = \"b\"\n[[input.forward.user]]\nusername = \"a\"\npassword = \"c\"\n",
        "line 7: input.forward.user[1].username: duplicate user name \"a\"",
    ),
];

#[test]
fn invalid_files_fail_with_file_line_and_key() {
    for (text, want) in MUST_FAIL {
        // Add a valid sink unless the case is about sinks, so that the error is the one meant.
        let text = if text.contains("[[sink]]")
            || text.is_empty()
            || text.starts_with("[input\n")
            || text.starts_with("a = ")
        {
            text.to_string()
        } else {
            format!("{text}\n{SINK}")
        };
        let got = err(&text);
        assert!(got.contains(want), "for:\n{text}\nwant: {want}\n got: {got}");
        assert!(got.starts_with(FILE), "{got}");
    }
}

#[test]
fn error_variants() {
    assert!(matches!(load("[input\n"), Err(ConfigError::Parse { line: 1, .. })));
    assert!(matches!(load("x = 1\n"), Err(ConfigError::Parse { ref key, .. }) if key.is_empty()));
    assert!(matches!(load(""), Err(ConfigError::Invalid { line: None, .. })));
    match load("[[sink]]\nname = \"a\"\ntype = \"file\"\n") {
        Err(ConfigError::Invalid { line: Some(1), key, .. }) => assert_eq!(key, "sink[0]"),
        other => panic!("{other:?}"),
    }
}

// --- environment overrides --------------------------------------------------------------

#[test]
fn env_overrides_scalars_arrays_and_indexed_tables() {
    let file = "[[sink]]\nname = \"a\"\ntype = \"file\"\npath = \"/var/log/berth/{tag}.log\"\n";
    let c = load_env(
        file,
        &[
            ("BERTH_INPUT__FORWARD__SHARED_KEY", "s3cret"),
            ("BERTH_INPUT__FORWARD__LISTEN", r#"["tcp://0.0.0.0:24224", "unix:///run/b.sock"]"#),
            ("BERTH_INPUT__FORWARD__MAX_CONNECTIONS", "16"),
            ("BERTH_INPUT__FORWARD__SOCKET_MODE", "0600"),
            ("BERTH_ADMIN__LISTEN", ""),
            ("BERTH_SHUTDOWN__GRACE_PERIOD", "10s"),
            ("BERTH_SINK__0__PATH", "/x/{tag}.log"),
            ("BERTH_CONFIG", "/ignored.toml"),
            ("BERTH_LOG", "debug"),
            ("BERTH_CAT_SHARED_KEY", "not a config key"),
            ("BERTH_TEST_VENV", "/var/tmp/venv"),
            ("HOME", "/root"),
        ],
    )
    .unwrap();
    let f = &c.input.forward;
    assert_eq!(f.shared_key, "s3cret");
    assert_eq!(f.listen, [tcp("0.0.0.0:24224"), ListenAddr::Unix("/run/b.sock".into())]);
    assert_eq!(f.max_connections, 16);
    assert_eq!(f.socket_mode, 0o600, "not a TOML integer (leading zero), so taken as a string");
    assert_eq!(c.admin.listen, None);
    assert_eq!(c.shutdown.grace_period, Duration::from_secs(10));
    assert!(matches!(&c.sinks[0].kind, SinkKind::File { path, .. } if path == "/x/{tag}.log"));
    assert_eq!(c.overrides.len(), 7);
    assert!(c.overrides.contains(&"BERTH_ADMIN__LISTEN".to_string()));
}

#[test]
fn env_can_add_a_sink_and_users() {
    let c = load_env(
        SINK,
        &[
            ("BERTH_SINK__1__NAME", "archive"),
            ("BERTH_SINK__1__TYPE", "file"),
            ("BERTH_SINK__1__PATH", "/var/log/berth/{tag}.ndjson"),
            ("BERTH_SINK__1__MATCH", "app.**"),
            ("BERTH_INPUT__FORWARD__SHARED_KEY", "k"),
            ("BERTH_INPUT__FORWARD__USER__0__USERNAME", "u"),
            ("BERTH_INPUT__FORWARD__USER__0__PASSWORD", "p"),
        ],
    )
    .unwrap();
    assert_eq!(c.sinks.len(), 2);
    assert_eq!(c.sinks[1].name, "archive");
    assert_eq!(c.sinks[1].match_.as_str(), "app.**");
    assert_eq!(c.input.forward.users[0].username, "u");
    assert_eq!(c.input.forward.users[0].password, "p");
}

#[test]
fn env_overrides_apply_to_builtin_defaults() {
    let c = Config::from_toml_str(
        BUILTIN_DEFAULTS,
        BUILTIN_SOURCE,
        [("BERTH_SINK__0__TYPE", "null"), ("BERTH_SINK__0__FORMAT", "")],
    )
    .unwrap_err()
    .to_string();
    // format = "" is read as a string and rejected: the variable is named.
    assert!(
        c.starts_with("environment variable BERTH_SINK__0__FORMAT: sink[0].format: unknown format"),
        "{c}"
    );
    let c = Config::from_toml_str(
        BUILTIN_DEFAULTS,
        BUILTIN_SOURCE,
        [("BERTH_INPUT__FORWARD__SHARED_KEY", "k")],
    )
    .unwrap();
    assert_eq!(c.input.forward.shared_key, "k");
}

#[test]
fn quoting_forces_a_string() {
    let c = load_env(SINK, &[("BERTH_INPUT__FORWARD__SHARED_KEY", "\"123\"")]).unwrap();
    assert_eq!(c.input.forward.shared_key, "123");
    // Unquoted, too: the key wants a string (it used to fail, and print the secret).
    let c = load_env(SINK, &[("BERTH_INPUT__FORWARD__SHARED_KEY", "123")]).unwrap();
    assert_eq!(c.input.forward.shared_key, "123");
}

#[test]
fn env_errors_name_the_variable() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "BERTH_INPUT__FORWARD__MAX_MESSAGE_SIZE",
            "16XB",
            "environment variable BERTH_INPUT__FORWARD__MAX_MESSAGE_SIZE: input.forward.max_message_size: invalid size \"16XB\"",
        ),
        ("BERTH_INPUT__FORWARD__LISEN", "x", "environment variable BERTH_INPUT__FORWARD__LISEN: input.forward: unknown key \"lisen\""),
        ("BERTH_BOGUS__X", "1", "environment variable BERTH_BOGUS__X: unknown key \"bogus\""),
        ("BERTH_SINK__5__NAME", "x", "environment variable BERTH_SINK__5__NAME: sink[5].name: index 5 is out of range: sink has 1 entries"),
        ("BERTH_SINK__NAME", "x", "environment variable BERTH_SINK__NAME: sink.name: sink is an array"),
        ("BERTH_ADMIN__", "x", "environment variable BERTH_ADMIN__: empty key segment"),
        ("BERTH_INPUT__FORWARD__LISTEN", "[\"tcp://1.2.3.4:5\", \"udp://x\"]", "environment variable BERTH_INPUT__FORWARD__LISTEN: input.forward.listen[1]: invalid listen address \"udp://x\""),
        ("BERTH_SINK__1__NAME", "console", "environment variable BERTH_SINK__1__NAME: sink[1]: missing key \"type\""),
    ];
    for (var, value, want) in cases {
        let got = env_err(SINK, &[(var, value)]);
        assert!(got.starts_with(want), "{var}={value}\nwant: {want}\n got: {got}");
    }
    let got = env_err(BUILTIN_DEFAULTS, &[("BERTH_ADMIN__LISTEN__PORT", "1")]);
    assert_eq!(got, "environment variable BERTH_ADMIN__LISTEN__PORT: admin.listen.port: admin.listen is a string, not a table");
    // A cross-field error caused by a variable names it too, and where the first one is.
    let got = env_err(SINK, &[("BERTH_SINK__1__NAME", "console"), ("BERTH_SINK__1__TYPE", "null")]);
    assert_eq!(
        got,
        "environment variable BERTH_SINK__1__NAME: sink[1].name: duplicate sink name \"console\" (first used on line 2)"
    );
}

// --- printing ---------------------------------------------------------------------------

#[test]
fn redacted_toml_hides_secrets_and_round_trips() {
    let text = "[input.forward]\nshared_key = \"s3cret\"\nself_hostname = \"h\"\n\
                [[input.forward.user]]\nusername = \"u\"\npassword = \"pw\"\n\
                [[input.forward.user]]\nusername = \"v\"\npassword = \"\"\n\
                [[sink]]\nname = \"f\"\ntype = \"file\"\nmatch = \"app.** b\"\npath = \"/l/{tag}\"\n\
                [[sink]]\nname = \"n\"\ntype = \"null\"\n";
    let c = load(text).unwrap();
    let out = c.to_redacted_toml();
    assert!(!out.contains("s3cret") && !out.contains("\"pw\""), "{out}");
    assert!(out.contains("shared_key = \"<redacted>\""), "{out}");
    assert!(out.contains("password = \"<redacted>\""), "{out}");
    assert!(out.contains("password = \"\""), "an empty password stays visibly empty: {out}");
    assert!(
        out.starts_with("# berth effective configuration, from /etc/berth/berth.toml\n"),
        "{out}"
    );
    assert!(!format!("{:?}", c.input.forward.users).contains("pw"), "Debug hides passwords");

    let again = Config::from_toml_str(&out, "printed", NO_ENV).unwrap();
    assert_eq!(
        again.to_redacted_toml().lines().skip(1).collect::<Vec<_>>(),
        out.lines().skip(1).collect::<Vec<_>>()
    );
    assert_eq!(again.sinks[0].match_.as_str(), "app.** b");
    assert_eq!(again.input.forward.users.len(), 2);
}

#[test]
fn printed_defaults_round_trip() {
    let d = Config::from_toml_str(BUILTIN_DEFAULTS, BUILTIN_SOURCE, NO_ENV).unwrap();
    let out = d.to_redacted_toml();
    for line in [
        "max_message_size = \"16MiB\"",
        "idle_timeout = \"5m\"",
        "memory_budget = \"256MiB\"",
        "handshake_timeout = \"10s\"",
        "frame_timeout = \"1m\"",
        "grace_period = \"25s\"",
        "socket_mode = \"0660\"",
        "[[sink]]",
    ] {
        assert!(out.contains(line), "{line} in:\n{out}");
    }
    let again = Config::from_toml_str(&out, "printed", NO_ENV).unwrap();
    assert_eq!(again.input.forward.listen, d.input.forward.listen);
    assert_eq!(again.admin.listen, d.admin.listen);

    let off =
        Config::from_toml_str(BUILTIN_DEFAULTS, BUILTIN_SOURCE, [("BERTH_ADMIN__LISTEN", "")])
            .unwrap();
    let out = off.to_redacted_toml();
    assert!(
        out.contains("listen = \"\"")
            && out.contains("# with environment overrides: BERTH_ADMIN__LISTEN"),
        "{out}"
    );
}

// --- loading from files -----------------------------------------------------------------

#[test]
fn load_prefers_the_flag_then_berth_config() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.toml");
    let b = dir.path().join("b.toml");
    std::fs::write(&a, "[[sink]]\nname = \"from-a\"\ntype = \"null\"\n").unwrap();
    std::fs::write(&b, "[[sink]]\nname = \"from-b\"\ntype = \"null\"\n").unwrap();
    let env = vec![("BERTH_CONFIG".to_string(), b.display().to_string())];
    let c = Config::load_with_env(Some(&a), &env).unwrap();
    assert_eq!(c.sinks[0].name, "from-a");
    assert_eq!(c.source, a.display().to_string());
    let c = Config::load_with_env(None, &env).unwrap();
    assert_eq!(c.sinks[0].name, "from-b");
}

#[test]
fn load_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let e = Config::load_with_env(Some(&missing), &[]).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(
        e.to_string().starts_with(&format!("{}: cannot read the config file: ", missing.display())),
        "{e}"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[input.forward]\n\nidle_timeout = \"forever\"\n").unwrap();
    let e = Config::load_with_env(Some(&bad), &[]).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "{}: line 3: input.forward.idle_timeout: invalid duration",
            bad.display()
        )),
        "{e}"
    );
}

#[test]
fn self_hostname_resolves_only_when_empty() {
    let c = load(&format!("[input.forward]\nself_hostname = \"given\"\n{SINK}")).unwrap();
    assert_eq!(c.input.forward.self_hostname, "given");
    let c = load(SINK).unwrap();
    assert_eq!(c.input.forward.self_hostname, host_name());
}

#[test]
fn listen_addr_display_round_trips() {
    for s in ["tcp://127.0.0.1:24224", "tcp://[::1]:1", "unix:///run/berth/forward.sock"] {
        let a: ListenAddr = s.parse().unwrap();
        assert_eq!(a.to_string(), s);
    }
}

// --- [enrich] ---------------------------------------------------------------------------

#[test]
fn enrich_defaults() {
    let c = load(SINK).unwrap();
    let d = &c.enrich.docker;
    assert!(d.enabled);
    assert_eq!(d.socket, None, "$DOCKER_HOST, else the default socket, at start");
    assert_eq!(d.fields, DockerField::DEFAULTS);
    assert_eq!(
        d.fields.iter().map(|f| f.as_str()).collect::<Vec<_>>(),
        [
            "container_name",
            "image",
            "ecs_cluster",
            "ecs_task_arn",
            "ecs_task_id",
            "ecs_task_definition_family",
            "ecs_task_definition_revision",
            "ecs_container_name"
        ]
    );
    assert!(d.labels.is_empty() && d.env.is_empty());
    assert_eq!(d.removed_grace_period, Duration::from_secs(300));
    assert_eq!(d.max_containers, 4096);
    assert!(c.enrich.ec2.enabled);
    assert_eq!(c.enrich.ec2.apply_to, ApplyTo::All);
}

#[test]
fn enrich_every_key_set() {
    let text = format!(
        "{SINK}[enrich.docker]\nenabled = true\nsocket = \"unix:///run/docker.sock\"\n\
         fields = [\"ecs_task_id\", \"container_name\"]\nlabels = [\"team\", \"com.example.v=version\"]\n\
         env = [\"APP_ENV=env\"]\nremoved_grace_period = \"30s\"\nmax_containers = 10\n\
         [enrich.ec2]\nenabled = false\napply_to = \"docker\"\n"
    );
    let c = load(&text).unwrap();
    let d = &c.enrich.docker;
    assert_eq!(d.socket.as_deref(), Some("unix:///run/docker.sock"));
    assert_eq!(d.fields, [DockerField::EcsTaskId, DockerField::ContainerName]);
    assert_eq!(
        d.labels,
        [
            CopyKey { name: "team".into(), key: "team".into() },
            CopyKey { name: "com.example.v".into(), key: "version".into() }
        ]
    );
    assert_eq!(d.env, [CopyKey { name: "APP_ENV".into(), key: "env".into() }]);
    assert_eq!(d.removed_grace_period, Duration::from_secs(30));
    assert_eq!(d.max_containers, 10);
    assert!(!c.enrich.ec2.enabled);
    assert_eq!(c.enrich.ec2.apply_to, ApplyTo::Docker);
    // Printed and loaded again: the same.
    let again = load(&c.to_redacted_toml()).unwrap();
    assert_eq!(again.enrich.docker.labels, d.labels);
    assert_eq!(again.enrich.docker.fields, d.fields);
    assert_eq!(again.enrich.ec2.apply_to, ApplyTo::Docker);
}

#[test]
fn enrich_errors_name_line_and_key() {
    for (text, want) in [
        ("[enrich.docker]\nfields = [\"image\", \"pod\"]\n", "line 2: enrich.docker.fields[1]: unknown field \"pod\" (expected one of container_name, image,"),
        ("[enrich.docker]\nfields = [\"image\", \"image\"]\n", "line 2: enrich.docker.fields[1]: field \"image\" is listed twice"),
        ("[enrich.docker]\nlabels = [\"x=image\"]\n", "line 2: enrich.docker.labels[0]: record key \"image\" is already added"),
        ("[enrich.docker]\nlabels = [\"a=k\"]\nenv = [\"k\"]\n", "line 3: enrich.docker.env[0]: record key \"k\" is already added"),
        ("[enrich.docker]\nenv = [\"=k\"]\n", "line 2: enrich.docker.env[0]: \"=k\": expected \"NAME\" or \"NAME=KEY\""),
        ("[enrich.docker]\nsocket = \"/var/run/docker.sock\"\n", "line 2: enrich.docker.socket: \"/var/run/docker.sock\": expected unix:///path"),
        ("[enrich.docker]\nmax_containers = 0\n", "line 2: enrich.docker.max_containers: must be at least 1"),
        ("[enrich.docker]\nremoved_grace_period = \"soon\"\n", "line 2: enrich.docker.removed_grace_period:"),
        ("[enrich.docker]\ninspect_wait = \"2m\"\n", "line 2: enrich.docker.inspect_wait: at most 60s"),
        ("[enrich.docker]\nlabel = []\n", "line 2: enrich.docker: unknown key \"label\""),
        ("[enrich.ec2]\napply_to = \"some\"\n", "line 2: enrich.ec2.apply_to: unknown apply_to \"some\" (expected \"all\" or \"docker\")"),
        ("[enrich.ec2]\nendpoint = \"http://x\"\n", "line 2: enrich.ec2: unknown key \"endpoint\""),
    ] {
        let got = err(&format!("{text}{SINK}"));
        assert!(got.contains(want), "for:\n{text}\nwant: {want}\n got: {got}");
    }
    let many: Vec<String> = (0..70).map(|i| format!("\"l{i}\"")).collect();
    let got = err(&format!("[enrich.docker]\nlabels = [{}]\n{SINK}", many.join(", ")));
    assert!(got.contains("fields, labels and env add 78 keys; at most 64"), "{got}");
}

#[test]
fn enrich_env_overrides() {
    let c = load_env(
        SINK,
        &[
            ("BERTH_ENRICH__DOCKER__ENABLED", "false"),
            ("BERTH_ENRICH__DOCKER__LABELS", "[\"team\"]"),
            ("BERTH_ENRICH__DOCKER__REMOVED_GRACE_PERIOD", "1m"),
            ("BERTH_ENRICH__DOCKER__INSPECT_WAIT", "15s"),
            ("BERTH_ENRICH__EC2__ENABLED", "false"),
        ],
    )
    .unwrap();
    assert!(!c.enrich.docker.enabled);
    assert_eq!(c.enrich.docker.labels[0].key, "team");
    assert_eq!(c.enrich.docker.removed_grace_period, Duration::from_secs(60));
    assert_eq!(c.enrich.docker.inspect_wait, Duration::from_secs(15));
    assert!(!c.enrich.ec2.enabled);
    let got = env_err(SINK, &[("BERTH_ENRICH__DOCKER__ENABLED", "yes")]);
    assert!(
        got.starts_with(
            "environment variable BERTH_ENRICH__DOCKER__ENABLED: enrich.docker.enabled:"
        ),
        "{got}"
    );
}

// --- cloudwatch_logs ---------------------------------------------------------------------

/// The issue's example, verbatim.
const CW_EXAMPLE: &str = r#"[[sink]]
name = "cw"
type = "cloudwatch_logs"
match = "**"
region = ""
endpoint_url = ""
log_group = "/ecs/{ecs_cluster}/{ecs_task_definition_family}"
log_stream = "{ecs_task_id}/{ecs_container_name}"
message_key = "log"
create_missing_group = true
create_missing_stream = true
retention_days = 0
log_group_class = "STANDARD"
kms_key_id = ""
role_arn = ""
flush_interval = "1s"
concurrency = 4
dead_letter_path = "/var/lib/berth/dead-letter/cw.ndjson"
"#;

#[test]
fn cloudwatch_example_loads_with_its_defaults() {
    let c = load(CW_EXAMPLE).unwrap();
    let SinkKind::CloudWatchLogs(cw) = &c.sinks[0].kind else { panic!("{:?}", c.sinks[0].kind) };
    assert_eq!(
        (
            cw.aws.region.as_deref(),
            cw.endpoint_url.as_deref(),
            cw.aws.role_arn.as_deref(),
            cw.kms_key_id.as_deref()
        ),
        (None, None, None, None)
    );
    assert_eq!(cw.retention_days, None);
    assert_eq!(cw.log_group_class, cloudwatch::LogGroupClass::Standard);
    assert_eq!(cw.message_key.as_deref(), Some("log"));
    assert!(cw.create_missing_group && cw.create_missing_stream);
    assert_eq!(cw.network.concurrency, 4);

    let minimal = load("[[sink]]\nname = \"cw\"\ntype = \"cloudwatch_logs\"\n").unwrap();
    let SinkKind::CloudWatchLogs(m) = &minimal.sinks[0].kind else { panic!() };
    assert_eq!(m.log_group, cloudwatch::DEFAULT_LOG_GROUP);
    assert_eq!(m.log_stream, cloudwatch::DEFAULT_LOG_STREAM);
    assert_eq!(m.network.dead_letter_path, PathBuf::from("/var/lib/berth/dead-letter/cw.ndjson"));

    let set = load("[[sink]]\nname = \"cw\"\ntype = \"cloudwatch_logs\"\nretention_days = 30\nlog_group_class = \"INFREQUENT_ACCESS\"\n\
                    endpoint_url = \"http://127.0.0.1:5000\"\nregion = \"eu-west-1\"\nrole_arn = \"arn:aws:iam::123456789012:role/logs\"\nmessage_key = \"\"\n")
    .unwrap();
    let SinkKind::CloudWatchLogs(s) = &set.sinks[0].kind else { panic!() };
    assert_eq!(s.retention_days, Some(30));
    assert_eq!(s.log_group_class, cloudwatch::LogGroupClass::InfrequentAccess);
    assert_eq!(s.message_key, None, "\"\" sends every record as JSON");
    let out = set.to_redacted_toml();
    let again = Config::from_toml_str(&out, "printed", NO_ENV).unwrap();
    assert_eq!(
        again.to_redacted_toml().lines().skip(1).collect::<Vec<_>>(),
        out.lines().skip(1).collect::<Vec<_>>()
    );
}

#[test]
fn cloudwatch_errors_name_line_and_key() {
    let head = "[[sink]]\nname = \"cw\"\ntype = \"cloudwatch_logs\"\n";
    for (tail, want) in [
        ("retention_days = 2\n", "line 4: sink[0].retention_days: 2 is not a retention CloudWatch Logs accepts (0 to leave it as is, or one of 1, 3, 5, 7, 14,"),
        ("log_group_class = \"COLD\"\n", "line 4: sink[0].log_group_class: unknown log group class \"COLD\" (expected \"STANDARD\" or \"INFREQUENT_ACCESS\")"),
        ("max_event_size = \"2MiB\"\n", "line 4: sink[0].max_event_size: must be between 1KiB and 1MiB"),
        ("log_group = \"/ecs/{x\"\n", "line 4: sink[0].log_group: log group template \"/ecs/{x\": unclosed '{'"),
        ("log_group = \"/ecs/a b\"\n", "line 4: sink[0].log_group: log group template \"/ecs/a b\": log group names cannot contain ' '"),
        ("log_stream = \"a:{b}\"\n", "line 4: sink[0].log_stream: log stream template \"a:{b}\": log stream names cannot contain ':'"),
        ("endpoint_url = \"localhost:5000\"\n", "line 4: sink[0].endpoint_url: \"localhost:5000\" is not an http:// or https:// URL"),
        ("role_arn = \"logs\"\n", "line 4: sink[0].role_arn: \"logs\" is not a role ARN"),
        ("concurrency = 0\n", "line 4: sink[0].concurrency: must be from 1 to 64"),
        ("index = \"x\"\n", "line 4: sink[0].index: only sinks of type \"elasticsearch\" have index"),
        ("format = \"json\"\n", "line 4: sink[0].format: sinks of type \"cloudwatch_logs\" have no format"),
        ("log_grup = \"x\"\n", "line 4: sink[0]: unknown key \"log_grup\""),
    ] {
        let e = err(&format!("{head}{tail}"));
        assert!(e.contains(want), "{tail}: {e}");
        assert!(e.starts_with(FILE), "{e}");
    }
    let e = err("[[sink]]\nname = \"s\"\ntype = \"stdout\"\nlog_group = \"x\"\n");
    assert!(e.contains("line 4: sink[0].log_group: only sinks of type \"cloudwatch_logs\" have log_group (this one is \"stdout\")"), "{e}");
    let e = err("[[sink]]\nname = \"s\"\ntype = \"elasticsearch\"\nendpoints = [\"http://x\"]\nindex = \"i\"\nregion = \"x\"\n");
    assert!(
        e.contains("sink[0].region: only sinks of type \"cloudwatch_logs\" have region"),
        "{e}"
    );
}

// --- AWS region and credentials ---------------------------------------------------------

#[test]
fn cloudwatch_external_id_is_carried_with_role_arn() {
    let c = load("[[sink]]\nname = \"cw\"\ntype = \"cloudwatch_logs\"\nregion = \"eu-west-1\"\nrole_arn = \"arn:aws:iam::123456789012:role/logs\"\nexternal_id = \"ext-1\"\n").unwrap();
    let SinkKind::CloudWatchLogs(cw) = &c.sinks[0].kind else { panic!("{:?}", c.sinks[0].kind) };
    let want = AwsAuth {
        region: Some("eu-west-1".into()),
        role_arn: Some("arn:aws:iam::123456789012:role/logs".into()),
        external_id: Some("ext-1".into()),
    };
    assert_eq!(cw.aws, want);
    // Printed and loaded again: the same.
    let again = load(&c.to_redacted_toml()).unwrap();
    let SinkKind::CloudWatchLogs(cw) = &again.sinks[0].kind else { panic!() };
    assert_eq!(cw.aws, want);
    // On a sink of another type it is a cloudwatch_logs key, like region.
    let e = err("[[sink]]\nname = \"s\"\ntype = \"stdout\"\nexternal_id = \"x\"\n");
    assert!(e.contains("line 4: sink[0].external_id: only sinks of type \"cloudwatch_logs\" have external_id (this one is \"stdout\")"), "{e}");
}

#[test]
fn aws_keys_are_checked_the_same_way_in_both_sinks() {
    let cw = "[[sink]]\nname = \"cw\"\ntype = \"cloudwatch_logs\"\n";
    let es = "[[sink]]\nname = \"es\"\ntype = \"elasticsearch\"\nendpoints = [\"http://h\"]\nindex = \"i\"\n[sink.auth]\ntype = \"aws_sigv4\"\n";
    for (text, want) in [
        (format!("{cw}external_id = \"x\"\n"), "line 4: sink[0].external_id: external_id needs role_arn"),
        (format!("{cw}role_arn = \"\"\nexternal_id = \"x\"\n"), "line 5: sink[0].external_id: external_id needs role_arn"),
        (format!("{es}external_id = \"x\"\n"), "line 8: sink[0].auth.external_id: external_id needs role_arn"),
        (format!("{cw}role_arn = \"logs\"\n"), "line 4: sink[0].role_arn: \"logs\" is not a role ARN (arn:aws:iam::<account>:role/<name>)"),
        (format!("{es}role_arn = \"logs\"\n"), "line 8: sink[0].auth.role_arn: \"logs\" is not a role ARN (arn:aws:iam::<account>:role/<name>)"),
    ] {
        let e = err(&text);
        assert!(e.starts_with(FILE) && e.contains(want), "for:\n{text}\nwant: {want}\n got: {e}");
    }
    // Empty is absent, in both.
    let c = load(&format!("{cw}region = \"\"\nrole_arn = \"\"\nexternal_id = \"\"\n")).unwrap();
    let SinkKind::CloudWatchLogs(c) = &c.sinks[0].kind else { panic!() };
    assert_eq!(c.aws, AwsAuth::default());
    let c = load(&format!("{es}region = \"\"\nrole_arn = \"\"\nexternal_id = \"\"\n")).unwrap();
    let SinkKind::Elasticsearch(c) = &c.sinks[0].kind else { panic!() };
    assert_eq!(
        c.auth,
        EsAuth::AwsSigV4(SigV4Auth { aws: AwsAuth::default(), service: SigV4Service::Es })
    );
}

// --- one struct per sink type -----------------------------------------------------------

#[test]
fn sink_keys_come_from_their_type() {
    // An unknown key lists the keys of this sink's type only.
    let e = err("[[sink]]\nname = \"a\"\ntype = \"stdout\"\ncolor = true\n");
    assert!(
        e.contains("line 4: sink[0]: unknown key \"color\" (expected one of \"name\", \"type\", \"match\", \"format\")"),
        "{e}"
    );
    let e = err("[[sink]]\nname = \"a\"\ntype = \"null\"\ncolor = true\n");
    assert!(
        e.contains("line 4: sink[0]: unknown key \"color\" (expected one of \"name\", \"type\", \"match\")"),
        "{e}"
    );
    // In a table with keys flattened into it, the list has them too.
    let e = err("[[sink]]\nname = \"s\"\ntype = \"elasticsearch\"\nendpoints = [\"http://h\"]\nindex = \"i\"\n[sink.auth]\ntype = \"aws_sigv4\"\nregoin = \"x\"\n");
    assert!(
        e.contains("line 8: sink[0].auth: unknown key \"regoin\" (expected one of \"type\", \"username\", \"password\", \"service\", \"region\", \"role_arn\", \"external_id\")"),
        "{e}"
    );
    // A key of another type, and the value of one, on each side.
    for (text, want) in [
        ("[[sink]]\nname = \"s\"\ntype = \"elasticsearch\"\nendpoints = [\"http://x\"]\nindex = \"i\"\nexternal_id = \"x\"\n", "line 6: sink[0].external_id: only sinks of type \"cloudwatch_logs\" have external_id (this one is \"elasticsearch\")"),
        ("[[sink]]\nname = \"s\"\ntype = \"cloudwatch_logs\"\nauth = { type = \"none\" }\n", "line 4: sink[0].auth: only sinks of type \"elasticsearch\" have auth (cloudwatch_logs sinks share only flush_interval, concurrency, timeout, max_retry_duration, dead_letter_path, dead_letter_max_size)"),
        ("[[sink]]\nname = \"s\"\ntype = \"null\"\nconcurrency = 2\n", "line 4: sink[0].concurrency: only sinks of type \"elasticsearch\" have concurrency (this one is \"null\")"),
        ("[[sink]]\nname = \"s\"\ntype = \"stdout\"\nconcurrency = \"x\"\n", "line 4: sink[0].concurrency: invalid type: string \"x\", expected i64"),
        ("[[sink]]\nname = \"s\"\ntype = \"cloudwatch_logs\"\nregion = 5\n", "line 4: sink[0].region: invalid type: integer \"5\", expected a string"),
        ("sink = 1\n", "line 1: sink: invalid type: expected an array of tables ([[sink]])"),
    ] {
        let e = err(text);
        assert!(e.starts_with(FILE) && e.contains(want), "for:\n{text}\nwant: {want}\n got: {e}");
    }
}

#[test]
fn env_overrides_reach_the_per_type_keys() {
    let c = load_env(
        "[[sink]]\nname = \"cw\"\ntype = \"cloudwatch_logs\"\n",
        &[
            ("BERTH_SINK__0__REGION", "eu-west-1"),
            ("BERTH_SINK__0__ROLE_ARN", "arn:aws:iam::123456789012:role/logs"),
            ("BERTH_SINK__0__EXTERNAL_ID", "ext-1"),
            ("BERTH_SINK__0__CONCURRENCY", "2"),
        ],
    )
    .unwrap();
    let SinkKind::CloudWatchLogs(cw) = &c.sinks[0].kind else { panic!() };
    assert_eq!(cw.aws.region.as_deref(), Some("eu-west-1"));
    assert_eq!(cw.aws.external_id.as_deref(), Some("ext-1"));
    assert_eq!(cw.network.concurrency, 2);
    let e = env_err(
        "[[sink]]\nname = \"cw\"\ntype = \"cloudwatch_logs\"\n",
        &[("BERTH_SINK__0__ROLE_ARN", "logs")],
    );
    assert_eq!(
        e,
        "environment variable BERTH_SINK__0__ROLE_ARN: sink[0].role_arn: \"logs\" is not a role ARN (arn:aws:iam::<account>:role/<name>)"
    );
}

// --- [ecs] and [capacity] ---------------------------------------------------------------

const CAPACITY: &str = r#"
[ecs]
agent_url = "http://127.0.0.1:51678/"
region = "eu-west-1"
daemon_task_families = ["datadog-agent", " node-exporter "]

[capacity]
enabled = true
interval = "30s"
ecs_api_interval = "0s"
drift_tolerance_memory_mib = 64
task_shapes = [ { name = "batch-large", cpu = 4096, memory = 15722 },
                { name = "worker", cpu = 1024, memory = 2048 },
                { name = "mem-only", memory = 512 } ]

[capacity.publish]
cloudwatch_emf = true
emf_log_group = "/berth/capacity"
namespace = "Berth/Prod"
dimensions = [["ClusterName", "TaskShape"], ["AutoScalingGroupName", "TaskShape"], []]

[capacity.scale_in_protection]
enabled = true
idle_grace = "15m"
"#;

#[test]
fn capacity_sections_load_with_their_defaults_and_round_trip() {
    let d = load(SINK).unwrap();
    assert_eq!(d.ecs.agent_url, "http://127.0.0.1:51678");
    assert!(!d.capacity.enabled, "off unless asked");
    assert_eq!(d.capacity.interval, Duration::from_secs(60));
    assert_eq!(d.capacity.ecs_api_interval, Some(Duration::from_secs(3600)));
    assert_eq!(d.capacity.cgroup_root, PathBuf::from("/sys/fs/cgroup"));
    assert!(d.capacity.publish.prometheus && !d.capacity.publish.cloudwatch_emf);
    assert_eq!(
        d.capacity.publish.dimensions,
        [vec![Dimension::ClusterName, Dimension::TaskShape], vec![Dimension::ClusterName]]
    );
    assert_eq!(d.capacity.scale_in_protection.idle_grace, Duration::from_secs(600));

    let c = load(&format!("{CAPACITY}\n{SINK}")).unwrap();
    assert_eq!(c.ecs.agent_url, "http://127.0.0.1:51678", "trailing / dropped");
    assert_eq!(c.ecs.aws.region.as_deref(), Some("eu-west-1"));
    assert_eq!(c.capacity.ecs_api_interval, None, "0s turns the cross-check off");
    assert_eq!(c.capacity.drift_tolerance_memory_mib, 64);
    assert_eq!(c.ecs.daemon_task_families, ["datadog-agent", "node-exporter"]);
    assert_eq!(c.capacity.task_shapes.len(), 3);
    assert_eq!(
        c.capacity.task_shapes[2],
        TaskShape { name: "mem-only".into(), cpu: 0, memory: 512 }
    );
    assert_eq!(c.capacity.publish.namespace, "Berth/Prod");
    assert_eq!(c.capacity.publish.dimensions.len(), 3);
    assert!(c.capacity.publish.dimensions[2].is_empty(), "an empty set is allowed by EMF");
    assert!(c.capacity.scale_in_protection.enabled);

    let printed = c.to_redacted_toml();
    let again = Config::from_toml_str(&printed, "printed", NO_ENV).unwrap();
    assert_eq!(again.capacity.task_shapes, c.capacity.task_shapes);
    assert_eq!(again.capacity.publish.dimensions, c.capacity.publish.dimensions);
    assert_eq!(again.capacity.ecs_api_interval, None);
    assert_eq!(again.ecs.aws, c.ecs.aws);

    let env = load_env(
        SINK,
        &[("BERTH_CAPACITY__ENABLED", "true"), ("BERTH_ECS__AGENT_URL", "http://10.0.0.1:51678")],
    )
    .unwrap();
    assert!(env.capacity.enabled);
    assert_eq!(env.ecs.agent_url, "http://10.0.0.1:51678");
}

#[test]
fn capacity_errors_name_the_key_and_line() {
    for (text, want) in [
        ("[ecs]\nagent_url = \"https://x:1\"\n", "line 2: ecs.agent_url: \"https://x:1\" is not an agent address"),
        ("[ecs]\nagent_url = \"http://x:1/v1\"\n", "ecs.agent_url"),
        ("[ecs]\nrole_arn = \"nope\"\n", "line 2: ecs.role_arn: \"nope\" is not a role ARN"),
        ("[ecs]\nagent = 1\n", "unknown key \"agent\""),
        ("[capacity]\ninterval = \"500ms\"\n", "line 2: capacity.interval: must be at least 1s"),
        ("[capacity]\necs_api_interval = \"10ms\"\n", "capacity.ecs_api_interval: must be \"0s\" (off) or at least 1s"),
        ("[ecs]\ndaemon_task_families = [\"\"]\n", "ecs.daemon_task_families: a family name is empty"),
        (
            "[capacity]\ntask_shapes = [{ name = \"a\", cpu = 1 },\n  { name = \"a\", cpu = 2 }]\n",
            "line 3: capacity.task_shapes: shape \"a\" is named twice",
        ),
        ("[capacity]\ntask_shapes = [{ name = \"z\" }]\n", "shape \"z\" needs cpu or memory"),
        ("[capacity]\ntask_shapes = [{ name = \"z\", cpus = 1 }]\n", "unknown key \"cpus\""),
        ("[capacity]\ntask_shapes = [{ name = \"z\", cpu = -1 }]\n", "capacity.task_shapes"),
        ("[capacity.publish]\nnamespace = \"AWS/ECS\"\n", "capacity.publish.namespace: \"AWS/ECS\" is not a CloudWatch namespace"),
        ("[capacity.publish]\nemf_log_group = \"bad group\"\n", "capacity.publish.emf_log_group"),
        (
            "[capacity.publish]\ndimensions = [[\"ClusterName\", \"Shape\"]]\n",
            "line 2: capacity.publish.dimensions: unknown dimension \"Shape\" (expected one of ClusterName, TaskShape",
        ),
        ("[capacity.publish]\ndimensions = [[\"TaskShape\", \"TaskShape\"]]\n", "is in one set twice"),
        ("[capacity.publish]\ndimensions = [[\"TaskShape\"], [\"TaskShape\"]]\n", "a dimension set is listed twice"),
        ("[capacity.scale_in_protection]\nidle = \"1m\"\n", "unknown key \"idle\""),
        ("[capacity]\ntask_shapes = [{ name = \"a b\", cpu = 1 }]\n", "shape name \"a b\" must be 1-100 of"),
        (
            "[capacity]\ntask_shapes = [{name=\"a\",cpu=1},{name=\"b\",cpu=1},{name=\"c\",cpu=1},{name=\"d\",cpu=1},{name=\"e\",cpu=1},{name=\"f\",cpu=1},{name=\"g\",cpu=1},{name=\"h\",cpu=1},{name=\"i\",cpu=1},{name=\"j\",cpu=1},{name=\"k\",cpu=1}]\n[capacity.publish]\necs_attributes = true\n",
            "line 4: capacity.publish.ecs_attributes: 11 task shapes, but ECS allows 10 custom attributes",
        ),
    ] {
        let got = err(&format!("{text}\n{SINK}"));
        assert!(got.contains(want), "for:\n{text}\nwant: {want}\n got: {got}");
        assert!(got.starts_with(FILE), "{got}");
    }
}

// --- [drain] ------------------------------------------------------------------------------

#[test]
fn drain_section_loads_checks_and_round_trips() {
    let d = load(SINK).unwrap().drain;
    assert!(!d.enabled);
    assert_eq!(d.watch, [Watch::AsgLifecycle, Watch::SpotInterruption]);
    assert_eq!(d.poll_interval, Duration::from_secs(5));
    assert_eq!(d.max_duration, Duration::from_secs(48 * 3600));
    assert_eq!(d.heartbeat_fraction, 0.5);
    assert_eq!(d.result_on_timeout, LifecycleResult::Continue);
    assert_eq!((d.lifecycle_hook_name, d.auto_scaling_group_name), (None, None));
    assert_eq!(d.stop_timeout, Duration::from_secs(120));
    let on = load(&format!("[drain]\nenabled = true\n{SINK}")).unwrap().drain;
    assert!(on.enabled, "draining can be turned on");

    let text = format!(
        "[drain]\nwatch = [\"asg_lifecycle\", \"rebalance\"]\npoll_interval = \"2s\"\n\
         lifecycle_hook_name = \"drain-hook\"\nmax_duration = \"8h\"\nheartbeat_fraction = 0.25\n\
         result_on_timeout = \"ABANDON\"\ndrain_on_shutdown = true\n{SINK}"
    );
    let c = load(&text).unwrap();
    assert_eq!(c.drain.watch, [Watch::AsgLifecycle, Watch::Rebalance]);
    assert_eq!(c.drain.lifecycle_hook_name.as_deref(), Some("drain-hook"));
    assert_eq!(c.drain.result_on_timeout, LifecycleResult::Abandon);
    let again = Config::from_toml_str(&c.to_redacted_toml(), "printed", NO_ENV).unwrap();
    assert_eq!(again.drain.watch, c.drain.watch);
    assert_eq!(again.drain.max_duration, Duration::from_secs(8 * 3600));
    assert_eq!(again.drain.heartbeat_fraction, 0.25);
    assert!(again.drain.drain_on_shutdown);

    for (text, want) in [
        (
            "[drain]\nwatch = [\"spot\"]\n",
            "line 2: drain.watch[0]: unknown trigger \"spot\" (expected one of asg_lifecycle",
        ),
        (
            "[drain]\nwatch = [\"rebalance\", \"rebalance\"]\n",
            "drain.watch: \"rebalance\" is listed twice",
        ),
        ("[drain]\nenabled = true\nwatch = []\n", "drain.watch: nothing would start a drain"),
        ("[drain]\npoll_interval = \"100ms\"\n", "drain.poll_interval: must be at least 1s"),
        ("[drain]\nmax_duration = \"0s\"\n", "drain.max_duration: must be more than 0s"),
        (
            "[drain]\nheartbeat_fraction = 1.0\n",
            "line 2: drain.heartbeat_fraction: 1 must be more than 0 and less than 1",
        ),
        ("[drain]\nresult_on_timeout = \"continue\"\n", "unknown result \"continue\""),
        ("[drain]\nhook = \"x\"\n", "unknown key \"hook\""),
        (
            "[shutdown]\ngrace_period = \"30s\"\n[drain]\nenabled = true\nstop_timeout = \"30s\"\n",
            "line 5: drain.stop_timeout: 30s leaves no time to finish a drain after SIGTERM: it must be more than shutdown.grace_period (30s)",
        ),
    ] {
        let got = err(&format!("{text}\n{SINK}"));
        assert!(got.contains(want), "for:\n{text}\nwant: {want}\n got: {got}");
    }
}

// --- overrides typed by their key, secrets never shown -------------------------------------

#[test]
fn an_override_is_typed_by_the_key_it_sets() {
    let c = load_env(
        SINK,
        &[
            ("BERTH_INPUT__FORWARD__SHARED_KEY", "987654321"),
            ("BERTH_SINK__0__NAME", "true"),
            ("BERTH_INPUT__FORWARD__MAX_CONNECTIONS", "7"),
        ],
    )
    .unwrap();
    assert_eq!(c.input.forward.shared_key, "987654321");
    assert_eq!(c.sinks[0].name, "true");
    assert_eq!(c.input.forward.max_connections, 7, "a number where a number is wanted");
    // A number key given words still fails, naming the variable.
    let e = load_env(SINK, &[("BERTH_INPUT__FORWARD__MAX_CONNECTIONS", "many")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("BERTH_INPUT__FORWARD__MAX_CONNECTIONS"), "{e}");
}

#[test]
fn a_secret_of_the_wrong_type_is_not_shown_in_the_error() {
    let e = err(&format!("[input.forward]\nshared_key = 987654321\n{SINK}"));
    assert!(e.contains("input.forward.shared_key") && e.contains("expected a string"), "{e}");
    assert!(!e.contains("987654321"), "the secret in the error: {e}");
    let e = err(&format!(
        "[input.forward]\nshared_key = \"k\"\n[[input.forward.user]]\nusername = \"u\"\npassword = 4242424242\n{SINK}"
    ));
    assert!(e.contains("password") && !e.contains("4242424242"), "{e}");
}

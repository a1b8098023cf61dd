//! The artefacts a user takes as they are: the systemd unit verifies (`systemd-analyze
//! verify`, with its ExecStart pointed at the binary under test) and scores well on
//! `systemd-analyze security`; the daemon task definition asks for what a drain needs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use std::path::PathBuf;
use std::process::Command;

fn unit_for_test() -> (tempfile::TempDir, std::path::PathBuf) {
    let text = std::fs::read_to_string(package_file("systemd/berth.service")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.service");
    std::fs::write(&path, text.replace("/usr/bin/berth", berth_bin().to_str().unwrap())).unwrap();
    (dir, path)
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let (dir, unit) = unit_for_test();
    // The optional socket unit beside it (it names berth.service).
    let socket = dir.path().join("berth.socket");
    std::fs::copy(package_file("systemd/berth.socket"), &socket).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .arg(&socket)
        .output()
        .expect("systemd-analyze (Debian's systemd package; scripts/test-deps installs it)");
    let said =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify:\n{said}");

    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for berth.service: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure in:\n{text}"));
    assert!(score <= 2.0, "exposure {score} (OK is below 2.0):\n{text}");

    let unit = std::fs::read_to_string(package_file("systemd/berth.service")).unwrap();
    for line in [
        "Type=notify",
        "RestartPreventExitStatus=78",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "EnvironmentFile=-/etc/default/berth",
        "Before=docker.service ecs.service",
        "After=network-online.target",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} in the unit");
    }
    // Longer than a drain's stop timeout (120 s by default).
    let stop = unit.lines().find_map(|l| l.strip_prefix("TimeoutStopSec=")).unwrap();
    assert!(stop.trim_end_matches('s').parse::<u64>().unwrap() > 120, "{stop}");
}

#[test]
fn the_daemon_task_definition_gives_a_drain_the_ecs_maximum_stop_timeout() {
    let text = std::fs::read_to_string(package_file("packaging/ecs/task-definition.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let c = &v["containerDefinitions"][0];
    assert_eq!(c["stopTimeout"], 120, "the ECS maximum: a drain finishes after SIGTERM");
    assert_eq!(c["memoryReservation"], 128, "covers the measured peaks (docs/performance.md)");
    // berth's own logs never go through itself (a berth that is down would lose them).
    assert_eq!(c["logConfiguration"]["logDriver"], "awslogs");
    assert_eq!(v["networkMode"], "host");
    // berth writes only to the host's directories (tests/image.rs runs it --read-only).
    assert_eq!(c["readonlyRootFilesystem"], true);
    // The buffer's identity is bound to the host's machine id.
    assert!(c["mountPoints"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["containerPath"] == "/etc/machine-id"));
}

/// `berth check-config` on a config text: the effective config as TOML, or the error.
fn check_config(text: &str) -> Result<toml::Value, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(berth_bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .env_remove("BERTH_CONFIG")
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap())
}

fn packaged_config() -> String {
    std::fs::read_to_string(package_file("packaging/berth.toml")).unwrap()
}

#[test]
fn the_packaged_config_is_safe_on_a_production_host() {
    let text = packaged_config();
    let c = check_config(&text).unwrap_or_else(|e| panic!("packaging/berth.toml: {e}"));
    let listen: Vec<&str> = c["input"]["forward"]["listen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(listen, ["unix:///run/berth/forward.sock", "tcp://127.0.0.1:24224"]);
    assert_eq!(c["admin"]["listen"].as_str(), Some("127.0.0.1:24220"), "admin on loopback");
    let buffer = c["buffer"]["path"].as_str().unwrap();
    assert!(buffer.starts_with("/var/lib/berth/"), "buffer under the StateDirectory: {buffer}");
    assert_eq!(c["buffer"]["when_full"].as_str(), Some("block"), "a full buffer loses nothing");
    // Nothing copied to the journal (stdout is the journal under systemd), nothing sent to
    // an endpoint that does not exist, nothing growing on disk without a bound: one sink,
    // a null one, named so that /v1/status and the metrics say it is not configured.
    let sinks = c["sink"].as_array().unwrap();
    assert_eq!(sinks.len(), 1, "{sinks:?}");
    assert_eq!(sinks[0]["type"].as_str(), Some("null"));
    assert_eq!(sinks[0]["name"].as_str(), Some("unconfigured"));
    assert!(c.get("drain").is_none_or(|d| d["enabled"].as_bool() == Some(false)));
    // The file tells the user the one edit to make.
    assert!(text.contains("THE ONE EDIT TO MAKE: the [[sink]]"), "the edit is named");
}

/// The sinks the packaged config offers, commented out, each uncommented in place of the
/// null sink: what a user does with the file must load.
#[test]
fn each_sink_the_packaged_config_offers_loads() {
    let text = packaged_config();
    let (head, tail) = text.split_once("[[sink]]\nname = \"unconfigured\"").unwrap();
    let offered: Vec<String> = tail
        .split("\n# [[sink]]\n")
        .skip(1)
        .map(|block| {
            let body: String = block
                .lines()
                .take_while(|l| l.starts_with("# "))
                .map(|l| format!("{}\n", &l[2..]))
                .collect();
            format!("{head}[[sink]]\n{body}")
        })
        .collect();
    assert_eq!(offered.len(), 3, "cloudwatch_logs, elasticsearch, file");
    let mut types = Vec::new();
    for config in &offered {
        let c = check_config(config).unwrap_or_else(|e| panic!("{e}\nin:\n{config}"));
        let sinks = c["sink"].as_array().unwrap();
        assert_eq!(sinks.len(), 1);
        types.push(sinks[0]["type"].as_str().unwrap().to_string());
    }
    assert_eq!(types, ["cloudwatch_logs", "elasticsearch", "file"]);
}

/// The packaged config serves: with its sockets and buffer moved under a temp dir (the
/// only change), an event sent to the Unix socket is acknowledged and delivered.
#[test]
fn the_packaged_config_serves() {
    let text = packaged_config()
        .replace("unix:///run/berth/", "unix://{dir}/")
        .replace("tcp://127.0.0.1:24224", "tcp://127.0.0.1:0")
        .replace("\"127.0.0.1:24220\"", "\"127.0.0.1:0\"")
        .replace("/var/lib/berth/", "{dir}/");
    let b = start_in(tmpfs_dir(), &text, &[("BERTH_ENRICH__DOCKER__ENABLED", "false")]);
    let socket = format!("unix://{}/forward.sock", b.path().display());
    let mut cat = Command::new(berth_bin())
        .args(["cat", "--ack", "--address", &socket, "app.hello"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut cat.stdin.take().unwrap(), b"{\"log\":\"hello\"}\n").unwrap();
    let out = cat.wait_with_output().unwrap();
    assert!(out.status.success(), "berth cat --ack: {}", String::from_utf8_lossy(&out.stderr));
    b.wait_metric("berth_input_records_total", 1.0);
    // Delivered: the null sink's lag, present in /metrics, is back to 0.
    wait_for(WAIT, "the null sink to deliver", || {
        let (_, body) = b.http_get("/metrics");
        body.lines().any(|l| l == "berth_sink_lag_records{sink=\"unconfigured\"} 0").then_some(())
    });
}

/// `scripts/package` into a temp dir: the .deb and the .rpm, compressed the quick way
/// (`BERTH_PACKAGE_FAST`: same contents). The static binary is built once per target dir
/// and change (scripts/test builds it before the suite, so here it is a no-op).
fn build_packages() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(package_file("scripts/package"))
        .arg(dir.path())
        .env("BERTH_PACKAGE_FAST", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "scripts/package:\n{}", String::from_utf8_lossy(&out.stderr));
    let find = |suffix: &str| {
        let found: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_str().unwrap().ends_with(suffix))
            .collect();
        assert_eq!(found.len(), 1, "one {suffix} in {found:?}");
        found[0].clone()
    };
    let (deb, rpm) = (find("_amd64.deb"), find(".x86_64.rpm"));
    (dir, deb, rpm)
}

fn run_ok(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} ({e}): scripts/test-deps installs it"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What both packages' scripts must do to create the user: the docker group first when
/// missing (Docker may be installed later; the unit's SupplementaryGroups=docker needs it),
/// then the system user in it.
fn assert_creates_the_user(script: &str, which: &str) {
    for step in [
        "getent group docker >/dev/null || groupadd --system docker",
        "useradd --system $own --groups docker --home-dir /var/lib/berth --no-create-home",
        "--shell /usr/sbin/nologin --comment \"berth log shipper\" berth",
        "usermod --append --groups docker berth",
    ] {
        assert!(script.contains(step), "{which} lacks `{step}`:\n{script}");
    }
}

#[test]
fn the_packages_hold_the_binary_the_unit_the_config_and_create_the_user() {
    let (dir, deb, rpm) = build_packages();
    let deb = deb.to_str().unwrap();
    let rpm = rpm.to_str().unwrap();
    let version = env!("CARGO_PKG_VERSION");

    // The .deb: the files, the conffile, the maintainer scripts.
    assert_eq!(run_ok("dpkg-deb", &["-f", deb, "Package"]).trim(), "berth");
    assert_eq!(run_ok("dpkg-deb", &["-f", deb, "Version"]).trim(), format!("{version}-1"));
    let listing = run_ok("dpkg-deb", &["-c", deb]);
    let files: Vec<&str> = listing.lines().filter_map(|l| l.split_whitespace().nth(5)).collect();
    for f in ["./usr/bin/berth", "./usr/lib/systemd/system/berth.service", "./etc/berth/berth.toml"]
    {
        assert!(files.contains(&f), "{f} in the .deb:\n{listing}");
    }
    assert!(
        listing.lines().any(|l| l.starts_with("-rwxr-xr-x 0/0 ") && l.ends_with("./usr/bin/berth")),
        "{listing}"
    );
    assert_eq!(run_ok("dpkg-deb", &["-I", deb, "conffiles"]).trim(), "/etc/berth/berth.toml");
    let postinst = run_ok("dpkg-deb", &["-I", deb, "postinst"]);
    assert_creates_the_user(&postinst, "the .deb's postinst");
    for step in [
        "install -d -o berth -g berth -m 0750 /var/lib/berth",
        "systemctl daemon-reload",
        "systemctl try-restart berth.service",
    ] {
        assert!(postinst.contains(step), "postinst lacks `{step}`:\n{postinst}");
    }
    assert!(
        !postinst.contains("systemctl enable"),
        "installing does not enable berth:\n{postinst}"
    );
    let prerm = run_ok("dpkg-deb", &["-I", deb, "prerm"]);
    assert!(prerm.contains("remove)") && prerm.contains("disable --now berth.service"), "{prerm}");
    assert!(run_ok("dpkg-deb", &["-I", deb, "postrm"]).contains("systemctl daemon-reload"));

    // What the .deb holds is the tree's: the config and unit as they are, the static binary.
    let root = dir.path().join("root");
    run_ok("dpkg-deb", &["-x", deb, root.to_str().unwrap()]);
    for (packed, source) in [
        ("etc/berth/berth.toml", "packaging/berth.toml"),
        ("usr/lib/systemd/system/berth.service", "systemd/berth.service"),
    ] {
        assert_eq!(
            std::fs::read(root.join(packed)).unwrap(),
            std::fs::read(package_file(source)).unwrap(),
            "{packed} is {source}"
        );
    }
    let bin = root.join("usr/bin/berth");
    // Static (static-pie): no program interpreter, no library needed.
    let elf = run_ok("readelf", &["--program-headers", "--dynamic", bin.to_str().unwrap()]);
    assert!(!elf.contains("INTERP") && !elf.contains("(NEEDED)"), "not static:\n{elf}");
    assert!(run_ok(bin.to_str().unwrap(), &["version"]).contains(version));

    // The .rpm: the same files, the config noreplace.
    let qf =
        "[%{FILENAMES} %{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEFLAGS:fflags}\n]";
    let files = run_ok("rpm", &["-qp", "--qf", qf, rpm]);
    for want in [
        "/usr/bin/berth -rwxr-xr-x root:root ",
        "/usr/lib/systemd/system/berth.service -rw-r--r-- root:root ",
        "/etc/berth/berth.toml -rw-r--r-- root:root cn",
    ] {
        assert!(files.lines().any(|l| l.starts_with(want)), "`{want}` in the .rpm:\n{files}");
    }
    let listed = run_ok("rpm", &["-qlp", rpm]);
    assert_eq!(
        listed.lines().collect::<Vec<_>>(),
        [
            "/etc/berth/berth.toml",
            "/usr/bin/berth",
            "/usr/lib/systemd/system/berth.service",
            "/usr/share/doc/berth/README.md"
        ]
    );
    assert_eq!(
        run_ok("rpm", &["-qp", "--qf", "%{NAME} %{VERSION}-%{RELEASE} %{ARCH}", rpm]),
        format!("berth {version}-1 x86_64")
    );
    let requires = run_ok("rpm", &["-qp", "--requires", rpm]);
    assert!(requires.lines().any(|l| l.starts_with("shadow-utils")), "{requires}");
    assert!(!requires.contains(".so"), "static: no library requirement:\n{requires}");
    let scripts = run_ok("rpm", &["-qp", "--scripts", rpm]);
    // `<name> scriptlet:` (or `<name> scriptlet (using /bin/sh):`) heads each script.
    let mut sections = std::collections::BTreeMap::<String, String>::new();
    let mut current = String::new();
    for l in scripts.lines() {
        let head =
            l.strip_suffix(" scriptlet:").or_else(|| Some(l.split_once(" scriptlet (using ")?.0));
        match head {
            Some(name) => current = name.to_string(),
            None => sections.entry(current.clone()).or_default().push_str(&format!("{l}\n")),
        }
    }
    let section = |name: &str| -> String {
        sections.get(name).cloned().unwrap_or_else(|| panic!("no {name} scriptlet:\n{scripts}"))
    };
    assert_creates_the_user(&section("preinstall"), "the .rpm's %pre");
    let post = section("postinstall");
    for step in ["install -d -o berth -g berth -m 0750 /var/lib/berth", "systemctl daemon-reload"] {
        assert!(post.contains(step), "%post lacks `{step}`:\n{post}");
    }
    assert!(!post.contains("systemctl enable"), "installing does not enable berth:\n{post}");
    let preun = section("preuninstall");
    assert!(preun.contains("[ \"$1\" -eq 0 ]") && preun.contains("disable --now"), "{preun}");
    let postun = section("postuninstall");
    assert!(postun.contains("[ \"$1\" -ge 1 ]") && postun.contains("try-restart"), "{postun}");
}

/// The .deb installed, upgraded, removed and purged in a throwaway copy of this machine's
/// root: overlayfs over `/` with the writes on tmpfs, in a private mount namespace
/// (`unshare --mount`), `chroot`ed into; nothing of it reaches the host. No systemd runs
/// there (no /run/systemd/system), so the scripts skip systemctl as in any image build. The
/// docker group is removed first: berth is installed before Docker on a fresh AMI.
#[test]
fn the_deb_installs_creates_the_user_and_its_unit_verifies() {
    if run_ok("id", &["-u"]).trim() != "0" {
        eprintln!("skipping: installing into an overlay root needs root (CI runs as root)");
        return;
    }
    let (_dir, deb, _) = build_packages();
    let layers = tmpfs_dir();
    let l = layers.path().display().to_string();
    let script = format!(
        r#"set -eu
mkdir {l}/upper {l}/work {l}/root
mount -t overlay overlay -o lowerdir=/,upperdir={l}/upper,workdir={l}/work {l}/root
mount -t proc proc {l}/root/proc
mount --bind /dev {l}/root/dev
mkdir -p {l}/root/tmp/pkg
cp {deb} {l}/root/tmp/pkg/berth.deb
chroot {l}/root /bin/sh -eu -c '
# Docker not installed yet: no docker group (the unit needs it; the package makes it).
if getent group docker >/dev/null; then groupdel docker; fi
dpkg -i /tmp/pkg/berth.deb >/dev/null
echo "user: $(getent passwd berth | cut -d: -f6,7)"
echo "groups: $(id -nG berth)"
echo "state: $(stat -c %U:%G:%a /var/lib/berth)"
echo "conffiles: $(dpkg-query -W -f="\${{Conffiles}}" berth | cut -d" " -f2)"
systemd-analyze verify /usr/lib/systemd/system/berth.service
berth check-config >/dev/null && echo "check-config: ok"
sed -i "s/name = \"unconfigured\"/name = \"edited\"/" /etc/berth/berth.toml
dpkg -i /tmp/pkg/berth.deb >/dev/null
echo "after upgrade: $(grep -c "name = \"edited\"" /etc/berth/berth.toml)"
dpkg -r berth >/dev/null
echo "removed: $(test -e /usr/bin/berth && echo binary; test -e /etc/berth/berth.toml && echo config)"
dpkg --purge berth >/dev/null 2>&1
echo "purged: $(test -e /etc/berth/berth.toml && echo config; test -d /var/lib/berth && echo state)"
'
"#,
        deb = deb.display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "install in the overlay root:\n{said}{err}");
    let expect = [
        "user: /var/lib/berth:/usr/sbin/nologin",
        "state: berth:berth:750",
        "conffiles: /etc/berth/berth.toml",
        "check-config: ok",
        // The user's edit survives a reinstall of the package.
        "after upgrade: 1",
        // A removal keeps the conffile; a purge removes it and keeps the buffer's directory.
        "removed: config",
        "purged: state",
    ];
    for line in expect {
        assert!(said.lines().any(|l| l == line), "`{line}` in:\n{said}{err}");
    }
    let groups = said.lines().find_map(|l| l.strip_prefix("groups: ")).unwrap();
    assert!(groups.split(' ').any(|g| g == "docker"), "berth in docker: {groups}");
    // systemd-analyze verify said nothing: the installed unit, binary and all, verifies.
    assert!(err.trim().is_empty(), "{err}");
}

const TEMPLATE: &str = "packaging/cloudformation/berth.yaml";

/// A template ARN (`!Sub` text) as packaging/iam writes it: partition `aws`, region,
/// account and group `*`.
fn cfn_widen(sub: &str) -> String {
    sub.replace("${AWS::Partition}", "aws")
        .replace("${AWS::Region}", "*")
        .replace("${AWS::AccountId}", "*")
        .replace("${AutoScalingGroupName}", "*")
}

/// A template `Resource` (one `!Sub` or a list of them) with [`cfn_widen`] applied.
fn cfn_widened(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) if m.contains_key("!Sub") => {
            cfn_widen(m["!Sub"].as_str().unwrap()).into()
        }
        serde_json::Value::Array(a) => a
            .iter()
            .map(|x| x.get("!Sub").map_or(x.clone(), |s| cfn_widen(s.as_str().unwrap()).into()))
            .collect(),
        other => other.clone(),
    }
}

/// The JSON `script` (run by the test venv's Python on the package file `rel`) prints;
/// `what` says what it needs when it fails.
fn python_json(script: &str, rel: &str, what: &str) -> serde_json::Value {
    let out =
        Command::new(test_python()).args(["-c", script]).arg(package_file(rel)).output().unwrap();
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The CloudFormation template as JSON (PyYAML from the test venv; its short-form tags kept
/// as `{"!Sub": …}`, `{"!Ref": …}`, `{"!GetAtt": …}`).
fn template() -> serde_json::Value {
    let script = r#"
import json, sys, yaml
class Loader(yaml.SafeLoader):
    pass
def tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {"!" + suffix: value}
Loader.add_multi_constructor("!", tag)
print(json.dumps(yaml.load(open(sys.argv[1]), Loader=Loader)))
"#;
    python_json(script, TEMPLATE, "PyYAML (cfn-lint brings it: scripts/test-deps)")
}

/// A stack's values for the tests: cluster `prod`, group `hosts`, region `eu-west-1`.
const STACK: [(&str, &str); 3] =
    [("ClusterName", "prod"), ("AutoScalingGroupName", "hosts"), ("AWS::Region", "eu-west-1")];

/// The CloudFormation task's environment with a stack's values filled in (the parameters'
/// defaults, [`STACK`], the log groups' names).
fn cfn_environment(t: &serde_json::Value) -> Vec<(String, String)> {
    let param = |name: &str| -> String {
        if let Some((_, v)) = STACK.iter().find(|(k, _)| *k == name) {
            return (*v).to_string();
        }
        if name == "CapacityLogGroup" {
            return "/berth/capacity/prod".into();
        }
        match &t["Parameters"][name]["Default"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => panic!("no value for {name}"),
            v => v.to_string(),
        }
    };
    let sub = |text: &str| {
        let mut out = text.to_string();
        while let Some(at) = out.find("${") {
            let end = at + out[at..].find('}').unwrap();
            let v = param(&out[at + 2..end]);
            out.replace_range(at..=end, &v);
        }
        out
    };
    let c = &t["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"][0];
    c["Environment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let value = match &e["Value"] {
                serde_json::Value::String(s) => s.clone(),
                v if v.get("!Ref").is_some() => param(v["!Ref"].as_str().unwrap()),
                v => sub(v["!Sub"].as_str().unwrap()),
            };
            (e["Name"].as_str().unwrap().to_string(), value)
        })
        .collect()
}

#[test]
fn the_cloudformation_template_passes_cfn_lint() {
    let out = Command::new(test_python().with_file_name("cfn-lint"))
        .arg(package_file(TEMPLATE))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cfn-lint (scripts/test-deps installs it):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The template's task role holds packaging/iam's policies statement for statement (only
/// the ARNs narrowed to the stack's partition, region, account and group), the hook and
/// the daemon service are as the drain needs, and the container's environment loads.
#[test]
fn the_cloudformation_template_matches_the_policies_and_its_config_loads() {
    let t = template();
    let r = &t["Resources"];
    let policies = r["TaskRole"]["Properties"]["Policies"].as_array().unwrap();
    for (name, file) in [
        ("berth-capacity", "packaging/iam/berth-capacity-policy.json"),
        ("berth-drain", "packaging/iam/berth-drain-policy.json"),
    ] {
        let want = common::iam::policy(file);
        let got = policies.iter().find(|p| p["PolicyName"] == name).unwrap();
        let got = got["PolicyDocument"]["Statement"].as_array().unwrap();
        let want = want["Statement"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g["Sid"], w["Sid"]);
            assert_eq!(g["Effect"], w["Effect"]);
            assert_eq!(g["Action"], w["Action"], "{}", w["Sid"]);
            assert_eq!(cfn_widened(&g["Resource"]), w["Resource"], "{}", w["Sid"]);
        }
    }

    // The sink's statement is packaging/iam/berth-sink-policy.json's CloudWatch Logs one,
    // narrowed to the cluster's groups.
    let sink_policy = common::iam::policy("packaging/iam/berth-sink-policy.json");
    let cw = sink_policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["Sid"] == "CloudWatchLogsSink")
        .unwrap();
    let got = &policies.iter().find(|p| p["PolicyName"] == "berth-sink").unwrap()["PolicyDocument"]
        ["Statement"][0];
    assert_eq!(got["Sid"], cw["Sid"]);
    assert_eq!(got["Action"], cw["Action"]);
    let widened = cfn_widened(&got["Resource"]).to_string().replace("${ClusterName}", "*");
    assert_eq!(widened.replace("/*/*", "/*"), cw["Resource"].to_string());

    let hook = &r["DrainHook"]["Properties"];
    assert_eq!(hook["LifecycleTransition"], "autoscaling:EC2_INSTANCE_TERMINATING");
    assert_eq!(hook["HeartbeatTimeout"], 1800);
    assert_eq!(r["Service"]["Properties"]["SchedulingStrategy"], "DAEMON");
    let ecs_config = t["Outputs"]["EcsConfigLines"]["Value"].as_str().unwrap();
    assert!(ecs_config
        .lines()
        .any(|l| l == r#"ECS_AVAILABLE_LOGGING_DRIVERS=["json-file","awslogs","fluentd"]"#));
    assert!(ecs_config.lines().any(|l| l == "ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST=true"));

    let task = &r["TaskDefinition"]["Properties"];
    assert_eq!(task["NetworkMode"], "host");
    let c = &task["ContainerDefinitions"][0];
    assert_eq!(c["StopTimeout"], 120);
    // Covers the measured peaks (docs/performance.md: at most 87 MiB with a 1.1 GiB backlog).
    assert_eq!(c["MemoryReservation"], 128);
    assert_eq!(c["ReadonlyRootFilesystem"], true);
    assert_eq!(c["LogConfiguration"]["LogDriver"], "awslogs", "berth's own logs never go to berth");
    assert_eq!(
        c["HealthCheck"]["Command"],
        serde_json::json!(["CMD", "/usr/bin/berth", "health", "--config", "/etc/berth/berth.toml"])
    );

    // The image's config with the task's environment (stack values filled in) loads.
    let mut cmd = Command::new(berth_bin());
    cmd.args(["check-config", "--config"]).arg(package_file("packaging/berth-container.toml"));
    cmd.env_remove("BERTH_CONFIG").env_remove("BERTH_LOG");
    for (name, value) in cfn_environment(&t) {
        cmd.env(name, value);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "the task's config: {}", String::from_utf8_lossy(&out.stderr));
    let effective: toml::Value = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let sink = &effective["sink"][0];
    assert_eq!(sink["type"].as_str(), Some("cloudwatch_logs"));
    assert_eq!(sink["log_group"].as_str(), Some("/ecs/prod/{ecs_task_definition_family}"));
    assert_eq!(effective["drain"]["enabled"].as_bool(), Some(true));

    // The scale-out alarm watches what this config publishes: the shape's
    // SchedulableTasks in the namespace and under the dimensions berth writes, one point
    // per host per period.
    let cap = &effective["capacity"];
    assert_eq!(cap["enabled"].as_bool(), Some(true));
    let shape = &cap["task_shapes"][0];
    assert_eq!(shape["name"].as_str(), Some("default"));
    assert_eq!((shape["cpu"].as_integer(), shape["memory"].as_integer()), (Some(1024), Some(2048)));
    let publish = &cap["publish"];
    assert_eq!(publish["cloudwatch_emf"].as_bool(), Some(true));
    assert_eq!(publish["emf_log_group"].as_str(), Some("/berth/capacity/prod"));
    let alarm = &r["ScaleOutAlarm"]["Properties"];
    assert_eq!(alarm["MetricName"], "SchedulableTasks");
    assert_eq!(alarm["Namespace"].as_str(), publish["namespace"].as_str());
    // check-config writes durations as humantime does: "1m", "90s", "1m 30s".
    let interval: u64 = cap["interval"]
        .as_str()
        .unwrap()
        .split(' ')
        .map(|p| match p.strip_suffix('m') {
            Some(m) => m.parse::<u64>().unwrap() * 60,
            None => p.strip_suffix('s').unwrap().parse::<u64>().unwrap(),
        })
        .sum();
    assert_eq!(alarm["Period"], interval, "the period is berth's interval");
    let dims: Vec<&str> = alarm["Dimensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["Name"].as_str().unwrap())
        .collect();
    assert!(
        publish["dimensions"].as_array().unwrap().iter().any(|set| set
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap())
            .eq(dims.clone())),
        "berth publishes the set {dims:?}: {}",
        publish["dimensions"]
    );
    assert_eq!(alarm["Dimensions"][1]["Value"]["!Ref"], "ScaleOutTaskShape");
    assert_eq!(alarm["Statistic"], "Sum");
    assert_eq!(alarm["TreatMissingData"], "missing", "no data never scales out");
    assert_eq!(alarm["AlarmActions"][0]["!Ref"], "ScaleOutPolicy");
    let policy = &r["ScaleOutPolicy"]["Properties"];
    assert_eq!(policy["AutoScalingGroupName"]["!Ref"], "AutoScalingGroupName");
    assert_eq!(policy["StepAdjustments"][0]["ScalingAdjustment"], 1);
    assert_eq!(
        r["CapacityLogGroup"]["Properties"]["LogGroupName"]["!Sub"],
        "/berth/capacity/${ClusterName}"
    );
}

const TERRAFORM: &str = "packaging/terraform";

/// Every `.tf` file of the module as python-hcl2 reads it (no terraform binary can be
/// installed here): `{file name: document}`. Blocks are lists of objects, attribute values
/// as written (`"${var.x}"` for an expression).
fn terraform() -> serde_json::Value {
    let script = r#"
import glob, json, os, sys, hcl2
# python-hcl2 8 keeps a string literal's quotes ('"Allow"', expressions as '${...}') and
# marks blocks: literals unquoted, marks dropped.
def plain(v):
    if isinstance(v, dict):
        return {plain(k): plain(x) for k, x in v.items() if not k.startswith("__")}
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, str) and len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        return v[1:-1].replace('\\"', '"')
    return v
out = {}
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.tf"))):
    with open(path) as f:
        out[os.path.basename(path)] = plain(hcl2.load(f))
print(json.dumps(out))
"#;
    python_json(script, TERRAFORM, "python-hcl2 (scripts/test-deps installs it)")
}

/// The one block `kind "type" "name"` (e.g. `resource "aws_iam_role" "task"`) of the module.
fn tf_block<'a>(
    tf: &'a serde_json::Value,
    kind: &str,
    ty: &str,
    name: &str,
) -> &'a serde_json::Value {
    let found: Vec<&serde_json::Value> = tf
        .as_object()
        .unwrap()
        .values()
        .filter_map(|doc| doc[kind].as_array())
        .flatten()
        .filter_map(|b| b.get(ty).and_then(|t| t.get(name)))
        .collect();
    assert_eq!(found.len(), 1, "{kind} {ty:?} {name:?}");
    found[0]
}

/// A variable's default, as the string Terraform interpolates.
fn tf_default(tf: &serde_json::Value, var: &str) -> String {
    let found = tf
        .as_object()
        .unwrap()
        .values()
        .filter_map(|doc| doc["variable"].as_array())
        .flatten()
        .find_map(|b| b.get(var))
        .unwrap_or_else(|| panic!("no variable {var}"));
    match &found["default"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => panic!("variable {var} has no default"),
        v => v.to_string(),
    }
}

/// `text` with the module's interpolations filled in for [`STACK`]: `${var.x}` (the
/// defaults), `${local.x}` (the locals, themselves filled in), and the names of the
/// resources berth's config refers to. `widen`: the partition `aws`, region and account
/// `*` (as packaging/iam writes its ARNs) and the group `*`.
fn tf_fill(tf: &serde_json::Value, text: &str, widen: bool) -> String {
    let locals = &tf["main.tf"]["locals"][0];
    let stack = |k: &str| STACK.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_string());
    let mut out = text.to_string();
    while let Some(at) = out.find("${") {
        let end = at + out[at..].find('}').unwrap();
        let expr = out[at + 2..end].to_string();
        let v = match expr.as_str() {
            "local.partition" => "aws".into(),
            "local.region" if widen => "*".into(),
            "local.region" => stack("AWS::Region").unwrap(),
            "local.account" => "*".into(),
            "var.cluster_name" => stack("ClusterName").unwrap(),
            "var.auto_scaling_group_name" if widen => "*".into(),
            "var.auto_scaling_group_name" => stack("AutoScalingGroupName").unwrap(),
            "aws_cloudwatch_log_group.capacity.name" => "/berth/capacity/prod".into(),
            "aws_autoscaling_lifecycle_hook.drain.name" => {
                tf_block(tf, "resource", "aws_autoscaling_lifecycle_hook", "drain")["name"]
                    .as_str()
                    .unwrap()
                    .to_string()
            }
            e if e.starts_with("var.") => tf_default(tf, &e[4..]),
            e if e.starts_with("local.") => {
                tf_fill(tf, locals[&e[6..]].as_str().unwrap_or_else(|| panic!("{e}")), widen)
            }
            e => panic!("no value for ${{{e}}} in {text:?}"),
        };
        out.replace_range(at..=end, &v);
    }
    out
}

/// One string or a list of strings, as a list.
fn strings(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(a) => a.iter().flat_map(strings).collect(),
        v => panic!("not strings: {v}"),
    }
}

/// The module is the CloudFormation template's stack: packaging/iam's policies statement for
/// statement (ARNs narrowed as the template narrows them), the sink's statement, the same
/// environment for the container (whose config loads), the same hook, service and
/// scale-out alarm.
#[test]
fn the_terraform_module_is_the_cloudformation_stack() {
    let tf = terraform();
    let t = template();
    let doc = |name: &str| tf_block(&tf, "data", "aws_iam_policy_document", name);
    for (name, file) in [
        ("capacity", "packaging/iam/berth-capacity-policy.json"),
        ("drain", "packaging/iam/berth-drain-policy.json"),
    ] {
        let want = common::iam::policy(file);
        let want = want["Statement"].as_array().unwrap();
        let got = doc(name)["statement"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g["sid"], w["Sid"]);
            assert_eq!(g["effect"], w["Effect"]);
            assert_eq!(strings(&g["actions"]), strings(&w["Action"]), "{}", w["Sid"]);
            let resources: Vec<String> =
                strings(&g["resources"]).iter().map(|r| tf_fill(&tf, r, true)).collect();
            assert_eq!(resources, strings(&w["Resource"]), "{}", w["Sid"]);
        }
    }
    // The sink's statement is the template's.
    let cfn_sink = t["Resources"]["TaskRole"]["Properties"]["Policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["PolicyName"] == "berth-sink")
        .unwrap()["PolicyDocument"]["Statement"][0]
        .clone();
    let sink = &doc("sink")["statement"][0];
    assert_eq!(sink["sid"], cfn_sink["Sid"]);
    assert_eq!(strings(&sink["actions"]), strings(&cfn_sink["Action"]));
    let cfn_resources: Vec<String> = cfn_sink["Resource"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| cfn_widen(r["!Sub"].as_str().unwrap()).replace("${ClusterName}", "prod"))
        .collect();
    let resources: Vec<String> =
        strings(&sink["resources"]).iter().map(|r| tf_fill(&tf, r, true)).collect();
    assert_eq!(resources, cfn_resources);
    for (name, policy) in
        [("sink", "berth-sink"), ("capacity", "berth-capacity"), ("drain", "berth-drain")]
    {
        let p = tf_block(&tf, "resource", "aws_iam_role_policy", name);
        assert_eq!(p["name"], policy);
        assert_eq!(p["role"], "${aws_iam_role.task.id}");
        assert_eq!(p["policy"], format!("${{data.aws_iam_policy_document.{name}.json}}"));
    }

    // The container's environment is the template's, and the config it makes loads.
    let env: Vec<(String, String)> = tf["main.tf"]["locals"][0]["environment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                tf_fill(&tf, e["value"].as_str().unwrap(), false),
            )
        })
        .collect();
    let cfn_env = cfn_environment(&t);
    assert_eq!(env, cfn_env, "the module's environment is the template's");
    let mut cmd = Command::new(berth_bin());
    cmd.args(["check-config", "--config"]).arg(package_file("packaging/berth-container.toml"));
    cmd.env_remove("BERTH_CONFIG").env_remove("BERTH_LOG").envs(env);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "the module's config: {}", String::from_utf8_lossy(&out.stderr));

    let task = tf_block(&tf, "resource", "aws_ecs_task_definition", "berth");
    assert_eq!(task["network_mode"], "host");
    let defs = task["container_definitions"].as_str().unwrap();
    for want in [
        "stopTimeout = 120",
        "memoryReservation = 128",
        "readonlyRootFilesystem = true",
        "environment = local.environment",
        "logDriver = \"awslogs\"",
        "containerPath = \"/etc/machine-id\"",
        "\"/usr/bin/berth\", \"health\"",
    ] {
        assert!(defs.contains(want), "container_definitions: {want}");
    }
    let service = tf_block(&tf, "resource", "aws_ecs_service", "berth");
    assert_eq!(service["scheduling_strategy"], "DAEMON");
    let hook = tf_block(&tf, "resource", "aws_autoscaling_lifecycle_hook", "drain");
    let cfn_hook = &t["Resources"]["DrainHook"]["Properties"];
    assert_eq!(hook["name"], cfn_hook["LifecycleHookName"]);
    assert_eq!(hook["lifecycle_transition"], cfn_hook["LifecycleTransition"]);
    assert_eq!(hook["heartbeat_timeout"], cfn_hook["HeartbeatTimeout"]);
    assert_eq!(hook["default_result"], cfn_hook["DefaultResult"]);

    let alarm = tf_block(&tf, "resource", "aws_cloudwatch_metric_alarm", "scale_out");
    let cfn_alarm = &t["Resources"]["ScaleOutAlarm"]["Properties"];
    for (k, c) in [
        ("namespace", "Namespace"),
        ("metric_name", "MetricName"),
        ("statistic", "Statistic"),
        ("period", "Period"),
        ("evaluation_periods", "EvaluationPeriods"),
        ("datapoints_to_alarm", "DatapointsToAlarm"),
        ("comparison_operator", "ComparisonOperator"),
        ("treat_missing_data", "TreatMissingData"),
    ] {
        assert_eq!(alarm[k], cfn_alarm[c], "{k}");
    }
    assert_eq!(alarm["threshold"], "${var.scale_out_min_free_tasks}");
    assert_eq!(
        alarm["dimensions"],
        serde_json::json!({"ClusterName": "${var.cluster_name}", "TaskShape": "${var.scale_out_task_shape}"})
    );
    assert_eq!(
        alarm["alarm_actions"],
        serde_json::json!(["${aws_autoscaling_policy.scale_out.arn}"])
    );
    let policy = tf_block(&tf, "resource", "aws_autoscaling_policy", "scale_out");
    assert_eq!(policy["policy_type"], "StepScaling");
    assert_eq!(policy["step_adjustment"][0]["scaling_adjustment"], 1);
    assert_eq!(policy["step_adjustment"][0]["metric_interval_upper_bound"], 0);
}

/// checkov (scripts/test-deps installs it) finds nothing in the module, and every check it
/// is told to skip says why.
#[test]
fn the_terraform_module_passes_checkov() {
    let venv = std::env::var("BERTH_CHECKOV_VENV")
        .unwrap_or_else(|_| "/var/tmp/berth-checkov-venv".to_string());
    let checkov = PathBuf::from(venv).join("bin/checkov");
    assert!(checkov.exists(), "{} is missing: run scripts/test-deps", checkov.display());
    let out = Command::new(&checkov)
        .args(["--framework", "terraform", "--skip-download", "--output", "json", "-d"])
        .arg(package_file(TERRAFORM))
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "checkov: {e}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let summary = &report["summary"];
    assert_eq!(summary["parsing_errors"], 0, "{summary}");
    let failed: Vec<String> = report["results"]["failed_checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("{} {} ({})", c["check_id"], c["resource"], c["check_name"]))
        .collect();
    assert!(failed.is_empty(), "checkov: {failed:#?}");
    assert!(summary["passed"].as_u64().unwrap() > 50, "{summary}");
    for f in std::fs::read_dir(package_file(TERRAFORM)).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap_or_default();
        for l in text.lines().filter(|l| l.contains("checkov:skip=")) {
            let reason = l.split("checkov:skip=").nth(1).unwrap().split_once(':').map(|x| x.1);
            assert!(reason.is_some_and(|r| r.trim().len() > 20), "a skip without a reason: {l}");
        }
    }
}

//! The README's quick start, run exactly as the README writes it: its first command serves
//! (examples/quickstart.toml), its second sends a line with `berth cat`, and berth prints it
//! on stdout in the shape the README shows. scripts/test builds the release binary first,
//! so `cargo run --release` here only starts it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The shell blocks of the README's "Set-up in two commands" section, in order.
fn setup_blocks(readme: &str) -> Vec<String> {
    let section = readme.split("\n## Set-up in two commands").nth(1).expect("the set-up section");
    let section = section.split("\n## ").next().unwrap();
    let mut blocks = Vec::new();
    let mut lines = section.lines();
    while let Some(l) = lines.next() {
        if l.trim() == "```sh" {
            let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            blocks.push(body.join("\n"));
        }
    }
    blocks
}

/// The output line the README shows, split around its elided time:
/// (`{"tag":…,"time":"`, `Z",…}`).
fn shown_line(readme: &str) -> (String, String) {
    let l = readme.split("berth prints `").nth(1).expect("the printed line").split('`').next();
    let l = l.unwrap();
    let (head, rest) = l.split_once("\"time\":\"").unwrap();
    let tail = &rest[rest.find("Z\"").unwrap()..];
    (format!("{head}\"time\":\""), tail.to_string())
}

struct Group(std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        // cargo and the berth it started: the whole process group.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

#[test]
fn the_readme_quick_start_works_as_written() {
    let readme = std::fs::read_to_string(package_file("README.md")).unwrap();
    let blocks = setup_blocks(&readme);
    assert_eq!(blocks.len(), 3, "run, send a line, run the tests: {blocks:#?}");
    let (run, send) = (&blocks[0], &blocks[1]);
    assert!(run.contains("examples/quickstart.toml"), "{run}");

    let mut child = Command::new("sh");
    child
        .args(["-c", run])
        .current_dir(package_file("."))
        .env_remove("BERTH_CONFIG")
        .env_remove("BERTH_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut berth = Group(child.spawn().unwrap());
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let out = BufReader::new(berth.0.stdout.take().unwrap());
    let seen = Arc::clone(&lines);
    std::thread::spawn(move || {
        out.lines().map_while(Result::ok).for_each(|l| seen.lock().unwrap().push(l))
    });
    let err = Arc::new(Mutex::new(Vec::<String>::new()));
    let stderr = BufReader::new(berth.0.stderr.take().unwrap());
    let seen = Arc::clone(&err);
    std::thread::spawn(move || {
        stderr.lines().map_while(Result::ok).for_each(|l| seen.lock().unwrap().push(l))
    });

    // Serving once /healthz answers 200 (the quick start's admin address). A first run may
    // still be building: minutes.
    wait_for(Duration::from_secs(900), "the quick start to serve", || {
        if let Ok(Some(status)) = berth.0.try_wait() {
            panic!("the quick start exited with {status}:\n{}", err.lock().unwrap().join("\n"));
        }
        let ok = std::net::TcpStream::connect("127.0.0.1:24220").is_ok()
            && http_get("127.0.0.1:24220", "/healthz").0 == 200;
        ok.then_some(())
    });

    let sent = Command::new("sh")
        .args(["-c", send])
        .current_dir(package_file("."))
        .env_remove("BERTH_CONFIG")
        .output()
        .unwrap();
    assert!(sent.status.success(), "{send}: {}", String::from_utf8_lossy(&sent.stderr));

    let (head, tail) = shown_line(&readme);
    let line = wait_for(WAIT, "the line on berth's stdout", || {
        lines.lock().unwrap().iter().find(|l| l.contains("app.test")).cloned()
    });
    assert!(
        line.starts_with(&head) && line.ends_with(&tail),
        "berth printed {line}, the README shows {head}…{tail}"
    );
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    parse_rfc3339(v["time"].as_str().unwrap());

    unsafe { libc::kill(-(berth.0.id() as i32), libc::SIGTERM) };
    let status = wait_exit(&mut berth.0, WAIT);
    assert!(status.success() || status.code().is_none(), "{status}");
}

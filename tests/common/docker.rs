//! The Docker engine for tests: whether it is there, the CLI, and the `FROM scratch`
//! busybox image (no registry is reachable; `scripts/test-deps` installs busybox-static).

use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// False (with the reason printed) when the Docker tests are switched off; a panic naming
/// the reason when the engine cannot be reached.
pub fn docker_ready(test: &str) -> bool {
    if std::env::var("BERTH_TEST_NO_DOCKER").as_deref() == Ok("1") {
        eprintln!("skipping {test}: BERTH_TEST_NO_DOCKER=1 (no Docker engine on this machine)");
        return false;
    }
    let out = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run the docker CLI ({e}); {test} needs a Docker engine (set BERTH_TEST_NO_DOCKER=1 to skip)")
        });
    assert!(
        out.status.success(),
        "the Docker engine is unreachable (`docker info` failed: {}); {test} needs it \
         (set BERTH_TEST_NO_DOCKER=1 to skip)",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    true
}

pub fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).stdin(Stdio::null()).output().expect("run docker")
}

/// Run docker, assert success, return stdout trimmed.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub const IMAGE: &str = "berth-test-busybox:1";
pub const IMAGE_LABEL: &str = "berth.test.content";
pub const DOCKERFILE: &str =
    "FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT [\"/bin/busybox\"]\n";

/// FNV-1a: a stable content key for the image (std's hasher may change between releases).
pub fn fnv1a(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The busybox image, built once per test run and only when its content changed. With
/// busybox as ENTRYPOINT, `sh -c '…'` runs its shell, whose applets (`sleep`, `ls`) run
/// without symlinks.
pub fn image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let busybox = std::fs::read("/bin/busybox")
            .expect("/bin/busybox is missing: run scripts/test-deps (it installs busybox-static)");
        let key = fnv1a(&[&busybox, DOCKERFILE.as_bytes()]);
        let have = docker(&[
            "image",
            "inspect",
            "--format",
            &format!("{{{{index .Config.Labels \"{IMAGE_LABEL}\"}}}}"),
            IMAGE,
        ]);
        if have.status.success() && String::from_utf8_lossy(&have.stdout).trim() == key {
            return;
        }
        let ctx = tempfile::tempdir().expect("tempdir");
        std::fs::write(ctx.path().join("busybox"), &busybox).expect("write busybox");
        std::fs::set_permissions(
            ctx.path().join("busybox"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod busybox");
        std::fs::write(ctx.path().join("Dockerfile"), DOCKERFILE).expect("write Dockerfile");
        let ctx_path = ctx.path().display().to_string();
        docker_ok(&[
            "build",
            "-q",
            "-t",
            IMAGE,
            "--label",
            &format!("{IMAGE_LABEL}={key}"),
            &ctx_path,
        ]);
    });
    IMAGE
}

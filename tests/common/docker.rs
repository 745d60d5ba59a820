//! The Docker Engine in tests: the demo storefront image, built locally (no registry is
//! reachable), and the `docker` CLI.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Build the demo storefront image (`scripts/demo-image.sh`), once per test binary.
pub fn demo_image(tag: &str) {
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if built.iter().any(|t| t == tag) {
        return;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/demo-image.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(tag)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "building the demo image failed (the Docker Engine is required): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    built.push(tag.to_owned());
}

/// Run the `docker` CLI; its stdout (trimmed), or a panic with its stderr.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI (the Docker Engine is required)");
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A blueprints directory holding `sleepy`: the shipped demo storefront without a database
/// (nothing but the Docker Engine needed), running `image`.
pub fn sleepy_blueprint(image: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let shipped = std::fs::read_to_string(format!(
        "{}/demo-storefront.toml",
        super::SHIPPED_BLUEPRINTS
    ))
    .expect("shipped blueprint");
    super::write_file(
        &dir.path().join("sleepy.toml"),
        &shipped
            .replace("name = \"demo-storefront\"", "name = \"sleepy\"")
            .replace("database = \"schema\"", "database = \"none\"")
            .replace("tenantgate/demo-storefront:latest", image),
    );
    dir
}

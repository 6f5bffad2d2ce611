//! The command line refuses bad input with one line naming the problem and
//! exit code 2, before starting anything (CONTRACT.md).

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_meshd");

fn refused(args: &[&str], needle: &str) {
    let out = Command::new(BIN).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: stderr {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: not one line: {err}"
    );
    assert!(
        err.contains(needle),
        "{args:?}: {err:?} does not name {needle:?}"
    );
    assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
}

#[test]
fn unknown_flag() {
    refused(&["agent", "--id", "1", "--bogus"], "--bogus");
}

#[test]
fn malformed_address() {
    refused(
        &["agent", "--id", "1", "--gossip", "127.0.0.1"],
        "127.0.0.1",
    );
    refused(&["agent", "--id", "1", "--rpc", "nowhere:x"], "nowhere:x");
    refused(
        &["agent", "--id", "1", "--seed", "h:0x", "--voters", "1"],
        "h:0x",
    );
}

#[test]
fn non_numeric_id() {
    refused(&["agent", "--id", "one"], "one");
    refused(&["agent", "--id", "-3"], "-3");
}

#[test]
fn missing_id_and_missing_voters() {
    refused(&["agent"], "--id");
    refused(
        &["agent", "--id", "2", "--seed", "127.0.0.1:7400"],
        "--voters",
    );
}

#[test]
fn duplicate_id_in_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(&file, "id = 1\nvoters = [1, 2, 2]\n").unwrap();
    refused(
        &["agent", "--config", file.to_str().unwrap()],
        "duplicate id 2",
    );
    refused(
        &["agent", "--id", "1", "--voters", "3,1,3"],
        "duplicate id 3",
    );
}

#[test]
fn unreadable_or_invalid_config_file() {
    refused(
        &["agent", "--config", "/nonexistent/meshd.toml"],
        "/nonexistent/meshd.toml",
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "id = 1\nport = 3\n").unwrap();
    refused(&["agent", "--config", bad.to_str().unwrap()], "port");
    let not_toml = dir.path().join("x.toml");
    std::fs::write(&not_toml, "id = = 1").unwrap();
    refused(&["agent", "--config", not_toml.to_str().unwrap()], "x.toml");
}

#[test]
fn unknown_subcommand() {
    refused(&["frobnicate"], "frobnicate");
}

#[test]
fn bad_cluster_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.key");
    let missing = missing.to_str().unwrap();
    refused(&["agent", "--id", "1", "--cluster-key", missing], missing);
    let bad = dir.path().join("bad.key");
    std::fs::write(&bad, "0123 not a key\n").unwrap();
    let bad = bad.to_str().unwrap();
    refused(
        &["agent", "--id", "1", "--cluster-key", bad],
        "64 hex digits",
    );
}

#[test]
fn keygen_prints_a_fresh_secret() {
    let run = || {
        let out = Command::new(BIN).arg("keygen").output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let (a, b) = (run(), run());
    for key in [&a, &b] {
        assert_eq!(key.len(), 65, "{key:?}");
        assert!(key.trim_end().chars().all(|c| c.is_ascii_hexdigit()));
        assert!(key.ends_with('\n'));
    }
    assert_ne!(a, b, "every secret is new");
}

#[test]
fn keygen_out_writes_a_private_file_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.key");
    let out = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "the secret is not echoed");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let first = std::fs::read_to_string(&path).unwrap();
    assert!(coordmesh::ClusterSecret::parse_hex(&first).is_some());

    let again = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), first, "unchanged");
}

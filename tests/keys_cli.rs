//! The key commands fail closed: the active key of a purpose is destroyed only when forced,
//! keyrings and KEK files are read bounded (a FIFO refused at once, a huge file unread), a file
//! that is not a keyring is called that (no advice to chmod a system file), and `keys list`
//! speaks JSON for scripts, never a secret; `keys export` writes a worker's part of a keyring.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pseudonymizer");

fn run(args: &[&str]) -> Output {
    run_env(args, &[])
}

fn run_env(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("PSEUDONYMIZER_KEK")
        .env_remove("PSEUDONYMIZER_KEK_FILE");
    for (name, value) in env {
        command.env(name, value);
    }
    // No command here may block: a FIFO keyring must be refused, not waited on.
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{args:?} still running after 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn refused(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit 1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn init(dir: &Path) -> PathBuf {
    let ring = dir.join("keyring.json");
    ok(&["keys", "init", "--keyring", s(&ring)]);
    ring
}

fn list_json(ring: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(&[
        "keys",
        "list",
        "--keyring",
        s(ring),
        "--format",
        "json",
    ]))
    .unwrap()
}

/// The id of the key of `purpose` in `state`.
fn key_id(list: &serde_json::Value, purpose: &str, state: &str) -> String {
    list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["purpose"] == purpose && k["state"] == state)
        .unwrap_or_else(|| panic!("no {state} {purpose} key in {list}"))["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn the_active_key_is_destroyed_only_when_forced() {
    let dir = tempfile::tempdir().unwrap();
    let ring = init(dir.path());
    let active = key_id(&list_json(&ring), "encryption", "active");
    let before = std::fs::read(&ring).unwrap();

    let said = refused(&run(&[
        "keys",
        "destroy",
        "--keyring",
        s(&ring),
        "--id",
        &active,
    ]));
    assert!(
        said.contains("active encryption key") && said.contains("rotate first"),
        "{said}"
    );
    assert!(said.contains("--force"), "{said}");
    assert_eq!(std::fs::read(&ring).unwrap(), before, "nothing written");

    // Rotated first, the old key is retired and goes without --force.
    ok(&[
        "keys",
        "rotate",
        "--keyring",
        s(&ring),
        "--purpose",
        "encryption",
    ]);
    let said = ok(&["keys", "destroy", "--keyring", s(&ring), "--id", &active]);
    assert!(!said.contains("no active key"), "{said}");
    let list = list_json(&ring);
    assert_eq!(key_id(&list, "encryption", "destroyed"), active);

    // Forced, the active key goes too, with a word on what the keyring can no longer do.
    let newer = key_id(&list, "encryption", "active");
    let said = ok(&[
        "keys",
        "destroy",
        "--keyring",
        s(&ring),
        "--id",
        &newer,
        "--force",
    ]);
    assert!(said.contains("no active key of that purpose"), "{said}");
    let list = list_json(&ring);
    assert!(
        !list["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["purpose"] == "encryption" && k["state"] == "active"),
        "{list}"
    );
    let said = refused(&run(&[
        "keys",
        "destroy",
        "--keyring",
        s(&ring),
        "--id",
        &newer,
        "--force",
    ]));
    assert!(said.contains("already destroyed"), "{said}");
}

#[test]
fn keys_list_json_names_every_key_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let ring = init(dir.path());
    let list = list_json(&ring);
    assert_eq!(list["protection"], "clear");
    let keys = list["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3, "pseudonym, encryption, subject: {list}");
    for key in keys {
        let mut fields: Vec<&str> = key
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        fields.sort_unstable();
        assert_eq!(fields, ["created_at", "id", "purpose", "state"], "{key}");
    }
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&ring).unwrap()).unwrap();
    let text = list.to_string();
    for key in file["keys"].as_array().unwrap() {
        let secret = key["secret"].as_str().unwrap();
        assert!(!text.contains(&secret[..12]), "list printed a secret");
    }

    // A sealed keyring says under which KEK.
    let kek = dir.path().join("kek");
    ok(&["keys", "new-kek", "--out", s(&kek)]);
    let sealed = dir.path().join("sealed.json");
    let out = run_env(
        &["keys", "init", "--keyring", s(&sealed), "--sealed"],
        &[("PSEUDONYMIZER_KEK_FILE", &kek)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_env(
        &["keys", "list", "--keyring", s(&sealed), "--format", "json"],
        &[("PSEUDONYMIZER_KEK_FILE", &kek)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["protection"], "sealed");
    assert!(
        list["kek_id"].as_str().is_some_and(|id| !id.is_empty()),
        "{list}"
    );
    assert_eq!(list["keys"].as_array().unwrap().len(), 3);
}

#[test]
fn a_file_that_is_not_a_keyring_gets_no_chmod_advice() {
    let dir = tempfile::tempdir().unwrap();
    // Like /etc/passwd: readable by everyone, and not a keyring.
    let system = dir.path().join("passwd");
    std::fs::write(&system, "root:x:0:0:root:/root:/bin/bash\n").unwrap();
    std::fs::set_permissions(&system, std::fs::Permissions::from_mode(0o644)).unwrap();
    let said = refused(&run(&["keys", "list", "--keyring", s(&system)]));
    assert!(said.contains("is not a keyring"), "{said}");
    assert!(!said.contains("chmod"), "{said}");
    assert!(!said.contains("root:x"), "no content shown: {said}");

    // A real keyring others can read is told how to fix it.
    let ring = init(dir.path());
    std::fs::set_permissions(&ring, std::fs::Permissions::from_mode(0o644)).unwrap();
    let said = refused(&run(&["keys", "list", "--keyring", s(&ring)]));
    assert!(said.contains("chmod 600"), "{said}");
}

#[test]
fn keyrings_and_kek_files_are_read_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o600)).unwrap();

    for command in ["list", "rotate", "destroy"] {
        let mut args = vec!["keys", command, "--keyring", s(&fifo)];
        match command {
            "rotate" => args.extend(["--purpose", "pseudonym"]),
            "destroy" => args.extend(["--id", "p-1"]),
            _ => {}
        }
        let said = refused(&run(&args));
        assert!(
            said.contains("not a regular file") && said.contains("FIFO"),
            "{said}"
        );
    }

    // A sparse keyring of 5 MiB is refused by its size, not read.
    let huge = dir.path().join("huge.json");
    let file = std::fs::File::create(&huge).unwrap();
    file.set_len(5 << 20).unwrap();
    std::fs::set_permissions(&huge, std::fs::Permissions::from_mode(0o600)).unwrap();
    let said = refused(&run(&["keys", "list", "--keyring", s(&huge)]));
    assert!(said.contains("more than the limit"), "{said}");

    // The KEK file, through the environment: a FIFO and an oversized file alike.
    let sealed = dir.path().join("sealed.json");
    let said = refused(&run_env(
        &["keys", "init", "--keyring", s(&sealed), "--sealed"],
        &[("PSEUDONYMIZER_KEK_FILE", &fifo)],
    ));
    assert!(
        said.contains("key-encryption key file") && said.contains("FIFO"),
        "{said}"
    );
    let said = refused(&run_env(
        &["keys", "init", "--keyring", s(&sealed), "--sealed"],
        &[("PSEUDONYMIZER_KEK_FILE", &huge)],
    ));
    assert!(said.contains("more than the limit"), "{said}");
    assert!(!sealed.exists(), "no keyring written without a KEK");
}

/// `keys export --for worker` writes a new file with only the two active keys (the worker's
/// Secret), at the source's generation and protection; it never writes over a file, the source
/// above all, and `--for lookup` keeps every pseudonym key and no encryption key.
#[test]
fn export_for_a_worker_ships_only_the_active_keys() {
    let dir = tempfile::tempdir().unwrap();
    let ring = init(dir.path());
    let first = list_json(&ring);
    let old_pseudonym = key_id(&first, "pseudonym", "active");
    let old_encryption = key_id(&first, "encryption", "active");
    for purpose in ["pseudonym", "encryption"] {
        ok(&[
            "keys",
            "rotate",
            "--keyring",
            s(&ring),
            "--purpose",
            purpose,
        ]);
    }
    ok(&[
        "keys",
        "destroy",
        "--keyring",
        s(&ring),
        "--id",
        &old_encryption,
    ]);
    let full = list_json(&ring);
    let source = std::fs::read(&ring).unwrap();

    let worker = dir.path().join("worker.json");
    let said = ok(&[
        "keys",
        "export",
        "--keyring",
        s(&ring),
        "--for",
        "worker",
        "--out",
        s(&worker),
    ]);
    assert!(said.contains("for worker"), "{said}");
    let exported = list_json(&worker);
    assert_eq!(exported["protection"], "clear");
    assert_eq!(exported["generation"], full["generation"]);
    let states: Vec<(String, String)> = exported["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["id"].as_str().unwrap().into(),
                k["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        !states.iter().any(|(id, _)| *id == old_pseudonym),
        "{states:?}"
    );
    assert_eq!(
        states.iter().filter(|(_, state)| state == "active").count(),
        3,
        "{states:?}"
    );
    assert!(states.contains(&(old_encryption.clone(), "destroyed".into())));
    let text = std::fs::read_to_string(&worker).unwrap();
    assert!(!text.contains(&old_pseudonym));
    assert_eq!(
        std::fs::metadata(&worker).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The export works for what a worker does.
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pipeline.toml");
    ok(&["check", "--config", s(&config), "--keyring", s(&worker)]);

    // For lookup: every pseudonym key and the subject key (to say who was erased), no
    // encryption key.
    let lookup = dir.path().join("lookup.json");
    ok(&[
        "keys",
        "export",
        "--keyring",
        s(&ring),
        "--for",
        "lookup",
        "--out",
        s(&lookup),
    ]);
    let listed = list_json(&lookup);
    let keys = listed["keys"].as_array().unwrap();
    assert!(keys
        .iter()
        .filter(|k| k["state"] != "destroyed")
        .all(|k| k["purpose"] == "pseudonym" || k["purpose"] == "subject"));
    assert!(keys.iter().any(|k| k["id"] == old_pseudonym.as_str()));
    assert!(keys.iter().any(|k| k["purpose"] == "subject"));

    // Never over an existing file: not the source, not a link to it, not another file.
    let link = dir.path().join("link.json");
    std::os::unix::fs::symlink(&ring, &link).unwrap();
    for out in [&ring, &link, &worker] {
        let before = std::fs::read(out).unwrap();
        let said = refused(&run(&[
            "keys",
            "export",
            "--keyring",
            s(&ring),
            "--for",
            "worker",
            "--out",
            s(out),
        ]));
        assert!(said.contains("exists"), "{said}");
        assert_eq!(std::fs::read(out).unwrap(), before);
    }
    assert_eq!(
        std::fs::read(&ring).unwrap(),
        source,
        "the source is only read"
    );

    // A sealed keyring's export is sealed under the same KEK.
    let kek = dir.path().join("kek.b64");
    ok(&["keys", "new-kek", "--out", s(&kek)]);
    let sealed = dir.path().join("sealed.json");
    std::fs::copy(&ring, &sealed).unwrap();
    let with_kek = [("PSEUDONYMIZER_KEK_FILE", kek.as_path())];
    assert!(
        run_env(&["keys", "seal", "--keyring", s(&sealed)], &with_kek)
            .status
            .success()
    );
    let sealed_worker = dir.path().join("sealed-worker.json");
    let out = run_env(
        &[
            "keys",
            "export",
            "--keyring",
            s(&sealed),
            "--for",
            "worker",
            "--out",
            s(&sealed_worker),
        ],
        &with_kek,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!std::fs::read_to_string(&sealed_worker)
        .unwrap()
        .contains("\"secret\""));
    let listed = run_env(
        &[
            "keys",
            "list",
            "--keyring",
            s(&sealed_worker),
            "--format",
            "json",
        ],
        &with_kek,
    );
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["protection"], "sealed");
    assert_eq!(
        listed["keys"].as_array().unwrap().len(),
        4,
        "three active and a destroyed entry: {listed}"
    );
}

/// A version-1 keyring (spec v1: no generation, no keyring id) still works, is copied by
/// `keys export` only once `keys upgrade` gave it an id, and `keys init` never writes through
/// a link, even a dangling one.
#[test]
fn v1_keyrings_are_upgraded_on_request_and_init_never_writes_through_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let ring = init(dir.path());
    let mut v2: serde_json::Value = serde_json::from_slice(&std::fs::read(&ring).unwrap()).unwrap();
    assert_eq!(v2["format"], "pseudonymizer-keyring/v2");
    assert_eq!(v2["generation"], 1);
    let id = v2["keyring_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("kr-") && id.len() == 19, "{id}");
    // The same keys as a version-1 file.
    v2["format"] = "pseudonymizer-keyring/v1".into();
    let object = v2.as_object_mut().unwrap();
    object.remove("generation");
    object.remove("keyring_id");
    let v1 = dir.path().join("v1.json");
    std::fs::write(&v1, serde_json::to_vec(&v2).unwrap()).unwrap();
    std::fs::set_permissions(&v1, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = dir.path().join("worker.json");
    let said = refused(&run(&[
        "keys",
        "export",
        "--keyring",
        s(&v1),
        "--for",
        "worker",
        "--out",
        s(&out),
    ]));
    assert!(said.contains("keys upgrade"), "{said}");
    assert!(!out.exists());
    let said = ok(&["keys", "upgrade", "--keyring", s(&v1)]);
    assert!(said.contains("upgraded"), "{said}");
    let upgraded = list_json(&v1);
    assert_eq!(upgraded["generation"], 1);
    ok(&[
        "keys",
        "export",
        "--keyring",
        s(&v1),
        "--for",
        "worker",
        "--out",
        s(&out),
    ]);
    assert!(ok(&["keys", "upgrade", "--keyring", s(&v1)]).contains("already"));

    // init: a dangling link is refused, and its target is not created.
    let target = dir.path().join("target.json");
    let link = dir.path().join("link.json");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let said = refused(&run(&["keys", "init", "--keyring", s(&link)]));
    assert!(said.contains("exists"), "{said}");
    assert!(!target.exists());
}

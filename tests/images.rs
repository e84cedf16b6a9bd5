//! `e2e/images build` (`make images`) makes the images the real nodes run, with crane alone:
//! the operator's image is the one the Dockerfile describes (user, entrypoint, cmd, exposed
//! port) around a statically linked binary, and the test application and the pause program
//! run as non-root users. Every image is a docker-archive under its `localhost/NAME:dev`
//! name, and an unchanged build is kept rather than rebuilt.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// crane as `e2e/cluster/build` caches it, or a failure that says how to get it.
fn crane() -> Result<PathBuf, String> {
    let out = Command::new(repo_root().join("e2e/cluster/build"))
        .arg("--print-dirs")
        .output()
        .map_err(|e| format!("cannot run e2e/cluster/build --print-dirs: {e}"))?;
    let dirs = String::from_utf8_lossy(&out.stdout);
    let dir = dirs
        .lines()
        .find(|line| line.contains("/crane-"))
        .ok_or_else(|| {
            format!("e2e/cluster/build --print-dirs names no crane directory:\n{dirs}")
        })?;
    let crane = Path::new(dir).join("crane");
    if !crane.is_file() {
        return Err(format!(
            "crane is missing ({}): run e2e/cluster/build, which builds it with the local \
             control plane, then run this test again",
            crane.display()
        ));
    }
    Ok(crane)
}

/// Runs `e2e/images build`; its stderr, or why it failed.
fn run_build() -> Result<String, String> {
    let out = Command::new(repo_root().join("e2e/images"))
        .arg("build")
        .current_dir(repo_root())
        .output()
        .map_err(|e| format!("cannot run e2e/images build: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(format!(
            "e2e/images build failed ({}):\n{stderr}",
            out.status
        ));
    }
    Ok(stderr)
}

/// The images, built once for all the tests of this file; crane's path.
fn built() -> &'static Path {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let crane = crane()?;
        run_build()?;
        Ok(crane)
    });
    match built {
        Ok(crane) => crane,
        Err(e) => panic!("{e}"),
    }
}

fn tarball(name: &str) -> PathBuf {
    repo_root()
        .join("target/images")
        .join(format!("{name}.tar"))
}

/// One member of a tar archive, read with `tar -xOf`.
fn tar_member(archive: &Path, member: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg(member)
        .output()
        .expect("run tar");
    assert!(
        out.status.success(),
        "tar -xOf {} {member}: {}",
        archive.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `member` of the gzipped tar `layer`.
fn layer_member(layer: Vec<u8>, member: &str) -> Vec<u8> {
    let mut child = Command::new("tar")
        .args(["-xzOf", "-", member])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tar");
    let mut stdin = child.stdin.take().expect("tar's stdin");
    let writer = std::thread::spawn(move || stdin.write_all(&layer));
    let out = child.wait_with_output().expect("tar runs");
    writer
        .join()
        .expect("the writer")
        .expect("tar reads the layer");
    assert!(
        out.status.success(),
        "no {member} in the layer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A docker-archive image: its manifest.json entry and its config.
struct Image {
    archive: PathBuf,
    manifest: Value,
    config: Value,
}

impl Image {
    fn read(name: &str) -> Self {
        built();
        let archive = tarball(name);
        let manifests: Value = serde_json::from_slice(&tar_member(&archive, "manifest.json"))
            .expect("manifest.json is JSON");
        let entries = manifests.as_array().expect("manifest.json is an array");
        assert_eq!(entries.len(), 1, "{name}.tar holds one image: {manifests}");
        let manifest = entries[0].clone();
        let config_file = manifest["Config"].as_str().expect("a Config file");
        let config =
            serde_json::from_slice(&tar_member(&archive, config_file)).expect("the config is JSON");
        Self {
            archive,
            manifest,
            config,
        }
    }

    fn tags(&self) -> Vec<&str> {
        self.manifest["RepoTags"]
            .as_array()
            .map(|tags| tags.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    fn container(&self, key: &str) -> &Value {
        &self.config["config"][key]
    }

    fn strings(&self, key: &str) -> Vec<String> {
        serde_json::from_value(self.container(key).clone()).unwrap_or_default()
    }

    fn exposed_ports(&self) -> BTreeSet<String> {
        self.container("ExposedPorts")
            .as_object()
            .map(|ports| ports.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The file at `path` (no leading slash) in the image's only layer.
    fn file(&self, path: &str) -> Vec<u8> {
        let layers = self.manifest["Layers"].as_array().expect("Layers");
        assert_eq!(layers.len(), 1, "one layer: {}", self.manifest);
        let layer = tar_member(&self.archive, layers[0].as_str().expect("a layer file"));
        layer_member(layer, path)
    }
}

/// What the Dockerfile's final stage sets.
#[derive(Debug, Default)]
struct FinalStage {
    user: Option<String>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    exposed: BTreeSet<String>,
}

/// Reads the instructions after the last FROM; ENTRYPOINT and CMD must be in exec (JSON)
/// form, and EXPOSE without a protocol means tcp, as Docker writes it.
fn final_stage(dockerfile: &str) -> FinalStage {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stage = FinalStage::default();
    for line in logical {
        let (instruction, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let args = args.trim();
        let exec_form = |what: &str| -> Vec<String> {
            serde_json::from_str(args).unwrap_or_else(|e| {
                panic!("the Dockerfile's {what} is not in exec form ({e}): {args}")
            })
        };
        match instruction.to_ascii_uppercase().as_str() {
            "FROM" => stage = FinalStage::default(),
            "USER" => stage.user = Some(args.to_string()),
            "ENTRYPOINT" => stage.entrypoint = Some(exec_form("ENTRYPOINT")),
            "CMD" => stage.cmd = Some(exec_form("CMD")),
            "EXPOSE" => stage.exposed.extend(args.split_whitespace().map(|port| {
                if port.contains('/') {
                    port.to_string()
                } else {
                    format!("{port}/tcp")
                }
            })),
            _ => {}
        }
    }
    stage
}

/// Why the ELF file is not statically linked: a program interpreter (PT_INTERP) or a
/// shared library it needs (DT_NEEDED in PT_DYNAMIC). A static PIE has a PT_DYNAMIC for
/// its own relocations, but needs nothing.
fn dynamic_linking(elf: &[u8]) -> Result<(), String> {
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    if elf.get(..4) != Some(b"\x7fELF".as_slice())
        || elf.get(4) != Some(&2)
        || elf.get(5) != Some(&1)
    {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let truncated = || "truncated ELF header".to_string();
    let phoff = u64_at(0x20).ok_or_else(truncated)? as usize;
    let phentsize = u16_at(0x36).ok_or_else(truncated)? as usize;
    let phnum = u16_at(0x38).ok_or_else(truncated)? as usize;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let p_type = u32_at(ph).ok_or_else(truncated)?;
        let offset = u64_at(ph + 8).ok_or_else(truncated)? as usize;
        let size = u64_at(ph + 32).ok_or_else(truncated)? as usize;
        match p_type {
            // PT_INTERP
            3 => {
                let interpreter = elf.get(offset..offset + size).unwrap_or_default();
                return Err(format!(
                    "it has a program interpreter, {}",
                    String::from_utf8_lossy(interpreter).trim_end_matches('\0')
                ));
            }
            // PT_DYNAMIC: entries of (tag, value), up to DT_NULL.
            2 => {
                for entry in (offset..offset + size).step_by(16) {
                    match u64_at(entry).ok_or_else(truncated)? {
                        0 => break,
                        1 => return Err("it needs shared libraries (DT_NEEDED)".into()),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The numeric uid of a `uid[:gid]` user, which a kubelet can check against
/// runAsNonRoot without an /etc/passwd.
fn numeric_uid(user: &str) -> u32 {
    let uid = user.split(':').next().unwrap_or_default();
    uid.parse().unwrap_or_else(|_| {
        panic!("user {user:?} is not numeric: a kubelet cannot tell it is not root")
    })
}

#[test]
fn operator_image_runs_as_the_dockerfile_says_under_its_local_name() {
    let dockerfile =
        std::fs::read_to_string(repo_root().join("Dockerfile")).expect("read the Dockerfile");
    let stage = final_stage(&dockerfile);
    let image = Image::read("perennial");
    assert_eq!(
        image.tags(),
        ["localhost/perennial:dev"],
        "the name ctr import gives it"
    );
    assert_eq!(
        image.container("User").as_str(),
        Some(stage.user.as_deref().expect("the Dockerfile sets USER")),
        "user"
    );
    assert_eq!(
        image.strings("Entrypoint"),
        stage.entrypoint.expect("the Dockerfile sets ENTRYPOINT"),
        "entrypoint"
    );
    assert_eq!(
        image.strings("Cmd"),
        stage.cmd.expect("the Dockerfile sets CMD"),
        "cmd"
    );
    assert!(!stage.exposed.is_empty(), "the Dockerfile exposes a port");
    assert_eq!(image.exposed_ports(), stage.exposed, "exposed ports");
    assert_eq!(
        (
            image.config["os"].as_str(),
            image.config["architecture"].as_str()
        ),
        (Some("linux"), Some("amd64")),
        "platform"
    );
    let out = Command::new(built())
        .arg("validate")
        .arg("--tarball")
        .arg(&image.archive)
        .output()
        .expect("run crane validate");
    assert!(
        out.status.success(),
        "crane validate --tarball {}: {}{}",
        image.archive.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn operator_image_binary_is_statically_linked_so_it_runs_without_a_libc_in_the_image() {
    let image = Image::read("perennial");
    let entrypoint = image.strings("Entrypoint");
    let path = entrypoint.first().expect("an entrypoint");
    let binary = image.file(path.trim_start_matches('/'));
    if let Err(why) = dynamic_linking(&binary) {
        panic!("{path} in localhost/perennial:dev is not statically linked: {why}");
    }
}

#[test]
fn testapp_and_pause_images_run_as_non_root_users_from_static_binaries() {
    for (name, user, port) in [
        ("perennial-testapp", "65532:65532", Some("8080/tcp")),
        ("pause", "65535:65535", None),
    ] {
        let image = Image::read(name);
        assert_eq!(
            image.tags(),
            [format!("localhost/{name}:dev")],
            "{name}'s name"
        );
        let configured = image.container("User").as_str().unwrap_or_default();
        assert_ne!(numeric_uid(configured), 0, "{name} runs as root");
        assert_eq!(configured, user, "{name}'s user");
        let ports: Vec<String> = port.into_iter().map(String::from).collect();
        assert_eq!(
            image.exposed_ports(),
            ports.into_iter().collect(),
            "{name}'s ports"
        );
        let entrypoint = image.strings("Entrypoint");
        assert_eq!(
            entrypoint.len(),
            1,
            "{name}'s entrypoint is its binary alone"
        );
        let binary = image.file(entrypoint[0].trim_start_matches('/'));
        if let Err(why) = dynamic_linking(&binary) {
            panic!(
                "{} in {name} is not statically linked: {why}",
                entrypoint[0]
            );
        }
    }
}

#[test]
fn an_unchanged_build_keeps_every_image() {
    built();
    let before: Vec<_> = ["perennial", "pause", "perennial-testapp"]
        .map(|name| {
            std::fs::metadata(tarball(name))
                .and_then(|m| m.modified())
                .expect("a tarball")
        })
        .into();
    let log = run_build().unwrap_or_else(|e| panic!("{e}"));
    for (name, modified) in ["perennial", "pause", "perennial-testapp"]
        .iter()
        .zip(before)
    {
        assert!(
            log.contains(&format!("localhost/{name}:dev unchanged")),
            "the second build did not keep {name}:\n{log}"
        );
        let now = std::fs::metadata(tarball(name))
            .and_then(|m| m.modified())
            .expect("a tarball");
        assert_eq!(now, modified, "{name}.tar was written again");
    }
}

#[test]
fn the_static_check_sees_the_interpreter_of_a_dynamically_linked_binary() {
    // This test binary is linked dynamically against the system's libc.
    let me = std::fs::read(std::env::current_exe().expect("the test binary")).expect("read it");
    let why = dynamic_linking(&me).expect_err("a dynamically linked test binary");
    assert!(why.contains("interpreter"), "{why}");
    assert!(
        dynamic_linking(b"#!/bin/sh\n").is_err(),
        "a script is no ELF file"
    );
}

#[test]
fn dockerfile_final_stage_parsing_takes_the_last_stage_only() {
    let stage = final_stage(
        "FROM a AS b\nUSER 1\nEXPOSE 9\nCMD [\"x\"]\n\n# the image\nFROM c\nUSER 65532:65532\n\
         EXPOSE 8080 53/udp\nENTRYPOINT [\"/bin/app\", \\\n  \"--flag\"]\n",
    );
    assert_eq!(stage.user.as_deref(), Some("65532:65532"));
    assert_eq!(
        stage.entrypoint,
        Some(vec!["/bin/app".into(), "--flag".into()])
    );
    assert_eq!(stage.cmd, None);
    assert_eq!(
        stage.exposed,
        BTreeSet::from(["8080/tcp".to_string(), "53/udp".to_string()])
    );
}

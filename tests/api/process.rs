//! The real `asen serve` binary, for what only a process shows: the `asen listening on`
//! line, configuration from `ASEN_*` environment variables, the graceful SIGTERM drain and
//! store flush, and the refusal of a public bind without a key.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::server::*;

pub struct Process {
    pub child: Child,
    pub base: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `asen serve` on `127.0.0.1:0` over `data`, configured only through the environment.
fn spawn(shared: &Path, data: &Path) -> Process {
    spawn_with(shared, data, &[])
}

/// [`spawn`] with more `ASEN_*` variables.
pub fn spawn_with(shared: &Path, data: &Path, env: &[(&str, &str)]) -> Process {
    spawn_args(shared, data, &[], env)
}

/// [`spawn_with`] with more `asen serve` arguments.
pub fn spawn_args(shared: &Path, data: &Path, args: &[&str], env: &[(&str, &str)]) -> Process {
    let mut child = Command::new(env!("CARGO_BIN_EXE_asen"))
        .args(["serve", "--bind", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(args)
        .arg("--model")
        .arg(shared.join(CHECKPOINT))
        .env("ASEN_API_KEY", WRITE_KEY)
        .env("ASEN_READ_KEY", READ_KEY)
        .env("ASEN_LIMITS__MAX_BODY_BYTES", MAX_BODY.to_string())
        .env("ASEN_LIMITS__MAX_K", MAX_K.to_string())
        .env("ASEN_LIMITS__MAX_BATCH_ITEMS", MAX_BATCH.to_string())
        .env("ASEN_MODEL__BATCH_SIZE", "4")
        .env("RUST_LOG", "warn,asen=info")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start asen serve");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let Some(base) = line.trim().strip_prefix("asen listening on ") else {
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        panic!("server did not start: stdout {line:?}, stderr {err}");
    };
    assert!(
        base.starts_with("http://127.0.0.1:") && !base.ends_with(":0"),
        "the bound address, not the requested one: {line:?}"
    );
    Process {
        base: base.to_string(),
        child,
    }
}

pub fn call(
    p: &Process,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> Reply {
    let raw = body.map(|b| b.to_string());
    send(
        &p.base,
        method,
        path,
        key,
        "application/json",
        raw.as_deref().map(str::as_bytes),
    )
}

/// SIGTERM, then wait (30 s at most) for the exit; the exit status and stderr.
fn terminate(p: &mut Process) -> (std::process::ExitStatus, String) {
    let pid = p.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = p.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "server did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    p.child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, err)
}

#[test]
fn serve_binary_takes_env_config_and_flushes_on_sigterm() {
    let Some(shared) = shared() else { return };
    let started = Instant::now();
    let data = tempfile::tempdir().unwrap();
    let mut p = spawn(&shared, data.path());
    let image = |n: &str| std::fs::read(shared.join("golden/images").join(n)).unwrap();

    // Open routes answer; keys come from ASEN_API_KEY and ASEN_READ_KEY.
    assert_eq!(
        ok(&call(&p, "GET", "/healthz", None, None), "healthz"),
        "alive"
    );
    assert_eq!(
        ok(&call(&p, "GET", "/readyz", None, None), "readyz"),
        "ready"
    );
    expect_error(
        &call(&p, "PUT", "/v1/catalogues/shirts", None, None),
        401,
        "missing api key",
        "create without key",
    );
    expect_error(
        &call(&p, "PUT", "/v1/catalogues/shirts", R, None),
        403,
        "wrong api key",
        "create with the read key",
    );
    expect_error(
        &call(&p, "GET", "/v1/catalogues", None, None),
        401,
        "missing api key",
        "list without key",
    );
    ok(
        &call(&p, "GET", "/v1/catalogues", R, None),
        "list with the read key",
    );
    ok(&call(&p, "PUT", "/v1/catalogues/shirts", W, None), "create");
    let one = json!({"items": [{"id": "10030.jpg", "payload": {"brand": "zeta"},
                                "image": b64(&image("10030.jpg"))}]});
    let receipt = ok(
        &call(&p, "PUT", "/v1/catalogues/shirts/items", W, Some(&one)),
        "upsert",
    );
    assert_eq!(receipt["affected"], 1);

    // Limits come from ASEN_LIMITS__*.
    expect_error(
        &call(
            &p,
            "POST",
            "/v1/catalogues/shirts/search",
            R,
            Some(&json!({"attribute": "attr_0", "item_id": "10030.jpg", "k": 101})),
        ),
        400,
        "1..=100",
        "k over ASEN_LIMITS__MAX_K",
    );
    let nine: Vec<Value> = (0..9)
        .map(|i| json!({"id": format!("n{i}"), "image": "aGk="}))
        .collect();
    expect_error(
        &call(
            &p,
            "PUT",
            "/v1/catalogues/shirts/items",
            W,
            Some(&json!({"items": nine})),
        ),
        413,
        "max_batch_items",
        "batch over ASEN_LIMITS__MAX_BATCH_ITEMS",
    );
    let big = json!({"items": [{"id": "big", "image": "A".repeat(MAX_BODY + 1024)}]});
    expect_error(
        &call(&p, "PUT", "/v1/catalogues/shirts/items", W, Some(&big)),
        413,
        "max_body_bytes",
        "body over ASEN_LIMITS__MAX_BODY_BYTES",
    );

    // Graceful shutdown on SIGTERM: exit 0 after flushing.
    let (status, err) = terminate(&mut p);
    assert!(status.success(), "exit {status}: {err}");
    assert!(err.contains("store flushed"), "{err}");
    drop(p);

    // What was acknowledged is on disk: a new process over the same data serves it.
    let mut again = spawn(&shared, data.path());
    let details = ok(
        &call(&again, "GET", "/v1/catalogues/shirts", R, None),
        "details after restart",
    );
    assert_eq!(details["stats"]["items"], 1);
    let item = ok(
        &call(
            &again,
            "GET",
            "/v1/catalogues/shirts/items/10030.jpg",
            R,
            None,
        ),
        "item after restart",
    );
    assert_eq!(item["payload"]["brand"], "zeta");
    let (status, err) = terminate(&mut again);
    assert!(status.success(), "exit {status}: {err}");
    eprintln!(
        "serve binary test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn refuses_public_bind_without_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_asen"))
        .args(["serve", "--bind", "0.0.0.0:0", "--model", "/nonexistent"])
        .env_remove("ASEN_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without an api key"), "{err}");
}

#[test]
fn a_deep_png_within_the_pixel_limit_is_413_by_decode_memory() {
    let Some(shared) = shared() else { return };
    let data = tempfile::tempdir().unwrap();
    // 400 x 400 = 160,000 pixels (far under max_pixels) x (8 + 3) bytes = 1.76 MB > 1 MiB.
    let p = spawn_with(
        &shared,
        data.path(),
        &[
            ("ASEN_LIMITS__MAX_DECODE_BYTES", "1048576"),
            ("ASEN_LIMITS__DECODE_BUDGET_BYTES", "1048576"),
        ],
    );
    let png = |side: u32| {
        let img = image::ImageBuffer::<image::Rgba<u16>, _>::from_pixel(
            side,
            side,
            image::Rgba([9000, 30000, 50000, 65535]),
        );
        let mut out = Vec::new();
        image::DynamicImage::ImageRgba16(img)
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        b64(&out)
    };
    let reply = call(
        &p,
        "POST",
        "/v1/compare",
        R,
        Some(&json!({"a": {"image": png(400)}, "b": {"image": png(8)}})),
    );
    expect_error(&reply, 413, "limits.max_decode_bytes", "deep png");
    assert!(
        reply.error().contains("8 bytes per pixel"),
        "{}",
        reply.error()
    );
}

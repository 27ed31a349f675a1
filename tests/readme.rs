//! Runs every shell example of `README.md`, so the README cannot rot unnoticed.
//!
//! One `#[test]` per README section (a `#`, `##` or `###` heading up to the next heading);
//! `every_section_with_examples_has_a_test` fails when a section with examples has none.
//!
//! # What runs
//!
//! - A ` ```sh ` block is a script: every line runs, except comment lines.
//! - A ` ```console ` block is a transcript: the lines starting with `$ ` run; the other lines
//!   are the output shown to the reader and are not compared (scores and timings vary).
//! - A command may continue over lines ending with `\`, and may carry a heredoc
//!   (`cat > asen.toml <<'EOF'` up to `EOF`). Other multi-line shell constructs are not supported.
//! - The blocks of one section run in README order in one `bash` process, so variables
//!   (`I=examples/catalogue/images`) and files carry over from block to block; sections do not
//!   share anything.
//!
//! # Where
//!
//! Each section runs in a fresh temporary folder `work/` that looks like a checkout to the
//! commands: `work/examples` links to the checkout's `examples/`, and `work/../shared` links to
//! the shared fixtures (`$ASEN_SHARED_DIR`, else `../shared` beside the checkout) when present.
//! `ASEN_*` variables of the caller's environment are removed.
//!
//! # What `asen`, `cargo` and `curl` mean
//!
//! - `asen ARGS` and `cargo run --release -- ARGS` run the binary under test
//!   (`CARGO_BIN_EXE_asen`); `cargo test ...` is not run (it is what runs this test).
//! - `asen serve` runs in the background: the command returns once the server has printed
//!   `asen listening on http://ADDR`, and the server is stopped with SIGTERM when the section
//!   ends (it must then exit 0). It always listens on a free loopback port (`127.0.0.1:0`);
//!   the address the README gives it (`--bind`, `ASEN_SERVER__BIND`, `bind` in the `--config`
//!   file, else `127.0.0.1:8080`) is rewritten to the real one in the arguments of later `curl`
//!   and `asen` commands (`localhost:PORT` and `127.0.0.1:PORT`).
//! - `curl` succeeds when the HTTP status is 2xx; it is run with `-sS` and prints the body.
//!
//! # Expected failures
//!
//! Every command must exit 0 and every `curl` must answer 2xx, unless the command ends with a
//! comment naming the failure it shows: `# 422: unknown attribute` (a `curl` whose answer must
//! be exactly HTTP 422) or `# exit 2: no such file` (a command whose exit status must be 2).
//!
//! # Skips
//!
//! A section whose commands use `../shared` is skipped (`SKIPPED: ...` on stderr) when the shared
//! fixtures are absent, and a section with `curl` when `curl` is not installed; both fail instead
//! when `ASEN_REQUIRE_SHARED=1` (CI).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a section may run before it is killed and fails.
const SECTION_TIMEOUT: Duration = Duration::from_secs(600);

fn checkout() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A fenced block of the README.
#[derive(Debug)]
struct Block {
    /// `sh` or `console`.
    lang: String,
    /// 1-based line number of the opening fence.
    line: usize,
    /// The lines between the fences.
    lines: Vec<String>,
}

/// A README section: its heading (without the `#`s) and its shell blocks.
#[derive(Debug)]
struct Section {
    heading: String,
    blocks: Vec<Block>,
}

/// One command to run: its text (several lines with continuations or a heredoc) and what
/// it must end with.
#[derive(Debug, PartialEq)]
struct Step {
    /// 1-based README line of its first line.
    line: usize,
    text: String,
    /// Required exit status of the command.
    exit: i32,
    /// Required HTTP status of its `curl` (None: any 2xx).
    http: Option<u16>,
}

fn sections(readme: &str) -> Vec<Section> {
    let mut out: Vec<Section> = Vec::new();
    let mut lines = readme.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        if let Some(fence) = line.strip_prefix("```") {
            let lang = fence.trim().to_string();
            let mut body = Vec::new();
            for (_, l) in lines.by_ref() {
                if l.starts_with("```") {
                    break;
                }
                body.push(l.to_string());
            }
            if lang == "sh" || lang == "console" {
                if out.is_empty() {
                    out.push(Section {
                        heading: String::new(),
                        blocks: Vec::new(),
                    });
                }
                out.last_mut().unwrap().blocks.push(Block {
                    lang,
                    line: i + 1,
                    lines: body,
                });
            }
        } else if line.starts_with('#') {
            let heading = line.trim_start_matches('#').trim().to_string();
            out.push(Section {
                heading,
                blocks: Vec::new(),
            });
        }
    }
    out
}

/// The expected status a trailing comment declares: `# 422: why` or `# exit 2: why`.
fn expectation(last_line: &str) -> (i32, Option<u16>) {
    let Some(pos) = last_line.rfind(" # ") else {
        return (0, None);
    };
    let comment = last_line[pos + 3..].trim();
    let Some((head, _)) = comment.split_once(':') else {
        return (0, None);
    };
    if let Some(code) = head.strip_prefix("exit ") {
        if let Ok(code) = code.trim().parse() {
            return (code, None);
        }
    }
    if head.len() == 3 {
        if let Ok(status) = head.parse::<u16>() {
            return (0, Some(status));
        }
    }
    (0, None)
}

/// The heredoc delimiter a command line opens, if any (`<<'EOF'`, `<<EOF`, `<<-EOF`).
fn heredoc(line: &str) -> Option<String> {
    let rest = &line[line.find("<<")? + 2..];
    let rest = rest.strip_prefix('-').unwrap_or(rest).trim_start();
    let word: String = rest
        .trim_start_matches(['\'', '"'])
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!word.is_empty()).then_some(word)
}

fn steps(block: &Block) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut i = 0;
    let n = block.lines.len();
    while i < n {
        let raw = &block.lines[i];
        let first = if block.lang == "console" {
            match raw.strip_prefix("$ ") {
                Some(cmd) => cmd,
                None => {
                    i += 1;
                    continue;
                }
            }
        } else {
            raw.as_str()
        };
        if first.trim().is_empty() || first.trim_start().starts_with('#') {
            i += 1;
            continue;
        }
        let line = block.line + 1 + i;
        let mut text = vec![first.to_string()];
        i += 1;
        while text.last().unwrap().ends_with('\\') && i < n {
            text.push(block.lines[i].clone());
            i += 1;
        }
        let (exit, http) = expectation(text.last().unwrap());
        if let Some(word) = text.iter().find_map(|l| heredoc(l)) {
            while i < n {
                let l = block.lines[i].clone();
                i += 1;
                let end = l.trim() == word;
                text.push(l);
                if end {
                    break;
                }
            }
        }
        steps.push(Step {
            line,
            text: text.join("\n"),
            exit,
            http,
        });
    }
    steps
}

/// The bash prelude: `asen`, `cargo` and `curl` as described in the module docs.
const PRELUDE: &str = r#"
set -u -o pipefail
declare -A __readme_ports=()
__readme_pids=()
__readme_failed=0

# Rewrite the README's server addresses to the real ones.
__readme_addr() {
  local a=$1 p
  for p in "${!__readme_ports[@]}"; do
    a=${a//localhost:$p/${__readme_ports[$p]}}
    a=${a//127.0.0.1:$p/${__readme_ports[$p]}}
  done
  printf '%s' "$a"
}

__readme_serve() {
  local port=8080 args=() prev= a config=
  [[ -n ${ASEN_SERVER__BIND:-} ]] && port=${ASEN_SERVER__BIND##*:}
  for a in "$@"; do
    [[ $prev == --config ]] && config=$a
    prev=$a
  done
  if [[ -z ${ASEN_SERVER__BIND:-} && -n $config && -f $config ]]; then
    local b
    b=$(sed -n 's/^[[:space:]]*bind[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$config" | head -n1)
    [[ -n $b ]] && port=${b##*:}
  fi
  prev=
  for a in "$@"; do
    if [[ $prev == --bind ]]; then port=${a##*:}; prev=; continue; fi
    if [[ $a == --bind ]]; then prev=--bind; continue; fi
    if [[ $a == --bind=* ]]; then port=${a##*:}; continue; fi
    args+=("$a")
  done
  local n=${#__readme_pids[@]}
  local out=$__README_TMP/serve.$n.out err=$__README_TMP/serve.$n.err
  "$__README_ASEN" "${args[@]}" --bind 127.0.0.1:0 >"$out" 2>"$err" &
  local pid=$! waited=0
  until grep -q '^asen listening on http://' "$out"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid"; local rc=$?
      echo "asen serve exited with status $rc before listening; its stderr:" >&2
      cat "$err" >&2
      return $(( rc == 0 ? 1 : rc ))
    fi
    sleep 0.1
    waited=$(( waited + 1 ))
    if (( waited > 3000 )); then
      echo "asen serve did not listen within 300 s" >&2; kill -KILL "$pid"; return 1
    fi
  done
  local addr
  addr=$(sed -n 's|^asen listening on http://||p' "$out" | head -n1)
  __readme_ports[$port]=$addr
  __readme_pids+=("$pid")
  echo "asen listening on http://$addr"
  echo "[readme test: asen serve runs in the background, README port $port is $addr]" >&2
}

asen() {
  local args=() a sub= prev=
  for a in "$@"; do args+=("$(__readme_addr "$a")"); done
  for a in "${args[@]}"; do
    if [[ $prev == --config || $prev == --log-format ]]; then prev=; continue; fi
    if [[ $a == -* ]]; then prev=$a; continue; fi
    sub=$a; break
  done
  if [[ $sub == serve ]]; then
    __readme_serve "${args[@]}"
  else
    "$__README_ASEN" "${args[@]}"
  fi
}

cargo() {
  case "${1:-}" in
    run)
      shift
      while [[ $# -gt 0 && $1 != -- ]]; do shift; done
      [[ $# -gt 0 ]] && shift
      asen "$@" ;;
    test) echo "[readme test: not running cargo $*]" >&2 ;;
    *) echo "[readme test: cannot run cargo $*]" >&2; return 127 ;;
  esac
}

curl() {
  local args=() a
  for a in "$@"; do args+=("$(__readme_addr "$a")"); done
  local all rc code body
  all=$(command curl -sS -w '\n%{http_code}' "${args[@]}"); rc=$?
  code=${all##*$'\n'}
  body=${all%$'\n'*}
  [[ -n $body ]] && printf '%s\n' "$body"
  if [[ -n ${__README_HTTP:-} ]]; then
    if [[ $code != "$__README_HTTP" ]]; then
      echo "curl: HTTP $code, the README says $__README_HTTP" >&2; return 22
    fi
    return 0
  fi
  if (( rc != 0 )); then echo "curl: exit status $rc (HTTP $code)" >&2; return $rc; fi
  if [[ $code != 2?? ]]; then echo "curl: HTTP $code, expected 2xx" >&2; return 22; fi
}

__readme_step() {
  printf '\n$ %s\n' "$2"
  __README_LINE=$1
}

__readme_check() {
  if [[ $1 != "$2" ]]; then
    echo "README.md line $__README_LINE: exit status $1, expected $2" >&2
    exit 1
  fi
}

__readme_stop() {
  local rc=$? pid status waited
  for pid in "${__readme_pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null
    waited=0
    while kill -0 "$pid" 2>/dev/null && (( waited < 300 )); do sleep 0.1; waited=$(( waited + 1 )); done
    if kill -0 "$pid" 2>/dev/null; then
      echo "asen serve (pid $pid) did not stop within 30 s of SIGTERM" >&2
      kill -KILL "$pid"; rc=1
    fi
    wait "$pid"; status=$?
    if (( status != 0 )); then
      echo "asen serve (pid $pid) exited with status $status after SIGTERM" >&2; rc=1
    fi
  done
  exit $rc
}
trap __readme_stop EXIT
"#;

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn script(section: &Section) -> String {
    let mut s = String::from(PRELUDE);
    for block in &section.blocks {
        for step in steps(block) {
            s.push_str(&format!(
                "__readme_step {} {}\n",
                step.line,
                quote(&step.text)
            ));
            match step.http {
                Some(code) => s.push_str(&format!("__README_HTTP={code}\n")),
                None => s.push_str("unset __README_HTTP\n"),
            }
            s.push_str(&step.text);
            s.push_str(&format!("\n__readme_check $? {}\n", step.exit));
        }
    }
    s.push_str("unset __README_HTTP\n");
    s
}

fn shared_dir() -> PathBuf {
    asen_test_support::shared_root()
}

/// Whether the section can run here; prints the notice (or panics under CI) when not.
fn runnable(section: &Section) -> bool {
    let commands: Vec<String> = section
        .blocks
        .iter()
        .flat_map(steps)
        .map(|s| s.text)
        .collect();
    let uses = |word: &str| commands.iter().any(|c| c.contains(word));
    // The README's shared examples use the fixture checkpoint; the one gate decides.
    if uses("../shared")
        && asen_test_support::shared_dir(&["golden/asen_v1_fashionai.pth.gz"]).is_none()
    {
        return false;
    }
    let has_curl = Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if uses("curl ") && !has_curl {
        let msg = format!("README section {:?} needs curl", section.heading);
        assert!(
            !asen_test_support::shared_required(),
            "ASEN_REQUIRE_SHARED=1 but {msg}"
        );
        eprintln!("SKIPPED: {msg}");
        return false;
    }
    true
}

fn readme() -> Vec<Section> {
    let text = std::fs::read_to_string(checkout().join("README.md")).expect("read README.md");
    sections(&text)
}

/// Run the examples of the section titled `heading`.
fn run_section(heading: &str) {
    let all = readme();
    let section = all
        .iter()
        .find(|s| s.heading == heading)
        .unwrap_or_else(|| panic!("README.md has no section {heading:?}"));
    assert!(
        !section.blocks.is_empty(),
        "README section {heading:?} has no sh or console block"
    );
    if !runnable(section) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::os::unix::fs::symlink(checkout().join("examples"), work.join("examples")).unwrap();
    if shared_dir().is_dir() {
        let shared = std::fs::canonicalize(shared_dir()).unwrap();
        std::os::unix::fs::symlink(shared, tmp.path().join("shared")).unwrap();
    }
    let harness = tmp.path().join("harness");
    std::fs::create_dir(&harness).unwrap();
    let script_path = harness.join("section.sh");
    std::fs::write(&script_path, script(section)).unwrap();

    let mut cmd = Command::new("bash");
    cmd.arg(&script_path)
        .current_dir(&work)
        .env("__README_ASEN", env!("CARGO_BIN_EXE_asen"))
        .env("__README_TMP", &harness)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ASEN_") {
            cmd.env_remove(key);
        }
    }
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let started = Instant::now();
    let mut child = cmd.spawn().expect("run bash");
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > SECTION_TIMEOUT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Whatever the section left behind (a server started in a subshell, say) goes too.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
    let out = String::from_utf8_lossy(&out_reader.join().unwrap()).into_owned();
    let err = String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned();
    let report = format!(
        "README section {heading:?} ({:.1} s)\n--- stdout ---\n{out}\n--- stderr ---\n{err}",
        started.elapsed().as_secs_f64()
    );
    match status {
        Some(s) if s.success() => eprintln!("{report}"),
        Some(s) => panic!("{s}: {report}"),
        None => panic!("timed out after {SECTION_TIMEOUT:?}: {report}"),
    }
}

/// The sections with examples, each with its test below.
const TESTED: &[&str] = &[
    "asen",
    "Use an official ASEN checkpoint",
    "A 5-minute tour with the shipped model",
    "The REST API",
    "Configuration",
];

#[test]
fn quick_start() {
    run_section("asen");
}

#[test]
fn official_checkpoint() {
    run_section("Use an official ASEN checkpoint");
}

#[test]
fn tour() {
    run_section("A 5-minute tour with the shipped model");
}

#[test]
fn rest_api() {
    run_section("The REST API");
}

#[test]
fn configuration() {
    run_section("Configuration");
}

#[test]
fn every_section_with_examples_has_a_test() {
    let with_examples: Vec<String> = readme()
        .into_iter()
        .filter(|s| !s.blocks.is_empty())
        .map(|s| s.heading)
        .collect();
    assert_eq!(
        with_examples, TESTED,
        "README sections with sh or console blocks must each have a test in tests/readme.rs"
    );
}

#[test]
fn commands_are_split_as_documented() {
    let block = Block {
        lang: "console".into(),
        line: 10,
        lines: [
            "$ curl localhost:1/x \\",
            "    -d '{}'   # 422: unknown attribute",
            "{\"status\":1}",
            "$ cat > a.toml <<'EOF'",
            "[server]",
            "EOF",
            "$ asen nothing # exit 2: no such command",
            "$ asen search # where: not an expectation",
        ]
        .map(String::from)
        .to_vec(),
    };
    let got = steps(&block);
    let want = [
        (
            11,
            "curl localhost:1/x \\\n    -d '{}'   # 422: unknown attribute",
            0,
            Some(422),
        ),
        (14, "cat > a.toml <<'EOF'\n[server]\nEOF", 0, None),
        (17, "asen nothing # exit 2: no such command", 2, None),
        (18, "asen search # where: not an expectation", 0, None),
    ];
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for (step, (line, text, exit, http)) in got.iter().zip(want) {
        assert_eq!(
            (step.line, step.text.as_str(), step.exit, step.http),
            (line, text, exit, http)
        );
    }
}

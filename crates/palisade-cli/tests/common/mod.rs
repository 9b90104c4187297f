//! What the process tests share: a scratch directory, the `palisade` binary run to its end,
//! and what it left.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_palisade");

/// Not a timing assertion: only turns a child that never exits into a failure.
pub const HANG_GUARD: Duration = Duration::from_secs(600);

/// A fresh, empty directory for one test.
pub fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("palisade-cli-tests")
        .join(format!("{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    dir
}

pub fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// What a finished run left.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(out: Output) -> Run {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics, showing the run's output, unless it exited with `code`.
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code,
            Some(code),
            "exit code\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// The numbers of the report's `stopped:` line: finished, never started, cut off.
    /// (finished, never started, cut off, waiting for a retry).
    pub fn stopped(&self) -> (usize, usize, usize, usize) {
        let line = self
            .stderr
            .lines()
            .find(|l| l.starts_with("stopped:"))
            .unwrap_or_else(|| panic!("no `stopped:` line in\n{}", self.stderr));
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            (words[2], words[4], words[7]),
            ("finished,", "never", "cut"),
            "{line}"
        );
        assert_eq!(words[14], "waiting", "{line}");
        let n = |i: usize| words[i].parse::<usize>().expect(line);
        (n(1), n(3), n(6), n(13))
    }
}

/// Runs `palisade ARGS` to the end.
pub async fn run(args: &[&str]) -> Run {
    let child = command(args).spawn().expect("start palisade");
    finish(child).await
}

/// Waits for the child to exit and collects its output.
pub async fn finish(child: Child) -> Run {
    let out = tokio::time::timeout(HANG_GUARD, child.wait_with_output())
        .await
        .expect("palisade did not exit (hang guard)")
        .expect("wait for palisade");
    Run::from(out)
}

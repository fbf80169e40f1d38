//! Runs of the `sxds` binary (its client subcommands) to completion, each
//! bounded in time, with what they printed.

use std::{
    io::{Read, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// How long one run may take before the test fails.
pub const RUN_BOUND: Duration = Duration::from_secs(30);

/// One finished run of a binary.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "expected success: {self:?}");
        self
    }

    pub fn refused(self) -> Self {
        assert_eq!(self.code, 1, "expected exit 1: {self:?}");
        self
    }

    /// Asserts exit `code` and a one-line message naming each of `words`.
    pub fn fails(self, code: i32, words: &[&str]) {
        assert_eq!(self.code, code, "expected exit {code}: {self:?}");
        assert!(self.stdout.is_empty(), "nothing on stdout: {self:?}");
        assert_eq!(self.stderr.lines().count(), 1, "one line: {self:?}");
        for word in words {
            assert!(self.stderr.contains(word), "the error names {word:?}: {self:?}");
        }
    }
}

/// Runs `command` (fed `stdin`, if any) to completion within [`RUN_BOUND`],
/// killing it past that. Blocks: call it off the async workers.
pub fn run_command(mut command: Command, stdin: Option<&[u8]>) -> Run {
    command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input).expect("write stdin");
    }
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            pipe.read_to_string(&mut text).map(|_| text)
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("stdout")));
    let stderr = read(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + RUN_BOUND;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not finish within {RUN_BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: stdout.join().expect("stdout reader").expect("stdout is UTF-8"),
        stderr: stderr.join().expect("stderr reader").expect("stderr is UTF-8"),
    }
}

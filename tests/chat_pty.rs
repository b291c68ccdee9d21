//! `engine chat` driven through a pseudo-terminal, as a person would use it: start, ask, receive
//! a streamed answer, Ctrl-C in the middle of a reply, `/reset`, `/stats`, exit; and chat
//! templates that misbehave (a template bomb, one that tries to read a file) are stopped with an
//! error while the REPL goes on.

#![cfg(unix)]

use std::borrow::Cow;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use engine::gguf::{GgufFile, GgufWriter, MetaValue};
use engine_tests::{bin::engine_bin, default_model};

/// A child process on a pseudo-terminal, and everything it has printed so far.
struct Pty {
    master: File,
    child: Child,
    seen: Vec<u8>,
    /// Output before this has been matched by an `expect`.
    pos: usize,
}

impl Pty {
    fn spawn(args: &[&str], history: &Path) -> Pty {
        let (mut master_fd, mut slave_fd) = (0, 0);
        // SAFETY: openpty writes two descriptors into the given integers; no other pointers.
        let rc = unsafe { libc::openpty(&mut master_fd, &mut slave_fd, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
        assert_eq!(rc, 0, "openpty failed");
        // SAFETY: both descriptors were just returned by openpty and are owned here.
        let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master_fd), OwnedFd::from_raw_fd(slave_fd)) };
        let mut cmd = Command::new(engine_bin());
        cmd.args(args).arg("--history").arg(history);
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: between fork and exec only async-signal-safe calls: a new session with the
        // terminal as its controlling terminal, so Ctrl-C becomes SIGINT as in a real shell.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn engine chat");
        // Non-blocking reads, so `expect` can time out.
        let fd = master.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(fd, libc::F_SETFL, libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK) };
        Pty { master: File::from(master), child, seen: Vec::new(), pos: 0 }
    }

    fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.seen)
    }

    /// Reads until the output after `from` contains `needle`; returns the end of the match.
    fn expect_from(&mut self, from: usize, needle: &str, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(i) = String::from_utf8_lossy(&self.seen[from.min(self.seen.len())..]).find(needle) {
                return from + i + needle.len();
            }
            match self.master.read(&mut buf) {
                Ok(0) => {}
                Ok(n) => self.seen.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
                // EIO: the child closed the terminal.
                Err(_) => {}
            }
            assert!(Instant::now() < deadline, "timed out waiting for {needle:?}; output so far:\n{}", self.text());
        }
    }

    /// Reads until at least `n` bytes have been printed in all.
    fn wait_len(&mut self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while self.seen.len() < n {
            match self.master.read(&mut buf) {
                Ok(k) => self.seen.extend_from_slice(&buf[..k]),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
            assert!(Instant::now() < deadline, "timed out waiting for output; so far:\n{}", self.text());
        }
    }

    /// Reads until `needle` appears after what earlier calls matched; consumes through it.
    fn expect(&mut self, needle: &str) -> usize {
        let end = self.expect_from(self.pos, needle, Duration::from_secs(120));
        self.pos = end;
        end
    }

    /// Consumes everything printed so far.
    fn skip_seen(&mut self) {
        self.pos = self.seen.len();
    }

    fn send(&mut self, s: &str) {
        self.master.write_all(s.as_bytes()).unwrap();
        self.master.flush().unwrap();
    }

    fn exit_status(mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                assert!(!self.text().contains("panicked"), "{}", self.text());
                return s;
            }
            let mut buf = [0u8; 4096];
            if let Ok(n) = self.master.read(&mut buf) {
                self.seen.extend_from_slice(&buf[..n]);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("engine chat did not exit; output:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn ask_interrupt_reset_stats_exit() {
    let Some(model) = default_model() else { return };
    let dir = tempfile::tempdir().unwrap();
    let m = model.to_str().unwrap();
    let mut p = Pty::spawn(&["chat", "-m", m, "--temp", "0", "-n", "24", "-c", "1024"], &dir.path().join("history"));
    p.expect("completion mode");
    p.expect("> ");

    // Ask: the base model continues the text, streamed; greedy, so the answer is known up to
    // the order of the colours, a near tie for this model that moves with the kernels' float
    // summation order (the packed Q4_K/Q6_K decode kernels give "red, yellow, and blue").
    p.send("The three primary colors are\r");
    p.expect(" red, ");
    p.expect("> ");
    let reply = p.text();
    assert!(reply.contains("red, blue, and yellow") || reply.contains("red, yellow, and blue"), "unexpected reply:\n{reply}");

    // Stats of that reply.
    p.send("/stats\r");
    p.expect("tokens/s");
    p.expect("context: ");
    p.expect("sliding-window");

    // A long reply, interrupted by Ctrl-C while it streams.
    p.send("/set n -1\r");
    p.expect("(n = -1)");
    p.skip_seen();
    p.send("Once upon a time\r");
    let start = p.seen.len();
    // Wait until some of the reply has streamed, then press Ctrl-C.
    p.wait_len(start + "Once upon a time\r\n".len() + 20, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    p.skip_seen();
    p.send("\x03");
    p.expect("[stopped]");
    p.expect("> ");

    // Reset forgets the conversation.
    p.send("/reset\r");
    p.expect("(conversation reset)");
    p.send("/stats\r");
    p.expect("context: 0 of 1024 positions used");

    // Ctrl-C at the prompt does not leave; /exit does.
    p.send("\x03");
    p.expect("Ctrl-D or /exit to leave");
    p.send("/exit\r");
    assert!(p.exit_status().success());
}

/// A copy of the default model with `tokenizer.chat_template` set to `template`.
fn model_with_template(model: &Path, dir: &Path, template: &str) -> std::path::PathBuf {
    let file = GgufFile::open(model).unwrap();
    let mut w = GgufWriter::from_file(&file).unwrap();
    w.set("tokenizer.chat_template", MetaValue::String(template.to_string())).unwrap();
    let out = dir.join("templated.gguf");
    w.write_atomic(&out, None).unwrap();
    out
}

fn assert_template_error_and_repl_goes_on(template: &str, error_part: &str) {
    let Some(model) = default_model() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = model_with_template(&model, dir.path(), template);
    let mut p = Pty::spawn(&["chat", "-m", path.to_str().unwrap(), "--temp", "0", "-n", "4", "-c", "512"], &dir.path().join("history"));
    p.expect("chat template: tokenizer.chat_template");
    p.expect("> ");
    p.send("hello\r");
    p.expect("error: chat template");
    p.expect(error_part);
    p.expect("> ");
    // The REPL is still there: commands work and a second attempt fails the same way.
    p.send("/stats\r");
    p.expect("context: 0 of 512 positions used");
    p.send("again\r");
    p.expect("error: chat template");
    p.send("/exit\r");
    assert!(p.exit_status().success());
}

#[test]
fn template_bomb_is_stopped_and_the_repl_goes_on() {
    assert_template_error_and_repl_goes_on(
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ messages[0].content }}{% endfor %}{% endfor %}",
        "fuel",
    );
}

#[test]
fn template_reading_a_file_is_stopped_and_the_repl_goes_on() {
    assert_template_error_and_repl_goes_on("{% include '/etc/passwd' %}{{ messages[0].content }}", "template");
}

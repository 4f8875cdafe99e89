//! A real terminal for the dashboard's end-to-end tests: tmux sessions, keys, screens.

use std::{
    process::Command,
    time::{Duration, Instant},
};

pub fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("tmux {args:?}: {e} (cargo xtask setup installs tmux)"));
    assert!(
        out.status.success(),
        "tmux {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tmux session running a shell (so that what is left after a program exits, the restored
/// screen, can be seen), killed however the test ends.
pub struct Session(pub String);

impl Session {
    pub fn new(tag: &str) -> Session {
        let s = Session(crate::unique(tag));
        tmux(&[
            "new-session",
            "-d",
            "-s",
            &s.0,
            "-x",
            "120",
            "-y",
            "32",
            "sh",
        ]);
        s
    }

    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.0];
        args.extend(keys);
        tmux(&args);
    }

    /// Kill the session, as a closed terminal window or a dropped SSH connection would: the
    /// programs in it get SIGHUP and their terminal goes away.
    pub fn kill(&self) {
        tmux(&["kill-session", "-t", &self.0]);
    }

    /// Whether the alternate screen (the dashboard's) is showing.
    pub fn alternate_on(&self) -> bool {
        tmux(&["display", "-p", "-t", &self.0, "#{alternate_on}"]).trim() == "1"
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .output();
    }
}

/// The exit status the shell printed (`echo TAG-exited-$?`): a word `TAG-exited-<digits>`, so
/// the typed command line (`TAG-exited-$?`) never counts, wherever a prompt lands.
pub fn exit_code(screen: &str, tag: &str) -> Option<i32> {
    let prefix = format!("{tag}-exited-");
    screen
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&prefix)?.parse().ok())
}

/// The screen now.
pub fn capture(session: &str) -> String {
    tmux(&["capture-pane", "-p", "-t", session])
}

pub fn wait_screen(session: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
    wait_screen_for(session, what, Duration::from_secs(10), pred)
}

pub fn wait_screen_for(
    session: &str,
    what: &str,
    within: Duration,
    pred: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let screen = tmux(&["capture-pane", "-p", "-t", session]);
        if pred(&screen) {
            return screen;
        }
        assert!(
            Instant::now() < deadline,
            "waited {within:?} for {what}; screen:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

//! Progress: a live line per bake on a terminal (indicatif), plain timestamped lines otherwise,
//! nothing with -q. Step output is printed as it arrives, prefixed with the step.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Live,
    Plain,
    Quiet,
}

/// Where progress goes: stdout, or stderr when stdout carries JSON.
#[derive(Clone)]
pub struct Progress {
    mode: Mode,
    to_stderr: bool,
    multi: Option<MultiProgress>,
    lock: Arc<Mutex<()>>,
}

impl Progress {
    pub fn new(quiet: bool, json: bool) -> Progress {
        let tty = if json { std::io::stderr().is_terminal() } else { std::io::stdout().is_terminal() };
        let mode = if quiet {
            Mode::Quiet
        } else if tty {
            Mode::Live
        } else {
            Mode::Plain
        };
        let multi =
            (mode == Mode::Live).then(|| MultiProgress::with_draw_target(if json { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::stdout() }));
        Progress { mode, to_stderr: json, multi, lock: Arc::new(Mutex::new(())) }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// A reporter for one task (a bake, a roll's group), its lines prefixed with `label` (e.g.
    /// `boxoffice/staging`, `kaiju kaiju_staging`).
    pub fn task(&self, label: &str) -> Reporter {
        let bar = self.multi.as_ref().map(|m| {
            let b = m.add(ProgressBar::new_spinner());
            b.set_style(ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg} {elapsed:>5}").unwrap_or_else(|_| ProgressStyle::default_spinner()));
            b.set_prefix(label.to_string());
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Reporter { progress: self.clone(), label: label.to_string(), bar }
    }

    fn line(&self, text: &str) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Live => {
                if let Some(m) = &self.multi {
                    let _ = m.println(text);
                }
            }
            Mode::Plain => {
                let _g = self.lock.lock();
                let stamped = format!("{} {text}\n", crate::journal::now_rfc3339());
                if self.to_stderr {
                    let _ = std::io::stderr().write_all(stamped.as_bytes());
                } else {
                    let _ = std::io::stdout().write_all(stamped.as_bytes());
                }
            }
        }
    }
}

#[derive(Clone)]
pub struct Reporter {
    progress: Progress,
    label: String,
    bar: Option<ProgressBar>,
}

impl Reporter {
    /// The bake is now in `stage`, doing `detail`.
    pub fn stage(&self, stage: &str, detail: &str) {
        if let Some(b) = &self.bar {
            b.set_message(format!("{stage}: {detail}"));
        }
        self.progress.line(&format!("{} {stage}: {detail}", self.label));
    }

    /// A line worth keeping on screen.
    pub fn info(&self, text: &str) {
        self.progress.line(&format!("{} {text}", self.label));
    }

    /// Output of a step, line by line, prefixed with the step.
    pub fn output(&self, step: &str, stream: &str, text: &str) {
        for l in text.lines() {
            self.progress.line(&format!("{} [{step}{}] {l}", self.label, if stream == "stderr" { " stderr" } else { "" }));
        }
    }

    pub fn finish(&self, text: &str) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        self.progress.line(&format!("{} {text}", self.label));
    }
}

//! Progress bars on stderr while phases run (hidden when stderr is not a terminal), and the
//! one-line notes printed between them.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// The bars of one run, drawn together on stderr.
#[derive(Clone)]
pub(crate) struct Progress {
    /// Draws every bar of the run on stderr.
    multi: MultiProgress,
}

impl Progress {
    /// Bars on stderr.
    pub(crate) fn new() -> Progress {
        Progress {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
        }
    }

    /// A bar labelled `label` counting up to `len`.
    pub(crate) fn bar(&self, label: &str, len: u64) -> ProgressBar {
        let style = ProgressStyle::with_template(
            "{prefix:>22} [{elapsed_precise}] {wide_bar} {pos:>8}/{len:8} {rate:>9} {msg}",
        )
        .expect("valid progress template")
        .with_key(
            "rate",
            |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                let _ = write!(out, "{:.0}/s", state.per_sec());
            },
        );
        let bar = self.multi.add(
            ProgressBar::new(len)
                .with_style(style)
                .with_prefix(label.to_owned()),
        );
        bar.set_position(0);
        bar
    }

    /// A spinner labelled `label`, for waits of unknown length.
    pub(crate) fn spinner(&self, label: &str) -> ProgressBar {
        let style =
            ProgressStyle::with_template("{prefix:>22} {spinner} [{elapsed_precise}] {msg}")
                .expect("valid spinner template");
        let spinner = self.multi.add(
            ProgressBar::new_spinner()
                .with_style(style)
                .with_prefix(label.to_owned()),
        );
        spinner.enable_steady_tick(std::time::Duration::from_millis(200));
        spinner
    }

    /// Prints a line above the bars (on stderr, also when the bars are hidden).
    pub(crate) fn note(&self, line: &str) {
        if self.multi.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }
}

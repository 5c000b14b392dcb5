//! Progress on the terminal.

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar on stderr counting shots; hidden when stderr is not a terminal.
pub fn shot_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} shots ({per_sec}, eta {eta}) {msg}",
        )
        .expect("valid template"),
    );
    bar.set_prefix(what.to_string());
    bar
}

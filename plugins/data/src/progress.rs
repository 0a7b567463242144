//! Progress bars for the data layer's long jobs (replays, counting).

/// A bar with `what` before it, hidden when `show` is false; its length is set as work is known.
pub fn bar(show: bool, what: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(0);
    b.set_style(
        indicatif::ProgressStyle::with_template(&format!("{what} {{bar:40}} {{pos}}/{{len}} [{{elapsed}}<{{eta}}]"))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

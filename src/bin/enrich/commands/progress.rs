//! The progress display on standard error: shown only where it cannot mix into the output.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use enrich::batch::{self, ImportEvent};
use enrich::error::{Error, Result};

use super::Input;

/// The total size of `inputs` if they are all regular files (standard input is not), for a
/// display that shows how far through them a command is.
pub(super) fn input_size(inputs: &[PathBuf]) -> Option<u64> {
    if inputs.is_empty() {
        return None;
    }
    inputs.iter().try_fold(0, |total, path| {
        let meta = std::fs::metadata(path).ok().filter(|m| m.is_file())?;
        Some(total + meta.len())
    })
}

/// The progress display of a long command, on standard error when shown: lines so far and
/// their rate (whole numbers), and for files the share of bytes read and the time left.
#[derive(Debug)]
pub(super) struct Progress {
    pub(super) bar: ProgressBar,
    unit: &'static str,
}

impl Progress {
    /// Hidden unless `shown`; with a `total` of input bytes, a bar with percent and ETA.
    pub(super) fn new(unit: &'static str, total: Option<u64>, shown: bool) -> Progress {
        let bar = match (shown, total) {
            (false, _) => ProgressBar::hidden(),
            (true, Some(total)) => ProgressBar::new(total),
            (true, None) => ProgressBar::new_spinner(),
        };
        let template = match total {
            Some(_) => "{spinner} [{bar:30}] {percent:>3}%  {msg}  {elapsed}, ETA {eta}",
            None => "{spinner} {msg}  {elapsed}",
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        bar.set_message(lines_and_rate(0, 0.0, unit));
        Progress { bar, unit }
    }

    /// Updates the display from a run's counters until aborted.
    pub(super) fn follow(&self, run: batch::RunProgress) -> tokio::task::JoinHandle<()> {
        let bar = self.bar.clone();
        let unit = self.unit;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                bar.set_position(run.bytes_read());
                bar.set_message(lines_and_rate(
                    run.lines(),
                    bar.elapsed().as_secs_f64(),
                    unit,
                ));
            }
        })
    }

    pub(super) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// The display of an import of a file or standard input, following the lines and bytes read;
/// rejected lines are said above it as they are met.
pub(super) struct ImportProgress {
    /// The input as a bad line's error names it: the file, or `-` for standard input.
    name: String,
    display: Progress,
    progress: batch::RunProgress,
    ticker: tokio::task::JoinHandle<()>,
}

impl ImportProgress {
    /// Starts the display of an import of `unit` (users, entries) from `file` (`None` for
    /// standard input), shown on a terminal; `input`, counted, is what the import reads.
    pub(super) fn start(unit: &'static str, file: Option<&Path>, input: Input) -> (Self, Input) {
        let total = file.and_then(|f| input_size(&[f.to_path_buf()]));
        let display = Progress::new(unit, total, std::io::stderr().is_terminal());
        let progress = batch::RunProgress::new();
        let ticker = display.follow(progress.clone());
        let input = progress.count_reads(input);
        let import = ImportProgress {
            name: file.map_or("-".into(), |f| f.display().to_string()),
            display,
            progress,
            ticker,
        };
        (import, input)
    }

    /// Takes an event of the import: a rejected line is said on standard error as
    /// `error: FILE:LINE: reason`, as `run` names a bad line.
    pub(super) fn event(&self, event: ImportEvent<'_>) {
        match event {
            ImportEvent::Rejected { line, error } => self
                .display
                .bar
                .suspend(|| tell!("error: {}:{line}: {error}", self.name)),
            ImportEvent::Progress { lines } => self.progress.set_lines(lines),
        }
    }

    /// Ends the display; an import stopped by a store fault prints the summary of what it
    /// committed, before its error goes up.
    pub(super) fn finish<S>(
        self,
        imported: std::result::Result<S, (impl std::fmt::Display, Error)>,
    ) -> Result<S> {
        self.ticker.abort();
        self.display.finish();
        imported.map_err(|(committed, error)| {
            // What is in the store already, before why the rest is not.
            tell!("{committed}");
            error
        })
    }
}

/// `1234 lines, 5678 lines/s`: whole numbers, which is all a reader of a moving display takes
/// in.
fn lines_and_rate(lines: u64, secs: f64, unit: &str) -> String {
    let rate = if secs > 0.0 {
        (lines as f64 / secs).round() as u64
    } else {
        0
    };
    format!("{lines} {unit}, {rate} {unit}/s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_whole_numbers() {
        assert_eq!(lines_and_rate(10, 3.0, "lines"), "10 lines, 3 lines/s");
        assert_eq!(lines_and_rate(0, 0.0, "users"), "0 users, 0 users/s");
    }

    #[test]
    fn sizes_are_known_for_regular_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "12345").unwrap();
        std::fs::write(&b, "678").unwrap();
        assert_eq!(input_size(&[a.clone(), b]), Some(8));
        assert_eq!(input_size(&[a.clone(), PathBuf::from("-")]), None);
        assert_eq!(input_size(&[a, dir.path().to_path_buf()]), None);
        assert_eq!(input_size(&[]), None);
    }
}

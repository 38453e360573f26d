//! Writes the inputs that `enrich run` is measured with (BENCHMARKS.md), reproducibly:
//!
//! ```sh
//! # users.ndjson and activities.ndjson from enrich::bench::Workload (10,000 users, Zipf actors)
//! cargo run --release --example workload -- DIR --activities 500000 [--users 10000] \
//!     [--zipf 1.0] [--seed 42]
//! # big-users.ndjson (one user "big" of about 10 kB) and big.ndjson: LINES lines of about
//! # 1 MiB, each with 79,000 top-level references to it (output about 790 MB a line), or as
//! # many references as asked
//! cargo run --release --example workload -- DIR --amplify LINES [--references 79000]
//! ```

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use enrich::Timestamp;
use enrich::bench::Workload;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut dir = None;
    let mut workload = Workload::default();
    let mut amplify = None;
    let mut references = 79_000;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> usize {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} takes a number"))
        };
        match arg.as_str() {
            "--users" => workload.users = value("--users"),
            "--activities" => workload.activities = value("--activities"),
            "--seed" => workload.seed = value("--seed") as u64,
            "--zipf" => {
                workload.zipf = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("--zipf takes a number"))
            }
            "--amplify" => amplify = Some(value("--amplify")),
            "--references" => references = value("--references"),
            _ if dir.is_none() => dir = Some(PathBuf::from(arg)),
            _ => panic!("unexpected argument {arg}"),
        }
    }
    let dir = dir.expect("usage: workload DIR [--activities N] [--users N] [--amplify LINES]");
    std::fs::create_dir_all(&dir)?;
    match amplify {
        Some(lines) => write_amplified(&dir, lines, references),
        None => write_workload(&dir, &workload),
    }
}

fn write_workload(dir: &Path, workload: &Workload) -> std::io::Result<()> {
    let at = Timestamp::parse("2021-04-13T22:53:19.670051Z").expect("a valid timestamp");
    let mut users = BufWriter::new(std::fs::File::create(dir.join("users.ndjson"))?);
    for user in workload.user_lines() {
        writeln!(users, "{}", user.to_json(at).as_str())?;
    }
    users.flush()?;
    let mut activities = BufWriter::new(std::fs::File::create(dir.join("activities.ndjson"))?);
    for line in workload.activity_lines() {
        writeln!(activities, "{line}")?;
    }
    activities.flush()
}

/// Lines of `{"a":"SU:big","a":"SU:big",…}`, 13 bytes a reference: 79,000 of them make a line
/// just under 1 MiB.
fn write_amplified(dir: &Path, lines: usize, references: usize) -> std::io::Result<()> {
    let bio = "x".repeat(10_000);
    std::fs::write(
        dir.join("big-users.ndjson"),
        format!("{{\"id\":\"big\",\"data\":{{\"bio\":\"{bio}\"}}}}\n"),
    )?;
    let mut line = String::with_capacity(references * 13 + 2);
    line.push('{');
    for i in 0..references {
        if i > 0 {
            line.push(',');
        }
        line.push_str("\"a\":\"SU:big\"");
    }
    line.push_str("}\n");
    let mut out = BufWriter::new(std::fs::File::create(dir.join("big.ndjson"))?);
    for _ in 0..lines {
        out.write_all(line.as_bytes())?;
    }
    out.flush()
}

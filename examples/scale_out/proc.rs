//! Process plumbing: CPU time from /proc, the start signal children wait for, reading a
//! server's `INFO`.

use std::io::BufRead;
use std::time::Duration;

use enrich::bench::scale::now_ns;

/// CPU seconds (user and system) this process has used: the scheduler's run time of each of
/// its threads (`/proc/self/task/*/schedstat`, in nanoseconds), so that the few milliseconds
/// a run's invalidations cost show; the tick counts of /proc/self/stat (1/100 s) where that
/// cannot be read.
pub fn cpu_secs() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return cpu_secs_of("self");
    };
    let mut ns = 0u64;
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        match stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
        {
            Some(n) => ns += n,
            None => return cpu_secs_of("self"),
        }
    }
    ns as f64 / 1e9
}

/// The same for process `pid` (`"self"` for this one); 0 when it cannot be read.
pub fn cpu_secs_of(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name, field 2, is in parentheses and may hold spaces: count from after it.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // `rest` starts at field 3 (state), so fields 14 and 15 are at 11 and 12.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Says `ready` on standard output, then waits for `go START END` (ns, [`now_ns`]) on
/// standard input, and returns the window.
pub fn ready_then_wait_for_go() -> Result<(u64, u64), String> {
    println!("ready");
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the start signal: {e}"))?;
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("go"), Some(start), Some(end)) => match (start.parse(), end.parse()) {
            (Ok(start), Ok(end)) => Ok((start, end)),
            _ => Err(format!("bad start signal {line:?}")),
        },
        _ => Err(format!("bad start signal {line:?}")),
    }
}

/// Sleeps until `at` ([`now_ns`]).
pub async fn sleep_until(at: u64) {
    let now = now_ns();
    if at > now {
        tokio::time::sleep(Duration::from_nanos(at - now)).await;
    }
}

/// One number of a server's `INFO` (`used_cpu_sys:`, `tracking_clients:`); 0 when absent.
pub fn info_number(info: &str, name: &str) -> f64 {
    info.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `INFO all` of the server at `port`.
pub fn info(port: u16) -> Result<String, String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .map_err(|e| format!("bad address: {e}"))?;
    let mut conn = client
        .get_connection()
        .map_err(|e| format!("cannot reach 127.0.0.1:{port}: {e}"))?;
    redis::cmd("INFO")
        .arg("all")
        .query(&mut conn)
        .map_err(|e| format!("INFO on 127.0.0.1:{port}: {e}"))
}

/// The server's CPU seconds, user and system, main and background threads.
pub fn server_cpu_secs(info: &str) -> f64 {
    info_number(info, "used_cpu_sys:") + info_number(info, "used_cpu_user:")
}

/// The calls of `command` (`role`, `cluster|nodes`) in an `INFO all`'s commandstats; 0 when
/// it never ran.
pub fn command_calls(info: &str, command: &str) -> f64 {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The microseconds `command` spent executing, from an `INFO all`'s commandstats; 0 when it
/// never ran.
pub fn command_usec(info: &str, command: &str) -> f64 {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:")))
        .and_then(|v| v.split(',').find_map(|f| f.strip_prefix("usec=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

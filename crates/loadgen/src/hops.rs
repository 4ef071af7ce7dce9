//! `hops`: where a relayed frame's time goes, process by process.
//!
//! Reads the text of `perf script -F comm,pid,tid,time,event` over a trace
//! of these syscall events, recorded on the processes a frame crosses while
//! `relay --pairs 1 --rate 1000` runs (`scripts/bench-signaling.sh --only
//! hops` records and reads both traces):
//!
//! `sys_exit_epoll_wait` (a process wakes), `sys_exit_recvfrom` /
//! `sys_exit_read` (it has read), `sys_enter_writev` / `sys_enter_write` /
//! `sys_enter_sendto` (it passes the frame on).
//!
//! From each send of the load generator it follows the frame's path: the
//! first matching event of the next process after the previous step, within
//! 3 ms. With one call at 1,000 frames/s a frame is through long before the
//! next is sent, so the chains do not interleave.
//!
//! * `--path fleet`: load generator → gateway A → Redis → gateway B → load
//!   generator (relay v2: the gateways run the relay script and hold the
//!   subscriptions; signaling is not on a frame's path);
//! * `--path bare`: load generator → Redis → load generator (PUBLISH to a
//!   subscriber on the same process: the bare Redis floor).
//!
//! Each step's median says how long the frame waited for a process to wake
//! (`woke`), to read (`read`), and inside it before passing the frame on
//! (`passed on`). Tracing adds a little to each syscall; the two paths pay
//! it alike per step.

use std::collections::HashMap;

use crate::Fail;
use crate::args::Args;

/// A chain not complete within this long is dropped (another frame's events).
const CHAIN_LIMIT_US: f64 = 3000.0;

/// One syscall event of the trace: time (µs), role of its process, event.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    at_us: f64,
    role: String,
    name: String,
}

/// A step of a path: the role whose event comes next, and which event
/// (a substring of its name).
type Step = (&'static str, &'static str);

/// The gateways' steps match any read (`exit_re…`: `recvfrom` or `read`)
/// and any write (`enter_…`): a WebSocket and a Redis connection are
/// written with different calls.
const FLEET: &[Step] = &[
    ("L", "enter_sendto"),
    ("gA", "exit_epoll"),
    ("gA", "exit_re"),
    ("gA", "enter_"),
    ("R", "exit_epoll"),
    ("R", "exit_read"),
    ("R", "enter_write"),
    ("gB", "exit_epoll"),
    ("gB", "exit_re"),
    ("gB", "enter_"),
    ("L", "exit_epoll"),
    ("L", "exit_recvfrom"),
];

/// The load generator's publisher (the `redis` crate) writes and reads
/// with other calls than its WebSocket client: any write, any read.
const BARE: &[Step] = &[
    ("L", "enter_"),
    ("R", "exit_epoll"),
    ("R", "exit_read"),
    ("R", "enter_write"),
    ("L", "exit_epoll"),
    ("L", "exit_re"),
];

/// `comm pid/tid seconds: syscalls:name:` → (pid, µs, name).
fn parse_line(line: &str) -> Option<(&str, f64, &str)> {
    let (head, rest) = line.split_once(" syscalls:")?;
    let name = rest.trim().trim_end_matches(':');
    let mut fields = head.split_whitespace().rev();
    let seconds: f64 = fields.next()?.strip_suffix(':')?.parse().ok()?;
    let pid = fields.next()?.split_once('/')?.0;
    Some((pid, seconds * 1e6, name))
}

fn events(trace: &str, roles: &HashMap<String, String>) -> Vec<Event> {
    let mut out: Vec<Event> = trace
        .lines()
        .filter_map(parse_line)
        .filter_map(|(pid, at_us, name)| {
            Some(Event {
                at_us,
                role: roles.get(pid)?.clone(),
                name: name.to_owned(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.at_us.total_cmp(&b.at_us));
    out
}

/// Per complete chain, the time of each step after the first.
fn chains(events: &[Event], path: &[Step]) -> Vec<Vec<f64>> {
    let matches = |e: &Event, (role, name): Step| e.role == role && e.name.contains(name);
    let mut found = Vec::new();
    for (start, first) in events.iter().enumerate() {
        if !matches(first, path[0]) {
            continue;
        }
        let mut at = first.at_us;
        let mut next = start + 1;
        let mut steps = Vec::with_capacity(path.len() - 1);
        for &step in &path[1..] {
            let Some(offset) = events[next..].iter().position(|e| matches(e, step)) else {
                break;
            };
            let event = &events[next + offset];
            if event.at_us - first.at_us > CHAIN_LIMIT_US {
                break;
            }
            steps.push(event.at_us - at);
            at = event.at_us;
            next += offset + 1;
        }
        if steps.len() == path.len() - 1 {
            found.push(steps);
        }
    }
    found
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// What a step's time was spent on: its event tells.
fn describe(name: &str) -> &'static str {
    if name.contains("epoll") {
        WOKE
    } else if name.starts_with("exit_") {
        "read"
    } else {
        "passed on"
    }
}

const WOKE: &str = "woke";

/// `unilink-load hops --trace F --roles L=PID,gA=PID,... [--path fleet|bare]`.
pub fn run(args: &Args) -> Result<(), Fail> {
    let path = match args.opt("path").unwrap_or("fleet") {
        "fleet" => FLEET,
        "bare" => BARE,
        other => return Err(format!("--path must be fleet or bare, not {other:?}").into()),
    };
    let trace = std::fs::read_to_string(args.get("trace")?)?;
    let mut roles = HashMap::new();
    for pair in args.get("roles")?.split(',') {
        let (role, pid) = pair
            .split_once('=')
            .ok_or_else(|| format!("--roles takes ROLE=PID pairs, not {pair:?}"))?;
        roles.insert(pid.to_owned(), role.to_owned());
    }
    for (role, _) in path {
        if !roles.values().any(|r| r == role) {
            return Err(format!("--roles names no process for {role}").into());
        }
    }
    let found = chains(&events(&trace, &roles), path);
    if found.len() < 100 {
        return Err(format!(
            "only {} complete frame paths in the trace (want at least 100)",
            found.len()
        )
        .into());
    }
    let mut totals: Vec<f64> = found.iter().map(|c| c.iter().sum()).collect();
    totals.sort_by(f64::total_cmp);
    println!(
        "{} frames traced; median {:.0} µs from the load generator's send to its read",
        found.len(),
        quantile(&totals, 0.5)
    );
    println!("  {:<4} {:<10} {:>7} {:>7} {:>7}", "", "step", "p25", "median", "p75");
    let (mut woke, mut inside) = (0.0, 0.0);
    for (i, (role, name)) in path[1..].iter().enumerate() {
        let mut column: Vec<f64> = found.iter().map(|c| c[i]).collect();
        column.sort_by(f64::total_cmp);
        let median = quantile(&column, 0.5);
        let what = describe(name);
        if what == WOKE {
            woke += median;
        } else {
            inside += median;
        }
        println!(
            "  {role:<4} {what:<10} {:>7.0} {median:>7.0} {:>7.0}",
            quantile(&column, 0.25),
            quantile(&column, 0.75)
        );
    }
    println!("  sum of medians: waking {woke:.0} µs, reading and work {inside:.0} µs");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles() -> HashMap<String, String> {
        [("10", "L"), ("20", "R")]
            .into_iter()
            .map(|(p, r)| (p.to_owned(), r.to_owned()))
            .collect()
    }

    const TRACE: &str = "\
 tokio-rt-worker 10/11  100.000100:      syscalls:sys_enter_sendto: 
    redis-server 20/20  100.000130:   syscalls:sys_exit_epoll_wait: 
    redis-server 20/20  100.000135:         syscalls:sys_exit_read: 
    redis-server 20/20  100.000150:       syscalls:sys_enter_write: 
 unrelated       99/99  100.000155:       syscalls:sys_enter_write: 
 tokio-rt-worker 10/11  100.000170:   syscalls:sys_exit_epoll_wait: 
 tokio-rt-worker 10/11  100.000180:     syscalls:sys_exit_recvfrom: 
 tokio-rt-worker 10/11  100.001100:      syscalls:sys_enter_sendto: 
    redis-server 20/20  100.009000:   syscalls:sys_exit_epoll_wait: 
";

    #[test]
    fn perf_script_lines_parse() {
        let line = " tokio-rt-worker 15384/15385  1136.748212:      syscalls:sys_enter_sendto: ";
        let (pid, at, name) = parse_line(line).unwrap();
        assert_eq!(pid, "15384");
        assert!((at - 1_136_748_212.0).abs() < 0.5);
        assert_eq!(name, "sys_enter_sendto");
        assert!(parse_line("garbage").is_none());
    }

    #[test]
    fn a_frame_is_followed_step_by_step_and_late_steps_break_the_chain() {
        let events = events(TRACE, &roles());
        assert_eq!(events.len(), 8, "the unrelated process is left out");
        let found = chains(&events, BARE);
        // The second send's path never completes within the limit.
        assert_eq!(found.len(), 1);
        let steps: Vec<i64> = found[0].iter().map(|s| s.round() as i64).collect();
        assert_eq!(steps, vec![30, 5, 15, 20, 10]);
    }
}

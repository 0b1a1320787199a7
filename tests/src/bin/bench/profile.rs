//! A CPU profile of the gateway per scenario, so the next change starts
//! from data: `perf record` on the gateway's pid during one extra run of
//! the scenario (the measured rounds run unprofiled), folded into one line
//! per distinct stack (`a;b;c count`, the input of flamegraph.pl and
//! inferno) in `bench-profiles/<scenario>.folded`, and the functions with
//! the most samples of their own printed under the table.
//!
//! Stacks are unwound from DWARF (`--call-graph dwarf`): release builds
//! keep no frame pointers, and the release profile carries line tables.
//! Where `perf_event_paranoid` is 2 (the default), only user-space samples
//! are taken, so the kernel's share (loopback TCP, syscalls) is not in
//! the profile: the report says so.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{gateway_run, Proc, Scenario};

/// The profiled run's length.
pub const PROFILED_RUN: Duration = Duration::from_secs(2);

/// Sampling frequency: enough samples in a 2 s run for the top functions,
/// few enough that unwinding them takes seconds.
const FREQUENCY: &str = "499";

/// Bytes of stack copied per sample for the DWARF unwinder.
const STACK_BYTES: &str = "16384";

/// Functions listed per scenario.
const TOP: usize = 12;

pub struct Profiler {
    dir: PathBuf,
    /// Why profiles are not taken, when they are not.
    unavailable: Option<String>,
}

/// One scenario's profile.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Profile {
    pub samples: u64,
    /// Samples by where their own (leaf) function lives: the kernel, a
    /// crate, or the gateway's module (`gateway::upstream`).
    pub areas: Vec<(String, f64)>,
    /// Functions by their own (leaf) samples, as a share of all samples.
    pub top_self: Vec<(String, f64)>,
    /// Where the folded stacks were written.
    pub folded: PathBuf,
    /// Whether kernel frames were sampled too.
    pub kernel: bool,
}

impl Profiler {
    /// Profiles go to `dir`; `enabled: false` (`--no-profile`) takes none.
    pub fn new(dir: &Path, enabled: bool) -> Profiler {
        let unavailable = if !enabled {
            Some("--no-profile".to_owned())
        } else {
            match Command::new("perf")
                .arg("--version")
                .stdout(Stdio::null())
                .status()
            {
                Ok(s) if s.success() => None,
                _ => Some("perf is not installed (apt-get install linux-perf)".to_owned()),
            }
        };
        Profiler {
            dir: dir.to_owned(),
            unavailable,
        }
    }

    pub fn unavailable(&self) -> Option<&str> {
        self.unavailable.as_deref()
    }

    /// Starts sampling `pid` for `dur`; `None` when profiles are off.
    pub fn start(&self, pid: u32, scenario: &str, dur: Duration) -> Result<Option<Recording>> {
        if self.unavailable.is_some() {
            return Ok(None);
        }
        std::fs::create_dir_all(&self.dir)?;
        let slug: String = scenario
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let data = self.dir.join(format!("{slug}.perf.data"));
        let child = Command::new("perf")
            .args(["record", "-q", "-F", FREQUENCY, "--call-graph"])
            .arg(format!("dwarf,{STACK_BYTES}"))
            .arg("-p")
            .arg(pid.to_string())
            .arg("-o")
            .arg(&data)
            .args(["--", "sleep"])
            .arg(format!("{:.1}", dur.as_secs_f64()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting perf record")?;
        Ok(Some(Recording {
            child,
            data,
            folded: self.dir.join(format!("{slug}.folded")),
        }))
    }
}

pub struct Recording {
    child: std::process::Child,
    data: PathBuf,
    folded: PathBuf,
}

impl Recording {
    /// Waits for the recording to end, then folds it.
    pub fn finish(self) -> Result<Profile> {
        let out = self.child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "perf record failed: {} (perf_event_paranoid above 2 forbids it; try sudo sysctl kernel.perf_event_paranoid=2)",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let script = Command::new("perf")
            // Inlined frames would be resolved through addr2line, which
            // takes minutes on this binary; the real frames suffice.
            .args(["script", "--no-inline", "-F", "comm,tid,ip,sym", "-i"])
            .arg(&self.data)
            .stderr(Stdio::null())
            .output()
            .context("running perf script")?;
        let _ = std::fs::remove_file(&self.data);
        if !script.status.success() {
            bail!("perf script failed on {}", self.data.display());
        }
        let text = String::from_utf8_lossy(&script.stdout);
        let stacks = fold(&text);
        let mut lines: Vec<(&String, &u64)> = stacks.iter().collect();
        lines.sort_by(|a, b| b.1.cmp(a.1));
        let mut folded = String::new();
        for (stack, n) in &lines {
            folded.push_str(stack);
            folded.push(' ');
            folded.push_str(&n.to_string());
            folded.push('\n');
        }
        std::fs::write(&self.folded, folded)?;
        let samples: u64 = stacks.values().sum();
        let mut own: HashMap<&str, u64> = HashMap::new();
        for (stack, n) in &stacks {
            let leaf = stack.rsplit(';').next().unwrap_or(stack);
            *own.entry(leaf).or_default() += n;
        }
        let mut top: Vec<(String, f64)> = own
            .into_iter()
            .map(|(f, n)| (f.to_owned(), n as f64 * 100.0 / samples.max(1) as f64))
            .collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1));
        top.truncate(TOP);
        let kernel = stacks.keys().any(|s| s.contains("_[k]"));
        let mut by_area: HashMap<String, u64> = HashMap::new();
        for (stack, n) in &stacks {
            let leaf = stack.rsplit(';').next().unwrap_or(stack);
            *by_area.entry(area(leaf)).or_default() += n;
        }
        let mut areas: Vec<(String, f64)> = by_area
            .into_iter()
            .map(|(a, n)| (a, n as f64 * 100.0 / samples.max(1) as f64))
            .collect();
        areas.sort_by(|a, b| b.1.total_cmp(&a.1));
        areas.truncate(TOP);
        Ok(Profile {
            samples,
            areas,
            top_self: top,
            folded: self.folded,
            kernel,
        })
    }
}

/// One more run of `s` on the gateway, profiled; `None` when profiles are
/// off. A failed profile is reported and the bench goes on.
pub async fn profile_run(
    profiler: &Profiler,
    gw: &Proc,
    port: u16,
    s: &Scenario,
    ticks: f64,
) -> Result<Option<Profile>> {
    profiled(profiler, gw, s.name, async {
        gateway_run(gw, port, &s.http, PROFILED_RUN, None, ticks).await
    })
    .await
}

/// `load` (a run of [`PROFILED_RUN`]) with `gw` profiled as `name`.
pub async fn profiled<T>(
    profiler: &Profiler,
    gw: &Proc,
    name: &str,
    load: impl std::future::Future<Output = Result<T>>,
) -> Result<Option<Profile>> {
    let Some(recording) = profiler.start(gw.0.id(), name, PROFILED_RUN)? else {
        return Ok(None);
    };
    eprintln!("{name}: profiling");
    load.await?;
    let done = tokio::task::spawn_blocking(move || recording.finish()).await?;
    match done {
        Ok(p) => Ok(Some(p)),
        Err(e) => {
            eprintln!("{name}: no profile: {e:#}");
            Ok(None)
        }
    }
}

/// The functions with the most samples of their own, per scenario.
pub fn print_profiles(profiles: &[(&str, Profile)], profiler: &Profiler) {
    if let Some(why) = profiler.unavailable() {
        println!("\nno CPU profiles: {why}");
        return;
    }
    for (name, p) in profiles {
        println!(
            "\nprofile of {name}: {} samples{}, folded stacks in {}; functions by own samples:",
            p.samples,
            if p.kernel {
                ""
            } else {
                " (user space only: perf_event_paranoid keeps kernel frames out)"
            },
            p.folded.display()
        );
        for (f, share) in &p.top_self {
            println!("  {share:5.1}%  {f}");
        }
        println!("  by where the function lives:");
        for (a, share) in &p.areas {
            println!("  {share:5.1}%  {a}");
        }
    }
}

/// The profiles for the report.
pub fn profile_json(profiles: &[(&str, Profile)]) -> serde_json::Value {
    serde_json::Value::Object(
        profiles
            .iter()
            .map(|(n, p)| {
                (
                    (*n).to_owned(),
                    serde_json::to_value(p).unwrap_or(serde_json::Value::Null),
                )
            })
            .collect(),
    )
}

/// Where a function lives: `kernel`, the crate of a Rust path (the module
/// too for the gateway's own code), or `libc and others`.
fn area(function: &str) -> String {
    if function.ends_with("_[k]") {
        return "kernel".into();
    }
    // `<T as Trait>::f` and `Type<T>::f` name their crate after the `<`.
    let path = function.trim_start_matches('<');
    let mut parts = path.split("::");
    match (parts.next(), parts.next()) {
        (Some("gateway"), Some(module)) => {
            let module: String = module
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            format!("gateway::{module}")
        }
        (Some(krate), Some(_)) => krate
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect(),
        _ => "libc and others".into(),
    }
}

/// `perf script` output (a header line per sample, then one frame per
/// line, leaf first, a blank line after) into folded stacks: root first,
/// frames joined by `;`, with the thread's name as the root.
fn fold(text: &str) -> HashMap<String, u64> {
    let mut stacks: HashMap<String, u64> = HashMap::new();
    let mut frames: Vec<String> = Vec::new();
    let mut thread: Option<String> = None;
    let mut flush = |thread: &mut Option<String>, frames: &mut Vec<String>| {
        if let Some(t) = thread.take() {
            let mut stack = t;
            for f in frames.iter().rev() {
                stack.push(';');
                stack.push_str(f);
            }
            *stacks.entry(stack).or_default() += 1;
        }
        frames.clear();
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut thread, &mut frames);
        } else if line.starts_with(char::is_whitespace) {
            if thread.is_some() {
                frames.push(symbol(line.trim()));
            }
        } else {
            flush(&mut thread, &mut frames);
            // "comm tid" (the comm may hold spaces: the tid is last).
            let comm = line.trim_end().rsplit_once(' ').map_or(line, |(c, _)| c);
            thread = Some(comm.trim().replace(';', ":"));
        }
    }
    flush(&mut thread, &mut frames);
    stacks
}

/// A frame line (`55e8a1b2 hyper::proto::h1::role::encode+0x12`) as the
/// function's name: no address, offset or legacy-mangling hash, and no `;`
/// (the folded format's separator); kernel functions (addresses in the
/// top half) marked `_[k]`, as flamegraph.pl colours them.
fn symbol(frame: &str) -> String {
    let (addr, name) = frame.split_once(' ').unwrap_or((frame, "[unknown]"));
    let name = name.trim();
    let name = name.strip_suffix(" (inlined)").unwrap_or(name);
    let name = match name.rfind("+0x") {
        Some(i) => &name[..i],
        None => name,
    };
    let name = match name.rfind("::h") {
        Some(i) if name.len() - i == 19 && name[i + 3..].bytes().all(|b| b.is_ascii_hexdigit()) => {
            &name[..i]
        }
        _ => name,
    };
    let kernel = addr.len() == 16 && addr.starts_with("ffff");
    let mut name = name.replace(';', ":");
    if kernel {
        name.push_str("_[k]");
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_are_placed_in_the_kernel_a_crate_or_a_gateway_module() {
        assert_eq!(area("tcp_ack_[k]"), "kernel");
        assert_eq!(area("h2::proto::connection::Connection<T,P,B>::poll"), "h2");
        assert_eq!(
            area("<hyper::proto::h1::role::Server as Http1Transaction>::encode"),
            "hyper"
        );
        assert_eq!(
            area("gateway::upstream::client::Client::open_on::{{closure}}"),
            "gateway::upstream"
        );
        assert_eq!(area("__memmove_avx512_unaligned_erms"), "libc and others");
    }

    #[test]
    fn samples_fold_root_first_without_offsets_or_hashes() {
        let text = "gateway 101\n\
            \t    55e8a1 hyper::proto::h1::role::encode::h0123456789abcdef+0x12\n\
            \t    55e8a2 tokio::runtime::task::harness::poll+0x40\n\
            \n\
            gateway 101\n\
            \t    55e8a1 hyper::proto::h1::role::encode::h0123456789abcdef+0x30\n\
            \t    55e8a2 tokio::runtime::task::harness::poll+0x40\n\
            \n\
            tokio-rt worker 102\n\
            \t    ffffffff813aecd3 finish_task_switch.isra.0\n\
            \t    7f00 [unknown]\n";
        let stacks = fold(text);
        assert_eq!(
            stacks
                .get("gateway;tokio::runtime::task::harness::poll;hyper::proto::h1::role::encode"),
            Some(&2)
        );
        assert_eq!(
            stacks.get("tokio-rt worker;[unknown];finish_task_switch.isra.0_[k]"),
            Some(&1)
        );
        assert_eq!(stacks.len(), 2);
    }
}

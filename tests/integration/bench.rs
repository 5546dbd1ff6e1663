//! `faxgate bench relay` runs end to end and reports every throughput
//! shape it was asked for, each with a ratio and its CPU cost (no
//! wall-clock threshold: the numbers are only checked for sanity).

use crate::common::faxgate;
use std::process::Command;

/// Parses `name <number>` out of a report line.
fn number_after(line: &str, name: &str) -> f64 {
    let rest = &line[line
        .find(name)
        .unwrap_or_else(|| panic!("no `{name}` in {line:?}"))
        + name.len()..];
    rest.trim_start()
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after `{name}` in {line:?}"))
}

#[test]
fn bench_relay_reports_each_throughput_shape_with_its_cpu_cost() {
    let out = Command::new(faxgate())
        .args(["bench", "relay", "--only", "throughput", "--mib", "8"])
        .args(["--rounds", "1", "--workers", "1", "--pinned", "--tls"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("throughput ("))
        .collect();
    let two_cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    let expected = if two_cpus {
        vec![
            "(tokio workers: 1)",
            "(TLS, tokio workers: 1)",
            "(relay alone on CPU 1",
        ]
    } else {
        vec!["(tokio workers: 1)", "(TLS, tokio workers: 1)"]
    };
    assert_eq!(lines.len(), expected.len(), "shapes reported:\n{stdout}");
    for (line, shape) in lines.iter().zip(expected) {
        assert!(line.contains(shape), "{shape} missing from {line:?}");
        let kind = if shape.contains("TLS") { "TLS" } else { "TCP" };
        let direct = number_after(line, &format!("direct loopback {kind}"));
        let bridged = number_after(line, "bridged through the relay");
        let ratio = number_after(line, "ratio");
        assert!(direct > 0.0 && bridged > 0.0, "{line}");
        // The printed ratio is the printed rates' ratio, to the rounding
        // of all three (rates to whole MiB/s, the ratio to 0.01).
        let slack = 0.006 + (bridged / direct) * (0.5 / bridged + 0.5 / direct);
        assert!(
            (ratio - bridged / direct).abs() <= slack,
            "ratio {ratio} is not {bridged} / {direct}: {line}"
        );
        let cpu = &line[line.find("CPU per GiB moved:").expect(line)..];
        let cpu_direct = number_after(cpu, "direct");
        let cpu_bridged = number_after(cpu, "bridged");
        assert!(
            cpu_direct > 0.0 && cpu_bridged > 0.0,
            "no CPU time measured: {line}"
        );
    }
    if !two_cpus {
        assert!(
            stdout.contains("relay on a CPU of its own: skipped"),
            "{stdout}"
        );
    }
}

#[test]
fn bench_relay_refuses_a_runtime_without_workers() {
    let out = Command::new(faxgate())
        .args(["bench", "relay", "--only", "throughput", "--workers", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--workers") && stderr.contains("at least one worker"),
        "{stderr}"
    );
}

//! `veilnet bench` with small sizes: every figure present and sane, the
//! payload byte-exact, and the run ends by itself. No speed is checked here.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn bench_runs_small_and_reports_every_figure() {
    let json = std::env::temp_dir().join(format!("veilnet-bench-test-{}.json", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_veilnet"))
        .args([
            "bench",
            "--nodes",
            "4",
            "--hops",
            "3",
            "--bulk-mib",
            "4",
            "--streams",
            "2",
            "--requests",
            "10",
            "--circuits",
            "5",
            "--idle-circuits",
            "10",
            "--json",
        ])
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(240) {
            let _ = child.kill();
            panic!("veilnet bench did not finish by itself within 240 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut table = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut table).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    // Progress lines overwrite each other with \r; the error comes last.
    assert!(
        status.success(),
        "bench failed:\n{}\n{table}",
        err.replace('\r', "\n")
    );
    assert!(
        table.contains("bulk throughput") && table.contains("verified"),
        "{table}"
    );

    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    let num = |path: &[&str]| -> f64 {
        let mut x = &v;
        for p in path {
            x = x
                .get(p)
                .unwrap_or_else(|| panic!("missing {path:?} in {v}"));
        }
        x.as_f64()
            .unwrap_or_else(|| panic!("{path:?} is not a number: {x}"))
    };
    for side in ["veilnet", "direct"] {
        for key in ["bulk_mbps", "aggregate_mbps"] {
            let x = num(&[side, key]);
            assert!(x.is_finite() && x > 0.0, "{side}.{key} = {x}");
        }
        let p50 = num(&[side, "ttfb_ms", "p50"]);
        let p99 = num(&[side, "ttfb_ms", "p99"]);
        assert!(
            p50 > 0.0 && p50 <= p99 && p99 < 10_000.0,
            "{side} ttfb {p50} {p99}"
        );
    }
    let b50 = num(&["veilnet", "build_ms", "p50"]);
    let b99 = num(&["veilnet", "build_ms", "p99"]);
    assert!(
        b50 > 0.0 && b50 <= b99 && b99 < 60_000.0,
        "build {b50} {b99}"
    );
    let boot = num(&["veilnet", "bootstrap_s"]);
    assert!(boot > 0.0 && boot < 90.0, "bootstrap {boot}");
    let cpu = num(&["veilnet", "cpu_s_per_gb"]);
    assert!(cpu > 0.0 && cpu.is_finite(), "cpu {cpu}");
    let mem = num(&["veilnet", "bytes_per_idle_circuit"]);
    assert!(mem >= 0.0 && mem.is_finite() && mem < 100e6, "memory {mem}");
    assert!(num(&["ratios", "bulk"]) > 0.0);
    assert_eq!(v["params"]["nodes"], 4);
    assert_eq!(v["params"]["hops"], 3);
    assert_eq!(v["payload_verified"], true);
}

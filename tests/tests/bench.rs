//! `warren-bench`, as the README runs it but small: every phase of a normal run completes on the
//! real broker and its JSON report holds the figures the README's table is made of.

use std::time::Duration;

use serde_json::Value;
use warren_tests::binary;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_phase_runs_and_reports_its_figures() -> anyhow::Result<()> {
    let bench = binary("warren-bench")?;
    let bin_dir = bench.parent().expect("a directory").to_path_buf();
    let run = tokio::process::Command::new(&bench)
        .args(["-n", "300", "--json", "--stall-secs", "30", "--bin-dir"])
        .arg(&bin_dir)
        .args(["--amqp-url", &warren_tests::broker_url()])
        .output();
    let output = tokio::time::timeout(Duration::from_secs(240), run).await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "warren-bench failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(&stdout)?;
    for phase in ["raw", "relay", "floor"] {
        let rate = report[phase]["per_second"].as_f64().unwrap_or(0.0);
        assert!(rate > 0.0, "{phase}: {}", report[phase]);
        assert_eq!(report[phase]["count"], 300, "{phase}");
    }
    let pipeline = &report["pipeline"];
    assert_eq!(pipeline["completed"]["count"], 300, "{pipeline}");
    assert_eq!(pipeline["missing"], 0, "{pipeline}");
    assert_eq!(pipeline["duplicates"], 0, "{pipeline}");
    assert_eq!(pipeline["not_succeeded"], 0, "{pipeline}");
    assert!(
        pipeline["submit_to_start"]["p99_ms"].as_f64().is_some(),
        "{pipeline}"
    );
    for ratio in [
        "pipeline_over_raw",
        "relay_over_raw",
        "floor_over_raw",
        "pipeline_over_floor",
    ] {
        assert!(
            report["ratios"][ratio].as_f64().is_some_and(|r| r > 0.0),
            "{ratio}"
        );
    }
    Ok(())
}

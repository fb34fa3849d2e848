//! Bench lines: each printed as `bench: <name> <value> <unit>` and kept in
//! `target/bench-results.json` (`{"<name>": {"value": v, "unit": "u"}}`, updated by
//! every bench that runs), so a run's figures can be read back by tools.

use std::path::PathBuf;

/// Where the figures are kept: `$CARGO_TARGET_DIR` or the workspace's `target/`.
pub fn results_file() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("bench-results.json")
}

/// Print a figure with `decimals` decimals, and keep it.
pub fn line(name: &str, value: f64, unit: &str, decimals: usize) {
    println!("bench: {name} {value:.decimals$} {unit}");
    keep(&results_file(), name, value, unit);
}

/// Keep a figure in the results file at `path`.
fn keep(path: &std::path::Path, name: &str, value: f64, unit: &str) {
    let mut all: serde_json::Map<String, serde_json::Value> = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    all.insert(
        name.to_owned(),
        serde_json::json!({"value": value, "unit": unit}),
    );
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(text) = serde_json::to_string_pretty(&all) {
        // A bench's figures are also on its output: a file that cannot be written
        // loses nothing the run printed.
        let _ = std::fs::write(path, text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_kept_by_name_and_the_last_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("target/bench-results.json");
        keep(&path, "e2e_quotes_per_s", 3000.0, "1/s");
        keep(&path, "tracing_overhead", 1.2, "x");
        keep(&path, "tracing_overhead", 1.031, "x");
        let all: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            all,
            serde_json::json!({
                "e2e_quotes_per_s": {"value": 3000.0, "unit": "1/s"},
                "tracing_overhead": {"value": 1.031, "unit": "x"},
            })
        );
    }
}

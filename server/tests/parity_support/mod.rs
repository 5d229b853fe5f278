//! What both parity suites (`parity.rs`, `parity_cogvlm2.rs`) do with a fixture set: run one case and fail with
//! every failed check listed, and list the set's case ids.

use std::path::Path;

use cogvlm::tools::parity::{Check, Runner};

/// Runs case `id` of the fixture set in `fixtures` in `dtype` (a case whose reference is bf16 runs in bf16,
/// `parity::Runner`) and fails with every failed check listed.
pub fn run(fixtures: &Path, id: &str, dtype: &str) {
    // Models load in a few ms; one runner per test keeps the tests independent and parallel.
    let dtype = cogvlm::generate::parse_dtype_name(dtype).unwrap();
    let mut runner = Runner::on_cpu(fixtures, dtype).expect("fixture runner");
    let case = runner.case(id).unwrap_or_else(|e| panic!("{e:#}"));
    let checks = runner.run_case(&case, &mut |_| {});
    assert_report(id, &checks);
}

fn assert_report(id: &str, checks: &[Check]) {
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.to_string())
        .collect();
    for c in checks {
        println!("{c}");
    }
    assert!(checks.len() >= 10, "{id}: only {} checks ran", checks.len());
    assert!(
        failed.is_empty(),
        "{id}: {} failed check(s):\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// The ids of every case in the set, to check that each has a test.
pub fn case_ids(fixtures: &Path) -> Vec<String> {
    let runner = Runner::on_cpu(fixtures, candle_core::DType::F32).expect("fixture runner");
    runner
        .cases()
        .expect("cases.json")
        .iter()
        .filter_map(|c| c.get("id").and_then(|v| v.as_str()).map(str::to_string))
        .collect()
}

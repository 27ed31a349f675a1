//! The fuzz targets of the workspace (structured random inputs with proptest) run through
//! [`fuzz`], which gives each two modes:
//!
//! - in the normal test run, a fixed number of cases (`PROPTEST_CASES` overrides it), as a
//!   `proptest!` block would;
//! - with `ASEN_FUZZ_SECONDS=N` (the CI fuzz step, `.ci/run`), new inputs until N seconds
//!   have passed, then one line on stdout: `fuzz <target>: <n> inputs in <s> s, 0 failures`.
//!
//! Either way a failing input is shrunk, its seed is saved in a `.proptest-regressions` file
//! beside the target's source (commit it: it is replayed before any new input from then on),
//! and the test panics with the minimal input.

use std::cell::Cell;
use std::panic::Location;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseResult, TestRunner};

/// Seconds each target runs for when set; unset, targets run their case counts.
pub const SECONDS_ENV: &str = "ASEN_FUZZ_SECONDS";

/// The time budget from [`SECONDS_ENV`], if set. A value that is not a number of seconds
/// panics rather than silently running the short mode.
pub fn budget() -> Option<Duration> {
    let v = std::env::var(SECONDS_ENV).ok()?;
    let s: u64 = v
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{SECONDS_ENV}={v:?} is not a number of seconds"));
    Some(Duration::from_secs(s))
}

/// What one run of a target did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Run {
    /// Inputs the property was checked on (persisted failures replayed first included).
    pub inputs: u64,
    pub elapsed: Duration,
}

/// Checks `test` on inputs from `strategy`: `cases` of them (or `PROPTEST_CASES`), or, under
/// `ASEN_FUZZ_SECONDS`, as many as fit in that time, and prints the count. Panics with the
/// minimal failing input on a failure. `name` labels the printed line.
#[track_caller]
pub fn fuzz<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> TestCaseResult,
) {
    let config = Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        source_file: Some(Location::caller().file()),
        ..Config::default()
    };
    let budget = budget();
    match run(config, budget, &strategy, test) {
        Ok(r) if budget.is_some() => println!(
            "fuzz {name}: {} inputs in {:.1} s, 0 failures",
            r.inputs,
            r.elapsed.as_secs_f64()
        ),
        Ok(_) => {}
        Err(e) => panic!("fuzz {name}: {e}"),
    }
}

/// One chunk of a timed run takes about this long at most, so the budget is overrun by
/// little more (a slow input is checked to its end).
const CHUNK_TIME: Duration = Duration::from_millis(500);

/// Without a budget, one proptest run of `config.cases` cases. With one, successive runs
/// (each with a fresh generator drawn from the first, each replaying the persisted failures
/// first) of chunks growing from one case while a chunk takes under [`CHUNK_TIME`], until
/// the budget is spent. The error is proptest's message with the minimal failing input.
pub fn run<S: Strategy>(
    config: Config,
    budget: Option<Duration>,
    strategy: &S,
    test: impl Fn(S::Value) -> TestCaseResult,
) -> Result<Run, String> {
    let started = Instant::now();
    let inputs = Cell::new(0u64);
    let counted = |value| {
        inputs.set(inputs.get() + 1);
        test(value)
    };
    match budget {
        None => TestRunner::new(config)
            .run(strategy, counted)
            .map_err(|e| e.to_string())?,
        Some(budget) => {
            let mut generators = TestRunner::new(config.clone());
            let mut chunk = 1u32;
            while started.elapsed() < budget {
                let t = Instant::now();
                let cases = Config {
                    cases: chunk,
                    // proptest's default shrink limit is 4 per case, which for a chunk of
                    // one would stop shrinking after 4 steps: keep the full run's limit.
                    max_shrink_iters: config.max_shrink_iters(),
                    ..config.clone()
                };
                TestRunner::new_with_rng(cases, generators.new_rng())
                    .run(strategy, counted)
                    .map_err(|e| e.to_string())?;
                if t.elapsed() < CHUNK_TIME {
                    chunk = chunk.saturating_mul(2).min(1 << 16);
                }
            }
        }
    }
    Ok(Run {
        inputs: inputs.get(),
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(cases: u32) -> Config {
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        }
    }

    #[test]
    fn without_a_budget_it_checks_the_given_number_of_cases() {
        let r = run(config(37), None, &any::<u32>(), |_| Ok(())).unwrap();
        assert_eq!(r.inputs, 37);
    }

    #[test]
    fn with_a_budget_it_checks_inputs_until_the_budget_is_spent() {
        let budget = Duration::from_millis(300);
        let r = run(config(5), Some(budget), &any::<u32>(), |_| Ok(())).unwrap();
        assert!(r.elapsed >= budget, "{r:?}");
        assert!(r.elapsed < budget + Duration::from_secs(5), "{r:?}");
        assert!(r.inputs > 5, "{r:?}");
    }

    #[test]
    fn with_a_budget_a_failing_input_ends_the_run_with_the_minimal_input() {
        let err = run(
            config(5),
            Some(Duration::from_secs(60)),
            &(0u32..1_000_000),
            |v| {
                prop_assert!(v < 1000);
                Ok(())
            },
        )
        .unwrap_err();
        assert!(err.contains("minimal failing input: 1000"), "{err}");
    }

    #[test]
    fn a_budget_that_is_not_a_number_is_refused() {
        // Only this test reads the variable in this binary; set and checked in one place.
        std::env::set_var(SECONDS_ENV, "thirty");
        let refused = std::panic::catch_unwind(budget).is_err();
        std::env::remove_var(SECONDS_ENV);
        assert!(refused);
    }
}

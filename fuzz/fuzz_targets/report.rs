//! The report path: whatever a step prints (any bytes, repeated up to MiBs)
//! and whatever structured result it writes, the agent's final report must
//! serialize within its budget (below the service's body limit), parse back
//! as the service parses it, and shrink within a halved budget when the
//! service refuses it. A structured result is checked with the same bounded
//! parser the service uses.
#![no_main]
use libfuzzer_sys::fuzz_target;

use ibkit_api::StructuredJson;
use ibkit_api::report_fit::{MIN_REPORT_BUDGET, Piece, fit_outcome, refit_report};
use ibkit_api::wire::{FinalStatus, Report, ReportEvent, StepOutcome};

fn outcome(structured: Option<StructuredJson>) -> StepOutcome {
    StepOutcome {
        status: FinalStatus::Ok,
        attempts: 1,
        exit_code: Some(0),
        signal: None,
        timed_out: false,
        halted: false,
        started_at_ms: 1,
        finished_at_ms: 2,
        log: String::new(),
        log_truncated_bytes: 0,
        result: String::new(),
        result_truncated_bytes: 0,
        structured_result: structured,
        error: None,
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    // Header: budget (64 KiB..320 KiB), how often the log and the result
    // repeat (so a few KiB of input become up to ~1 MiB of output).
    let budget = MIN_REPORT_BUDGET + usize::from(data[0]) * 1024;
    let (log_times, result_times) = (usize::from(data[1]) * 4 + 1, usize::from(data[2]) * 4 + 1);
    let rest = &data[3..];
    let third = rest.len() / 3;
    let (log_bytes, rest) = rest.split_at(third);
    let (result_bytes, structured_bytes) = rest.split_at(third);

    let structured = std::str::from_utf8(structured_bytes)
        .ok()
        .and_then(|t| StructuredJson::from_text(t, 64 * 1024).ok());
    if let Some(s) = &structured {
        let parsed = s
            .parse_bounded(64 * 1024)
            .expect("a checked result parses again");
        assert!(parsed.is_object());
    }

    let log = String::from_utf8_lossy(log_bytes).repeat(log_times);
    let result = String::from_utf8_lossy(result_bytes).repeat(result_times);
    let fitted = fit_outcome(
        "exec-1",
        outcome(structured),
        &[Piece::Text(log.as_str().into())],
        &[Piece::Text(result.as_str().into())],
        budget,
        usize::MAX,
    )
    .expect("text pieces cannot fail to read");
    let mut report = Report {
        report_id: "00000000-0000-0000-0000-000000000000".into(),
        exec_id: "exec-1".into(),
        event: ReportEvent::Finished(Box::new(fitted)),
    };
    let wire = serde_json::to_vec(&report).expect("serializes");
    assert!(
        wire.len() <= budget,
        "report of {} bytes over its {budget}-byte budget",
        wire.len()
    );
    let back: Report = serde_json::from_slice(&wire).expect("the service parses it");
    assert!(matches!(back.event, ReportEvent::Finished(_)));

    // The service refused it: half the budget must still hold.
    let half = (budget / 2).max(MIN_REPORT_BUDGET);
    refit_report(&mut report, half).expect("refits");
    let wire = serde_json::to_vec(&report).expect("serializes");
    assert!(
        wire.len() <= half,
        "refitted report of {} bytes over {half}",
        wire.len()
    );
});

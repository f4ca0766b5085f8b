//! What a conformance run reports: one [`Row`] per case, with its checks,
//! status and times, and the [`AdapterReport`] of one adapter.

use std::time::Duration;

use crate::gpu::AdapterSummary;
use crate::reference::{Comparison, Tolerance};

use super::Subject;

/// A case's outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Every value met its bound.
    Pass,
    /// A value missed its bound, was not finite, or the GPU call failed: why.
    Fail(String),
    /// The adapter cannot run this case: the reason, naming the limit.
    Skip(String),
}

impl Status {
    /// `pass`, `fail` or `skip`.
    pub fn label(&self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail(_) => "fail",
            Status::Skip(_) => "skip",
        }
    }

    /// The reason of a failure or skip.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Status::Pass => None,
            Status::Fail(r) | Status::Skip(r) => Some(r),
        }
    }
}

/// One output compared with its reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// The output, in the spec's words (`O`, `R`, `m`, `entropy`, ...).
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// The bound it is held to.
    pub tolerance: Tolerance,
    /// How it compared.
    pub comparison: Comparison,
    /// The worst element when it missed its bound: `(index, gpu, reference)`.
    pub worst_miss: Option<(Vec<usize>, f32, f64)>,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The kernel.
    pub subject: Subject,
    /// The case's size label.
    pub size: String,
    /// The case's note.
    pub note: Option<String>,
    /// The shader entry points the case dispatched on this adapter, as
    /// `name::entry`, in the order each first ran: recorded from what the
    /// library submitted ([`crate::Gpu::work`]), so they cannot drift from
    /// the pipeline. Empty when the case was skipped before any GPU work.
    pub shaders: Vec<String>,
    /// Each output compared (empty when skipped or when the call failed).
    pub checks: Vec<Check>,
    /// Pass, fail or skip.
    pub status: Status,
    /// GPU wall time: upload, dispatch, readback (and the pipeline build the
    /// first time a kernel runs on the adapter).
    pub time: Duration,
    /// CPU time of the float64 reference.
    pub reference_time: Duration,
}

impl Row {
    /// The largest absolute error over all outputs.
    pub fn max_abs(&self) -> f64 {
        self.checks
            .iter()
            .map(|c| c.comparison.max_abs)
            .fold(0.0, f64::max)
    }

    /// The largest relative error over all outputs (see [`Comparison::max_rel`]).
    pub fn max_rel(&self) -> f64 {
        self.checks
            .iter()
            .map(|c| c.comparison.max_rel)
            .fold(0.0, f64::max)
    }

    /// The largest error as a fraction of its bound: at most 1 on a pass.
    pub fn worst(&self) -> f64 {
        self.checks
            .iter()
            .map(|c| c.comparison.worst)
            .fold(0.0, f64::max)
    }
}

/// Rows by status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Passed.
    pub pass: usize,
    /// Failed.
    pub fail: usize,
    /// Skipped.
    pub skip: usize,
}

impl Counts {
    /// Counts of `rows`.
    pub fn of<'a>(rows: impl IntoIterator<Item = &'a Row>) -> Counts {
        let mut c = Counts::default();
        for r in rows {
            match r.status {
                Status::Pass => c.pass += 1,
                Status::Fail(_) => c.fail += 1,
                Status::Skip(_) => c.skip += 1,
            }
        }
        c
    }
}

/// The report of one adapter.
#[derive(Debug, Clone)]
pub struct AdapterReport {
    /// Backend, name, type, driver.
    pub adapter: AdapterSummary,
    /// The adapter's limits (the device is opened with them).
    pub limits: wgpu::Limits,
    /// The adapter's optional features.
    pub features: wgpu::Features,
    /// What a downlevel (e.g. GL) adapter can and cannot do.
    pub downlevel: wgpu::DownlevelCapabilities,
    /// One per case, in matrix order.
    pub rows: Vec<Row>,
}

impl AdapterReport {
    /// Rows by status.
    pub fn counts(&self) -> Counts {
        Counts::of(&self.rows)
    }

    /// No row failed.
    pub fn passed(&self) -> bool {
        self.counts().fail == 0
    }
}

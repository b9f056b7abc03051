#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod cache;
pub mod cut;
pub mod descriptor;
pub mod directory;
pub mod evidence;
pub mod measure;
pub mod path;
mod reader;
pub mod weight;
pub mod wire;

pub use cut::Cut;
pub use descriptor::{
    digest, Descriptor, DescriptorDigest, DescriptorError, Roles, SignedDescriptor, Verified,
    MAX_ADDRS, MAX_CLOCK_SKEW, MAX_DESCRIPTOR_AGE, MAX_DESCRIPTOR_BYTES, MAX_FAMILY,
    MAX_SIGNATURE_BYTES, MAX_VERSION_LEN, REPUBLISH_EVERY, SIGNING_CONTEXT,
};
pub use directory::{
    record_key, spans_since, supersedes, Awaited, Directory, Inserted, RecordKey, SeqMark,
    SeqMarks, MAX_NODES, MAX_SEQ_MARKS, MAX_SEQ_MARKS_FILE_BYTES, REFUSED_REMEMBERED,
    REPLACED_REMEMBERED, REPORT_ORDER, SEQ_MARKS_FILE,
};
pub use evidence::Equivocation;
pub use measure::{
    is_report, MeasureParams, Measured, Observation, Report, ReportError, ReportFork,
    ReportInserted, VerifiedReport,
};
pub use path::{select_path, PathError, PathRequest};
pub use weight::{Weights, MAX_WEIGHTED_PER_PREFIX};

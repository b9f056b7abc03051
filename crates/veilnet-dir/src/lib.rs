#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod descriptor;
pub mod directory;
pub mod path;

pub use descriptor::{
    digest, Descriptor, DescriptorDigest, DescriptorError, Roles, SignedDescriptor, Verified,
    MAX_ADDRS, MAX_CLOCK_SKEW, MAX_DESCRIPTOR_AGE, MAX_DESCRIPTOR_BYTES, MAX_FAMILY,
    MAX_SIGNATURE_BYTES, MAX_VERSION_LEN, SIGNING_CONTEXT,
};
pub use directory::{
    supersedes, Directory, Inserted, SeqMark, SeqMarks, MAX_NODES, MAX_SEQ_MARKS,
    MAX_SEQ_MARKS_FILE_BYTES, REFUSED_REMEMBERED, SEQ_MARKS_FILE,
};
pub use path::{select_path, GuardSet, PathError, PathRequest};

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
pub use directory::{Directory, Inserted, MAX_NODES, REFUSED_REMEMBERED};
pub use path::{select_path, GuardSet, PathError, PathRequest};

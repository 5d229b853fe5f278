//! The shared types, defined once in the Leptos-free `protocol` crate (`app/protocol/`), which the
//! server uses too; re-exported here so the components name them `crate::protocol::…`.
pub use protocol::*;

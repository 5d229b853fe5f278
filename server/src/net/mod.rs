//! What the web server and the API share below both of them: the connection layer ([`conn`],
//! [`io`]), request bodies against a shared budget ([`body`]) and signed client ids
//! ([`client_id`]).

pub mod body;
pub mod client_id;
pub mod conn;
pub mod io;
pub mod redact;

/// Equality that takes as long whatever the first differing byte (no timing oracle).
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

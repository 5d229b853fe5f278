//! Conversations kept in the browser: the stored record and its exports (`record`), IndexedDB (`idb`, opened and
//! upgraded by `schema`, its requests in `idb_request`), reading records and opening one (`records`), saving
//! without losing anything to errors or other tabs (`saving`, `tabs`, `broadcast`), and the page's list with its
//! actions (`store`); `open` is the state they share. Nothing of them is sent anywhere but to the model with a
//! question.
mod broadcast;
pub mod idb;
mod idb_request;
pub mod notices;
pub mod open;
pub mod record;
mod records;
mod saving;
mod schema;
pub mod store;
mod tabs;

//! Conversations kept in the browser: the stored record and its exports (`record`), IndexedDB (`idb`, opened and
//! upgraded by `schema`), saving without losing anything to errors or other tabs (`saving`, `tabs`), and the
//! page's list with its actions (`store`). Nothing of them is sent anywhere but to the model with a question.
pub mod idb;
pub mod notices;
pub mod open;
pub mod record;
mod saving;
mod schema;
pub mod store;
mod tabs;
